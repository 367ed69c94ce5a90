import { describe, expect, it } from 'vitest';
import { loadModel } from '../../src/onnx/model-io.js';
import { quantizePtq4Vit } from '../../src/quant/methods/ptq4vit.js';
import { recognizeViT } from '../../src/vit/index.js';
import { imagenetCalib, imagenetVal, vitTiny } from '../fixtures.js';
import { agreement, fixtureImages, holdBatches, predictions } from './helpers.js';

describe('PTQ4ViT on the ViT-Tiny', () => {
  it('runs W6A6 on opset 13 (decomposed LayerNorm): two blocks, a small search', async () => {
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
        candidates: 5,
        rounds: 1,
        searchRows: 256,
        attentionImages: 1,
        softmaxSplits: 6,
        // blocks 2–11 float: the test is about the decomposed norms and the chains, not speed
        keepFloat: Array.from({ length: 10 }, (_, i) => `blocks.${i + 2}`),
        threads: 2,
      },
    );
    expect(report.calibration.images).toBe(2);
    // patch embedding, six products in each of blocks 0 and 1, head
    expect(report.layers.map((l) => l.role).slice(0, 3)).toEqual([
      'patch_embed',
      'blocks.0.attn.qkv',
      'blocks.0.attn.scores',
    ]);
    expect(report.layers.length).toBe(1 + 2 * 6 + 1);
    expect(report.activations.find((a) => a.roles.includes('blocks.1.attn.softmax'))?.kind).toBe(
      'twin-softmax',
    );
    const same = agreement(await predictions(q, images), await predictions(model, images));
    expect(same).toBeGreaterThan(0.75);
  });
});
