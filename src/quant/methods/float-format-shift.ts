/**
 * LLM-FP4's pre-shifted exponent bias (arXiv:2310.16836, §3.3): an activation with one exponent
 * bias per input channel, b̃_c, is split into one real-valued bias for the tensor, ρ̃, and an
 * integer per-channel part k_c = clip(round(b̃_c − ρ̃), 0, 2^e − 1). In scale terms (a scale s is
 * 2^(−b̃) up to a constant of the format):
 *
 *   s_c = max|x_c| / max_format,   k_c = clip(round(log2(ρ / s_c)), 0, 2^e − 1)
 *   x̂_c = FP(x_c · 2^k_c / ρ) · ρ · 2^(−k_c)
 *
 * Because 2^(−k_c) is a power of two it folds exactly into row c of the next layer's weight:
 * the layer computes FP(x·2^k / ρ)·ρ against diag(2^(−k))·W, so the activation grid is one
 * tensor-wise ρ and the weight is quantized after the fold, Ŵ = diag(2^k)·Q(diag(2^(−k))·W).
 * The simulated model keeps the unfolded form (the per-channel scale ρ·2^(−k_c) on the
 * activation, Ŵ baked in its original units), which computes the same products.
 *
 * Worked example (E2M1, max 6, e = 2): channel maxima [6, 1.5, 0.4] give s = [1, 0.25, 0.0667];
 * with ρ = 1, log2(ρ / s) = [0, 2, 3.91] → k = [0, 2, 3] (4 clipped to 2^e − 1 = 3).
 */
import {
  floatFakeQuantizeChannels,
  channelFloatSquaredError,
  floatScaleForMax,
  type FloatFormat,
} from '../float-formats.js';

/** k_c for each channel maximum and a tensor scale ρ (an all-zero channel gets the largest k). */
export function preShiftExponents(
  channelMax: Float32Array,
  format: FloatFormat,
  rho: number,
): Int32Array {
  const top = 2 ** format.exponentBits - 1;
  return Int32Array.from(channelMax, (max) => {
    if (!(max > 0)) return top;
    const k = Math.round(Math.log2(rho / (max / format.max)));
    return Math.min(Math.max(k, 0), top);
  });
}

/** The per-channel scales ρ·2^(−k_c) of the file comment. */
export function preShiftScales(rho: number, exponents: Int32Array): Float32Array {
  return Float32Array.from(exponents, (k) => Math.fround(rho * 2 ** -k));
}

/**
 * Σ(x − x̂)² of rows of `channels` values (row-major, the channel the last axis) under one scale
 * per channel, in float64.
 */
export function channelSquaredError(
  rows: Float32Array,
  scales: Float32Array,
  format: FloatFormat,
): number {
  return channelFloatSquaredError(rows, format, scales);
}

/** The chosen tensor scale, its ratio to the unclipped one and the per-channel exponents. */
export interface PreShiftChoice {
  rho: number;
  ratio: number;
  exponents: Int32Array;
}

/**
 * ρ of least squared error on the sampled rows among ρ₀·2^(−j/16), j < `candidates`, with
 * ρ₀ = max_c max|x_c| / max_format (the paper's initial ρ̃ = min_c b̃_c); k_c follows each ρ.
 */
export function searchPreShift(
  rows: Float32Array,
  channelMax: Float32Array,
  format: FloatFormat,
  candidates: number,
): PreShiftChoice {
  let absMax = 0;
  for (const m of channelMax) absMax = Math.max(absMax, m);
  const start = floatScaleForMax(absMax, format);
  let best: PreShiftChoice | undefined;
  let bestError = Infinity;
  for (let j = 0; j < candidates; j++) {
    const ratio = 2 ** (-j / 16);
    const rho = Math.fround(start * ratio);
    if (!(rho > 0)) break;
    const exponents = preShiftExponents(channelMax, format, rho);
    const error = channelSquaredError(rows, preShiftScales(rho, exponents), format);
    if (error < bestError) [best, bestError] = [{ rho, ratio, exponents }, error];
  }
  return best ?? { rho: start, ratio: 1, exponents: new Int32Array(channelMax.length) };
}

/**
 * diag(2^(−k))·W or diag(2^k)·W for a weight whose input channels lie along `inputAxis` of a
 * 2-D [rows, cols] layout; exact in float32 (powers of two) away from subnormals.
 */
export function scaleInputChannels(
  values: Float32Array,
  dims: readonly number[],
  inputAxis: number,
  exponents: Int32Array,
  sign: 1 | -1,
): Float32Array {
  const cols = dims[1]!;
  const out = new Float32Array(values.length);
  for (let i = 0; i < values.length; i++) {
    const channel = inputAxis === 0 ? Math.floor(i / cols) : i % cols;
    out[i] = values[i]! * 2 ** (sign * exponents[channel]!);
  }
  return out;
}

/** Ŵ = diag(2^k)·Q(diag(2^(−k))·W), Q per output channel with `scales`. */
export function preShiftedWeight(
  values: Float32Array,
  dims: readonly number[],
  outputAxis: number,
  exponents: Int32Array,
  scales: Float32Array,
  format: FloatFormat,
): Float32Array {
  const folded = scaleInputChannels(values, dims, 1 - outputAxis, exponents, -1);
  const quantized = floatFakeQuantizeChannels(folded, dims, outputAxis, scales, format);
  return scaleInputChannels(quantized, dims, 1 - outputAxis, exponents, 1);
}
