import { describe, expect, it } from 'vitest';
import { parseOptions, pruneOptionsSchema } from '../../src/options.js';
import { pruneCalibrationCount } from '../../src/pipeline/prune.js';
import { pruneModel } from '../../src/prune/prune.js';
import { recognizeViT } from '../../src/vit/index.js';
import { noiseInput } from '../fixtures.js';
import { tiny, tinyViT } from '../vit/tiny-models.js';

const dims = [1, tiny.channels, tiny.image, tiny.image];
const size = dims.reduce((a, b) => a * b, 1);
const calibration = Array.from({ length: 4 }, (_, i) => ({ data: noiseInput(size, 40 + i), dims }));

describe('pruneModel defaults', () => {
  const model = tinyViT({ qkv: 'fused', norm: 'op', pooling: 'class-token' });
  const structure = recognizeViT(model);

  it('ranks MLP channels by greedy reconstruction across blocks when calibrated', async () => {
    const { report } = await pruneModel(model, structure, { mlp: 0.25, calibration });
    expect(report).toMatchObject({
      criterion: 'reconstruction',
      scope: 'global',
      compensation: 'ridge',
    });
  });

  it('keeps Wanda per block for heads, and magnitude per block without images', async () => {
    const heads = await pruneModel(model, structure, { heads: 0.5, calibration });
    expect(heads.report).toMatchObject({ criterion: 'wanda', scope: 'local' });
    const plain = await pruneModel(model, structure, { mlp: 0.25 });
    expect(plain.report).toMatchObject({ criterion: 'l2', scope: 'local', compensation: 'none' });
  });
});

describe('prune calibration count', () => {
  it('samples 256 images for MLP pruning and 32 otherwise, unless given', () => {
    expect(pruneCalibrationCount({ mlp: 0.3 })).toBe(256);
    expect(pruneCalibrationCount({})).toBe(32);
    expect(pruneCalibrationCount({ mlp: 0.3, calibCount: 16 })).toBe(16);
    expect(parseOptions(pruneOptionsSchema, { mlp: '0.3' }, 'flags').calibCount).toBeUndefined();
  });
});
