import type { ModelProto } from 'onnx-buf';
import { beforeAll, describe, expect, it } from 'vitest';
import { InputError } from '../../src/errors.js';
import { GraphIndex } from '../../src/graph/graph.js';
import { loadModel } from '../../src/onnx/model-io.js';
import { gptqWeights } from '../../src/quant/methods/gptq.js';
import {
  calibrateRepQ,
  insertRepQQuantizers,
  quantizeRepQ,
  type RepQCalibration,
} from '../../src/quant/methods/repq.js';
import { insertQuantizers } from '../../src/quant/quantizer-commands.js';
import { fakeQuantize, intRange } from '../../src/quant/uniform.js';
import { capture } from '../../src/runtime/capture.js';
import { recognizeViT } from '../../src/vit/index.js';
import type { LinearLayer, ViTStructure } from '../../src/vit/types.js';
import { imagenetCalib, imagenetVal, mnistDir, vitMnist, vitTiny } from '../fixtures.js';
import { agreement, fixtureImages, holdBatches, labelsOf, predictions } from './helpers.js';

/** A MatMul layer's [in, out] weight in `model`. */
function weightOf(model: ModelProto, layer: LinearLayer): Float32Array {
  return new GraphIndex(model).constantFloat32(layer.weight)!;
}

/**
 * Σ over the calibration rows of ‖x̃·(W − Ŵ)‖² for a MatMul layer, with x̃ the layer's input in
 * `simulated` as onnxruntime computes it, summed here in float64 row by row.
 */
async function outputError(
  simulated: ModelProto,
  layer: LinearLayer,
  images: Iterable<{ data: Float32Array; dims: readonly number[] }>,
  w: Float32Array,
  q: Float32Array,
): Promise<number> {
  const value = new GraphIndex(simulated).node(layer.node).input[0]!;
  const inF = layer.inFeatures;
  const outF = layer.outFeatures;
  let total = 0;
  await capture(
    simulated,
    [value],
    images,
    (tensors) => {
      const x = tensors.get(value)!.data as Float32Array;
      for (let r = 0; r < x.length / inF; r++) {
        for (let o = 0; o < outF; o++) {
          let y = 0;
          for (let i = 0; i < inF; i++)
            y += x[r * inF + i]! * (w[i * outF + o]! - q[i * outF + o]!);
          total += y * y;
        }
      }
    },
    { threads: 2, optimization: 'basic' },
  );
  return total;
}

describe('GPTQ weights on the MNIST ViT', () => {
  let model: ModelProto;
  let structure: ViTStructure;
  let calibration: RepQCalibration;
  let gptq: RepQCalibration;
  const calibImages = () => fixtureImages(vitMnist, mnistDir, 1000, 32);

  beforeAll(async () => {
    model = await loadModel(vitMnist);
    structure = recognizeViT(model);
    const calib = await calibImages();
    calibration = await calibrateRepQ(model, structure, calib.batches(32), {
      weightBits: 4,
      activationBits: 4,
      threads: 2,
    });
    gptq = await gptqWeights(calibration, calib.batches(32), { threads: 2 });
  });

  it('lowers each block layer output error below rounding, measured on onnxruntime inputs', async () => {
    // block 1's layers: their inputs come from block 0 already carrying its GPTQ weights
    const images = await holdBatches(await calibImages(), 32);
    const block = gptq.structure.blocks[1]!;
    const qkv = block.attention.qkv ?? block.attention.q!;
    for (const layer of [qkv, block.mlp.fc1, block.mlp.fc2]) {
      const setting = gptq.quantizers.weights.find((w) => w.role === `${layer.role}.weight`)!;
      const simulated = insertQuantizers(gptq.model, gptq.quantizers, 'test');
      const w = weightOf(calibration.model, layer);
      const rounded = fakeQuantize(
        w,
        setting.params,
        intRange(4, false),
        [layer.inFeatures, layer.outFeatures],
        1,
      );
      const error = await outputError(simulated, layer, images, w, weightOf(gptq.model, layer));
      const roundingError = await outputError(simulated, layer, images, w, rounded);
      expect(error).toBeLessThan(0.9 * roundingError);
    }
  });

  it('writes weights that the fake-quant model carries unchanged, 16 values per output channel', () => {
    const simulated = insertRepQQuantizers(gptq).model;
    const fc2 = gptq.structure.blocks[0]!.mlp.fc2;
    const written = weightOf(gptq.model, fc2);
    expect(new GraphIndex(simulated).constantFloat32(fc2.weight)).toEqual(written);
    expect(written).not.toEqual(weightOf(calibration.model, fc2));
    for (let o = 0; o < fc2.outFeatures; o++) {
      const column = new Set<number>();
      for (let i = 0; i < fc2.inFeatures; i++) column.add(written[i * fc2.outFeatures + o]!);
      expect(column.size).toBeLessThanOrEqual(16);
    }
  });

  it('reports every layer, the MatMul patch embedding included, one pass per stage', () => {
    const report = gptq.report.weightMethod!;
    expect(report.method).toBe('gptq');
    expect(report.layers.map((l) => l.role)).toEqual(
      calibration.quantizers.weights.map((w) => w.role),
    );
    expect(report.skipped).toEqual([]);
    // the patch embedding, each block, then pre-logits and head together
    expect(report.passes).toBe(structure.blocks.length + 2);
    expect(calibration.report.weightMethod).toBeUndefined();
  });

  it('keeps W4A4 within two points of fp32 top-1 on 500 digits', async () => {
    const digits = await holdBatches(await fixtureImages(vitMnist, mnistDir, 0, 500), 250);
    const labels = labelsOf(digits);
    const fp32 = agreement(await predictions(model, digits), labels);
    const top1 = agreement(await predictions(insertRepQQuantizers(gptq).model, digits), labels);
    expect(top1).toBeGreaterThan(fp32 - 0.02);
  });

  it('is what quantizeRepQ gives with weights: gptq, and refuses bad options by name', async () => {
    const calib = await calibImages();
    const options = { weightBits: 4, activationBits: 4, threads: 2, weights: 'gptq' } as const;
    // the same batches: Grams are summed per batch in float32, so batching moves the last bits
    const result = await quantizeRepQ(model, structure, calib.batches(32), options);
    const fc1 = gptq.structure.blocks[0]!.mlp.fc1;
    expect(new GraphIndex(result.model).constantFloat32(fc1.weight)).toEqual(
      weightOf(gptq.model, fc1),
    );
    await expect(gptqWeights(calibration, [], { blockSize: 0 })).rejects.toThrow(/blockSize/);
    await expect(gptqWeights(calibration, [], { order: 1 } as object)).rejects.toThrow(InputError);
  });
});

describe('GPTQ weights on the ViT-Tiny', () => {
  // RepQ-ViT, the weight method and three evaluations of the ViT-Tiny: a generous limit, as
  // runs on a 2-core machine shared with other jobs took over 5 minutes
  it('runs on opset 13 (decomposed LayerNorm) at W4A4 and agrees with fp32 at least as RepQ-ViT', async () => {
    const calib = await holdBatches(await fixtureImages(vitTiny.opset13, imagenetCalib, 0, 8), 8);
    const images = await holdBatches(await fixtureImages(vitTiny.opset13, imagenetVal, 0, 32), 32);
    const model = await loadModel(vitTiny.opset13);
    const options = { weightBits: 4, activationBits: 4, threads: 2 };
    const calibration = await calibrateRepQ(model, recognizeViT(model), calib, options);
    const gptq = await gptqWeights(calibration, calib, { threads: 2 });
    expect(gptq.report.weightMethod!.layers.length).toBe(12 * 4 + 1);
    const fp32 = await predictions(model, images);
    const repq = agreement(
      await predictions(insertRepQQuantizers(calibration).model, images),
      fp32,
    );
    const withGptq = agreement(await predictions(insertRepQQuantizers(gptq).model, images), fp32);
    // bench-ptq, 32 calibration images, all 500 images: see the README's table
    expect(withGptq).toBeGreaterThanOrEqual(repq - 1 / 32);
    expect(gptq.report.weightMethod!.skipped.map((s) => s.role)).toEqual(['patch_embed.weight']);
  }, 900_000);
});
