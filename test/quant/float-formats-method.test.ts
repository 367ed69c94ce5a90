/**
 * Float-format PTQ on the MNIST ViT: the scale search against a direct scan, and W8A8 (E4M3)
 * predictions against the float model.
 */
import type { ModelProto } from 'onnx-buf';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadModel } from '../../src/onnx/model-io.js';
import { floatFormats, floatSquaredError } from '../../src/quant/float-formats.js';
import { quantizeFloatFormat, searchFloatScale } from '../../src/quant/methods/float-format.js';
import { recognizeViT } from '../../src/vit/index.js';
import { mnistDir, noiseInput, vitMnist } from '../fixtures.js';
import { agreement, fixtureImages, holdBatches, predictions, type HeldBatch } from './helpers.js';

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
});
