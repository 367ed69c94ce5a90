import { describe, expect, it } from 'vitest';
import { flipped, shifted, viewFactor, withViews } from '../../src/prune/augment.js';
import { pruneModel } from '../../src/prune/prune.js';
import { recognizeViT } from '../../src/vit/index.js';
import { noiseInput } from '../fixtures.js';
import { tiny, tinyViT } from '../vit/tiny-models.js';
import { initializer, maxAbsDiff, run } from './helpers.js';

// one image, two channels of 2 × 3 pixels: channel 0 holds 1..6, channel 1 holds 11..16
const small = {
  data: Float32Array.of(1, 2, 3, 4, 5, 6, 11, 12, 13, 14, 15, 16),
  dims: [1, 2, 2, 3],
};

describe('calibration views', () => {
  it('mirror every row of every channel', () => {
    expect([...flipped(small).data]).toEqual([3, 2, 1, 6, 5, 4, 13, 12, 11, 16, 15, 14]);
    expect(flipped(small).dims).toEqual([1, 2, 2, 3]);
  });

  it('shift down and right with the edge repeated, and back', () => {
    // out[y][x] = in[max(0, y − 1)][max(0, x − 1)]
    expect([...shifted(small, 1, 1).data]).toEqual([1, 1, 2, 1, 1, 2, 11, 11, 12, 11, 11, 12]);
    // out[y][x] = in[min(1, y + 1)][min(2, x + 1)]
    expect([...shifted(small, -1, -1).data]).toEqual([5, 6, 6, 5, 6, 6, 15, 16, 16, 15, 16, 16]);
  });

  it('follow each batch with its copies, and refuse tensors that are not images', async () => {
    const seen = [];
    for await (const b of withViews([small], ['flip', { shift: 1 }])) seen.push([...b.data]);
    expect(seen).toHaveLength(viewFactor(['flip', { shift: 1 }]));
    expect(seen[0]).toEqual([...small.data]);
    expect(seen[1]).toEqual([3, 2, 1, 6, 5, 4, 13, 12, 11, 16, 15, 14]);
    expect(() => flipped({ data: new Float32Array(6), dims: [2, 3] })).toThrow(/\[N, C, H, W\]/);
  });
});

describe('pruneModel with views', () => {
  const model = tinyViT({ qkv: 'fused', norm: 'op', pooling: 'class-token' });
  const structure = recognizeViT(model);
  const dims = [1, tiny.channels, tiny.image, tiny.image];
  const size = dims.reduce((a, b) => a * b, 1);
  // noise on a left-to-right ramp, so that a mirror image is not like another noise image
  const images = Array.from({ length: 6 }, (_, i) => {
    const data = noiseInput(size, 70 + i);
    for (let p = 0; p < size; p++) data[p] = data[p]! + 3 * ((p % tiny.image) / tiny.image);
    return { data, dims };
  });
  // the mirror images written out here, independently of augment.ts
  const mirrored = images.map(({ data }) => {
    const out = new Float32Array(size);
    const w = tiny.image;
    for (let row = 0; row < size / w; row++) {
      for (let x = 0; x < w; x++) out[row * w + x] = data[row * w + w - 1 - x]!;
    }
    return { data: out, dims };
  });

  it('equals pruning on the images and their mirror images, counting the images once', async () => {
    const withFlip = await pruneModel(model, structure, {
      mlp: 0.25,
      roundTo: 1,
      compensation: 'mean',
      calibration: images,
      views: ['flip'],
    });
    const explicit = await pruneModel(model, structure, {
      mlp: 0.25,
      roundTo: 1,
      compensation: 'mean',
      calibration: images.flatMap((image, i) => [image, mirrored[i]!]),
    });
    expect(withFlip.report.calibrationImages).toBe(images.length);
    expect(explicit.report.calibrationImages).toBe(2 * images.length);
    const probe = noiseInput(size, 5);
    const a = await run(withFlip.model, probe, dims);
    const b = await run(explicit.model, probe, dims);
    expect(maxAbsDiff(a, b)).toBeLessThan(1e-4);
    // the mean folded into fc2's bias is taken over the mirror images too
    const plain = await pruneModel(model, structure, {
      mlp: 0.25,
      roundTo: 1,
      compensation: 'mean',
      calibration: images,
    });
    const bias = (m: typeof model) =>
      Float32Array.from(structure.blocks.flatMap((b) => [...initializer(m, b.mlp.fc2.bias!)]));
    expect(maxAbsDiff(bias(withFlip.model), bias(explicit.model))).toBeLessThan(1e-6);
    expect(maxAbsDiff(bias(withFlip.model), bias(plain.model))).toBeGreaterThan(1e-4);
  });
});
