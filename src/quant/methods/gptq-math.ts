/**
 * GPTQ's column sweep (Frantar et al., arXiv:2210.17323; reference notes §10) on one linear
 * layer, as pure float64 arithmetic over typed arrays.
 *
 * The layer computes y = x·W with W stored as rows of input channels ([in, out]); the proxy loss
 * of a quantized Ŵ is tr((W − Ŵ)ᵀ H (W − Ŵ)) with H = XᵀX over the calibration rows. Input
 * channels are quantized one after another on each output channel's fixed affine grid; the error
 * each one leaves is pushed onto the channels not quantized yet, through the upper Cholesky
 * factor U of H⁻¹ (H⁻¹ = UᵀU):
 *
 *   ŵ_i = Q(w_i),  e_i = (w_i − ŵ_i) / U_ii,  w_j ← w_j − U_ij · e_i  for every j > i.
 *
 * That is the optimal least-squares correction of the remaining channels for the error of
 * channel i (the optimal-brain-surgeon update), computed without re-inverting H. Updates are
 * applied lazily per block of channels: inside a block at once, to the later channels after the
 * block; the result is the same as channel by channel up to float rounding.
 */
import { cholesky, spdInverse } from '../../prune/linalg.js';
import { intRange, roundHalfEven, type UniformParams } from '../uniform.js';

export interface GptqLayerOptions {
  /** λ = dampening · mean(diag H) added to H's diagonal before inverting (GPTQ: 0.01). */
  dampening: number;
  /** Input channels per lazy update block (GPTQ: 128). */
  blockSize: number;
  /** Quantize the input channels by decreasing H_ii (GPTQ's act-order) instead of in order. */
  actOrder: boolean;
}

export interface GptqLayerResult {
  /** Ŵ as [in, out] float32 values, each on its output channel's grid. */
  quantized: Float32Array;
  /** The dampening λ added to H's diagonal. */
  damping: number;
  /** Input channels that no calibration row ever drove (H_ii = 0); their weights became 0. */
  deadChannels: number;
}

/** The dequantized value nearest to `w` on a grid, exactly as uniform.ts's fakeQuantize gives. */
export function gridValue(w: number, p: UniformParams, qmax: number): number {
  const scale = Math.fround(p.scale);
  const code = Math.min(qmax, Math.max(0, roundHalfEven(Math.fround(w) / scale) + p.zeroPoint));
  return Math.fround((code - p.zeroPoint) * scale);
}

/**
 * GPTQ-quantizes W ([inF, outF] row-major, not modified) for the Gram H ([inF, inF] row-major,
 * not modified) on per-output-channel grids `grids` of `bits` unsigned codes.
 *
 * Worked example (no dampening, grid Δ = 1, z = 0): H = [[2, 1], [1, 2]], w = [0.4, 0.4] for one
 * output. Rounding gives [0, 0]. GPTQ rounds w₀ to 0 and moves its error 0.4 onto w₁ through
 * H⁻¹ = ⅓[[2, −1], [−1, 2]]: w₁ ← 0.4 + 0.4 · ½ = 0.6, which rounds to 1; Ŵ = [0, 1], proxy
 * loss 0.56 against 0.96 for rounding.
 */
export function gptqLayer(
  weight: Float64Array,
  hessian: Float64Array,
  inF: number,
  outF: number,
  grids: readonly UniformParams[],
  bits: number,
  options: GptqLayerOptions,
): GptqLayerResult {
  checkShapes(weight, hessian, inF, outF, grids);
  const { qmax } = intRange(bits, false);
  const order = channelOrder(hessian, inF, options.actOrder);
  const h = permuted(hessian, inF, order);
  const w = new Float64Array(inF * outF);
  for (let i = 0; i < inF; i++)
    w.set(weight.subarray(order[i]! * outF, (order[i]! + 1) * outF), i * outF);
  const deadChannels = dropDeadChannels(h, w, inF, outF);
  const damping = dampen(h, inF, options.dampening);
  const l = inverseFactor(h, inF);

  const q = new Float64Array(inF * outF);
  const block = Math.max(1, Math.floor(options.blockSize));
  for (let b0 = 0; b0 < inF; b0 += block) {
    const b1 = Math.min(b0 + block, inF);
    const errors = new Float64Array((b1 - b0) * outF);
    for (let i = b0; i < b1; i++) {
      const d = l[i * inF + i]!;
      const row = i * outF;
      const e = (i - b0) * outF;
      for (let o = 0; o < outF; o++) {
        const v = gridValue(w[row + o]!, grids[o]!, qmax);
        q[row + o] = v;
        errors[e + o] = (w[row + o]! - v) / d;
      }
      // U_ij = L_ji: the error of channel i onto the block's later channels
      for (let j = i + 1; j < b1; j++) subtractRow(w, j * outF, errors, e, l[j * inF + i]!, outF);
    }
    // the block's errors onto every channel after it
    for (let j = b1; j < inF; j++) {
      for (let k = b0; k < b1; k++) {
        subtractRow(w, j * outF, errors, (k - b0) * outF, l[j * inF + k]!, outF);
      }
    }
  }

  const quantized = new Float32Array(inF * outF);
  for (let i = 0; i < inF; i++)
    quantized.set(q.subarray(i * outF, (i + 1) * outF), order[i]! * outF);
  return { quantized, damping, deadChannels };
}

/** w[row…row+n) −= f · e[at…at+n) */
function subtractRow(
  w: Float64Array,
  row: number,
  e: Float64Array,
  at: number,
  f: number,
  n: number,
): void {
  if (f === 0) return;
  for (let o = 0; o < n; o++) w[row + o] = w[row + o]! - f * e[at + o]!;
}

function checkShapes(
  weight: Float64Array,
  hessian: Float64Array,
  inF: number,
  outF: number,
  grids: readonly UniformParams[],
): void {
  if (weight.length !== inF * outF) {
    throw new RangeError(`gptqLayer: weight has ${weight.length} values, expected ${inF}×${outF}`);
  }
  if (hessian.length !== inF * inF) {
    throw new RangeError(`gptqLayer: H has ${hessian.length} values, expected ${inF}×${inF}`);
  }
  if (grids.length !== outF) {
    throw new RangeError(`gptqLayer: ${grids.length} grids for ${outF} output channels`);
  }
}

/** Input channels in sweep order: as stored, or by decreasing H_ii (ties by index). */
export function channelOrder(hessian: Float64Array, n: number, actOrder: boolean): Int32Array {
  const order = Int32Array.from({ length: n }, (_, i) => i);
  if (!actOrder) return order;
  return order.sort((a, b) => hessian[b * n + b]! - hessian[a * n + a]! || a - b);
}

/** H with rows and columns in `order`. */
function permuted(hessian: Float64Array, n: number, order: Int32Array): Float64Array {
  const h = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    const from = order[i]! * n;
    for (let j = 0; j < n; j++) h[i * n + j] = hessian[from + order[j]!]!;
  }
  return h;
}

/**
 * A channel no calibration row drove has H_ii = 0: its weight never reaches the output on these
 * rows, so it is set to 0 (exactly representable only if the grid holds 0; it is then rounded
 * like any other) and H_ii to 1 so that H stays invertible.
 */
function dropDeadChannels(h: Float64Array, w: Float64Array, inF: number, outF: number): number {
  let dead = 0;
  for (let i = 0; i < inF; i++) {
    if (h[i * inF + i]! !== 0) continue;
    h[i * inF + i] = 1;
    w.fill(0, i * outF, (i + 1) * outF);
    dead++;
  }
  return dead;
}

function dampen(h: Float64Array, n: number, dampening: number): number {
  let trace = 0;
  for (let i = 0; i < n; i++) trace += h[i * n + i]!;
  const damping = (dampening * trace) / n;
  for (let i = 0; i < n; i++) h[i * n + i] = h[i * n + i]! + damping;
  return damping;
}

/**
 * The lower Cholesky factor L of H⁻¹ (so U = Lᵀ). A Gram matrix dampened by 1 % of its mean
 * diagonal is positive definite unless the calibration rows are degenerate; then the damping is
 * raised tenfold at a time, up to eight times, as the least change that makes it solvable.
 */
function inverseFactor(h: Float64Array, n: number): Float64Array {
  let trace = 0;
  for (let i = 0; i < n; i++) trace += h[i * n + i]!;
  for (let attempt = 0; attempt < 8; attempt++) {
    const extra = attempt === 0 ? 0 : (1e-2 * 10 ** (attempt - 1) * trace) / n;
    const shifted = Float64Array.from(h);
    for (let i = 0; i < n; i++) shifted[i * n + i] = shifted[i * n + i]! + extra;
    const inverse = spdInverse(shifted, n);
    const l = inverse && cholesky(inverse, n);
    if (l) return l;
  }
  throw new RangeError(`gptqLayer: H (${n}×${n}) is not positive definite even when dampened`);
}

/** tr((W − Ŵ)ᵀ H (W − Ŵ)) for [inF, outF] weights: GPTQ's proxy of the layer-output error. */
export function proxyLoss(
  weight: Float64Array | Float32Array,
  quantized: Float64Array | Float32Array,
  hessian: Float64Array,
  inF: number,
  outF: number,
): number {
  const d = new Float64Array(inF * outF);
  for (let k = 0; k < d.length; k++) d[k] = weight[k]! - quantized[k]!;
  let loss = 0;
  const hd = new Float64Array(outF);
  for (let i = 0; i < inF; i++) {
    hd.fill(0);
    for (let j = 0; j < inF; j++) {
      const hij = hessian[i * inF + j]!;
      if (hij !== 0) for (let o = 0; o < outF; o++) hd[o] = hd[o]! + hij * d[j * outF + o]!;
    }
    for (let o = 0; o < outF; o++) loss += d[i * outF + o]! * hd[o]!;
  }
  return loss;
}
