import { describe, expect, it } from 'vitest';
import { klDivergence } from '../../src/eval/metrics.js';
import {
  allocateCounts,
  measuredCounts,
  sensitivitySelect,
  weightInputsProbe,
} from '../../src/prune/allocation.js';
import { mlpGroup } from '../../src/prune/groups.js';
import { pruneModel } from '../../src/prune/prune.js';
import { createSession, floatInput } from '../../src/runtime/session.js';
import { recognizeViT } from '../../src/vit/index.js';
import { noiseInput } from '../fixtures.js';
import { tiny, tinyViT } from '../vit/tiny-models.js';
import { initializer, maxAbsDiff, run, zeroed } from './helpers.js';

const dims = [1, tiny.channels, tiny.image, tiny.image];
const size = dims.reduce((a, b) => a * b, 1);
const images = Array.from({ length: 6 }, (_, i) => ({ data: noiseInput(size, 500 + i), dims }));
const probe = noiseInput(size, 17);

describe('allocateCounts', () => {
  it('finds the cheapest split of the removed units (checked by hand)', () => {
    // group 0 costs 1 per step of 2, group 1 costs 3 for the first step and 0.5 for the next:
    // removing 4 units costs 2 (all from group 0), 4 (one step each) or 3.5 (all from group 1);
    // removing 6 costs 5 (4 + 2) or 4.5 (2 + 4)
    const costs = [
      [0, 1, 2],
      [0, 3, 3.5],
    ];
    const counts = allocateCounts([4, 4], 2, 4, (g, removed) => costs[g]![removed / 2]!);
    expect(counts).toEqual([4, 0]);
    const six = allocateCounts([4, 4], 2, 6, (g, removed) => costs[g]![removed / 2]!);
    expect(six).toEqual([2, 4]);
  });

  it('is undefined when the caps cannot reach the target', () => {
    expect(allocateCounts([2, 2], 2, 6, () => 0)).toBeUndefined();
  });
});

describe('measuredCounts', () => {
  it('spaces the measured widths evenly up to the cap, as multiples of the rounding', () => {
    // 768 channels, at most 60 % removed in steps of 10 %: kept 691.2, 614.4, 537.6, 460.8, 384,
    // 307.2, rounded up to multiples of 8: 696, 616, 544, 464, 384, 312
    expect(measuredCounts(768, 8, 0.6, 6)).toEqual([0, 72, 152, 224, 304, 384, 456]);
  });
});

describe('the sensitivity probe', () => {
  const model = tinyViT({ qkv: 'fused', norm: 'op', pooling: 'class-token' });
  const structure = recognizeViT(model);

  it('runs like the original model fed its own weights, and like a zeroed copy fed zeros', async () => {
    const fc2 = structure.blocks[1]!.mlp.fc2;
    const { model: probeModel, defaults } = weightInputsProbe(model, [fc2]);
    expect([...defaults.keys()]).toEqual([fc2.weight, fc2.bias]);
    const session = await createSession(probeModel, { threads: 1 });
    try {
      const image = 'image';
      const plain = await session.run({
        ...Object.fromEntries(defaults),
        [image]: floatInput(probe, dims),
      });
      const expected = await run(model, probe, dims);
      const first = plain[session.outputNames[0]!]!.data as Float32Array;
      expect(maxAbsDiff(first, expected)).toBe(0);

      // zeroing rows 0..3 of fc2 by feeding, against a copy whose initializer holds the zeros
      const copy = zeroed(model, fc2.weight, 0, [0, 1, 2, 3]);
      const weight = initializer(model, fc2.weight);
      weight.fill(0, 0, 4 * tiny.width);
      const bias = initializer(model, fc2.bias!);
      const fed = await session.run({
        [image]: floatInput(probe, dims),
        [fc2.weight]: floatInput(weight, [tiny.mlp, tiny.width]),
        [fc2.bias!]: floatInput(bias, [tiny.width]),
      });
      const out = fed[session.outputNames[0]!]!.data as Float32Array;
      expect(maxAbsDiff(out, await run(copy, probe, dims))).toBeLessThan(1e-6);
    } finally {
      await session.release();
    }
  });

  it('gives the lower measured KL to the block whose channels matter less', async () => {
    const groups = structure.blocks.map((b) => mlpGroup(b));
    // every block ranks its channels by index: the lowest indices go first
    const scores = groups.map((g) => Float64Array.from({ length: g.units }, (_, u) => u));
    const none = () => ({ tensors: new Map(), newBiases: new Map() });
    const chosen = await sensitivitySelect(model, groups, scores, images, none, {
      ratio: 0.25,
      roundTo: 2,
      maxRatio: 0.5,
      points: 4,
    });
    const removed = chosen.map((s) => s.group.units - s.keep.length);
    expect(removed.reduce((a, b) => a + b, 0)).toBe(8);

    // the independent check: every split of the 8 channels, measured on zeroed copies
    const kl = async (block: number, count: number) => {
      if (count === 0) return 0;
      const fc2 = structure.blocks[block]!.mlp.fc2;
      const copy = zeroed(
        model,
        fc2.weight,
        0,
        Array.from({ length: count }, (_, i) => i),
      );
      let total = 0;
      for (const image of images) {
        const p = await run(model, image.data, image.dims);
        total += klDivergence(p, await run(copy, image.data, image.dims), tiny.classes, 0);
      }
      return total / images.length;
    };
    let best = { cost: Infinity, split: -1 };
    for (const a of [0, 2, 4, 6, 8]) {
      const cost = (await kl(0, a)) + (await kl(1, 8 - a));
      if (cost < best.cost) best = { cost, split: a };
    }
    expect(removed[0]).toBe(best.split);
  });
});

describe('pruneModel with the sensitivity scope', () => {
  it('removes the asked share of MLP channels, runs in onnxruntime, and removing 0 changes nothing', async () => {
    const model = tinyViT({ qkv: 'separate', norm: 'op', pooling: 'class-token' });
    const structure = recognizeViT(model);
    const pruned = await pruneModel(model, structure, {
      mlp: 0.25,
      scope: 'sensitivity',
      roundTo: 2,
      calibration: images,
    });
    const widths = pruned.report.blocks.map((b) => b.mlp[1]);
    expect(widths.reduce((a, b) => a + b, 0)).toBe(2 * tiny.mlp - 8);
    const out = await run(pruned.model, probe, dims);
    expect(out.every(Number.isFinite)).toBe(true);

    const same = await pruneModel(model, structure, {
      mlp: 0,
      scope: 'sensitivity',
      calibration: images,
    });
    expect(maxAbsDiff(await run(same.model, probe, dims), await run(model, probe, dims))).toBe(0);
  });
});

describe('heads in some blocks with the sensitivity scope', () => {
  it('removes the one head whose removal changes the output least, of every block', async () => {
    const model = tinyViT({ qkv: 'fused', norm: 'op', pooling: 'class-token' });
    const structure = recognizeViT(model);
    const pruned = await pruneModel(model, structure, {
      heads: { count: 1, blocks: 1 },
      scope: 'sensitivity',
      compensation: 'none',
      calibration: images,
    });
    expect((await run(pruned.model, probe, dims)).every(Number.isFinite)).toBe(true);
    const removed = pruned.selections.flatMap((sel) =>
      [0, 1]
        .filter((h) => !sel.keep.includes(h))
        .map((h) => ({ block: sel.group.block!, head: h })),
    );
    expect(removed).toHaveLength(1);

    // the independent check: every head zeroed in the proj of a copy, its KL by hand
    let best = { kl: Infinity, block: -1, head: -1 };
    for (let block = 0; block < tiny.depth; block++) {
      for (let head = 0; head < tiny.heads; head++) {
        const rows = Array.from({ length: tiny.headDim }, (_, j) => head * tiny.headDim + j);
        const copy = zeroed(model, structure.blocks[block]!.attention.proj.weight, 0, rows);
        let total = 0;
        for (const image of images) {
          const p = await run(model, image.data, image.dims);
          total += klDivergence(p, await run(copy, image.data, image.dims), tiny.classes, 0);
        }
        if (total / images.length < best.kl) best = { kl: total / images.length, block, head };
      }
    }
    expect(removed[0]).toEqual({ block: best.block, head: best.head });
  });
});
