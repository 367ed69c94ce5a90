/**
 * Accuracy of token reduction on held-out ImageNet validation images, against the fp32 ViT-Tiny
 * run on the same images (the floors are the issue's: within 2 points of fp32).
 */
import { describe, expect, it } from 'vitest';
import { evaluateAccuracy } from '../../src/eval/accuracy.js';
import { loadModel } from '../../src/onnx/model-io.js';
import { reduceTokens } from '../../src/prune/tokens/index.js';
import { recognizeViT } from '../../src/vit/index.js';
import { imagenetVal, vitTiny } from '../fixtures.js';
import { heldImages, stream } from './helpers.js';

describe('reduceTokens accuracy on ViT-Tiny', () => {
  it(
    'ToMe r = 8 stays within 2 points of fp32 on 100 validation images',
    { timeout: 300_000 },
    async () => {
      const model = await loadModel(vitTiny.opset17);
      const structure = recognizeViT(model);
      const positions = Array.from({ length: 100 }, (_, i) => i * 5);
      const held = await heldImages(vitTiny.opset17, imagenetVal, positions);
      const { model: reduced } = reduceTokens(model, structure, { kind: 'tome', r: 8 });
      const result = await evaluateAccuracy(reduced, stream(held), { baseline: model, threads: 2 });
      expect(result.baseline!.top1!).toBeGreaterThan(0.75);
      expect(result.top1!).toBeGreaterThanOrEqual(result.baseline!.top1! - 0.02);
      expect(result.agreement!).toBeGreaterThan(0.9);
    },
  );
});
