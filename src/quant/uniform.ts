/**
 * Uniform (integer-grid) quantization as pure functions over typed arrays.
 *
 *   q = clamp(roundHalfEven(x / scale) + zeroPoint, qmin, qmax)
 *   x̂ = (q − zeroPoint) · scale
 *
 * This is exactly ONNX QuantizeLinear/DequantizeLinear, so a model exported with these
 * parameters computes what these functions compute. Rounding is half to even (as ONNX and
 * PyTorch do); `Math.round` rounds half up and would not match.
 */

/** Integer range of a grid: signed [−2^(b−1), 2^(b−1)−1] or unsigned [0, 2^b−1]. */
export interface IntRange {
  qmin: number;
  qmax: number;
}

export function intRange(bits: number, signed: boolean): IntRange {
  if (!Number.isInteger(bits) || bits < 2 || bits > 16) {
    throw new RangeError(`bit width must be an integer in [2, 16], got ${bits}`);
  }
  return signed
    ? { qmin: -(2 ** (bits - 1)), qmax: 2 ** (bits - 1) - 1 }
    : { qmin: 0, qmax: 2 ** bits - 1 };
}

/**
 * Round half to even: 0.5 → 0, 1.5 → 2, 2.5 → 2, −0.5 → −0, −1.5 → −2.
 * (Math.round(2.5) is 3, which would break bit-exactness with onnxruntime.)
 */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Scale and zero point of one grid. */
export interface UniformParams {
  scale: number;
  zeroPoint: number;
}

/**
 * Symmetric parameters for a range: scale = max(|min|, |max|) / qmax, zeroPoint = 0.
 * A zero-width range gets scale 1 so that dividing by it is safe (every value quantizes to 0).
 * Example: range [−0.5, 1.27], 8-bit signed → scale = 1.27 / 127 = 0.01.
 */
export function symmetricParams(min: number, max: number, range: IntRange): UniformParams {
  const bound = Math.max(Math.abs(min), Math.abs(max));
  const scale = bound > 0 ? bound / range.qmax : 1;
  return { scale, zeroPoint: 0 };
}

/**
 * Asymmetric parameters: the range is first widened to include 0 (so 0 is exactly
 * representable, as zero padding and ReLU outputs need), then
 * scale = (max − min) / (qmax − qmin), zeroPoint = clamp(qmin − roundHalfEven(min / scale)).
 * Example: [−1, 3] on uint8 → scale = 4/255, zeroPoint = round(63.75) = 64.
 */
export function asymmetricParams(min: number, max: number, range: IntRange): UniformParams {
  const lo = Math.min(min, 0);
  const hi = Math.max(max, 0);
  if (hi - lo <= 0) return { scale: 1, zeroPoint: range.qmin < 0 ? 0 : range.qmin };
  const scale = (hi - lo) / (range.qmax - range.qmin);
  const zeroPoint = clampInt(range.qmin - roundHalfEven(lo / scale), range);
  return { scale, zeroPoint };
}

function clampInt(q: number, range: IntRange): number {
  return q < range.qmin ? range.qmin : q > range.qmax ? range.qmax : q;
}

/** One value through the grid: the integer code. */
export function quantizeValue(x: number, p: UniformParams, range: IntRange): number {
  return clampInt(roundHalfEven(x / p.scale) + p.zeroPoint, range);
}

/**
 * Quantizes `x` to integer codes. With `axis`, `params` holds one entry per index along that
 * axis of a tensor of shape `dims` (per-channel); without, `params[0]` applies to all.
 * Division is done in float32 as QuantizeLinear does (x / scale with both float32).
 */
export function quantize(
  x: Float32Array,
  params: readonly UniformParams[],
  range: IntRange,
  dims?: readonly number[],
  axis?: number,
): Int32Array {
  const out = new Int32Array(x.length);
  const { stride, channels } = axisLayout(x.length, params.length, dims, axis);
  for (let i = 0; i < x.length; i++) {
    const p = params[channels === 1 ? 0 : Math.floor(i / stride) % channels]!;
    const ratio = Math.fround(x[i]! / Math.fround(p.scale));
    out[i] = clampInt(roundHalfEven(ratio) + p.zeroPoint, range);
  }
  return out;
}

/** Integer codes back to float32: (q − zeroPoint) · scale, per tensor or per channel. */
export function dequantize(
  q: Int32Array,
  params: readonly UniformParams[],
  dims?: readonly number[],
  axis?: number,
): Float32Array {
  const out = new Float32Array(q.length);
  const { stride, channels } = axisLayout(q.length, params.length, dims, axis);
  for (let i = 0; i < q.length; i++) {
    const p = params[channels === 1 ? 0 : Math.floor(i / stride) % channels]!;
    out[i] = (q[i]! - p.zeroPoint) * Math.fround(p.scale);
  }
  return out;
}

/** Quantize then dequantize ("fake quantization"): the value the integer grid represents. */
export function fakeQuantize(
  x: Float32Array,
  params: readonly UniformParams[],
  range: IntRange,
  dims?: readonly number[],
  axis?: number,
): Float32Array {
  return dequantize(quantize(x, params, range, dims, axis), params, dims, axis);
}

/** Stride (elements between consecutive indices of `axis`) and channel count. */
function axisLayout(length: number, paramCount: number, dims?: readonly number[], axis?: number) {
  if (axis === undefined || !dims) {
    if (paramCount !== 1) {
      throw new RangeError(`${paramCount} parameter sets given for a per-tensor grid`);
    }
    return { stride: length, channels: 1 };
  }
  const a = axis < 0 ? axis + dims.length : axis;
  const channels = dims[a];
  if (channels === undefined || channels !== paramCount) {
    throw new RangeError(
      `axis ${axis} of dims [${dims.join(', ')}] has ${channels} channels, ${paramCount} params`,
    );
  }
  let stride = 1;
  for (let d = a + 1; d < dims.length; d++) stride *= dims[d]!;
  return { stride, channels };
}

/** Per-channel min and max of `x` along `axis` of `dims`. */
export function channelRanges(
  x: Float32Array,
  dims: readonly number[],
  axis: number,
): { min: Float32Array; max: Float32Array } {
  const a = axis < 0 ? axis + dims.length : axis;
  const channels = dims[a]!;
  let stride = 1;
  for (let d = a + 1; d < dims.length; d++) stride *= dims[d]!;
  const min = new Float32Array(channels).fill(Infinity);
  const max = new Float32Array(channels).fill(-Infinity);
  for (let i = 0; i < x.length; i++) {
    const c = Math.floor(i / stride) % channels;
    const v = x[i]!;
    if (v < min[c]!) min[c] = v;
    if (v > max[c]!) max[c] = v;
  }
  return { min, max };
}
