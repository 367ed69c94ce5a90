import { describe, expect, it } from 'vitest';
import { loadModel } from '../../src/onnx/model-io.js';
import { countMacs, countParameters, recognizeViT } from '../../src/vit/index.js';
import { vitMnist } from '../fixtures.js';
import { tinyConvNet, tinyMlp } from './tiny-models.js';

describe('countMacs', () => {
  it('counts a convolutional net as output elements × kernel inputs, by hand', () => {
    // conv1: 8 channels × 8 × 8 outputs, 3 × 3 × 3 inputs each; conv2: the same outputs,
    // 8 × 3 × 3 inputs each; the Gemm: 5 outputs of 8 inputs
    expect(countMacs(tinyConvNet())).toBe(8 * 64 * 27 + 8 * 64 * 72 + 5 * 8);
  });

  it('counts a perceptron as the products of its weight dimensions', () => {
    expect(countMacs(tinyMlp())).toBe(16 * 32 + 32 * 4);
  });

  it('gives for a ViT the MACs of its structure map', async () => {
    const model = await loadModel(vitMnist);
    expect(countMacs(model)).toBe(recognizeViT(model).counts.macs);
  });
});

describe('countParameters', () => {
  it('counts every float initializer element', () => {
    expect(countParameters(tinyConvNet())).toBe(8 * 3 * 9 + 8 * 8 * 9 + 5 * 8);
  });
});
