/**
 * ERQ's two closed-form steps (Zhong et al., arXiv:2407.06794; reference notes §13) on one
 * linear layer y = x·W + b, W as [in, out] rows of input channels, all in float64. Both work from
 * Gram matrices over the calibration rows: G = X̃ᵀX̃ of the quantized inputs, C = X̃ᵀX of the
 * quantized against the float inputs, and their sums.
 *
 * - Aqer (activation quantization error reduction): the float layer gives Y = X·W + b; the layer
 *   reads X̃ = Q_a(X) instead. The ridge correction δ of [W; b] solving
 *   min ‖X̃ₐ([W; b] + δ) − Y‖² + λ‖δ‖², with X̃ₐ = [X̃, 1], is
 *   δ = (X̃ₐᵀX̃ₐ + λI)⁻¹ (X̃ₐᵀXₐ − X̃ₐᵀX̃ₐ) [W; b].
 * - Wqer (weight quantization error reduction): input channels are quantized half of the
 *   remaining ones at a time. Each half is rounded to nearest, then each output channel's
 *   rounding is refined greedily (below), and the error e₁ it leaves is compensated on the
 *   channels still in float by ridge regression: δ₂ = −(G₂₂ + λI)⁻¹ G₂₁ e₁.
 *
 * Rounding refinement, named for what differs from ERQ's code: the proxy of an output channel is
 * eᵀ G₁₁ e over the channels being quantized (ERQ's Δᵀ(μμᵀ + Σ)Δ up to the row count). ERQ picks
 * the element to flip between floor and ceiling by the size of the proxy's gradient and keeps the
 * flip if the proxy falls; here each step flips the element whose flip lowers the proxy most,
 * computed exactly (2·d·(G e)_j + d²·G_jj for a change d), and stops when none lowers it. Each
 * element flips at most once; at most `refineSteps` flips per output channel.
 */
import { spdSolve, withShift } from '../../prune/linalg.js';
import { intRange, roundHalfEven, type UniformParams } from '../uniform.js';

/** Gram statistics of one layer's input over the calibration rows. */
export interface LayerGrams {
  /** Rows (tokens × images). */
  count: number;
  /** X̃ᵀX̃, [in, in]. */
  quantized: Float64Array;
  /** X̃ᵀX, [in, in]. */
  cross: Float64Array;
  /** XᵀX, [in, in]. */
  float: Float64Array;
  /** Σ x̃ and Σ x, [in]. */
  quantizedSum: Float64Array;
  floatSum: Float64Array;
}

/**
 * Aqer: the corrected [W; b] as [in, out] rows and [out] bias (float64). Without a bias (`bias`
 * undefined) the ones column is left out and only W is corrected.
 */
export function aqerCorrection(
  weight: Float64Array,
  bias: Float64Array | undefined,
  grams: LayerGrams,
  inF: number,
  outF: number,
  lambda: number,
): { weight: Float64Array; bias: Float64Array | undefined } {
  const n = bias ? inF + 1 : inF;
  const { g, c } = augmentedGrams(grams, inF, !!bias);
  const theta = new Float64Array(n * outF);
  theta.set(weight);
  if (bias) theta.set(bias, inF * outF);
  // right-hand side (C − G)·Θ
  const rhs = new Float64Array(n * outF);
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < n; k++) {
      const f = c[i * n + k]! - g[i * n + k]!;
      if (f === 0) continue;
      for (let o = 0; o < outF; o++)
        rhs[i * outF + o] = rhs[i * outF + o]! + f * theta[k * outF + o]!;
    }
  }
  const delta = ridgeSolve(g, n, rhs, outF, lambda);
  for (let k = 0; k < theta.length; k++) theta[k] = theta[k]! + delta[k]!;
  return {
    weight: theta.slice(0, inF * outF),
    bias: bias ? theta.slice(inF * outF) : undefined,
  };
}

/**
 * The Grams of the inputs with a ones column appended when `withBias`, [n, n] with n = in (+ 1):
 * X̃ₐᵀX̃ₐ = [[X̃ᵀX̃, Σx̃], [Σx̃ᵀ, N]], X̃ₐᵀXₐ = [[X̃ᵀX, Σx̃], [Σxᵀ, N]], Xₐᵀ Xₐ likewise.
 */
export function augmentedGrams(grams: LayerGrams, inF: number, withBias: boolean) {
  const n = withBias ? inF + 1 : inF;
  const g = new Float64Array(n * n);
  const c = new Float64Array(n * n);
  const f = new Float64Array(n * n);
  for (let i = 0; i < inF; i++) {
    g.set(grams.quantized.subarray(i * inF, (i + 1) * inF), i * n);
    c.set(grams.cross.subarray(i * inF, (i + 1) * inF), i * n);
    f.set(grams.float.subarray(i * inF, (i + 1) * inF), i * n);
  }
  if (withBias) {
    for (let i = 0; i < inF; i++) {
      g[i * n + inF] = g[inF * n + i] = grams.quantizedSum[i]!;
      c[i * n + inF] = grams.quantizedSum[i]!;
      c[inF * n + i] = grams.floatSum[i]!;
      f[i * n + inF] = f[inF * n + i] = grams.floatSum[i]!;
    }
    g[inF * n + inF] = c[inF * n + inF] = f[inF * n + inF] = grams.count;
  }
  return { n, g, c, f };
}

/** tr(Aᵀ M B) for [n, m] row-major A and B and [n, n] M. */
function traceForm(a: Float64Array, m: Float64Array, b: Float64Array, n: number, cols: number) {
  let total = 0;
  const mb = new Float64Array(cols);
  for (let i = 0; i < n; i++) {
    mb.fill(0);
    for (let j = 0; j < n; j++) {
      const f = m[i * n + j]!;
      if (f !== 0) for (let o = 0; o < cols; o++) mb[o] = mb[o]! + f * b[j * cols + o]!;
    }
    for (let o = 0; o < cols; o++) total += a[i * cols + o]! * mb[o]!;
  }
  return total;
}

/**
 * ‖X̃ₐΘ̂ − XₐΘ‖² / ‖XₐΘ‖² from the Grams, Θ = [W; b] as [n, out] rows (bias row last when the
 * Grams are augmented): the layer's output error over the calibration rows.
 */
export function relativeOutputError(
  estimate: Float64Array,
  target: Float64Array,
  grams: { n: number; g: Float64Array; c: Float64Array; f: Float64Array },
  outF: number,
): number {
  const { n, g, c, f } = grams;
  const energy = traceForm(target, f, target, n, outF);
  const error =
    traceForm(estimate, g, estimate, n, outF) -
    2 * traceForm(estimate, c, target, n, outF) +
    energy;
  return energy > 0 ? Math.max(0, error) / energy : 0;
}

/** (A + λI)⁻¹ B for symmetric positive semi-definite A, raising λ if rounding made A indefinite. */
function ridgeSolve(a: Float64Array, n: number, b: Float64Array, m: number, lambda: number) {
  let trace = 0;
  for (let i = 0; i < n; i++) trace += a[i * n + i]!;
  const floor = Math.max(lambda, 1e-10 * (trace / n || 1));
  const x = withShift(a, n, floor, (shifted) => spdSolve(shifted, n, b, m));
  if (!x) throw new RangeError(`ridge solve: a ${n}×${n} Gram stayed singular after shifting`);
  return x;
}

export interface WqerOptions {
  /** Ridge λ of the compensation of the channels still in float. */
  lambda: number;
  /** Most flips of the rounding refinement per output channel and half (ERQ: 100). */
  refineSteps: number;
}

/**
 * Wqer: quantizes W ([inF, outF] rows, not modified) on per-output-channel grids of `bits`
 * unsigned codes, for the Gram G = X̃ᵀX̃ ([inF, inF]). Returns the [in, out] float32 values, each
 * on its grid (the same values uniform.ts's fakeQuantize maps to themselves).
 */
export function wqerQuantize(
  weight: Float64Array,
  gram: Float64Array,
  inF: number,
  outF: number,
  grids: readonly UniformParams[],
  bits: number,
  options: WqerOptions,
): Float32Array {
  const { qmax } = intRange(bits, false);
  const w = Float64Array.from(weight);
  const out = new Float32Array(inF * outF);
  let remaining = Array.from({ length: inF }, (_, i) => i);
  while (remaining.length > 0) {
    const take = remaining.length === 1 ? 1 : Math.ceil(remaining.length / 2);
    const part = remaining.slice(0, take);
    const rest = remaining.slice(take);
    const errors = quantizePart(w, gram, inF, outF, part, grids, qmax, options.refineSteps, out);
    if (rest.length > 0) compensate(w, gram, inF, outF, part, rest, errors, options.lambda);
    remaining = rest;
  }
  return out;
}

/**
 * Rounds the channels `part` of every output channel and refines the rounding; writes the values
 * to `out` and returns the errors ŵ − w as [part, out] rows.
 */
function quantizePart(
  w: Float64Array,
  gram: Float64Array,
  inF: number,
  outF: number,
  part: readonly number[],
  grids: readonly UniformParams[],
  qmax: number,
  steps: number,
  out: Float32Array,
): Float64Array {
  const p = part.length;
  const g = new Float64Array(p * p);
  for (let a = 0; a < p; a++)
    for (let b = 0; b < p; b++) g[a * p + b] = gram[part[a]! * inF + part[b]!]!;
  const errors = new Float64Array(p * outF);
  const codes = new Float64Array(p);
  const exact = new Float64Array(p);
  const e = new Float64Array(p);
  for (let o = 0; o < outF; o++) {
    const grid = grids[o]!;
    const scale = Math.fround(grid.scale);
    for (let a = 0; a < p; a++) {
      const x = w[part[a]! * outF + o]!;
      exact[a] = Math.fround(x) / scale + grid.zeroPoint;
      codes[a] = Math.min(
        qmax,
        Math.max(0, roundHalfEven(Math.fround(x) / scale) + grid.zeroPoint),
      );
      e[a] = value(codes[a]!, grid.zeroPoint, scale) - x;
    }
    refine(g, p, codes, exact, e, grid.zeroPoint, scale, qmax, steps);
    for (let a = 0; a < p; a++) {
      out[part[a]! * outF + o] = value(codes[a]!, grid.zeroPoint, scale);
      errors[a * outF + o] = e[a]!;
    }
  }
  return errors;
}

function value(code: number, zeroPoint: number, scale: number): number {
  return Math.fround((code - zeroPoint) * scale);
}

/**
 * Greedy flips between the two grid points around each exact value (see the file comment);
 * `codes` and `e` are updated in place.
 */
function refine(
  g: Float64Array,
  p: number,
  codes: Float64Array,
  exact: Float64Array,
  e: Float64Array,
  zeroPoint: number,
  scale: number,
  qmax: number,
  steps: number,
): void {
  const ge = new Float64Array(p);
  for (let a = 0; a < p; a++) {
    let s = 0;
    for (let b = 0; b < p; b++) s += g[a * p + b]! * e[b]!;
    ge[a] = s;
  }
  const flipped = new Uint8Array(p);
  for (let step = 0; step < steps; step++) {
    let best = -1;
    let bestChange = 0;
    let bestD = 0;
    for (let a = 0; a < p; a++) {
      if (flipped[a]) continue;
      const other = exact[a]! >= codes[a]! ? codes[a]! + 1 : codes[a]! - 1;
      if (other < 0 || other > qmax) continue;
      const d = value(other, zeroPoint, scale) - value(codes[a]!, zeroPoint, scale);
      const change = 2 * d * ge[a]! + d * d * g[a * p + a]!;
      if (change < bestChange) {
        best = a;
        bestChange = change;
        bestD = d;
      }
    }
    if (best < 0) return;
    flipped[best] = 1;
    codes[best] = exact[best]! >= codes[best]! ? codes[best]! + 1 : codes[best]! - 1;
    e[best] = e[best]! + bestD;
    for (let a = 0; a < p; a++) ge[a] = ge[a]! + bestD * g[a * p + best]!;
  }
}

/** w_rest += −(G_rr + λI)⁻¹ G_rp · e_part, for every output channel at once. */
function compensate(
  w: Float64Array,
  gram: Float64Array,
  inF: number,
  outF: number,
  part: readonly number[],
  rest: readonly number[],
  errors: Float64Array,
  lambda: number,
): void {
  const r = rest.length;
  const grr = new Float64Array(r * r);
  for (let a = 0; a < r; a++)
    for (let b = 0; b < r; b++) grr[a * r + b] = gram[rest[a]! * inF + rest[b]!]!;
  const rhs = new Float64Array(r * outF);
  for (let a = 0; a < r; a++) {
    const row = rest[a]! * inF;
    for (let k = 0; k < part.length; k++) {
      const f = gram[row + part[k]!]!;
      if (f === 0) continue;
      for (let o = 0; o < outF; o++)
        rhs[a * outF + o] = rhs[a * outF + o]! - f * errors[k * outF + o]!;
    }
  }
  const delta = ridgeSolve(grr, r, rhs, outF, lambda);
  for (let a = 0; a < r; a++) {
    const row = rest[a]! * outF;
    for (let o = 0; o < outF; o++) w[row + o] = w[row + o]! + delta[a * outF + o]!;
  }
}
