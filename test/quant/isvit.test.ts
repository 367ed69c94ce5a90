/**
 * I&S-ViT's SULQ softmax quantizer on RepQ-ViT's calibration: every dequantized probability
 * plus the shift is a power of two (the point of the quantizer), MNIST W4A4 accuracy against the
 * float model, and the ViT-Tiny at opset 17 and 13.
 */
import type { ModelProto } from 'onnx-buf';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadModel } from '../../src/onnx/model-io.js';
import { quantizeIsVit, type IsVitResult } from '../../src/quant/methods/isvit.js';
import { capture } from '../../src/runtime/capture.js';
import { recognizeViT } from '../../src/vit/index.js';
import { imagenetVal, mnistDir, vitMnist, vitTiny } from '../fixtures.js';
import { fixtureImages, holdBatches, labelsOf, predictions, type HeldBatch } from './helpers.js';

function accuracy(predicted: Int32Array, labels: Int32Array): number {
  return predicted.reduce((n, p, i) => n + (p === labels[i] ? 1 : 0), 0) / labels.length;
}

describe('I&S-ViT softmax quantizer on the MNIST ViT', () => {
  let model: ModelProto;
  let digits: HeldBatch[];
  let result: IsVitResult;

  beforeAll(async () => {
    model = await loadModel(vitMnist);
    const calib = await fixtureImages(vitMnist, mnistDir, 1000, 16);
    result = await quantizeIsVit(model, recognizeViT(model), calib.batches(16), {
      weightBits: 4,
      activationBits: 4,
      threads: 2,
    });
    digits = await holdBatches(await fixtureImages(vitMnist, mnistDir, 0, 200), 100);
  });

  it('takes its shifts from the paper’s candidates', () => {
    const candidates = [0.001, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.1, 0.2, 0.5, 1];
    expect(result.report.isvit.softmax).toHaveLength(recognizeViT(model).blocks.length);
    for (const p of result.report.isvit.softmax) expect(candidates).toContain(p.shift);
  });

  it('dequantizes every probability to 2^integer − η', async () => {
    const first = result.report.isvit.softmax[0]!;
    const output = `vitslim/sulq/${first.role}/output`;
    const eta = Math.fround(first.shift);
    let seen = 0;
    await capture(result.model, [output], digits.slice(0, 1), (tensors) => {
      for (const v of tensors.get(output)!.data as Float32Array) {
        const exponent = Math.log2(v + eta);
        expect(Math.abs(exponent - Math.round(exponent))).toBeLessThan(1e-4);
        seen++;
      }
    });
    expect(seen).toBeGreaterThan(0);
  });

  it('keeps W4A4 top-1 within 3 points of the float model on 200 digits', async () => {
    const labels = labelsOf(digits);
    const float = accuracy(await predictions(model, digits), labels);
    const quantized = accuracy(await predictions(result.model, digits), labels);
    expect(quantized).toBeGreaterThanOrEqual(float - 0.03);
  });
});

describe('I&S-ViT softmax quantizer on the ViT-Tiny', () => {
  it.each([
    ['opset 17', vitTiny.opset17],
    ['opset 13', vitTiny.opset13],
  ])('quantizes the %s graph, which runs', async (_, path) => {
    const model = await loadModel(path);
    const images = await holdBatches(await fixtureImages(path, imagenetVal, 0, 2), 2);
    const result = await quantizeIsVit(model, recognizeViT(model), images, {
      weightBits: 4,
      activationBits: 4,
      threads: 2,
    });
    expect(result.report.isvit.softmax).toHaveLength(12);
    const predicted = await predictions(result.model, images);
    expect(predicted.every((p) => p >= 0 && p < 1000)).toBe(true);
  });
});
