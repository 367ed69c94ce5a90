/**
 * RepQ-ViT's quantizer initialisation (reference notes §6(2), `quant/quantizer.py` of
 * zkkli/RepQ-ViT): for each candidate percentile p (0.999, 0.9999, 0.99999), clip to the exact
 * p-quantile (and the (1 − p)-quantile for the minimum) of the tensor itself, and keep the
 * candidate whose fake-quantized tensor has the least squared error. Per-channel means the same
 * search done independently on each index of an axis (a weight's output channels, an
 * activation's hidden channels).
 *
 * The affine grid here is RepQ's, not uniform.ts's `asymmetricParams`: the range is not widened
 * to include 0 and the zero point is not clamped to the code range, so a channel whose values
 * all lie in [5, 7] gets a step of 2/15 and a zero point of −38 and spends all 16 codes on
 * [5, 7]. That matters for post-LayerNorm channels with large offsets, the very channels RepQ
 * calibrates one by one.
 */
import { intRange, roundHalfEven, type UniformParams } from './uniform.js';
import { logSquaredError, type LogBase, type LogQuantizer } from './log-quantizers.js';

/** RepQ-ViT's candidate percentiles. */
export const repqPercentiles: readonly number[] = [0.999, 0.9999, 0.99999];

/**
 * Quantiles with linear interpolation between order statistics (torch.quantile's and numpy's
 * default): position p·(n − 1), value v[⌊pos⌋] + frac(pos)·(v[⌈pos⌉] − v[⌊pos⌋]) of the sorted
 * values. Exact, without sorting everything: one selection isolates the values up to the highest
 * rank asked below the median and another those from the lowest rank asked above it, and only
 * those tails are sorted (a 0.001 tail of 5 million values is 5,000). `values` is not modified;
 * it must hold finite numbers.
 *
 * Example: quantiles([4, 1, 3, 2, 5], [0.5, 0.9]) = [3, 4.6] (position 3.6: 4 + 0.6·(5 − 4)).
 */
export function quantiles(values: Float32Array, ps: readonly number[]): Float64Array {
  const n = values.length;
  if (n === 0) throw new RangeError('quantiles of an empty tensor');
  for (const p of ps) {
    if (!(p >= 0 && p <= 1)) throw new RangeError(`quantile must be in [0, 1], got ${p}`);
  }
  const positions = ps.map((p) => p * (n - 1));
  const ranks = positions.flatMap((pos) => [Math.floor(pos), Math.ceil(pos)]);
  const middle = (n - 1) / 2;
  const low = ranks.filter((r) => r <= middle);
  const high = ranks.filter((r) => r > middle);
  const copy = values.slice();
  let sortedUpTo = -1;
  if (low.length > 0) {
    sortedUpTo = Math.max(...low);
    select(copy, sortedUpTo, 0, n - 1);
    copy.subarray(0, sortedUpTo + 1).sort();
  }
  if (high.length > 0) {
    const from = Math.min(...high);
    select(copy, from, sortedUpTo + 1, n - 1);
    copy.subarray(from).sort();
  }
  return Float64Array.from(positions, (pos) => {
    const below = Math.floor(pos);
    const lo = copy[below]!;
    return lo + (pos - below) * (copy[Math.ceil(pos)]! - lo);
  });
}

/**
 * Floyd–Rivest selection: reorders `a[left..right]` so that a[k] holds the value of rank k, with
 * everything before it ≤ a[k] and everything after ≥ a[k]. Deterministic (no random pivot), so
 * the same tensor gives the same result.
 */
function select(a: Float32Array, k: number, left: number, right: number): void {
  while (right > left) {
    if (right - left > 600) {
      // recurse on a sample around k to get a pivot whose rank is close to k
      const n = right - left + 1;
      const i = k - left + 1;
      const z = Math.log(n);
      const s = 0.5 * Math.exp((2 * z) / 3);
      const sd = 0.5 * Math.sqrt((z * s * (n - s)) / n) * Math.sign(i - n / 2);
      const newLeft = Math.max(left, Math.floor(k - (i * s) / n + sd));
      const newRight = Math.min(right, Math.floor(k + ((n - i) * s) / n + sd));
      select(a, k, newLeft, newRight);
    }
    const pivot = a[k]!;
    let i = left;
    let j = right;
    swap(a, left, k);
    if (a[right]! > pivot) swap(a, left, right);
    while (i < j) {
      swap(a, i, j);
      i++;
      j--;
      while (a[i]! < pivot) i++;
      while (a[j]! > pivot) j--;
    }
    if (a[left] === pivot) swap(a, left, j);
    else {
      j++;
      swap(a, j, right);
    }
    if (j <= k) left = j + 1;
    if (k <= j) right = j - 1;
  }
}

function swap(a: Float32Array, i: number, j: number): void {
  const t = a[i]!;
  a[i] = a[j]!;
  a[j] = t;
}

/**
 * RepQ's affine grid on 2^b codes for a clipping range: Δ = (max − min) / (2^b − 1),
 * zeroPoint = roundHalfEven(−min / Δ), neither widened to include 0 nor clamped (codes are
 * clamped to [0, 2^b − 1] when quantizing). A zero-width range is widened to include 0 first
 * (a constant channel v gets [0, v], so v is exactly representable); an all-zero one gets Δ = 1.
 *
 * Example: [−1, 3] on 4 bits → Δ = 4/15, zeroPoint = round(3.75) = 4; [5, 7] → Δ = 2/15,
 * zeroPoint = round(−37.5) = −38.
 */
export function affineParams(min: number, max: number, bits: number): UniformParams {
  const codes = intRange(bits, false);
  let lo = min;
  let hi = max;
  if (!(hi > lo)) {
    lo = Math.min(lo, 0);
    hi = Math.max(hi, 0);
  }
  if (!(hi > lo)) return { scale: 1, zeroPoint: 0 };
  const scale = (hi - lo) / codes.qmax;
  // + 0 turns the −0 of a range starting at 0 into 0
  return { scale, zeroPoint: roundHalfEven(-lo / scale) + 0 };
}

/** Σ(x − x̂)² of the affine fake quantization of `values` on 2^b codes. */
export function affineSquaredError(
  values: Float32Array,
  params: UniformParams,
  bits: number,
): number {
  return affineSquaredErrors(values, [params], bits)[0]!;
}

/**
 * Σ(x − x̂)² for each of several grids (the search's hot loop). As
 * QuantizeLinear: x / Δ in float32, rounded half to even, clamped to [0, 2^b − 1] after adding
 * the zero point, and (q − z)·Δ in float32.
 */
export function affineSquaredErrors(
  values: Float32Array,
  grids: readonly UniformParams[],
  bits: number,
): Float64Array {
  const top = intRange(bits, false).qmax;
  return Float64Array.from(grids, (grid) => gridError(values, grid, top));
}

/** One grid's error: a plain loop with the grid's constants in locals, which V8 keeps hot. */
function gridError(values: Float32Array, grid: UniformParams, top: number): number {
  const scale = Math.fround(grid.scale);
  const zero = grid.zeroPoint;
  const low = -zero;
  const high = top - zero;
  let error = 0;
  for (let i = 0; i < values.length; i++) {
    const x = values[i]!;
    const t = Math.fround(x / scale);
    // clamped before rounding (both bounds are integers), so ties are tested on small numbers
    let k: number;
    if (t <= low) k = low;
    else if (t >= high) k = high;
    else {
      k = Math.round(t);
      if (k - t === 0.5 && (k & 1) !== 0) k -= 1;
    }
    const d = x - Math.fround(k * scale);
    error += d * d;
  }
  return error;
}

/** The chosen candidate of a percentile-MSE search. */
export interface AffineChoice {
  params: UniformParams;
  /** The winning percentile p: the range is [quantile(1 − p), quantile(p)]. */
  percentile: number;
  min: number;
  max: number;
}

/**
 * RepQ's per-tensor initialisation: the candidate range [q(1 − p), q(p)] with the least squared
 * error (the first one on a tie, as RepQ compares with `<`).
 */
export function percentileMseAffine(
  values: Float32Array,
  bits: number,
  percentiles: readonly number[] = repqPercentiles,
): AffineChoice {
  const qs = quantiles(values, [...percentiles, ...percentiles.map((p) => 1 - p)]);
  const candidates = percentiles.map((percentile, i) => {
    const max = qs[i]!;
    const min = qs[i + percentiles.length]!;
    return { params: affineParams(min, max, bits), percentile, min, max };
  });
  const errors = affineSquaredErrors(
    values,
    candidates.map((c) => c.params),
    bits,
  );
  let best = 0;
  for (let c = 1; c < candidates.length; c++) if (errors[c]! < errors[best]!) best = c;
  return candidates[best]!;
}

/**
 * The same search on each index of `axis` of a tensor of shape `dims`: one choice per channel
 * (rows of a [out, in] weight with axis 0, columns of [in, out] with axis 1, the hidden channels
 * of [N, T, C] activations with axis −1).
 */
export function percentileMseAffineChannels(
  values: Float32Array,
  dims: readonly number[],
  axis: number,
  bits: number,
  percentiles: readonly number[] = repqPercentiles,
): AffineChoice[] {
  const { outer, channels, inner } = splitAxis(dims, axis, values.length);
  const scratch = new Float32Array(outer * inner);
  const out: AffineChoice[] = [];
  for (let c = 0; c < channels; c++) {
    let k = 0;
    for (let o = 0; o < outer; o++) {
      const start = (o * channels + c) * inner;
      for (let i = 0; i < inner; i++) scratch[k++] = values[start + i]!;
    }
    out.push(percentileMseAffine(scratch, bits, percentiles));
  }
  return out;
}

/** Sizes before, along and after `axis` of a tensor of shape `dims`. */
export function splitAxis(dims: readonly number[], axis: number, length: number) {
  const a = axis < 0 ? axis + dims.length : axis;
  if (a < 0 || a >= dims.length) {
    throw new RangeError(`axis ${axis} is out of range for dims [${dims.join(', ')}]`);
  }
  let outer = 1;
  let inner = 1;
  for (let d = 0; d < a; d++) outer *= dims[d]!;
  for (let d = a + 1; d < dims.length; d++) inner *= dims[d]!;
  const channels = dims[a]!;
  if (outer * channels * inner !== length) {
    throw new RangeError(`dims [${dims.join(', ')}] do not match ${length} values`);
  }
  return { outer, channels, inner };
}

/** The chosen scale of a log quantizer. */
export interface LogChoice {
  quantizer: LogQuantizer;
  percentile: number;
}

/**
 * RepQ's initialisation of the post-softmax quantizer: s is the p-quantile of the values, for the
 * candidate p with the least squared error. (RepQ never takes the maximum itself.) A candidate
 * quantile of 0 — a tensor that is almost all zeros — is skipped; if all are 0, s = max.
 */
export function percentileMseLog(
  values: Float32Array,
  bits: number,
  base: LogBase,
  percentiles: readonly number[] = repqPercentiles,
): LogChoice {
  const qs = quantiles(values, [...percentiles, 1]);
  let best: LogChoice | undefined;
  let bestError = Infinity;
  percentiles.forEach((percentile, i) => {
    const scale = Math.fround(qs[i]!);
    if (!(scale > 0)) return;
    const quantizer = { base, bits, scale };
    const error = logSquaredError(values, quantizer);
    if (error < bestError || !best) {
      bestError = error;
      best = { quantizer, percentile };
    }
  });
  const top = Math.fround(qs[percentiles.length]!);
  return best ?? { quantizer: { base, bits, scale: top > 0 ? top : 1 }, percentile: 1 };
}
