/**
 * The arithmetic of low-rank factorization (pruning-methods.md §5): a layer y = x·W with
 * W ∈ R^{in×out} becomes y = (x·A)·B with A ∈ R^{in×k}, B ∈ R^{k×out}, from a truncated SVD
 * (ml-matrix) of W or of the whitened W; and the choice of every layer's k under one budget of
 * parameters. Matrices are row-major Float64Arrays, W laid out [in, out] as a MatMul reads it.
 */
import { Matrix, SVD } from 'ml-matrix';
import { CalibrationError } from '../errors.js';
import { cholesky, withShift } from './linalg.js';

/** A layer's singular values and the factors of any rank from them. */
export interface LayerSpectrum {
  inFeatures: number;
  outFeatures: number;
  /**
   * Singular values in decreasing order: of W (plain), or of Sᵀ·W where S·Sᵀ is the input's
   * second moment (whitened), so that Σ_{i>k} σᵢ² is the error the rank-k factors leave in
   * ‖W − A·B‖²_F, respectively in the mean squared layer output E‖x·(W − A·B)‖².
   */
  values: Float64Array;
  /** Factors of rank k (1 ≤ k ≤ min(in, out)) as float32: a [in, k], b [k, out]. */
  factors(k: number): { a: Float32Array; b: Float32Array };
}

/** One matrix's SVD: U [rows, r], σ [r], V [cols, r], r = min(rows, cols). */
function svdOf(data: Float64Array, rows: number, cols: number) {
  const svd = new SVD(Matrix.from1DArray(rows, cols, data), { autoTranspose: true });
  return {
    u: svd.leftSingularVectors,
    v: svd.rightSingularVectors,
    values: Float64Array.from(svd.diagonal),
  };
}

/**
 * Splits σ evenly, A = U_k·√Σ_k and B = √Σ_k·V_kᵀ, so that both factors have the same scale
 * (what a later per-channel quantization of either factor wants).
 */
function splitFactors(
  svd: ReturnType<typeof svdOf>,
  k: number,
  inFeatures: number,
  outFeatures: number,
) {
  const r = svd.values.length;
  if (!(Number.isInteger(k) && k >= 1 && k <= r)) {
    throw new RangeError(`rank must be an integer in [1, ${r}], got ${k}`);
  }
  const root = Array.from(svd.values.subarray(0, k), (s) => Math.sqrt(Math.max(s, 0)));
  const a = new Float64Array(inFeatures * k);
  for (let i = 0; i < inFeatures; i++) {
    for (let j = 0; j < k; j++) a[i * k + j] = svd.u.get(i, j) * root[j]!;
  }
  const b = new Float32Array(k * outFeatures);
  for (let j = 0; j < k; j++) {
    for (let o = 0; o < outFeatures; o++) b[j * outFeatures + o] = root[j]! * svd.v.get(o, j);
  }
  return { a, b };
}

/** The truncated SVD of W itself: minimises ‖W − A·B‖_F (Eckart–Young). */
export function plainSpectrum(
  weight: Float64Array,
  inFeatures: number,
  outFeatures: number,
): LayerSpectrum {
  const svd = svdOf(weight, inFeatures, outFeatures);
  return {
    inFeatures,
    outFeatures,
    values: svd.values,
    factors(k) {
      const { a, b } = splitFactors(svd, k, inFeatures, outFeatures);
      return { a: Float32Array.from(a), b };
    },
  };
}

/**
 * The truncated SVD of the whitened weight, minimising the layer's output error on the
 * calibration inputs instead of the weight error (SVD-LLM, arXiv 2403.07378). With the second
 * moment G = E[xᵀx] = L·Lᵀ (lower Cholesky factor L), E‖x·Δ‖² = ‖Lᵀ·Δ‖²_F; so Lᵀ·W is
 * truncated to U_k·Σ_k·V_kᵀ and mapped back, A = L⁻ᵀ·U_k·√Σ_k, B = √Σ_k·V_kᵀ. (The lower factor
 * itself, L·W, would weigh the error by LᵀL ≠ G.)
 *
 * `gram` is G ([in, in], row-major); `damping` adds damping·mean(diag G) to its diagonal, which
 * keeps L⁻ᵀ from amplifying directions the calibration images never excite.
 */
export function whitenedSpectrum(
  weight: Float64Array,
  inFeatures: number,
  outFeatures: number,
  gram: Float64Array,
  damping: number,
): LayerSpectrum {
  const n = inFeatures;
  const l = dampedCholesky(gram, n, damping);
  const lt = Matrix.from1DArray(n, n, l).transpose();
  const whitened = lt.mmul(Matrix.from1DArray(n, outFeatures, weight));
  const svd = svdOf(Float64Array.from(whitened.to1DArray()), n, outFeatures);
  return {
    inFeatures,
    outFeatures,
    values: svd.values,
    factors(k) {
      const { a, b } = splitFactors(svd, k, inFeatures, outFeatures);
      return { a: Float32Array.from(solveUpperTransposed(l, n, a, k)), b };
    },
  };
}

/** The lower Cholesky factor of G + damping·mean(diag G)·I (raised further if G is singular). */
function dampedCholesky(gram: Float64Array, n: number, damping: number): Float64Array {
  let trace = 0;
  for (let i = 0; i < n; i++) trace += gram[i * n + i]!;
  // an all-zero input (a dead layer) still gets a positive diagonal to factor
  const scale = trace > 0 ? trace / n : 1;
  const damped = Float64Array.from(gram);
  for (let i = 0; i < n; i++) damped[i * n + i] = damped[i * n + i]! + damping * scale;
  const l = withShift(damped, n, 1e-9 * scale, (g) => cholesky(g, n));
  if (!l) {
    throw new CalibrationError(
      'the calibration Gram matrix is not positive semi-definite (NaN or overflow in the activations)',
    );
  }
  return l;
}

/**
 * X with Lᵀ·X = B, for lower-triangular L (n × n) and B (n × m), by back substitution: row i
 * of X is (row i of B − Σ_{j>i} L[j][i]·row j of X) / L[i][i].
 */
export function solveUpperTransposed(
  l: Float64Array,
  n: number,
  b: Float64Array,
  m: number,
): Float64Array {
  const x = Float64Array.from(b);
  for (let i = n - 1; i >= 0; i--) {
    const rowI = i * m;
    for (let j = i + 1; j < n; j++) {
      const f = l[j * n + i]!;
      if (f === 0) continue;
      const rowJ = j * m;
      for (let c = 0; c < m; c++) x[rowI + c] = x[rowI + c]! - f * x[rowJ + c]!;
    }
    const d = l[i * n + i]!;
    for (let c = 0; c < m; c++) x[rowI + c] = x[rowI + c]! / d;
  }
  return x;
}

/** Σ_{i<k} σᵢ² / Σ σᵢ²: the share of the (weight or output) energy rank k keeps. */
export function retainedEnergy(values: Float64Array, k: number): number {
  let kept = 0;
  let total = 0;
  values.forEach((s, i) => {
    total += s * s;
    if (i < k) kept += s * s;
  });
  return total > 0 ? kept / total : 1;
}

/**
 * The largest multiple of `roundTo` with k·(in + out) < in·out: beyond it the two thin
 * MatMuls do at least as many multiply-accumulates as the dense one and cannot be faster.
 * 0 when no rank qualifies. Example: 192 → 768 breaks even at 153.6, so 152 with roundTo 8.
 */
export function breakEvenRank(inFeatures: number, outFeatures: number, roundTo: number): number {
  const exact = Math.ceil((inFeatures * outFeatures) / (inFeatures + outFeatures)) - 1;
  return Math.floor(exact / roundTo) * roundTo;
}

/** What the rank allocation needs of one layer. */
export interface RankRequest {
  inFeatures: number;
  outFeatures: number;
  /** Singular values (of W or of the whitened W), decreasing. */
  values: Float64Array;
}

interface Allocation {
  request: RankRequest;
  total: number;
  max: number;
  rank: number;
  dense: boolean;
  done: boolean;
}

/**
 * Ranks under one budget of weight parameters shared by all layers: undefined for a layer kept
 * dense. Greedy by the relative energy each step adds per parameter it costs: a step is
 * `roundTo` more singular values (cost roundTo·(in + out)), or, for a layer at its break-even
 * rank, going back to the dense weight (cost in·out − k·(in + out), gain the energy left). The
 * energy is relative to the layer's own, so that layers of different output scales compare.
 * Every factored layer starts at rank `roundTo`; a budget below that is a RangeError.
 */
export function allocateRanks(
  requests: readonly RankRequest[],
  budget: number,
  roundTo: number,
): (number | undefined)[] {
  const layers: Allocation[] = requests.map((request) => {
    const max = breakEvenRank(request.inFeatures, request.outFeatures, roundTo);
    const total = request.values.reduce((sum, s) => sum + s * s, 0);
    const rank = max > 0 ? roundTo : 0;
    return { request, total, max, rank, dense: max === 0, done: max === 0 };
  });
  let spent = layers.reduce((sum, a) => sum + cost(a), 0);
  if (spent > budget) {
    throw new RangeError(
      `a parameter budget of ${Math.round(budget)} is below the ${spent} that rank ${roundTo} in every layer needs`,
    );
  }
  for (;;) {
    const best = bestStep(layers, budget - spent);
    if (!best) break;
    spent += best.cost;
    if (best.layer.rank + roundTo <= best.layer.max) best.layer.rank += roundTo;
    else best.layer.dense = true;
    best.layer.done ||= best.layer.dense;
  }
  return layers.map((a) => (a.dense ? undefined : a.rank));

  function cost(a: Allocation): number {
    const { inFeatures: i, outFeatures: o } = a.request;
    return a.dense ? i * o : a.rank * (i + o);
  }

  function bestStep(all: Allocation[], left: number) {
    let best: { layer: Allocation; cost: number; score: number } | undefined;
    for (const layer of all) {
      if (layer.done) continue;
      const step = nextStep(layer);
      if (step.cost > left) {
        // the budget only shrinks: this layer's next step will never fit
        layer.done = true;
        continue;
      }
      const score = step.gain / step.cost;
      if (!best || score > best.score) best = { layer, ...step, score };
    }
    return best;
  }

  function nextStep(a: Allocation) {
    const { inFeatures: i, outFeatures: o, values } = a.request;
    const norm = a.total > 0 ? a.total : 1;
    if (a.rank + roundTo <= a.max) {
      let gain = 0;
      for (let j = a.rank; j < a.rank + roundTo; j++) gain += values[j]! ** 2;
      return { cost: roundTo * (i + o), gain: gain / norm };
    }
    let left = 0;
    for (let j = a.rank; j < values.length; j++) left += values[j]! ** 2;
    return { cost: i * o - a.rank * (i + o), gain: left / norm };
  }
}

/**
 * The same fraction of parameters in every layer: k = rank·in·out / (in + out), rounded down to
 * a multiple of `roundTo` (at least `roundTo`); undefined (dense) beyond break-even.
 */
export function uniformRanks(
  requests: readonly RankRequest[],
  rank: number,
  roundTo: number,
): (number | undefined)[] {
  return requests.map(({ inFeatures: i, outFeatures: o }) => {
    const k = Math.max(roundTo, Math.floor((rank * i * o) / (i + o) / roundTo) * roundTo);
    return k <= breakEvenRank(i, o, roundTo) ? k : undefined;
  });
}
