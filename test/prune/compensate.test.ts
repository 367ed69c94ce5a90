import { describe, expect, it } from 'vitest';
import { GraphIndex } from '../../src/graph/graph.js';
import { compensationUpdates, fitKept, fitTarget, toRows } from '../../src/prune/compensate.js';
import { mlpGroup } from '../../src/prune/groups.js';
import { ChannelMoments, channelStatistics } from '../../src/prune/statistics.js';
import { applyPruning } from '../../src/prune/surgery.js';
import type { CompensationMethod } from '../../src/prune/types.js';
import { recognizeViT } from '../../src/vit/index.js';
import { noiseInput } from '../fixtures.js';
import { tiny, tinyViT } from '../vit/tiny-models.js';
import { initializer, maxAbsDiff, replaced, run } from './helpers.js';

const dims = [1, tiny.channels, tiny.image, tiny.image];
const size = dims.reduce((a, b) => a * b, 1);
const calibration = Array.from({ length: 48 }, (_, i) => ({
  data: noiseInput(size, 100 + i),
  dims,
}));

/**
 * The tiny ViT with block 0's fc1 (ReLU MLP, [width, mlp] weight) rewritten so that hidden
 * channel 5 copies channel 2 (mostly active), channel 9 is twice channel 2
 * (ReLU(2u) = 2·ReLU(u)), and channel 12 is the constant ReLU(0.7) = 0.7.
 */
function redundantViT() {
  let model = tinyViT({ qkv: 'fused', norm: 'op', pooling: 'class-token' });
  const fc1 = recognizeViT(model).blocks[0]!.mlp.fc1;
  const w = initializer(model, fc1.weight);
  const b = initializer(model, fc1.bias!);
  for (let i = 0; i < tiny.width; i++) {
    w[i * tiny.mlp + 5] = w[i * tiny.mlp + 2]!;
    w[i * tiny.mlp + 9] = 2 * w[i * tiny.mlp + 2]!;
    w[i * tiny.mlp + 12] = 0;
  }
  // a positive bias keeps channel 2 active on most tokens
  b[2] = 1;
  b[5] = 1;
  b[9] = 2;
  b[12] = 0.7;
  model = replaced(replaced(model, fc1.weight, w), fc1.bias!, b);
  return model;
}

async function pruneBlock0(removed: number[], method: CompensationMethod) {
  const model = redundantViT();
  const structure = recognizeViT(model);
  const group = mlpGroup(structure.blocks[0]!);
  const keep = Array.from({ length: tiny.mlp }, (_, c) => c).filter((c) => !removed.includes(c));
  const stats = await channelStatistics(
    model,
    [{ value: structure.blocks[0]!.mlp.fc2.input, gram: true }],
    calibration,
  );
  const selection = { group, keep };
  const updates = compensationUpdates(new GraphIndex(model), [selection], stats.moments, {
    method,
    // the Gram is summed in float32 by onnxruntime: a smaller ridge would fit its rounding
    alpha: 1e-6,
  });
  const pruned = applyPruning(model, structure, [selection], updates).model;
  const input = noiseInput(size, 7);
  return { before: await run(model, input, dims), after: await run(pruned, input, dims) };
}

describe('compensation of removed MLP channels', () => {
  it('ridge reconstructs exactly channels that are linear in kept ones', async () => {
    const { before, after } = await pruneBlock0([5, 9], 'ridge');
    expect(maxAbsDiff(before, after)).toBeLessThan(1e-4);
  });

  it('without compensation, removing those channels changes the outputs', async () => {
    const { before, after } = await pruneBlock0([5, 9], 'none');
    expect(maxAbsDiff(before, after)).toBeGreaterThan(1e-2);
  });

  it('mean folding is exact for a channel that is constant', async () => {
    const { before, after } = await pruneBlock0([12], 'mean');
    expect(maxAbsDiff(before, after)).toBeLessThan(1e-5);
  });
});

/** Moments of explicit rows (a hand calculation of what the probe graph sums). */
function momentsOf(rows: number[][]): ChannelMoments {
  const n = rows[0]!.length;
  const m = new ChannelMoments(n, true);
  for (const row of rows) {
    m.count++;
    row.forEach((x, i) => {
      m.sum[i] = m.sum[i]! + x;
      m.sumSquares[i] = m.sumSquares[i]! + x * x;
      row.forEach((y, j) => (m.gram![i * n + j] = m.gram![i * n + j]! + x * y));
    });
  }
  return m;
}

describe('the ridge fit', () => {
  // x3 = 2·x0 − x1 + 0.5: an affine combination, which needs the fit's intercept
  const rows = Array.from({ length: 40 }, (_, r) => {
    const x0 = Math.sin(r * 1.3);
    const x1 = Math.cos(r * 0.7);
    const x2 = Math.sin(r * 0.31) * 2;
    return [x0, x1, x2, 2 * x0 - x1 + 0.5];
  });
  const layer = {
    inFeatures: 4,
    outFeatures: 2,
    weightLayout: 'out-in' as const,
  };
  // [out, in] layout, as Gemm with transB stores it
  const weight = Float32Array.from([0.5, -1, 0.25, 2, 1.5, 0.5, -0.75, -1]);
  const bias = Float32Array.from([0.1, -0.2]);

  it('keeps every output when an affine combination of kept channels is removed', () => {
    const w = toRows(layer as Parameters<typeof toRows>[0], weight);
    const fit = fitKept(w, bias, [0, 1, 2], momentsOf(rows), { method: 'ridge', alpha: 1e-12 });
    for (const x of rows) {
      for (let o = 0; o < 2; o++) {
        let want = bias[o]!;
        for (let c = 0; c < 4; c++) want += x[c]! * weight[o * 4 + c]!;
        let got = fit.bias[o]!;
        for (let i = 0; i < 3; i++) got += x[i]! * fit.weight[i * 2 + o]!;
        expect(got).toBeCloseTo(want, 6);
      }
    }
  });

  it('with mean folding, keeps the mean output', () => {
    const w = toRows(layer as Parameters<typeof toRows>[0], weight);
    const fit = fitKept(w, bias, [0, 1, 2], momentsOf(rows), { method: 'mean' });
    const mean = [0, 1, 2, 3].map((c) => rows.reduce((s, x) => s + x[c]!, 0) / rows.length);
    for (let o = 0; o < 2; o++) {
      let want = bias[o]!;
      for (let c = 0; c < 4; c++) want += mean[c]! * weight[o * 4 + c]!;
      let got = fit.bias[o]!;
      for (let i = 0; i < 3; i++) got += mean[i]! * fit.weight[i * 2 + o]!;
      expect(got).toBeCloseTo(want, 9);
    }
  });
});

/** Moments of explicit rows with a target per row. */
function momentsWithTarget(rows: number[][], targets: number[][]): ChannelMoments {
  const n = rows[0]!.length;
  const d = targets[0]!.length;
  const m = momentsOf(rows);
  const withTarget = new ChannelMoments(n, true, d);
  withTarget.count = m.count;
  withTarget.sum.set(m.sum);
  withTarget.sumSquares.set(m.sumSquares);
  withTarget.gram!.set(m.gram!);
  rows.forEach((x, r) => {
    const t = targets[r]!;
    t.forEach((v, o) => {
      withTarget.target!.sum[o] = withTarget.target!.sum[o]! + v;
      x.forEach(
        (xi, i) =>
          (withTarget.target!.cross[i * d + o] = withTarget.target!.cross[i * d + o]! + xi * v),
      );
    });
  });
  return withTarget;
}

describe('the ridge fit to a target', () => {
  const rows = Array.from({ length: 60 }, (_, r) => [
    Math.sin(r * 1.3),
    Math.cos(r * 0.7),
    Math.sin(r * 0.31) * 2,
    Math.cos(r * 2.1) * 0.5,
  ]);
  // a target the kept channels 0..2 give exactly: t = [x0 − 2·x2 + 1, 0.5·x1 + x2 − 3]
  const targets = rows.map((x) => [x[0]! - 2 * x[2]! + 1, 0.5 * x[1]! + x[2]! - 3]);
  const layer = { inFeatures: 4, outFeatures: 2, weightLayout: 'in-out' as const };
  const weight = toRows(layer as Parameters<typeof toRows>[0], new Float32Array(8).fill(0.3));

  it('reproduces a target that is affine in the kept channels', () => {
    const fit = fitTarget(weight, [0, 1, 2], momentsWithTarget(rows, targets), 1e-12);
    rows.forEach((x, r) => {
      for (let o = 0; o < 2; o++) {
        let got = fit.bias[o]!;
        for (let i = 0; i < 3; i++) got += x[i]! * fit.weight[i * 2 + o]!;
        expect(got).toBeCloseTo(targets[r]![o]!, 6);
      }
    });
  });

  it('with a strong ridge stays at the current weights', () => {
    const fit = fitTarget(weight, [0, 1, 2], momentsWithTarget(rows, targets), 1e9);
    for (const w of fit.weight) expect(w).toBeCloseTo(0.3, 6);
  });

  it('refuses statistics collected for another layer shape', () => {
    expect(() => fitTarget(weight, [0, 1], momentsWithTarget(rows, rows), 1e-3)).toThrow(
      /fitTarget/,
    );
  });
});
