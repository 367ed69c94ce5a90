/**
 * Weight quantizers of the deployable exports: symmetric int8 per output channel (QDQ and
 * dynamic recipes, on the grid of `WeightRange`) and blockwise 4-bit along the input features
 * (MatMulNBits).
 */
import type { LinearLayer } from '../../vit/types.js';
import type { GraphIndex } from '../../graph/graph.js';
import { InputError } from '../../errors.js';
import {
  channelRanges,
  intRange,
  quantize,
  roundHalfEven,
  symmetricParams,
  type UniformParams,
} from '../uniform.js';
import { outputChannelAxis } from './layers.js';
import { defaultWeightRange, type WeightRange } from './types.js';

/** A weight as int8 codes with one scale (and zero point, 0 unless given) per output channel. */
export interface ChannelQuantizedWeight {
  values: Int8Array;
  /** float32-exact scales, one per output channel. */
  scales: Float32Array;
  /** int8 zero points, one per output channel; absent when every one is 0. */
  zeroPoints?: Int8Array;
  dims: number[];
  /** Axis of `dims` holding the output channels. */
  axis: number;
}

/** The float32 weight of a layer with its dims; NaN or Inf is refused naming the tensor. */
export function layerWeight(index: GraphIndex, layer: LinearLayer) {
  const values = index.constantFloat32(layer.weight);
  const dims = index.constantDims(layer.weight);
  if (!values || !dims) throw new InputError(`weight ${layer.weight} of ${layer.node} not found`);
  for (let i = 0; i < values.length; i++) {
    if (!Number.isFinite(values[i]!)) {
      throw new InputError(`weight ${layer.weight} of ${layer.node} holds NaN or Inf at ${i}`);
    }
  }
  return { values, dims };
}

/** Largest code magnitude of each weight grid. */
const weightBound: Record<WeightRange, number> = { reduced: 64, full: 127 };

/**
 * Symmetric int8 per output channel: scale_c = max|W_c| / B, q = roundHalfEven(W / scale_c),
 * with B = 64 on the `reduced` grid (codes in [−64, 64]) and B = 127 on the `full` one (codes in
 * [−127, 127]; −128 never occurs, as in onnxruntime's own quantizer). An all-zero channel gets
 * scale 1 and codes 0. Example, reduced: a channel [0.32, −0.05, 0.1] has scale 0.32 / 64 = 0.005
 * and codes [64, −10, 20]; on the full grid, scale 0.32 / 127 and codes [127, −20, 40]
 * (−19.84 → −20, 39.69 → 40).
 */
export function quantizeWeightPerChannel(
  index: GraphIndex,
  layer: LinearLayer,
  weightRange: WeightRange = defaultWeightRange,
): ChannelQuantizedWeight {
  const { values, dims } = layerWeight(index, layer);
  const axis = outputChannelAxis(layer);
  const bound = weightBound[weightRange];
  if (bound === undefined) {
    throw new RangeError(`weightRange must be 'reduced' or 'full', got '${String(weightRange)}'`);
  }
  const range = { qmin: -bound, qmax: bound };
  const { min, max } = channelRanges(values, dims, axis);
  const params = Array.from(min, (lo, c) => {
    const p = symmetricParams(lo, max[c]!, range);
    return { scale: Math.fround(p.scale), zeroPoint: 0 };
  });
  const codes = quantize(values, params, range, dims, axis);
  return {
    values: Int8Array.from(codes),
    scales: Float32Array.from(params, (p) => p.scale),
    dims,
    axis,
  };
}

/**
 * A weight on the asymmetric per-output-channel grids a method chose (unsigned `bits`-bit codes
 * q ∈ [0, 2^bits − 1] with integer zero points z, value (q − z)·Δ, as RepQ-ViT, GPTQ and ERQ
 * set them), as the int8 codes onnxruntime stores: q − 2^(bits−1) with zero point
 * z − 2^(bits−1), which dequantize to the same values. With bits = 7 the stored codes lie in
 * [−64, 63], inside the `reduced` bound; with bits = 8 they take the `full` int8 range.
 * Example, 7 bits: Δ = 0.01, z = 60, a weight 0.3 has q = 90, stored 26 with zero point −4,
 * (26 − (−4))·0.01 = 0.3.
 */
export function quantizeWeightOnGrids(
  index: GraphIndex,
  layer: LinearLayer,
  grids: readonly UniformParams[],
  bits: number,
): ChannelQuantizedWeight {
  if (!Number.isInteger(bits) || bits < 2 || bits > 8) {
    throw new RangeError(`${layer.weight}: int8 storage holds 2 to 8 bits, got ${bits}`);
  }
  const { values, dims } = layerWeight(index, layer);
  const axis = outputChannelAxis(layer);
  const offset = 2 ** (bits - 1);
  const params = grids.map((p, c) => {
    const zeroPoint = p.zeroPoint - offset;
    if (!Number.isInteger(zeroPoint) || zeroPoint < -128 || zeroPoint > 127) {
      throw new RangeError(
        `${layer.weight}: channel ${c} has zero point ${p.zeroPoint} on a ${bits}-bit grid, ` +
          `which int8 cannot store`,
      );
    }
    return { scale: Math.fround(p.scale), zeroPoint };
  });
  if (params.length !== dims[axis]) {
    throw new RangeError(
      `${layer.weight}: ${params.length} grids for ${dims[axis]} output channels`,
    );
  }
  const { qmax } = intRange(bits, false);
  const codes = quantize(values, params, { qmin: -offset, qmax: qmax - offset }, dims, axis);
  const zeroPoints = Int8Array.from(params, (p) => p.zeroPoint);
  return {
    values: Int8Array.from(codes),
    scales: Float32Array.from(params, (p) => p.scale),
    ...(zeroPoints.some((z) => z !== 0) ? { zeroPoints } : {}),
    dims,
    axis,
  };
}

/** A MatMulNBits weight: packed codes [N, kBlocks, blockSize/2], scales and zero points. */
export interface BlockQuantizedWeight {
  packed: Uint8Array;
  /** [N, kBlocks] float32 scales. */
  scales: Float32Array;
  /** [N, kBlocks] zero points (0..15), or undefined when every one is 8. */
  zeroPoints?: Uint8Array;
  n: number;
  k: number;
  kBlocks: number;
}

/**
 * Blockwise 4-bit quantization along K of W as [N, K] (`weightAt(n, k)`), the MatMulNBits
 * layout: symmetric blocks use zero point 8 and scale max|w| / 7 (codes 1..15, so that +max
 * and −max are both exact); asymmetric blocks widen [min, max] to include 0 and use scale
 * (max − min) / 15 with their own zero point. With `search`, each block's range may be shrunk
 * (clipping its extremes) where that lowers the block's squared error. A block running past K is
 * padded with codes equal to its zero point. Two codes per byte, the lower K index in the low
 * nibble.
 */
export function quantizeWeightBlocks(
  weightAt: (n: number, k: number) => number,
  n: number,
  k: number,
  blockSize: number,
  symmetric: boolean,
  search = true,
): BlockQuantizedWeight {
  const kBlocks = Math.ceil(k / blockSize);
  const codes = new Uint8Array(n * k);
  const scales = new Float32Array(n * kBlocks);
  const zeroPoints = new Uint8Array(n * kBlocks);
  const block = new Float32Array(blockSize);
  for (let row = 0; row < n; row++) {
    for (let b = 0; b < kBlocks; b++) {
      const start = b * blockSize;
      const width = Math.min(blockSize, k - start);
      for (let i = 0; i < width; i++) block[i] = weightAt(row, start + i);
      const { scale, zeroPoint } = blockParams(block, width, symmetric, search);
      const slot = row * kBlocks + b;
      scales[slot] = scale;
      zeroPoints[slot] = zeroPoint;
      for (let i = 0; i < width; i++)
        codes[row * k + start + i] = code4(block[i]!, scale, zeroPoint);
    }
  }
  return packBlocks(codes, scales, symmetric ? undefined : zeroPoints, n, k, blockSize);
}

/**
 * 4-bit codes [N, K] (row-major) with their [N, kBlocks] scales and zero points (undefined:
 * all 8, none stored) in the MatMulNBits layout: two codes per byte, the lower K index in the
 * low nibble; a block running past K is padded with codes equal to its zero point.
 */
export function packBlocks(
  codes: Uint8Array,
  scales: Float32Array,
  zeroPoints: Uint8Array | undefined,
  n: number,
  k: number,
  blockSize: number,
): BlockQuantizedWeight {
  const kBlocks = Math.ceil(k / blockSize);
  const packed = new Uint8Array(n * kBlocks * (blockSize / 2));
  for (let row = 0; row < n; row++) {
    for (let b = 0; b < kBlocks; b++) {
      const slot = row * kBlocks + b;
      const zeroPoint = zeroPoints ? zeroPoints[slot]! : 8;
      const base = slot * (blockSize / 2);
      for (let i = 0; i < blockSize; i++) {
        const at = b * blockSize + i;
        const q = at < k ? codes[row * k + at]! & 0x0f : zeroPoint;
        packed[base + (i >> 1)] = packed[base + (i >> 1)]! | (i & 1 ? q << 4 : q);
      }
    }
  }
  return { packed, scales, ...(zeroPoints ? { zeroPoints } : {}), n, k, kBlocks };
}

/** The 4-bit code of `w` on a block grid: clamp(roundHalfEven(w / scale) + zeroPoint, 0, 15). */
export function code4(w: number, scale: number, zeroPoint: number): number {
  return clamp4(roundHalfEven(w / scale) + zeroPoint);
}

/**
 * Range shrink factors tried per block when searching: round-to-nearest on the full range wastes
 * levels on a block's one or two extreme weights, and clipping them slightly often lowers the
 * block's squared error (the usual MSE clipping of weight-only quantizers).
 */
const shrinkFactors = [1, 0.95, 0.9, 0.85, 0.8, 0.75];

/** A block's 4-bit grid from its first `width` weights (see `quantizeWeightBlocks`). */
export function blockParams(
  block: Float32Array | Float64Array,
  width: number,
  symmetric: boolean,
  search: boolean,
) {
  let lo = 0;
  let hi = 0;
  for (let i = 0; i < width; i++) {
    lo = Math.min(lo, block[i]!);
    hi = Math.max(hi, block[i]!);
  }
  let best = gridParams(lo, hi, symmetric);
  if (!search) return best;
  let bestError = blockError(block, width, best);
  // symmetric grids shrink both ends together; asymmetric ones may clip either end alone
  for (const low of shrinkFactors) {
    for (const high of symmetric ? [low] : shrinkFactors) {
      const candidate = gridParams(lo * low, hi * high, symmetric);
      const error = blockError(block, width, candidate);
      if (error < bestError) [best, bestError] = [candidate, error];
    }
  }
  return best;
}

function gridParams(lo: number, hi: number, symmetric: boolean) {
  if (symmetric) {
    const bound = Math.max(-lo, hi);
    return { scale: Math.fround(bound > 0 ? bound / 7 : 1), zeroPoint: 8 };
  }
  if (hi - lo <= 0) return { scale: 1, zeroPoint: 8 };
  const scale = Math.fround((hi - lo) / 15);
  return { scale, zeroPoint: clamp4(-roundHalfEven(lo / scale)) };
}

/** Σ (w − w̃)² over a block for a 4-bit grid. */
function blockError(
  block: Float32Array | Float64Array,
  width: number,
  p: { scale: number; zeroPoint: number },
) {
  let error = 0;
  for (let i = 0; i < width; i++) {
    const q = clamp4(roundHalfEven(block[i]! / p.scale) + p.zeroPoint);
    const d = block[i]! - (q - p.zeroPoint) * p.scale;
    error += d * d;
  }
  return error;
}

function clamp4(q: number): number {
  return q < 0 ? 0 : q > 15 ? 15 : q;
}
