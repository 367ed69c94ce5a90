import { describe, expect, it } from 'vitest';
import { GraphIndex } from '../../src/graph/graph.js';
import { mlpGroup } from '../../src/prune/groups.js';
import {
  lampNormalize,
  MagnitudeImportance,
  VarianceImportance,
  WandaImportance,
} from '../../src/prune/importance.js';
import { cholesky, spdInverse, spdSolve } from '../../src/prune/linalg.js';
import { ReconstructionImportance } from '../../src/prune/reconstruction.js';
import { roundKept, selectInBlocks, selectUnits } from '../../src/prune/selection.js';
import { channelStatistics } from '../../src/prune/statistics.js';
import type { DependencyGroup } from '../../src/prune/types.js';
import { capture } from '../../src/runtime/capture.js';
import { recognizeViT } from '../../src/vit/index.js';
import { noiseInput } from '../fixtures.js';
import { tiny, tinyViT } from '../vit/tiny-models.js';
import { initializer } from './helpers.js';

const model = tinyViT({ qkv: 'fused', norm: 'op', pooling: 'class-token' });
const structure = recognizeViT(model);
const index = new GraphIndex(model);
const dims = [1, tiny.channels, tiny.image, tiny.image];
const size = dims.reduce((a, b) => a * b, 1);
const calibration = Array.from({ length: 16 }, (_, i) => ({
  data: noiseInput(size, 40 + i),
  dims,
}));

/** Σ over rows (axis 0) or columns (axis 1) of |w|ᵖ of an [rows, cols] matrix, by hand. */
function sums(w: Float32Array, rows: number, cols: number, axis: 0 | 1, p: number): number[] {
  const out = new Array<number>(axis === 0 ? rows : cols).fill(0);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) out[axis === 0 ? r : c]! += Math.abs(w[r * cols + c]!) ** p;
  }
  return out;
}

/** Per-channel Σx and Σx² of the fc2 input of block 1, summed here over captured tensors. */
async function handMoments() {
  const value = structure.blocks[1]!.mlp.fc2.input;
  const sum = new Array<number>(tiny.mlp).fill(0);
  const squares = new Array<number>(tiny.mlp).fill(0);
  let rows = 0;
  await capture(model, [value], calibration, (tensors) => {
    const data = tensors.get(value)!.data as Float32Array;
    for (let i = 0; i < data.length; i++) {
      sum[i % tiny.mlp]! += data[i]!;
      squares[i % tiny.mlp]! += data[i]! ** 2;
    }
    rows += data.length / tiny.mlp;
  });
  return { sum, squares, rows };
}

describe('importance criteria', () => {
  const group = mlpGroup(structure.blocks[1]!);
  const fc1 = initializer(model, structure.blocks[1]!.mlp.fc1.weight);
  const fc2 = initializer(model, structure.blocks[1]!.mlp.fc2.weight);

  it('L2 magnitude sums w² of the fc1 column and the fc2 row of each channel', () => {
    const a = sums(fc1, tiny.width, tiny.mlp, 1, 2);
    const b = sums(fc2, tiny.mlp, tiny.width, 0, 2);
    const scores = new MagnitudeImportance(2).score(group, { index });
    scores.forEach((s, c) => expect(s).toBeCloseTo(a[c]! + b[c]!, 5));
  });

  it('L1 magnitude sums |w| the same way', () => {
    const a = sums(fc1, tiny.width, tiny.mlp, 1, 1);
    const b = sums(fc2, tiny.mlp, tiny.width, 0, 1);
    const scores = new MagnitudeImportance(1).score(group, { index });
    scores.forEach((s, c) => expect(s).toBeCloseTo(a[c]! + b[c]!, 5));
  });

  it('activation statistics are the sums of the captured activations', async () => {
    const hand = await handMoments();
    const value = structure.blocks[1]!.mlp.fc2.input;
    const { moments, images } = await channelStatistics(
      model,
      [{ value, gram: true }],
      calibration,
    );
    const m = moments.get(value)!;
    expect(images).toBe(16);
    expect(m.count).toBe(hand.rows);
    hand.sum.forEach((s, c) => expect(m.sum[c]).toBeCloseTo(s, 3));
    hand.squares.forEach((s, c) => expect(m.sumSquares[c]).toBeCloseTo(s, 3));
    // the Gram's diagonal is the sum of squares
    hand.squares.forEach((s, c) => expect(m.gram![c * tiny.mlp + c]).toBeCloseTo(s, 3));
  });

  it('Wanda scores ‖x_c‖₂ · Σ|W2[c, :]| and variance scores var(x_c) · Σ W2[c, :]²', async () => {
    const hand = await handMoments();
    const value = structure.blocks[1]!.mlp.fc2.input;
    const { moments } = await channelStatistics(model, [{ value, gram: false }], calibration);
    const l1 = sums(fc2, tiny.mlp, tiny.width, 0, 1);
    const l2 = sums(fc2, tiny.mlp, tiny.width, 0, 2);
    const wanda = new WandaImportance().score(group, { index, moments });
    const variance = new VarianceImportance().score(group, { index, moments });
    for (let c = 0; c < tiny.mlp; c++) {
      const mean = hand.sum[c]! / hand.rows;
      const v = hand.squares[c]! / hand.rows - mean * mean;
      expect(wanda[c]).toBeCloseTo(Math.sqrt(hand.squares[c]!) * l1[c]!, 3);
      expect(variance[c]).toBeCloseTo(Math.max(0, v) * l2[c]!, 4);
    }
  });

  it('reconstruction removes first the channels that others predict exactly', async () => {
    // channel 5 := channel 3 and channel 9 := 2 · channel 3 in fc1 (ReLU(2u) = 2·ReLU(u))
    const w = fc1.slice();
    const b = initializer(model, structure.blocks[1]!.mlp.fc1.bias!);
    for (let i = 0; i < tiny.width; i++) {
      w[i * tiny.mlp + 5] = w[i * tiny.mlp + 3]!;
      w[i * tiny.mlp + 9] = 2 * w[i * tiny.mlp + 3]!;
    }
    [b[3], b[5], b[9]] = [1, 1, 2];
    const { replaced } = await import('./helpers.js');
    const edited = replaced(
      replaced(model, structure.blocks[1]!.mlp.fc1.weight, w),
      structure.blocks[1]!.mlp.fc1.bias!,
      b,
    );
    const value = structure.blocks[1]!.mlp.fc2.input;
    const { moments } = await channelStatistics(edited, [{ value, gram: true }], calibration);
    const scores = new ReconstructionImportance(1e-6).score(group, {
      index: new GraphIndex(edited),
      moments,
    });
    const redundant = [3, 5, 9].map((c) => scores[c]!).sort((x, y) => x - y);
    const max = Math.max(...scores);
    // two of the three copies cost nothing; the last one standing carries what all three held
    expect(redundant[1]!).toBeLessThan(1e-6 * max);
    expect(redundant[2]!).toBe(max);
  });
});

describe('LAMP normalisation', () => {
  it('divides each score by the sum of the scores at least as large ([1, 2, 3, 4])', () => {
    const out = lampNormalize(Float64Array.from([3, 1, 4, 2]));
    expect(Array.from(out)).toEqual([3 / 7, 1 / 10, 1, 2 / 9]);
  });
});

/** A group of `units` channels with nothing in it, for selection tests. */
function fakeGroup(name: string, block: number, units: number): DependencyGroup {
  return { name, kind: 'mlp', block, units, members: [] };
}

describe('selection', () => {
  it('rounds kept widths to the nearest multiple of 8 within the group', () => {
    expect(roundKept(768 * 0.7, 768, 8)).toBe(536);
    expect(roundKept(3, 768, 8)).toBe(8);
    expect(roundKept(100, 100, 8)).toBe(100);
    expect(roundKept(2.25, 3, 1)).toBe(2);
  });

  it('local scope keeps the highest scores of each group, in order', () => {
    const g = fakeGroup('a', 0, 16);
    const scores = Float64Array.from({ length: 16 }, (_, i) => (i * 7) % 16);
    const [s] = selectUnits([g], [scores], { ratio: 0.5, scope: 'local', roundTo: 8 });
    expect(s!.keep).toEqual([2, 4, 6, 8, 9, 11, 13, 15]);
    expect(s!.keep.every((u) => scores[u]! >= 8)).toBe(true);
  });

  it('global scope removes more from the group whose scores are lower', () => {
    const weak = fakeGroup('weak', 0, 16);
    const strong = fakeGroup('strong', 1, 16);
    const flat = Float64Array.from({ length: 16 }, () => 1);
    const steep = Float64Array.from({ length: 16 }, (_, i) => (i < 4 ? 0.001 : 1));
    const [a, b] = selectUnits([weak, strong], [steep, flat], {
      ratio: 0.125,
      scope: 'global',
      comparable: true,
    });
    expect(a!.keep.length).toBe(12);
    expect(b!.keep.length).toBe(16);
  });

  it('isomorphic scope ranks only groups of the same structure together', () => {
    const small = fakeGroup('small', 0, 8);
    const big = fakeGroup('big', 1, 16);
    const low = Float64Array.from({ length: 8 }, () => 0.001);
    const high = Float64Array.from({ length: 16 }, () => 1);
    const options = { ratio: 0.25, scope: 'isomorphic', comparable: true } as const;
    const [a, b] = selectUnits([small, big], [low, high], options);
    expect([a!.keep.length, b!.keep.length]).toEqual([6, 12]);
    const [c, d] = selectUnits([small, big], [low, high], { ...options, scope: 'global' });
    expect(c!.keep.length).toBeLessThan(6);
    expect(d!.keep.length).toBeGreaterThan(12);
  });

  it('removes a count of units in the blocks whose weakest units score lowest', () => {
    const groups = [0, 1, 2, 3].map((b) => fakeGroup(`b${b}`, b, 3));
    const scores = [
      [5, 5, 5],
      [1, 9, 9],
      [5, 5, 5],
      [2, 9, 9],
    ].map((s) => Float64Array.from(s));
    const chosen = selectInBlocks(groups, scores, 1, 2).map((s) => s.keep);
    expect(chosen).toEqual([
      [0, 1, 2],
      [1, 2],
      [0, 1, 2],
      [1, 2],
    ]);
    expect(selectInBlocks(groups, scores, 1, [0]).map((s) => s.keep.length)).toEqual([2, 3, 3, 3]);
  });
});

describe('linear algebra', () => {
  it('inverts [[4, 2], [2, 3]] to [[3/8, −1/4], [−1/4, 1/2]]', () => {
    const inv = spdInverse(Float64Array.from([4, 2, 2, 3]), 2)!;
    [3 / 8, -1 / 4, -1 / 4, 1 / 2].forEach((v, i) => expect(inv[i]).toBeCloseTo(v, 14));
  });

  it('solves a·x = b for a positive-definite a, and refuses an indefinite one', () => {
    const a = Float64Array.from([4, 1, 0, 1, 3, 1, 0, 1, 2]);
    const b = Float64Array.from([1, 0, 2, 1, 0, 3]);
    const x = spdSolve(a, 3, b, 2)!;
    for (let i = 0; i < 3; i++) {
      for (let j = 0; j < 2; j++) {
        let s = 0;
        for (let k = 0; k < 3; k++) s += a[i * 3 + k]! * x[k * 2 + j]!;
        expect(s).toBeCloseTo(b[i * 2 + j]!, 12);
      }
    }
    expect(cholesky(Float64Array.from([1, 2, 2, 1]), 2)).toBeUndefined();
  });
});
