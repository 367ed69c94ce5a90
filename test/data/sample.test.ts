import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { openDataset, type Dataset } from '../../src/data/dataset.js';
import type { PreprocessConfig } from '../../src/data/preprocess.js';
import { mulberry32, sampleDataset, samplePositions } from '../../src/data/sample.js';

const calib = join(
  import.meta.dirname,
  '..',
  '..',
  '..',
  'shared',
  'fixtures',
  'images',
  'imagenet-calib-256',
);
const tiny: PreprocessConfig = {
  channels: 3,
  mean: [0.5, 0.5, 0.5],
  std: [0.5, 0.5, 0.5],
  resize: 18,
  crop: 16,
  interpolation: 'bilinear',
  height: 16,
  width: 16,
};

async function filesOf(dataset: Dataset): Promise<string[]> {
  const files: string[] = [];
  for await (const batch of dataset.batches(8)) files.push(...batch.files);
  return files;
}

describe('mulberry32', () => {
  it('gives the reference sequence of the published algorithm for seed 0', () => {
    // Tommy Ettinger's mulberry32 in its published JavaScript form gives 1144304738 / 2³²,
    // then 1416247 / 2³², for seed 0
    const random = mulberry32(0);
    expect(random() * 2 ** 32).toBe(1144304738);
    expect(random() * 2 ** 32).toBe(1416247);
  });
});

describe('samplePositions', () => {
  it('draws distinct positions within the range', () => {
    const positions = samplePositions(100, 30, 7);
    expect(new Set(positions).size).toBe(30);
    expect(positions.every((p) => p >= 0 && p < 100)).toBe(true);
  });

  it('takes everything, shuffled, when asked for more than there is', () => {
    expect(samplePositions(5, 9, 1).slice().sort()).toEqual([0, 1, 2, 3, 4]);
  });
});

describe('sampleDataset', () => {
  it('chooses the same files in the same order for the same seed', async () => {
    const dataset = await openDataset(calib, tiny);
    const first = await filesOf(sampleDataset(dataset, 12, 42));
    const again = await filesOf(sampleDataset(await openDataset(calib, tiny), 12, 42));
    expect(first).toHaveLength(12);
    expect(again).toEqual(first);
  });

  it('chooses other files for another seed', async () => {
    const dataset = await openDataset(calib, tiny);
    const a = await filesOf(sampleDataset(dataset, 12, 1));
    const b = await filesOf(sampleDataset(dataset, 12, 2));
    expect(a).not.toEqual(b);
  });

  it('is a view whose order is shuffled, not sorted', async () => {
    const sample = sampleDataset(await openDataset(calib, tiny), 12, 3);
    const files = await filesOf(sample);
    expect(sample.size).toBe(12);
    expect(files).not.toEqual(files.slice().sort());
  });

  it('refuses a count below one', async () => {
    const dataset = await openDataset(calib, tiny);
    expect(() => sampleDataset(dataset, 0, 1)).toThrow(RangeError);
  });
});
