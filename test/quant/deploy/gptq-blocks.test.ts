import { describe, expect, it } from 'vitest';
import type { ModelProto } from 'onnx-buf';
import { GraphIndex } from '../../../src/graph/graph.js';
import { loadModel } from '../../../src/onnx/model-io.js';
import { readTensor } from '../../../src/onnx/tensor.js';
import { gptqBlockLayer, gptqBlocks } from '../../../src/quant/deploy/gptq-blocks.js';
import { exportInt4 } from '../../../src/quant/deploy/int4.js';
import { countIntegerKernels } from '../../../src/quant/deploy/kernels.js';
import { createSession, floatInput } from '../../../src/runtime/session.js';
import { recognizeViT } from '../../../src/vit/index.js';
import { vitMnist } from '../../fixtures.js';
import { mnistDigits } from './helpers.js';
import { matmulLayer, matmulWithBias, maxAbsDiff, runModel } from './tiny.js';

const [k, n, rows, blockSize] = [64, 4, 256, 32];

/** A deterministic uniform generator in [−1, 1) (a 32-bit LCG), so the test data are fixed. */
function generator(seed: number) {
  let state = seed >>> 0;
  return () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state / 2 ** 31 - 1;
  };
}

// inputs whose channels are strongly correlated (a shared factor per row plus noise), which is
// where GPTQ's error feedback beats rounding each weight alone
const random = generator(7);
const x = new Float32Array(rows * k);
for (let r = 0; r < rows; r++) {
  const shared = 2 * random();
  for (let c = 0; c < k; c++) x[r * k + c] = shared + 0.3 * random() + (c % 5) * 0.1;
}
const weight = Array.from({ length: k }, () => Array.from({ length: n }, () => random()));
const bias = [0.1, -0.2, 0.3, 0.05];

/** H = XᵀX over the rows, computed here by plain summation. */
function gram(): Float64Array {
  const h = new Float64Array(k * k);
  for (let r = 0; r < rows; r++)
    for (let i = 0; i < k; i++)
      for (let j = 0; j < k; j++) h[i * k + j] = h[i * k + j]! + x[r * k + i]! * x[r * k + j]!;
  return h;
}

/**
 * The weight a MatMulNBits node stores, decoded by hand from its initializers: byte
 * (row·kBlocks + block)·16 + ⌊i/2⌋, low nibble for even i; value (code − zero point)·scale.
 */
function decodeNBits(model: ModelProto): Float32Array {
  const index = new GraphIndex(model);
  const node = index.nodes.find((nd) => nd.opType === 'MatMulNBits')!;
  const packed = readTensor(index.constantTensor(node.input[1]!)!) as Uint8Array;
  const scales = index.constantFloat32(node.input[2]!)!;
  const zeros = readTensor(index.constantTensor(node.input[3]!)!) as Uint8Array;
  const kBlocks = k / blockSize;
  const out = new Float32Array(k * n);
  for (let col = 0; col < n; col++) {
    for (let i = 0; i < k; i++) {
      const block = Math.floor(i / blockSize);
      const slot = col * kBlocks + block;
      const byte = packed[slot * (blockSize / 2) + Math.floor((i % blockSize) / 2)]!;
      const code = i % 2 === 0 ? byte & 15 : byte >> 4;
      // zero points: [N, ⌈kBlocks / 2⌉] bytes, even blocks in the low nibble
      const zByte = zeros[col * Math.ceil(kBlocks / 2) + Math.floor(block / 2)]!;
      const zero = block % 2 === 0 ? zByte & 15 : zByte >> 4;
      out[i * n + col] = Math.fround((code - zero) * scales[slot]!);
    }
  }
  return out;
}

/** Σ (y − y_float)² over the rows, each model run by onnxruntime. */
async function outputError(model: ModelProto, reference: Float32Array): Promise<number> {
  const y = await runModel(model, x, [rows, k]);
  let error = 0;
  for (let i = 0; i < y.length; i++) error += (y[i]! - reference[i]!) ** 2;
  return error;
}

describe('GPTQ in MatMulNBits blocks on one layer', () => {
  const layer = [matmulLayer(k, n)];
  const original = matmulWithBias(weight, bias, ['N', k]);
  const w = Float64Array.from(weight.flat());
  const result = gptqBlockLayer(w, gram(), k, n, { blockSize });
  const exported = exportInt4(original, layer, { blocksOf: () => result.weight, accuracyLevel: 1 });

  it('exports codes that decode to exactly the dequantized weights of the sweep', () => {
    expect(maxAbsDiff(decodeNBits(exported.model), result.dequantized)).toBe(0);
  });

  it('runs in onnxruntime as the float layer with those weights computes', async () => {
    const simulated = matmulWithBias(
      Array.from({ length: k }, (_, i) =>
        Array.from(result.dequantized.subarray(i * n, i * n + n)),
      ),
      bias,
      ['N', k],
    );
    const got = await runModel(exported.model, x, [rows, k]);
    const expected = await runModel(simulated, x, [rows, k]);
    expect(maxAbsDiff(got, expected)).toBeLessThan(1e-4);
    const kernels = await countIntegerKernels(exported.model, layer, original);
    expect(kernels.layers.map((l) => l.kernel)).toEqual(['MatMulNBits']);
  });

  it('leaves a smaller output error on the calibration rows than rounding each block', async () => {
    const reference = await runModel(original, x, [rows, k]);
    const rounded = exportInt4(original, layer, { accuracyLevel: 1 }).model;
    const gptqError = await outputError(exported.model, reference);
    const roundingError = await outputError(rounded, reference);
    expect(gptqError).toBeLessThan(0.7 * roundingError);
  });
});

describe('GPTQ in MatMulNBits blocks on the MNIST ViT', () => {
  it('exports every layer as MatMulNBits computing what the simulated GPTQ model computes', async () => {
    const model = await loadModel(vitMnist);
    const structure = recognizeViT(model);
    const calib = (await mnistDigits(1032)).slice(1000).map((d) => d.data);
    const images = [
      { data: Float32Array.from(calib.flatMap((d) => Array.from(d))), dims: [32, 1, 28, 28] },
    ];
    const gptq = await gptqBlocks(model, structure, images, { blockSize: 32, threads: 1 });
    const exported = exportInt4(model, structure, {
      blocksOf: (l) => gptq.blocks.get(l.node),
      accuracyLevel: 1,
    }).model;
    const kernels = await countIntegerKernels(exported, structure, model);
    expect(kernels.integer).toBe(kernels.layers.length);
    const mean = (f: (l: (typeof gptq.layers)[number]) => number) =>
      gptq.layers.reduce((s, l) => s + f(l), 0) / gptq.layers.length;
    expect(mean((l) => l.loss)).toBeLessThan(mean((l) => l.roundingLoss));

    const digits = (await mnistDigits(8)).map((d) => d.data);
    const run = async (m: ModelProto) => {
      const session = await createSession(m, { threads: 1 });
      const out: number[] = [];
      for (const d of digits) {
        const r = await session.run({ [session.inputNames[0]!]: floatInput(d, [1, 1, 28, 28]) });
        out.push(...(r[session.outputNames[0]!]!.data as Float32Array));
      }
      await session.release();
      return Float32Array.from(out);
    };
    const got = await run(exported);
    const expected = await run(gptq.model);
    expect(maxAbsDiff(got, expected)).toBeLessThan(
      1e-3 * Math.max(...Array.from(expected, Math.abs)),
    );
  });
});
