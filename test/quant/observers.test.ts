import { describe, expect, it } from 'vitest';
import { CalibrationError } from '../../src/errors.js';
import {
  createObserver,
  gridParams,
  MinMaxObserver,
  MseObserver,
  OmseObserver,
  PercentileObserver,
  weightParams,
  type QuantGrid,
} from '../../src/quant/observers.js';
import { TensorStatistics } from '../../src/quant/statistics.js';
import type { TensorRange } from '../../src/quant/types.js';
import { fakeQuantize, intRange } from '../../src/quant/uniform.js';
import { noiseInput } from '../fixtures.js';

function statsOf(values: Float32Array, sampleSize = 16_384): TensorStatistics {
  const stats = new TensorStatistics({ sampleSize });
  stats.update(values, [values.length]);
  return stats;
}

/** Σ(x − Q(x))² over the raw values, computed with the quantizer checked against onnxruntime. */
function exactError(values: Float32Array, range: TensorRange, grid: QuantGrid): number {
  const q = fakeQuantize(values, [gridParams(range, grid)], intRange(grid.bits, grid.signed));
  let e = 0;
  for (let i = 0; i < values.length; i++) e += (values[i]! - q[i]!) ** 2;
  return e;
}

const uint4: QuantGrid = { bits: 4, signed: false, symmetric: false };
const uint8: QuantGrid = { bits: 8, signed: false, symmetric: false };

/** 100,000 values spread evenly over [−1, 1], and one outlier at 20. */
function bulkWithOutlier(): Float32Array {
  const values = Float32Array.from({ length: 100_000 }, (_, i) => (i / 99_999) * 2 - 1);
  return Float32Array.of(...values, 20);
}

describe('MinMaxObserver', () => {
  it('takes the observed range of an activation over all batches', () => {
    const stats = new TensorStatistics();
    stats.update(Float32Array.of(-2, 0.5), [2]);
    stats.update(Float32Array.of(3, 1), [2]);
    expect(new MinMaxObserver().activationRange(stats)).toEqual({ min: -2, max: 3 });
  });

  it('bounds each output channel of a weight by its largest magnitude', () => {
    // [in = 2, out = 3] (MatMul layout): output channels are columns
    const w = Float32Array.of(1, -4, 0.5, -2, 3, 0.25);
    const bounds = new MinMaxObserver().weightBounds(w, [2, 3], 1);
    expect(Array.from(bounds)).toEqual([2, 4, 0.5]);
    const params = weightParams(w, [2, 3], 1, 8, new MinMaxObserver());
    expect(params.map((p) => p.scale)).toEqual([2 / 127, 4 / 127, 0.5 / 127]);
    expect(params.every((p) => p.zeroPoint === 0)).toBe(true);
  });

  it('refuses statistics that saw no finite value, with a CalibrationError', () => {
    expect(() => new MinMaxObserver().activationRange(new TensorStatistics())).toThrow(
      CalibrationError,
    );
  });
});

describe('PercentileObserver', () => {
  it('clips an evenly spread [0, 1] at its 1st and 99th percentiles', () => {
    const stats = statsOf(Float32Array.from({ length: 100_001 }, (_, i) => i / 100_000));
    const range = new PercentileObserver(99).activationRange(stats, uint8);
    expect(range.min).toBeCloseTo(0.01, 3);
    expect(range.max).toBeCloseTo(0.99, 3);
  });

  it('clips |x| symmetrically on a symmetric grid', () => {
    const stats = statsOf(Float32Array.from({ length: 200_001 }, (_, i) => i / 100_000 - 1));
    const grid = { bits: 8, signed: true, symmetric: true };
    const range = new PercentileObserver(90).activationRange(stats, grid);
    expect(range.max).toBeCloseTo(0.9, 3);
    expect(range.min).toBe(-range.max);
  });

  it('takes the percentile of the magnitudes of each weight channel, interpolating', () => {
    // channel 0 holds 1 … 100: position 0.99 · 99 = 98.01 between 99 and 100 gives 99.01
    const w = Float32Array.from(
      { length: 200 },
      (_, i) => (i % 2 ? -1 : 1) * (Math.floor(i / 2) + 1),
    );
    const bounds = new PercentileObserver(99).weightBounds(w, [100, 2], 1);
    expect(bounds[0]).toBeCloseTo(99.01, 10);
  });
});

describe('MseObserver', () => {
  it('clips below a single large outlier at 4 bits, with less error than min-max', () => {
    const values = bulkWithOutlier();
    const stats = statsOf(values);
    const mse = new MseObserver().activationRange(stats, uint4);
    const minmax = new MinMaxObserver().activationRange(stats);
    expect(minmax.max).toBe(20);
    expect(mse.max).toBeLessThan(1.5);
    expect(mse.min).toBeLessThan(-0.8);
    expect(exactError(values, mse, uint4)).toBeLessThan(exactError(values, minmax, uint4) / 10);
  });

  it('keeps the outlier at 8 bits, where clipping it costs more than the coarser step', () => {
    // unclipped step 21/255: 1e5 · step²/12 ≈ 56; clipping at 1 costs 19² = 361 for the outlier
    const range = new MseObserver().activationRange(statsOf(bulkWithOutlier()), uint8);
    expect(range.max).toBeGreaterThan(15);
  });

  it('clips a weight channel with one outlier below its largest magnitude at 4 bits', () => {
    const column = Float32Array.of(...noiseInput(255, 9).map((v) => v * 0.1), 1);
    const bound = new MseObserver().weightBounds(column, [256, 1], 1, 4)[0]!;
    expect(bound).toBeLessThan(1);
    const grid = { bits: 4, signed: true, symmetric: true };
    const clipped = exactError(column, { min: -bound, max: bound }, grid);
    expect(clipped).toBeLessThan(exactError(column, { min: -1, max: 1 }, grid));
  });
});

describe('OmseObserver', () => {
  it('picks the FQ-ViT candidate range with the least exact error on the sample', () => {
    const values = Float32Array.from(noiseInput(10_000, 4), (v) => v ** 3 * 4);
    const stats = statsOf(values, 16_384); // the sample holds every value here
    const chosen = new OmseObserver().activationRange(stats, uint4);
    let best = Infinity;
    for (let i = 0; i < 90; i++) {
      const r = 1 - 0.01 * i;
      const e = exactError(values, { min: stats.minMax.min * r, max: stats.minMax.max * r }, uint4);
      best = Math.min(best, e);
    }
    expect(exactError(values, chosen, uint4)).toBe(best);
    expect(chosen.max).toBeLessThan(stats.minMax.max);
  });
});

describe('createObserver', () => {
  it('makes each kind, with the percentile option', () => {
    for (const kind of ['minmax', 'percentile', 'mse', 'omse'] as const) {
      expect(createObserver(kind).kind).toBe(kind);
    }
    expect(
      (createObserver('percentile', { percentile: 99.9 }) as PercentileObserver).percentile,
    ).toBe(99.9);
    expect(() => createObserver('percentile', { percentile: 101 })).toThrow(RangeError);
  });
});
