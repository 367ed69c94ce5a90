import { describe, expect, it } from 'vitest';
import { GraphIndex } from '../../../src/graph/graph.js';
import { exportInt4, packZeroPoints } from '../../../src/quant/deploy/int4.js';
import { countIntegerKernels } from '../../../src/quant/deploy/kernels.js';
import {
  gemmLayer,
  gemmTransB,
  matmulLayer,
  matmulWithBias,
  maxAbsDiff,
  runModel,
} from './tiny.js';

// K = 80 with blocks of 32: blocks of 32, 32 and 16 values (the last one padded), N = 3.
const k = 80;
const n = 3;
const blockSize = 32;

/**
 * W[n][k] = s · (q − z) with codes q cycling over 0..15 in every block, so each block holds its
 * grid's extremes: the quantizer must find exactly scale s and zero point z, and W̃ = W.
 * Symmetric blocks use z = 8 and codes 1..15 (the ±7 extremes).
 */
function gridWeight(symmetric: boolean): number[][] {
  return Array.from({ length: n }, (_, row) =>
    Array.from({ length: k }, (_, col) => {
      const block = Math.floor(col / blockSize);
      const s = 0.01 * (row + 1) * (block + 2);
      const z = symmetric ? 8 : (row * 5 + block * 3 + 2) % 16;
      const i = col % blockSize;
      const q = symmetric ? 1 + (i % 15) : (i * 7) % 16;
      return Math.fround(s * (q - z));
    }),
  );
}

/** x·Wᵀ + b for W given [N, K], by hand. */
function reference(x: Float32Array, rows: number, w: number[][], b: number[]): Float32Array {
  const out = new Float32Array(rows * n);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < n; c++) {
      let sum = b[c]!;
      for (let i = 0; i < k; i++) sum += x[r * k + i]! * w[c]![i]!;
      out[r * n + c] = sum;
    }
  }
  return out;
}

const bias = [0.5, -0.25, 0.125];
const x = Float32Array.from({ length: 2 * k }, (_, i) => Math.cos(i * 0.7));

describe('exportInt4 (MatMulNBits)', () => {
  for (const symmetric of [true, false]) {
    it(`packs a ${symmetric ? 'symmetric' : 'asymmetric'} weight so onnxruntime computes x·W + b`, async () => {
      const w = gridWeight(symmetric);
      const inOut = w[0]!.map((_, i) => w.map((row) => row[i]!));
      const original = matmulWithBias(inOut, bias, ['N', k]);
      const { model, layers } = exportInt4(original, [matmulLayer(k, n)], {
        blockSize,
        symmetric,
        accuracyLevel: 0,
      });
      expect(layers.map((l) => l.form)).toEqual(['nbits']);
      const index = new GraphIndex(model);
      expect(index.constantDims('W_nbits')).toEqual([n, 3, blockSize / 2]);
      expect(index.constantDims('W_nbits_scales')).toEqual([n, 3]);
      expect(index.initializers.has('W_nbits_zero_points')).toBe(!symmetric);

      const actual = await runModel(model, x, [2, k]);
      expect(maxAbsDiff(actual, reference(x, 2, w, bias))).toBeLessThan(1e-4);
    });
  }

  it('reads a Gemm weight stored [out, in] and takes its bias into the kernel', async () => {
    const w = gridWeight(false);
    const original = gemmTransB(w, bias, ['N', k]);
    const { model } = exportInt4(original, [gemmLayer(k, n)], { blockSize, accuracyLevel: 0 });
    expect(model.graph!.node.map((n) => n.opType)).toEqual(['MatMulNBits']);
    const actual = await runModel(model, x, [2, k]);
    expect(maxAbsDiff(actual, reference(x, 2, w, bias))).toBeLessThan(1e-4);
  });

  it('runs as MatMulNBits with accuracy level 4 within int8 rounding of the activations', async () => {
    const w = gridWeight(true);
    const original = gemmTransB(w, bias, ['N', k]);
    const layers = [gemmLayer(k, n)];
    const { model } = exportInt4(original, layers, { blockSize });
    const kernels = await countIntegerKernels(model, layers, original);
    expect(kernels.layers.map((l) => l.kernel)).toEqual(['MatMulNBits']);
    // A is quantized per block to int8: with |x| ≤ 1 each value moves by at most half a step of
    // 1/127, so an output moves by at most Σ|w| / 254 (bound doubled for the kernel's own rounding)
    const expected = reference(x, 2, w, bias);
    const bound = Math.max(...w.map((row) => row.reduce((a, v) => a + Math.abs(v), 0))) / 127;
    expect(maxAbsDiff(await runModel(model, x, [2, k]), expected)).toBeLessThan(bound);
  });

  it('packs zero points two per byte along the blocks, low nibble first, rows padded', () => {
    const packed = packZeroPoints(Uint8Array.from([1, 2, 3, 4, 5, 6]), 2, 3);
    expect(Array.from(packed)).toEqual([0x21, 0x03, 0x54, 0x06]);
  });

  it('refuses a block size that is not a power of two of at least 16', () => {
    const original = matmulWithBias([[1], [2]], [0], ['N', 2]);
    expect(() => exportInt4(original, [matmulLayer(2, 1)], { blockSize: 24 })).toThrow(RangeError);
    expect(() => exportInt4(original, [matmulLayer(2, 1)], { blockSize: 8 })).toThrow(
      /power of two/,
    );
  });
});
