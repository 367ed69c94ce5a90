import { describe, expect, it } from 'vitest';
import { InputError } from '../../src/errors.js';
import { GraphIndex } from '../../src/graph/graph.js';
import { readFloat32, tensorDims } from '../../src/onnx/tensor.js';
import { sparseGpt } from '../../src/prune/sparsegpt.js';
import { relativeOutputError, sparsifyModel } from '../../src/prune/sparsity.js';
import {
  applyMask,
  magnitudeScores,
  markLowest,
  maskOf,
  wandaScores,
  type SparsityPattern,
} from '../../src/prune/sparsity-masks.js';
import type { WeightMatrix } from '../../src/prune/sparsity-layers.js';
import { recognizeViT } from '../../src/vit/index.js';
import { noiseInput } from '../fixtures.js';
import { tiny, tinyViT } from '../vit/tiny-models.js';
import { run } from './helpers.js';

/** Inputs with correlated channels of different scales: noise times a fixed mixing matrix. */
function correlatedInputs(samples: number, n: number): Float64Array {
  const noise = noiseInput(samples * n, 5);
  const mix = noiseInput(n * n, 9);
  const x = new Float64Array(samples * n);
  for (let s = 0; s < samples; s++) {
    for (let j = 0; j < n; j++) {
      let v = 0;
      for (let i = 0; i < n; i++) v += noise[s * n + i]! * mix[i * n + j]! * (1 + (i % 5));
      x[s * n + j] = v;
    }
  }
  return x;
}

/** Σ_s ‖W·x_s − Ŵ·x_s‖², every product written out. */
function outputError(x: Float64Array, samples: number, w: WeightMatrix, pruned: WeightMatrix) {
  const { rows, cols } = w;
  let error = 0;
  for (let s = 0; s < samples; s++) {
    for (let r = 0; r < rows; r++) {
      let d = 0;
      for (let j = 0; j < cols; j++) {
        d += (w.data[r * cols + j]! - pruned.data[r * cols + j]!) * x[s * cols + j]!;
      }
      error += d * d;
    }
  }
  return error;
}

function gramOf(x: Float64Array, samples: number, n: number): Float64Array {
  const g = new Float64Array(n * n);
  for (let s = 0; s < samples; s++) {
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < n; j++) g[i * n + j] = g[i * n + j]! + x[s * n + i]! * x[s * n + j]!;
    }
  }
  return g.map((v) => v / samples);
}

/** For every row and group of 4 consecutive columns, the number of zeros. */
function zerosPerGroup(w: WeightMatrix): number[] {
  const counts: number[] = [];
  for (let r = 0; r < w.rows; r++) {
    for (let g = 0; g < w.cols; g += 4) {
      counts.push(
        w.data.subarray(r * w.cols + g, r * w.cols + g + 4).filter((v) => v === 0).length,
      );
    }
  }
  return counts;
}

const [rows, cols, samples] = [16, 64, 400];
const layer: WeightMatrix = { data: Float64Array.from(noiseInput(rows * cols, 13)), rows, cols };
const x = correlatedInputs(samples, cols);
const gram = gramOf(x, samples, cols);

describe('sparsity masks', () => {
  it('mark the lowest scores, ties in index order', () => {
    const marks = new Uint8Array(5);
    markLowest(Float64Array.of(3, 1, 2, 1, 5), 0, 5, 2, marks);
    expect(Array.from(marks)).toEqual([0, 1, 0, 1, 0]);
    const ties = new Uint8Array(3);
    markLowest(Float64Array.of(1, 1, 1), 0, 3, 2, ties);
    expect(Array.from(ties)).toEqual([1, 1, 0]);
  });

  it('score Wanda as |w| times the norm of the input channel', () => {
    const w = { data: Float64Array.of(1, -2, 3, 0.5), rows: 2, cols: 2 };
    expect(Array.from(wandaScores(w, Float64Array.of(2, 1)))).toEqual([2, 2, 6, 0.5]);
  });

  it('zero exactly half of the layer (magnitude) or of every row (Wanda)', () => {
    const pattern: SparsityPattern = { kind: 'unstructured', sparsity: 0.5 };
    const byLayer = applyMask(layer, maskOf(magnitudeScores(layer), rows, cols, pattern, 'layer'));
    expect(byLayer.data.filter((v) => v === 0).length).toBe((rows * cols) / 2);
    const norms = Float64Array.from({ length: cols }, (_, j) => Math.sqrt(gram[j * cols + j]!));
    const scores = wandaScores(layer, norms);
    const byRow = applyMask(layer, maskOf(scores, rows, cols, pattern, 'row'));
    for (let r = 0; r < rows; r++) {
      const row = byRow.data.subarray(r * cols, (r + 1) * cols);
      expect(row.filter((v) => v === 0).length).toBe(cols / 2);
    }
  });

  it('leave exactly 2 zeros in every group of 4 inputs for 2:4', () => {
    const pattern: SparsityPattern = { kind: 'n-m', n: 2, m: 4 };
    const magnitude = applyMask(layer, maskOf(magnitudeScores(layer), rows, cols, pattern, 'row'));
    const gpt = sparseGpt(layer, gram, pattern, { blockSize: 16 }).weight;
    for (const w of [magnitude, gpt]) expect(new Set(zerosPerGroup(w))).toEqual(new Set([2]));
  });
});

describe('SparseGPT', () => {
  it.each([
    { kind: 'unstructured', sparsity: 0.5 },
    { kind: 'n-m', n: 2, m: 4 },
  ] as SparsityPattern[])('leaves less output error than magnitude pruning (%o)', (pattern) => {
    const magnitude = applyMask(layer, maskOf(magnitudeScores(layer), rows, cols, pattern, 'row'));
    const { weight: gpt } = sparseGpt(layer, gram, pattern, { blockSize: 16 });
    const zeros = (w: WeightMatrix) => w.data.filter((v) => v === 0).length;
    expect(zeros(gpt)).toBe(zeros(magnitude));
    expect(outputError(x, samples, layer, gpt)).toBeLessThan(
      outputError(x, samples, layer, magnitude),
    );
  });

  it('reports the relative output error the inputs see', () => {
    const pattern: SparsityPattern = { kind: 'unstructured', sparsity: 0.5 };
    const { weight: gpt } = sparseGpt(layer, gram, pattern);
    const zero = { ...layer, data: new Float64Array(rows * cols) };
    const expected = outputError(x, samples, layer, gpt) / outputError(x, samples, layer, zero);
    expect(relativeOutputError(layer, gpt, gram)).toBeCloseTo(expected, 9);
  });
});

describe('sparsifyModel on a tiny ViT', () => {
  const model = tinyViT({ qkv: 'fused', norm: 'op', pooling: 'class-token' });
  const structure = recognizeViT(model);
  const dims = [1, tiny.channels, tiny.image, tiny.image];
  const input = noiseInput(
    dims.reduce((p, d) => p * d, 1),
    4,
  );
  const calibration = [1, 2, 3, 4].map((seed) => ({ data: noiseInput(input.length, seed), dims }));

  it.each(['magnitude', 'wanda', 'sparsegpt'] as const)(
    'writes a 2:4 model by %s whose groups of 4 inputs hold 2 zeros, and says it is no faster',
    async (method) => {
      const result = await sparsifyModel(model, structure, {
        pattern: '2:4',
        method,
        calibration: method === 'magnitude' ? undefined : calibration,
      });
      const fc1 = structure.blocks[0]!.mlp.fc1;
      const tensor = new GraphIndex(result.model).initializers.get(fc1.weight)!;
      const [inF, outF] = tensorDims(tensor) as [number, number];
      const data = readFloat32(tensor);
      // [in, out]: a group is 4 consecutive inputs of one output column
      for (let o = 0; o < outF; o++) {
        for (let g = 0; g < inF; g += 4) {
          let zeros = 0;
          for (let i = g; i < g + 4; i++) if (data[i * outF + o] === 0) zeros++;
          expect(zeros).toBe(2);
        }
      }
      // SparseGPT also zeroes the weights of inputs that never fire on the calibration images
      // (after the ReLU of these tiny MLPs), so it may hold more zeros than the pattern's
      if (method === 'sparsegpt') expect(result.report.zeros).toBeGreaterThanOrEqual(0.5);
      else expect(result.report.zeros).toBeCloseTo(0.5, 9);
      expect(result.report.speed).toMatch(/no speed-up/);
      expect(result.report.size.gzipBytes[1]).toBeLessThan(result.report.size.gzipBytes[0]);
      expect((await run(result.model, input, dims)).every(Number.isFinite)).toBe(true);
    },
  );

  it('reports a smaller output error for SparseGPT than for magnitude pruning', async () => {
    const options = { pattern: 'unstructured', sparsity: 0.5, calibration } as const;
    const gpt = await sparsifyModel(model, structure, { ...options, method: 'sparsegpt' });
    const magnitude = await sparsifyModel(model, structure, { ...options, method: 'magnitude' });
    const mean = (r: typeof gpt) =>
      r.report.layers.reduce((s, l) => s + l.outputError!, 0) / r.report.layers.length;
    expect(mean(gpt)).toBeLessThan(mean(magnitude));
    expect(gpt.report.calibrationImages).toBe(4);
  });

  it('refuses options it cannot honour, naming them', async () => {
    const sparsify = (o: Partial<Parameters<typeof sparsifyModel>[2]>) =>
      sparsifyModel(model, structure, { pattern: 'unstructured', method: 'magnitude', ...o });
    await expect(sparsify({ sparsity: 1 })).rejects.toThrow(/sparsity must be a fraction/);
    await expect(sparsify({ sparsity: 0.5, method: 'wanda' })).rejects.toThrow(InputError);
    await expect(sparsify({ pattern: '2:4', sparsity: 0.6 })).rejects.toThrow(/contradicts 2:4/);
    await expect(sparsify({ pattern: 'N:M', n: 4, m: 4 })).rejects.toThrow(/1 ≤ n < m/);
  });
});
