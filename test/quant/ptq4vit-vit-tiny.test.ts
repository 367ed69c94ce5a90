import { describe, expect, it } from 'vitest';
import { loadModel } from '../../src/onnx/model-io.js';
import { quantizePtq4Vit } from '../../src/quant/methods/ptq4vit.js';
import { recognizeViT } from '../../src/vit/index.js';
import { imagenetCalib, imagenetVal, vitTiny } from '../fixtures.js';
import { agreement, fixtureImages, holdBatches, predictions } from './helpers.js';

describe('PTQ4ViT on the ViT-Tiny', () => {
  it('runs W6A6 on opset 13 (decomposed LayerNorm) with a small search', async () => {
    const model = await loadModel(vitTiny.opset13);
    const calib = await fixtureImages(vitTiny.opset13, imagenetCalib, 0, 2);
    const images = await holdBatches(await fixtureImages(vitTiny.opset13, imagenetVal, 0, 8), 8);
    const { model: q, report } = await quantizePtq4Vit(
      model,
      recognizeViT(model),
      calib.batches(2),
      {
        weightBits: 6,
        activationBits: 6,
        candidates: 3,
        rounds: 1,
        searchRows: 256,
        attentionImages: 1,
        softmaxSplits: 4,
        threads: 2,
      },
    );
    expect(report.calibration.images).toBe(2);
    expect(report.layers.length).toBe(1 + 12 * 6 + 1);
    // bench-ptq (full search, 32 images, all 500): see the README's PTQ4ViT rows
    const same = agreement(await predictions(q, images), await predictions(model, images));
    expect(same).toBeGreaterThan(0.5);
  });
});
