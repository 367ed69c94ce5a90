/**
 * Calibration statistics, accumulated one batch at a time. Every accumulator holds a fixed
 * amount of state (a few numbers, a fixed number of bins, one entry per channel, a fixed-size
 * sample), so memory does not grow with the number of calibration images.
 *
 * Non-finite values (NaN, ±Inf) are counted and otherwise ignored; the caller decides whether
 * they are an error (calibration turns them into a CalibrationError naming the tensor).
 */

import { mulberry32 } from '../data/sample.js';
import { splitAxis } from './percentile-mse.js';

/** Running minimum and maximum of a tensor over every batch seen. */
export class RunningMinMax {
  min = Infinity;
  max = -Infinity;
  /** Finite values seen. */
  count = 0;
  /** NaN and ±Inf values seen (and skipped). */
  nonFinite = 0;

  update(data: Float32Array): void {
    // the hot loop only skips NaN; ±Inf, which would end up in min or max, are rare enough to
    // be handled by a second pass
    let min = Infinity;
    let max = -Infinity;
    let nan = 0;
    for (let i = 0; i < data.length; i++) {
      const v = data[i]!;
      if (v !== v) {
        nan++;
        continue;
      }
      if (v < min) min = v;
      if (v > max) max = v;
    }
    let bad = nan;
    if (min === -Infinity || max === Infinity) ({ min, max, bad } = finiteExtremes(data));
    if (min < this.min) this.min = min;
    if (max > this.max) this.max = max;
    this.nonFinite += bad;
    this.count += data.length - bad;
  }
}

function finiteExtremes(data: Float32Array) {
  let min = Infinity;
  let max = -Infinity;
  let bad = 0;
  for (let i = 0; i < data.length; i++) {
    const v = data[i]!;
    if (v - v !== 0) bad++;
    else {
      if (v < min) min = v;
      if (v > max) max = v;
    }
  }
  return { min, max, bad };
}

/**
 * A histogram with a fixed number of equal-width bins whose range grows with the data.
 *
 * Re-binning scheme. The first batch sets the range to its [min, max]. When a later batch falls
 * outside, the bin width is multiplied by the smallest power of two 2^k, and the left edge moved
 * down by a whole number j of old bins, such that the new range covers the old and the new data.
 * Every new bin edge then lies on an old bin edge, so old bin i falls entirely inside new bin
 * ⌊(i + j) / 2^k⌋ and its count moves there unsplit: counts are conserved exactly and no
 * interpolation error accumulates, however many times the range grows. The price is that the
 * width may end up to about twice the tightest one. (onnxruntime's HistogramCalibrater instead
 * appends bins of the old width, so its bin count grows with the range; PyTorch's
 * HistogramObserver up-samples and re-interpolates, which spreads counts within bins.)
 *
 * While every value seen is equal (a constant tensor), the width is 0 and all counts sit in bin
 * 0 at `lower`; the first batch with spread rebuilds the range around it.
 */
export class Histogram {
  readonly bins: number;
  readonly counts: Float64Array;
  /** Left edge of bin 0. */
  lower = 0;
  /** Bin width; 0 while the values seen are all equal. */
  width = 0;
  /** Finite values counted. */
  total = 0;
  nonFinite = 0;
  /** Exact extremes of the values counted (the bins may reach further). */
  min = Infinity;
  max = -Infinity;

  constructor(bins = 2048) {
    if (!Number.isInteger(bins) || bins < 2) {
      throw new RangeError(`histogram bin count must be an integer ≥ 2, got ${bins}`);
    }
    this.bins = bins;
    this.counts = new Float64Array(bins);
  }

  /** Right edge of the last bin. */
  get upper(): number {
    return this.lower + this.bins * this.width;
  }

  /** Centre of bin `i`. */
  centre(i: number): number {
    return this.lower + (i + 0.5) * this.width;
  }

  /** Adds a batch of values; `batch` may pass its min/max when the caller already has them. */
  update(data: Float32Array, batch?: RunningMinMax): void {
    const extremes = batch ?? new RunningMinMax();
    if (!batch) extremes.update(data);
    this.nonFinite += extremes.nonFinite;
    if (extremes.count === 0) return;
    this.cover(extremes.min, extremes.max);
    this.add(data, extremes.nonFinite === 0);
    this.total += extremes.count;
    if (extremes.min < this.min) this.min = extremes.min;
    if (extremes.max > this.max) this.max = extremes.max;
  }

  private add(data: Float32Array, clean: boolean): void {
    const { counts, lower, width } = this;
    const last = this.bins - 1;
    if (width === 0) {
      for (let i = 0; i < data.length; i++) if (data[i]! - data[i]! === 0) counts[0]! += 1;
      return;
    }
    // a value exactly on an edge may land in the bin beside it (multiplying by the inverse
    // width is not exact division); no observer can tell at 2048 bins
    const inverse = 1 / width;
    if (clean) {
      // every value is ≥ lower here, so truncation is floor
      for (let i = 0; i < data.length; i++) {
        const b = ((data[i]! - lower) * inverse) | 0;
        counts[b > last ? last : b]! += 1;
      }
      return;
    }
    for (let i = 0; i < data.length; i++) {
      const v = data[i]!;
      if (v - v !== 0) continue;
      const b = ((v - lower) * inverse) | 0;
      counts[b > last ? last : b]! += 1;
    }
  }

  /** Grows the range (see the class comment) so that [lo, hi] is inside it. */
  private cover(lo: number, hi: number): void {
    if (this.total === 0) {
      this.lower = lo;
      this.width = (hi - lo) / this.bins;
      return;
    }
    if (this.width === 0) {
      if (lo === this.lower && hi === this.lower) return;
      this.rebuildFromConstant(Math.min(lo, this.lower), Math.max(hi, this.lower));
      return;
    }
    if (lo >= this.lower && hi <= this.upper) return;
    const w = this.width;
    const j = Math.max(0, Math.ceil((this.lower - lo) / w));
    const newLower = this.lower - j * w;
    const top = Math.max(hi, this.max);
    let k = 1;
    while (newLower + this.bins * k * w < top) k *= 2;
    const moved = new Float64Array(this.bins);
    for (let i = 0; i < this.bins; i++) {
      const c = this.counts[i]!;
      if (c !== 0) moved[Math.min(this.bins - 1, Math.floor((i + j) / k))]! += c;
    }
    this.counts.set(moved);
    this.lower = newLower;
    this.width = w * k;
  }

  private rebuildFromConstant(lo: number, hi: number): void {
    const value = this.lower;
    const count = this.counts[0]!;
    this.counts.fill(0);
    this.lower = lo;
    this.width = (hi - lo) / this.bins;
    const b = Math.floor((value - lo) / this.width);
    this.counts[Math.min(this.bins - 1, Math.max(0, b))] = count;
  }

  /**
   * The value below which a fraction `p` of the counts lie, interpolating linearly inside a bin
   * (values are assumed uniform within a bin) and clamped to the exact [min, max].
   */
  quantile(p: number): number {
    if (!(p >= 0 && p <= 1)) throw new RangeError(`quantile must be in [0, 1], got ${p}`);
    if (this.total === 0) return NaN;
    if (this.width === 0) return this.lower;
    const target = p * this.total;
    let below = 0;
    for (let i = 0; i < this.bins; i++) {
      const c = this.counts[i]!;
      if (c > 0 && below + c >= target) {
        const value = this.lower + (i + (target - below) / c) * this.width;
        return Math.min(this.max, Math.max(this.min, value));
      }
      below += c;
    }
    return this.max;
  }

  /** Fraction of the counts at or below `x`, interpolating linearly inside a bin. */
  cdf(x: number): number {
    if (this.total === 0) return NaN;
    if (x < this.min) return 0;
    if (x >= this.max) return 1;
    if (this.width === 0) return x >= this.lower ? 1 : 0;
    const position = (x - this.lower) / this.width;
    const bin = Math.min(this.bins - 1, Math.floor(position));
    let below = 0;
    for (let i = 0; i < bin; i++) below += this.counts[i]!;
    return (below + (position - bin) * this.counts[bin]!) / this.total;
  }

  /** The value below which a fraction `p` of the magnitudes |x| lie (bisection on the cdf). */
  absQuantile(p: number): number {
    if (!(p >= 0 && p <= 1)) throw new RangeError(`quantile must be in [0, 1], got ${p}`);
    const bound = Math.max(Math.abs(this.min), Math.abs(this.max));
    if (this.total === 0) return NaN;
    let lo = 0;
    let hi = bound;
    for (let step = 0; step < 60; step++) {
      const mid = (lo + hi) / 2;
      const inside = this.cdf(mid) - (-mid > this.min ? this.cdf(-mid) : 0);
      if (inside >= p) hi = mid;
      else lo = mid;
    }
    return hi;
  }
}

/**
 * Per-channel minimum, maximum, mean and (population) variance along one axis of a tensor, e.g.
 * the last axis of [N, T, C] tokens. Each batch's mean and sum of squared deviations are
 * computed in float64 and merged with Chan et al.'s pairwise formula, which stays accurate
 * where the naive Σx² − (Σx)²/n loses everything to cancellation.
 */
export class ChannelStatistics {
  readonly axis: number;
  channels = 0;
  /** Values seen per channel. */
  count = 0;
  min = new Float64Array(0);
  max = new Float64Array(0);
  mean = new Float64Array(0);
  /** Sum of squared deviations from the mean (variance · count). */
  private m2 = new Float64Array(0);

  constructor(axis = -1) {
    this.axis = axis;
  }

  get variance(): Float64Array {
    const out = new Float64Array(this.channels);
    for (let c = 0; c < this.channels; c++) out[c] = this.count > 0 ? this.m2[c]! / this.count : 0;
    return out;
  }

  update(data: Float32Array, dims: readonly number[]): void {
    const { outer, channels, inner } = splitAxis(dims, this.axis, data.length);
    this.ensure(channels);
    const n = outer * inner;
    if (n === 0) return;
    const batchMean = new Float64Array(channels);
    const batchM2 = new Float64Array(channels);
    this.firstPass(data, outer, channels, inner, batchMean);
    for (let c = 0; c < channels; c++) batchMean[c]! /= n;
    this.secondPass(data, outer, channels, inner, batchMean, batchM2);
    const total = this.count + n;
    for (let c = 0; c < channels; c++) {
      const delta = batchMean[c]! - this.mean[c]!;
      this.mean[c]! += (delta * n) / total;
      this.m2[c]! += batchM2[c]! + (delta * delta * this.count * n) / total;
    }
    this.count = total;
  }

  private ensure(channels: number): void {
    if (this.channels === channels) return;
    if (this.count > 0) {
      throw new RangeError(`channel count changed from ${this.channels} to ${channels}`);
    }
    this.channels = channels;
    this.min = new Float64Array(channels).fill(Infinity);
    this.max = new Float64Array(channels).fill(-Infinity);
    this.mean = new Float64Array(channels);
    this.m2 = new Float64Array(channels);
  }

  private firstPass(
    data: Float32Array,
    outer: number,
    channels: number,
    inner: number,
    sum: Float64Array,
  ): void {
    const { min, max } = this;
    let i = 0;
    for (let o = 0; o < outer; o++) {
      for (let c = 0; c < channels; c++) {
        let s = 0;
        let lo = min[c]!;
        let hi = max[c]!;
        for (let k = 0; k < inner; k++, i++) {
          const v = data[i]!;
          s += v;
          if (v < lo) lo = v;
          if (v > hi) hi = v;
        }
        sum[c]! += s;
        min[c] = lo;
        max[c] = hi;
      }
    }
  }

  private secondPass(
    data: Float32Array,
    outer: number,
    channels: number,
    inner: number,
    mean: Float64Array,
    m2: Float64Array,
  ): void {
    let i = 0;
    for (let o = 0; o < outer; o++) {
      for (let c = 0; c < channels; c++) {
        const mu = mean[c]!;
        let s = 0;
        for (let k = 0; k < inner; k++, i++) {
          const d = data[i]! - mu;
          s += d * d;
        }
        m2[c]! += s;
      }
    }
  }
}

/**
 * A uniform random sample of fixed size from a stream of values (reservoir sampling with
 * Li's "Algorithm L", which draws O(k·log(n/k)) random numbers instead of one per value).
 * Seeded, so the same batches give the same sample.
 */
export class ReservoirSample {
  readonly capacity: number;
  readonly values: Float32Array;
  /** Values offered so far (positions in the stream). */
  seen = 0;
  /** Slots filled (all of them once `capacity` finite values were offered). */
  private filled = 0;
  private random: () => number;
  private w = 0;
  /** Stream position of the next value to take, once the reservoir is full. */
  private next = 0;

  constructor(capacity = 16_384, seed = 0x5eed) {
    if (!Number.isInteger(capacity) || capacity < 1) {
      throw new RangeError(`reservoir capacity must be a positive integer, got ${capacity}`);
    }
    this.capacity = capacity;
    this.values = new Float32Array(capacity);
    this.random = mulberry32(seed);
  }

  /** The values sampled so far (all the finite ones while fewer than `capacity` were offered). */
  get sample(): Float32Array {
    return this.values.subarray(0, this.filled);
  }

  /**
   * Offers a batch. Only the positions Algorithm L picks are read once the reservoir is full; a
   * non-finite value picked is not stored (calibration rejects such tensors anyway).
   */
  update(data: Float32Array): void {
    let i = 0;
    while (this.filled < this.capacity && i < data.length) {
      const v = data[i++]!;
      if (v - v === 0) this.values[this.filled++] = v;
      if (this.filled === this.capacity) {
        this.w = Math.exp(Math.log(this.uniform()) / this.capacity);
        this.next = this.seen + i + this.skip();
      }
    }
    const start = this.seen + i;
    const end = this.seen + data.length;
    while (this.filled === this.capacity && this.next < end) {
      const v = data[i + (this.next - start)]!;
      if (v - v === 0) this.values[Math.floor(this.uniform() * this.capacity)] = v;
      this.w *= Math.exp(Math.log(this.uniform()) / this.capacity);
      this.next += 1 + this.skip();
    }
    this.seen = end;
  }

  private skip(): number {
    return Math.floor(Math.log(this.uniform()) / Math.log(1 - this.w));
  }

  /** A uniform draw in (0, 1): never 0, so that its logarithm is finite. */
  private uniform(): number {
    return (this.random() * 4294967295 + 1) / 4294967297;
  }
}

export interface TensorStatisticsOptions {
  /** Histogram bins (default 2048). */
  bins?: number;
  /** Size of the raw-value sample kept for the OMSE observer (default 16,384; 0: none). */
  sampleSize?: number;
  /** Axis for per-channel statistics (e.g. −1, the hidden channels of [N, T, C]); none if unset. */
  channelAxis?: number;
  seed?: number;
}

/** Everything the activation observers need about one tensor, in bounded memory. */
export class TensorStatistics {
  readonly minMax = new RunningMinMax();
  readonly histogram: Histogram;
  readonly sample: ReservoirSample | undefined;
  readonly channels: ChannelStatistics | undefined;
  /** Shape of the last batch seen. */
  dims: readonly number[] = [];

  constructor(options: TensorStatisticsOptions = {}) {
    this.histogram = new Histogram(options.bins ?? 2048);
    const sampleSize = options.sampleSize ?? 16_384;
    this.sample = sampleSize > 0 ? new ReservoirSample(sampleSize, options.seed) : undefined;
    this.channels =
      options.channelAxis === undefined ? undefined : new ChannelStatistics(options.channelAxis);
  }

  update(data: Float32Array, dims: readonly number[]): void {
    const batch = new RunningMinMax();
    batch.update(data);
    this.minMax.min = Math.min(this.minMax.min, batch.min);
    this.minMax.max = Math.max(this.minMax.max, batch.max);
    this.minMax.count += batch.count;
    this.minMax.nonFinite += batch.nonFinite;
    this.histogram.update(data, batch);
    this.sample?.update(data);
    this.channels?.update(data, dims);
    this.dims = [...dims];
  }
}
