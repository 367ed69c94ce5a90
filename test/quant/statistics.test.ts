import { describe, expect, it } from 'vitest';
import {
  ChannelStatistics,
  Histogram,
  ReservoirSample,
  RunningMinMax,
  TensorStatistics,
} from '../../src/quant/statistics.js';
import { noiseInput } from '../fixtures.js';

function sum(values: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < values.length; i++) s += values[i]!;
  return s;
}

describe('RunningMinMax', () => {
  it('tracks the extremes over batches and counts non-finite values apart', () => {
    const m = new RunningMinMax();
    m.update(Float32Array.of(3, 2, 1));
    m.update(Float32Array.of(-4, NaN, Infinity, 5));
    expect([m.min, m.max, m.count, m.nonFinite]).toEqual([-4, 5, 5, 2]);
  });
});

describe('Histogram', () => {
  it('conserves every count when the range grows in both directions, batch after batch', () => {
    const h = new Histogram(64);
    let added = 0;
    for (let batch = 0; batch < 12; batch++) {
      // each batch reaches further out, alternating sides, so the range grows again and again
      const spread = 1 + batch * 3;
      const values = noiseInput(1000, batch + 1).map((v) => v * spread + (batch % 2 ? 5 : -5));
      h.update(values);
      added += values.length;
      expect(sum(h.counts)).toBe(added);
      expect(h.lower).toBeLessThanOrEqual(h.min);
      expect(h.upper).toBeGreaterThanOrEqual(h.max);
    }
    expect(h.total).toBe(added);
  });

  it('keeps each old bin whole when it re-bins: the counts of a bin move together', () => {
    const h = new Histogram(4);
    h.update(Float32Array.of(0, 1, 1, 2, 3, 3, 3, 4)); // bins of width 1 over [0, 4]
    expect(Array.from(h.counts)).toEqual([1, 2, 1, 4]);
    h.update(Float32Array.of(7.5)); // width doubles to 2 over [0, 8]
    expect([h.lower, h.width]).toEqual([0, 2]);
    expect(Array.from(h.counts)).toEqual([3, 5, 0, 1]);
    h.update(Float32Array.of(-1)); // the left edge moves down by one old bin: [−2, 14]
    expect([h.lower, h.width]).toEqual([-2, 4]);
    expect(Array.from(h.counts)).toEqual([4, 5, 1, 0]);
  });

  it('holds a constant tensor in one bin and rebuilds around it when spread arrives', () => {
    const h = new Histogram(8);
    h.update(new Float32Array(10).fill(2));
    expect([h.width, h.quantile(0.5)]).toEqual([0, 2]);
    h.update(Float32Array.of(0, 8)); // 8 bins of width 1 over [0, 8]: the tens go to bin 2
    expect(Array.from(h.counts)).toEqual([1, 0, 10, 0, 0, 0, 0, 1]);
  });

  it('gives the quantiles of a uniform distribution within a bin width', () => {
    const h = new Histogram(2048);
    const values = Float32Array.from({ length: 100_001 }, (_, i) => i / 100_000); // [0, 1]
    h.update(values);
    for (const p of [0.01, 0.25, 0.5, 0.9, 0.9999]) expect(h.quantile(p)).toBeCloseTo(p, 3);
    expect(h.quantile(1)).toBe(1);
    expect(h.cdf(0.3)).toBeCloseTo(0.3, 3);
  });

  it('gives the quantile of |x| on a symmetric distribution', () => {
    const h = new Histogram(2048);
    h.update(Float32Array.from({ length: 200_001 }, (_, i) => (i - 100_000) / 100_000));
    expect(h.absQuantile(0.5)).toBeCloseTo(0.5, 3);
    expect(h.absQuantile(0.99)).toBeCloseTo(0.99, 3);
  });
});

describe('ChannelStatistics', () => {
  it('equal a direct two-pass computation over all batches, along the last axis', () => {
    const stats = new ChannelStatistics(-1);
    const batches = [1, 2, 3].map((seed) => noiseInput(2 * 5 * 3, seed).map((v) => v * seed + 10));
    for (const b of batches) stats.update(b, [2, 5, 3]);
    const all = batches.flatMap((b) => Array.from(b));
    for (let c = 0; c < 3; c++) {
      const values = all.filter((_, i) => i % 3 === c);
      const mean = sum(values) / values.length;
      const variance = sum(values.map((v) => (v - mean) ** 2)) / values.length;
      expect(stats.mean[c]).toBeCloseTo(mean, 10);
      expect(stats.variance[c]).toBeCloseTo(variance, 10);
      expect(stats.min[c]).toBe(Math.min(...values));
      expect(stats.max[c]).toBe(Math.max(...values));
    }
    expect(stats.count).toBe(30);
  });

  it('work along a middle axis', () => {
    const stats = new ChannelStatistics(1);
    // [2, 2, 2]: channel 0 holds 1, 2, 5, 6 and channel 1 holds 3, 4, 7, 8
    stats.update(Float32Array.of(1, 2, 3, 4, 5, 6, 7, 8), [2, 2, 2]);
    expect(Array.from(stats.mean)).toEqual([3.5, 5.5]);
    expect(Array.from(stats.variance)).toEqual([4.25, 4.25]);
  });
});

describe('ReservoirSample', () => {
  it('keeps a fixed-size sample whose mean is near the stream mean, the same for the same seed', () => {
    const a = new ReservoirSample(4096, 7);
    const b = new ReservoirSample(4096, 7);
    for (let batch = 0; batch < 20; batch++) {
      // the stream drifts from [0, 1) to [19, 20): a sample of only the start would show it
      const values = Float32Array.from(noiseInput(10_000, batch + 1), (v) => (v + 1) / 2 + batch);
      a.update(values);
      b.update(values);
    }
    expect(a.sample.length).toBe(4096);
    expect(a.seen).toBe(200_000);
    expect(sum(a.sample) / a.sample.length).toBeCloseTo(10, 0);
    expect(Array.from(b.sample)).toEqual(Array.from(a.sample));
  });
});

describe('TensorStatistics', () => {
  it('use memory that does not grow with the number of batches', () => {
    const stats = new TensorStatistics({ bins: 256, sampleSize: 512, channelAxis: -1 });
    for (let batch = 0; batch < 50; batch++) stats.update(noiseInput(4 * 8, batch), [4, 8]);
    expect(stats.histogram.counts.length).toBe(256);
    expect(stats.sample!.sample.length).toBe(512);
    expect(stats.channels!.mean.length).toBe(8);
    expect(stats.minMax.count).toBe(50 * 32);
  });
});
