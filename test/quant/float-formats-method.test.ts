/**
 * Float-format PTQ: the scale search against a direct scan, W8A8 (E4M3) predictions and W4A4
 * (E2M1, pre-shifted) accuracy against the float model on the MNIST ViT, and the ViT-Tiny at
 * opset 17 and 13.
 */
import type { ModelProto } from 'onnx-buf';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadModel } from '../../src/onnx/model-io.js';
import { floatFormats, floatSquaredError } from '../../src/quant/float-formats.js';
import { quantizeFloatFormat, searchFloatScale } from '../../src/quant/methods/float-format.js';
import { recognizeViT } from '../../src/vit/index.js';
import { imagenetVal, mnistDir, noiseInput, vitMnist, vitTiny } from '../fixtures.js';
import {
  agreement,
  fixtureImages,
  holdBatches,
  labelsOf,
  predictions,
  type HeldBatch,
} from './helpers.js';

describe('float-format scale search', () => {
  it('returns the candidate s₀·2^(−j/16) of least squared error', () => {
    const x = Float32Array.from(noiseInput(4000, 2), (u) => u ** 3 * 5);
    const f = floatFormats.e2m1;
    const best = searchFloatScale(x, f, 32);
    let absMax = 0;
    for (const v of x) absMax = Math.max(absMax, Math.abs(v));
    const errors = Array.from({ length: 32 }, (_, j) =>
      floatSquaredError(x, f, Math.fround(Math.fround(absMax / 6) * 2 ** (-j / 16))),
    );
    expect(floatSquaredError(x, f, best.scale)).toBe(Math.min(...errors));
    // heavy-tailed values: clipping the max pays at 4 bits
    expect(best.ratio).toBeLessThan(1);
  });
});

describe('float-format PTQ on the MNIST ViT', () => {
  let model: ModelProto;
  let calib: HeldBatch[];
  let evaluated: HeldBatch[];

  beforeAll(async () => {
    model = await loadModel(vitMnist);
    calib = await holdBatches(await fixtureImages(vitMnist, mnistDir, 1000, 32), 16);
    evaluated = await holdBatches(await fixtureImages(vitMnist, mnistDir, 0, 100), 50);
  });

  it('keeps W8A8 (E4M3) predictions of the float model and reports every point', async () => {
    const structure = recognizeViT(model);
    const result = await quantizeFloatFormat(model, structure, calib, {
      weightFormat: 'e4m3',
      activationFormat: 'e4m3',
      candidates: 8,
      samplesPerTensor: 4096,
      threads: 2,
    });
    expect(result.report.weights.length).toBeGreaterThan(0);
    expect(result.report.activations.length).toBeGreaterThan(0);
    const same = agreement(
      await predictions(result.model, evaluated),
      await predictions(model, evaluated),
    );
    expect(same).toBeGreaterThanOrEqual(0.95);
  });

  it('chooses the same scales however the calibration images are batched', async () => {
    const structure = recognizeViT(model);
    const options = {
      weightFormat: 'e3m2',
      activationFormat: 'e3m2',
      candidates: 16,
      samplesPerTensor: 4096,
      threads: 2,
    } as const;
    const by16 = await quantizeFloatFormat(model, structure, calib, options);
    const by8 = await quantizeFloatFormat(
      model,
      structure,
      await holdBatches(await fixtureImages(vitMnist, mnistDir, 1000, 32), 8),
      options,
    );
    const scales = (r: typeof by16) => r.report.activations.map((a) => a.scale);
    expect(scales(by8)).toEqual(scales(by16));
  });
});

describe('float-format PTQ at W4A4 (E2M1)', () => {
  const quick = { weightFormat: 'e2m1', activationFormat: 'e2m1', candidates: 32 } as const;

  it('keeps MNIST top-1 within 3 points of the float model on 200 digits', async () => {
    const model = await loadModel(vitMnist);
    const calib = await holdBatches(await fixtureImages(vitMnist, mnistDir, 1000, 16), 16);
    const digits = await holdBatches(await fixtureImages(vitMnist, mnistDir, 0, 200), 100);
    const result = await quantizeFloatFormat(model, recognizeViT(model), calib, {
      ...quick,
      samplesPerTensor: 8192,
      threads: 2,
    });
    // every MatMul input is pre-shifted, the attention operands are not
    const shifted = result.report.activations.filter((a) => a.shift);
    expect(shifted.length).toBeGreaterThan(0);
    expect(shifted.every((a) => a.roles.every((r) => r.endsWith('.input')))).toBe(true);
    expect(shifted.every((a) => a.shift!.max <= 3)).toBe(true);
    const labels = labelsOf(digits);
    const top1 = (p: Int32Array) => p.reduce((n, c, i) => n + (c === labels[i] ? 1 : 0), 0) / 200;
    const float = top1(await predictions(model, digits));
    expect(top1(await predictions(result.model, digits))).toBeGreaterThanOrEqual(float - 0.03);
  });

  it.each([
    ['opset 17', vitTiny.opset17],
    ['opset 13', vitTiny.opset13],
  ])('quantizes the ViT-Tiny %s graph, which runs', async (_, path) => {
    const model = await loadModel(path);
    const images = await holdBatches(await fixtureImages(path, imagenetVal, 0, 2), 2);
    const result = await quantizeFloatFormat(model, recognizeViT(model), images, {
      ...quick,
      samplesPerTensor: 4096,
      threads: 2,
    });
    expect(result.report.weights).toHaveLength(50);
    const predicted = await predictions(result.model, images);
    expect(predicted.every((p) => p >= 0 && p < 1000)).toBe(true);
  });
});
