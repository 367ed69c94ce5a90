/**
 * Observers: from statistics and a target grid (bit width, signedness, symmetry) to the range a
 * quantizer clips to. Activations are observed through their calibration statistics
 * (statistics.ts); weights, which are in memory, through their exact values, one range per
 * output channel (symmetric, so one bound per channel).
 *
 * - `minmax`: the full observed range.
 * - `percentile`: the p-th and (100 − p)-th percentiles (default p = 99.99 %), from the histogram
 *   for activations and from the sorted magnitudes of each channel for weights.
 * - `mse`: the range minimising the expected squared quantization error. For activations this is
 *   computed on the histogram of the whole calibration set (bin centres weighted by counts; the
 *   within-bin spread adds the same w²/12 per value to every candidate, so it does not move the
 *   minimum): a coarse joint shrink of [min, max], then two rounds of coordinate search on each
 *   end, 100 steps each. For weights it is the exact error of each channel over 81 clipping
 *   ratios in [0.2, 1].
 * - `omse`: OMSE (Choukroun et al. 2019, arXiv:1902.06822) minimises ‖x − Q(x)‖² itself, on raw
 *   values, over the candidate set FQ-ViT uses: [min, max] scaled by 1 − 0.01·i, i = 0…89. For
 *   activations the raw values are the reservoir sample of the calibration stream (FQ-ViT uses
 *   the last batch); for weights every value of the channel. It differs from `mse` in that no
 *   histogram approximation enters, the search keeps the two ends in proportion (no
 *   per-end refinement), and on activations it sees a sample rather than every value.
 */
import { CalibrationError } from '../errors.js';
import type { Histogram, TensorStatistics } from './statistics.js';
import type { ObserverKind, TensorRange } from './types.js';
import {
  asymmetricParams,
  intRange,
  symmetricParams,
  type IntRange,
  type UniformParams,
} from './uniform.js';

/** The integer grid a tensor is quantized to. */
export interface QuantGrid {
  bits: number;
  /** int (signed) or uint codes. */
  signed: boolean;
  /** Zero point fixed at 0 (range ±bound) instead of fitted to [min, max]. */
  symmetric: boolean;
}

/** Scale and zero point of a grid for a clipping range. */
export function gridParams(range: TensorRange, grid: QuantGrid): UniformParams {
  const codes = intRange(grid.bits, grid.signed);
  return grid.symmetric
    ? symmetricParams(range.min, range.max, codes)
    : asymmetricParams(range.min, range.max, codes);
}

export interface Observer {
  readonly kind: ObserverKind;
  /** Clipping range of an activation from its calibration statistics. */
  activationRange(stats: TensorStatistics, grid: QuantGrid): TensorRange;
  /** Per-channel symmetric bound (clip to ±bound) of a weight along `axis`. */
  weightBounds(
    weight: Float32Array,
    dims: readonly number[],
    axis: number,
    bits: number,
  ): Float64Array;
}

export interface ObserverOptions {
  /** Percentile for `percentile`, in percent (default 99.99). */
  percentile?: number;
}

export function createObserver(kind: ObserverKind, options: ObserverOptions = {}): Observer {
  switch (kind) {
    case 'minmax':
      return new MinMaxObserver();
    case 'percentile':
      return new PercentileObserver(options.percentile);
    case 'mse':
      return new MseObserver();
    case 'omse':
      return new OmseObserver();
  }
}

export class MinMaxObserver implements Observer {
  readonly kind = 'minmax';

  activationRange(stats: TensorStatistics): TensorRange {
    return observedRange(stats);
  }

  weightBounds(weight: Float32Array, dims: readonly number[], axis: number): Float64Array {
    return mapChannels(weight, dims, axis, (values) => maxAbs(values));
  }
}

export class PercentileObserver implements Observer {
  readonly kind = 'percentile';
  /** Percentile in percent, e.g. 99.99. */
  readonly percentile: number;

  constructor(percentile = 99.99) {
    if (!(percentile > 50 && percentile <= 100)) {
      throw new RangeError(`percentile must be in (50, 100], got ${percentile}`);
    }
    this.percentile = percentile;
  }

  activationRange(stats: TensorStatistics, grid: QuantGrid): TensorRange {
    observedRange(stats);
    const p = this.percentile / 100;
    const h = stats.histogram;
    if (grid.symmetric) {
      const bound = h.absQuantile(p);
      return { min: -bound, max: bound };
    }
    return { min: h.quantile(1 - p), max: h.quantile(p) };
  }

  weightBounds(weight: Float32Array, dims: readonly number[], axis: number): Float64Array {
    const p = this.percentile / 100;
    return mapChannels(weight, dims, axis, (values) => absQuantile(values, p));
  }
}

export class MseObserver implements Observer {
  readonly kind = 'mse';

  activationRange(stats: TensorStatistics, grid: QuantGrid): TensorRange {
    const full = observedRange(stats);
    return searchHistogramRange(stats.histogram, full, grid);
  }

  weightBounds(weight: Float32Array, dims: readonly number[], axis: number, bits: number) {
    const ratios = Array.from({ length: 81 }, (_, i) => (20 + i) / 100);
    return mapChannels(weight, dims, axis, (values) => bestBound(values, ratios, bits));
  }
}

export class OmseObserver implements Observer {
  readonly kind = 'omse';
  /** FQ-ViT's candidate ratios 1 − 0.01·i, i = 0…89. */
  static readonly ratios = Array.from({ length: 90 }, (_, i) => 1 - 0.01 * i);

  activationRange(stats: TensorStatistics, grid: QuantGrid): TensorRange {
    const full = observedRange(stats);
    const sample = stats.sample?.sample;
    if (!sample || sample.length === 0) return searchHistogramRange(stats.histogram, full, grid);
    const base = grid.symmetric ? symmetricHull(full) : full;
    let best = base;
    let bestError = Infinity;
    for (const r of OmseObserver.ratios) {
      const candidate = { min: base.min * r, max: base.max * r };
      const error = sampleError(
        sample,
        gridParams(candidate, grid),
        intRange(grid.bits, grid.signed),
      );
      if (error < bestError) {
        bestError = error;
        best = candidate;
      }
    }
    return best;
  }

  weightBounds(weight: Float32Array, dims: readonly number[], axis: number, bits: number) {
    return mapChannels(weight, dims, axis, (values) =>
      bestBound(values, OmseObserver.ratios, bits),
    );
  }
}

/** The observed [min, max], or a CalibrationError when nothing finite was observed. */
function observedRange(stats: TensorStatistics): TensorRange {
  const { min, max, count } = stats.minMax;
  if (count === 0) {
    throw new CalibrationError('no finite value was observed; calibrate before observing');
  }
  return { min, max };
}

function symmetricHull(range: TensorRange): TensorRange {
  const bound = Math.max(Math.abs(range.min), Math.abs(range.max));
  return { min: -bound, max: bound };
}

/**
 * Expected squared error of quantizing the histogram's values (at their bin centres) with the
 * given parameters. The constant within-bin term is left out (see the file comment).
 */
export function histogramError(h: Histogram, params: UniformParams, codes: IntRange): number {
  const { scale, zeroPoint } = params;
  let error = 0;
  for (let i = 0; i < h.bins; i++) {
    const n = h.counts[i]!;
    if (n === 0) continue;
    const x = h.width === 0 ? h.lower : h.centre(i);
    const q = gridCode(x / scale, zeroPoint, codes);
    const d = x - (q - zeroPoint) * scale;
    error += n * d * d;
  }
  return error;
}

/** Joint shrink of [min, max], then per-end coordinate search, on the histogram error. */
function searchHistogramRange(h: Histogram, full: TensorRange, grid: QuantGrid): TensorRange {
  const codes = intRange(grid.bits, grid.signed);
  const errorOf = (r: TensorRange) => histogramError(h, gridParams(r, grid), codes);
  const steps = 100;
  const base = grid.symmetric ? symmetricHull(full) : full;
  let best = base;
  let bestError = errorOf(base);
  const consider = (r: TensorRange) => {
    const e = errorOf(r);
    if (e < bestError) {
      bestError = e;
      best = r;
    }
  };
  for (let i = 1; i < steps; i++)
    consider({ min: (base.min * i) / steps, max: (base.max * i) / steps });
  if (grid.symmetric) return best;
  for (let round = 0; round < 2; round++) {
    const hi = best.max;
    for (let i = 1; i <= steps; i++) consider({ min: (full.min * i) / steps, max: hi });
    const lo = best.min;
    for (let i = 1; i <= steps; i++) consider({ min: lo, max: (full.max * i) / steps });
  }
  return best;
}

/**
 * clamp(roundHalfEven(t) + zeroPoint, qmin, qmax), inlined for the search loops: t is clamped
 * first so that the rounding works on small numbers, where Math.round(t) − t = 0.5 marks a tie
 * (Math.round rounds ties up; an odd result is then moved down to the even neighbour).
 */
function gridCode(t: number, zeroPoint: number, codes: IntRange): number {
  const lo = codes.qmin - zeroPoint;
  const hi = codes.qmax - zeroPoint;
  if (t <= lo) return codes.qmin;
  if (t >= hi) return codes.qmax;
  const r = Math.round(t);
  return (r - t === 0.5 && (r & 1) !== 0 ? r - 1 : r) + zeroPoint;
}

/** Exact squared error of fake-quantizing `values` (float32 division, as QuantizeLinear does). */
export function sampleError(values: Float32Array, params: UniformParams, codes: IntRange): number {
  const scale = Math.fround(params.scale);
  const zp = params.zeroPoint;
  let error = 0;
  for (let i = 0; i < values.length; i++) {
    const x = values[i]!;
    const q = gridCode(Math.fround(x / scale), zp, codes);
    const d = x - Math.fround((q - zp) * scale);
    error += d * d;
  }
  return error;
}

/** The bound ratio·max|x| with the least exact error on a symmetric signed grid of `bits`. */
function bestBound(values: Float32Array, ratios: readonly number[], bits: number): number {
  const codes = intRange(bits, true);
  const top = maxAbs(values);
  if (top === 0) return 0;
  let best = top;
  let bestError = Infinity;
  for (const r of ratios) {
    const bound = top * r;
    const error = sampleError(values, symmetricParams(-bound, bound, codes), codes);
    if (error < bestError) {
      bestError = error;
      best = bound;
    }
  }
  return best;
}

function maxAbs(values: Float32Array): number {
  let m = 0;
  for (let i = 0; i < values.length; i++) {
    const a = Math.abs(values[i]!);
    if (a > m) m = a;
  }
  return m;
}

/** The p-quantile of |x| with linear interpolation between order statistics. */
function absQuantile(values: Float32Array, p: number): number {
  const sorted = new Float32Array(values.length);
  for (let i = 0; i < values.length; i++) sorted[i] = Math.abs(values[i]!);
  sorted.sort();
  const position = p * (sorted.length - 1);
  const below = Math.floor(position);
  const above = Math.min(sorted.length - 1, below + 1);
  return sorted[below]! + (position - below) * (sorted[above]! - sorted[below]!);
}

/** Applies `fn` to the values of each index along `axis`, collecting one number per channel. */
export function mapChannels(
  x: Float32Array,
  dims: readonly number[],
  axis: number,
  fn: (values: Float32Array) => number,
): Float64Array {
  const a = axis < 0 ? axis + dims.length : axis;
  const channels = dims[a];
  if (channels === undefined) {
    throw new RangeError(`axis ${axis} is out of range for dims [${dims.join(', ')}]`);
  }
  let inner = 1;
  for (let d = a + 1; d < dims.length; d++) inner *= dims[d]!;
  const outer = x.length / (channels * inner);
  const out = new Float64Array(channels);
  const scratch = new Float32Array(outer * inner);
  for (let c = 0; c < channels; c++) {
    let k = 0;
    for (let o = 0; o < outer; o++) {
      const start = (o * channels + c) * inner;
      for (let i = 0; i < inner; i++) scratch[k++] = x[start + i]!;
    }
    out[c] = fn(scratch);
  }
  return out;
}

/**
 * Per-channel symmetric parameters of a weight (zero point 0, scale = bound / qmax on the signed
 * grid of `bits`), with the bound chosen by `observer`. A channel of zeros gets scale 1.
 */
export function weightParams(
  weight: Float32Array,
  dims: readonly number[],
  axis: number,
  bits: number,
  observer: Observer,
): UniformParams[] {
  const codes = intRange(bits, true);
  const bounds = observer.weightBounds(weight, dims, axis, bits);
  return Array.from(bounds, (bound) => symmetricParams(-bound, bound, codes));
}
