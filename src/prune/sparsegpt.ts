/**
 * SparseGPT (arXiv 2301.00774, pruning-methods.md §3.2): one-shot pruning of a linear layer that
 * zeroes weights and updates the ones kept so that the layer's output on the calibration inputs
 * moves as little as possible. Columns (inputs) are swept left to right; pruning weight (r, j)
 * leaves an error e = w / [U]_jj that the optimal brain surgeon update spreads over the
 * remaining columns of the row, W[r, j:] −= e·U[j, j:], where U is the upper Cholesky factor of
 * H⁻¹ and H = E[xᵀx] the inputs' second moment. The mask is chosen as the sweep goes, by the
 * saliency w² / [U]_jj² of the weights as they are after the earlier updates: per block of
 * columns for a fraction, per group of m columns for N:M.
 */
import { CalibrationError } from '../errors.js';
import { cholesky, spdInverse, withShift } from './linalg.js';
import { markLowest, markNM, type SparsityPattern } from './sparsity-masks.js';
import type { WeightMatrix } from './sparsity-layers.js';

export interface SparseGptOptions {
  /** Columns swept together before their error is passed to the rest (default 128). */
  blockSize?: number;
  /** Added to H's diagonal, relative to its mean (default 0.01, the paper's). */
  damping?: number;
}

/**
 * The pruned and updated weight; `gram` is H = E[xᵀx] over the layer's inputs ([cols, cols]).
 * Exactly the entries of the returned mask are zero (plus any weight that was zero before).
 */
export function sparseGpt(
  weight: WeightMatrix,
  gram: Float64Array,
  pattern: SparsityPattern,
  options: SparseGptOptions = {},
): { weight: WeightMatrix; pruned: Uint8Array } {
  const { rows, cols } = weight;
  const w = Float64Array.from(weight.data);
  const u = inverseFactor(gram, w, rows, cols, options.damping ?? 0.01);
  const pruned = new Uint8Array(rows * cols);
  const requested = options.blockSize ?? 128;
  // an N:M group must not straddle two blocks
  const blockSize =
    pattern.kind === 'n-m' ? Math.max(pattern.m, requested - (requested % pattern.m)) : requested;
  for (let from = 0; from < cols; from += blockSize) {
    const to = Math.min(from + blockSize, cols);
    const error = sweepBlock(w, u, { rows, cols, from, to }, pattern, pruned);
    propagate(w, u, error, { rows, cols, from, to });
  }
  for (let i = 0; i < w.length; i++) if (pruned[i]) w[i] = 0;
  return { weight: { data: w, rows, cols }, pruned };
}

/**
 * U, the upper Cholesky factor of (H + λ·mean(diag H)·I)⁻¹, row-major. Inputs that never fire
 * (H_jj = 0) get H_jj = 1 and their weights zeroed in `w`: nothing can be learnt about them.
 */
function inverseFactor(
  gram: Float64Array,
  w: Float64Array,
  rows: number,
  cols: number,
  damping: number,
): Float64Array {
  const h = Float64Array.from(gram);
  let trace = 0;
  for (let j = 0; j < cols; j++) {
    if (h[j * cols + j] === 0) {
      h[j * cols + j] = 1;
      for (let r = 0; r < rows; r++) w[r * cols + j] = 0;
    }
    trace += h[j * cols + j]!;
  }
  const lambda = (damping * trace) / cols;
  for (let j = 0; j < cols; j++) h[j * cols + j] = h[j * cols + j]! + lambda;
  const inverse = withShift(h, cols, 1e-9 * (trace / cols), (a) => spdInverse(a, cols));
  const l = inverse && cholesky(inverse, cols);
  if (!l) {
    throw new CalibrationError(
      'SparseGPT: the Hessian of the calibration inputs cannot be inverted (NaN or overflow)',
    );
  }
  const upper = new Float64Array(cols * cols);
  for (let i = 0; i < cols; i++) {
    for (let j = i; j < cols; j++) upper[i * cols + j] = l[j * cols + i]!;
  }
  return upper;
}

interface Block {
  rows: number;
  cols: number;
  from: number;
  to: number;
}

/** Saliency w² / U_jj² of columns [from, to) of every row, into `s` ([rows, cols]). */
function saliency(
  s: Float64Array,
  w: Float64Array,
  u: Float64Array,
  b: Block,
  range: { from: number; to: number },
) {
  const { from, to } = range;
  for (let r = 0; r < b.rows; r++) {
    for (let j = from; j < to; j++) {
      const d = u[j * b.cols + j]!;
      s[r * b.cols + j] = (w[r * b.cols + j]! / d) ** 2;
    }
  }
  return s;
}

/**
 * Prunes columns [from, to) one at a time, each error updating the block's later columns;
 * returns the errors, [rows, to − from].
 */
function sweepBlock(
  w: Float64Array,
  u: Float64Array,
  b: Block,
  pattern: SparsityPattern,
  pruned: Uint8Array,
): Float64Array {
  const { rows, cols, from, to } = b;
  const width = to - from;
  if (pattern.kind === 'unstructured') markBlock(w, u, b, pattern.sparsity, pruned);
  const error = new Float64Array(rows * width);
  const scores = new Float64Array(rows * cols);
  for (let j = from; j < to; j++) {
    if (pattern.kind === 'n-m' && (j - from) % pattern.m === 0) {
      const group = { from: j, to: Math.min(j + pattern.m, to) };
      markNM(saliency(scores, w, u, b, group), rows, cols, group, pattern, pruned);
    }
    const d = u[j * cols + j]!;
    for (let r = 0; r < rows; r++) {
      if (!pruned[r * cols + j]) continue;
      const e = w[r * cols + j]! / d;
      error[r * width + (j - from)] = e;
      const row = r * cols;
      for (let t = j; t < to; t++) w[row + t] = w[row + t]! - e * u[j * cols + t]!;
    }
  }
  return error;
}

/** The block's mask for a fraction: the lowest saliencies of the whole block, all rows. */
function markBlock(
  w: Float64Array,
  u: Float64Array,
  b: Block,
  sparsity: number,
  pruned: Uint8Array,
) {
  const { rows, cols, from, to } = b;
  const width = to - from;
  const all = saliency(new Float64Array(rows * cols), w, u, b, { from, to });
  const block = new Float64Array(rows * width);
  for (let r = 0; r < rows; r++) block.set(all.subarray(r * cols + from, r * cols + to), r * width);
  const marks = new Uint8Array(rows * width);
  markLowest(block, 0, rows * width, Math.round(sparsity * rows * width), marks);
  for (let r = 0; r < rows; r++)
    pruned.set(marks.subarray(r * width, (r + 1) * width), r * cols + from);
}

/** W[:, to:] −= E·U[from:to, to:]: the block's errors reach the columns after it. */
function propagate(w: Float64Array, u: Float64Array, error: Float64Array, b: Block): void {
  const { rows, cols, from, to } = b;
  const width = to - from;
  for (let r = 0; r < rows; r++) {
    const row = r * cols;
    for (let k = 0; k < width; k++) {
      const e = error[r * width + k]!;
      if (e === 0) continue;
      const uRow = (from + k) * cols;
      for (let t = to; t < cols; t++) w[row + t] = w[row + t]! - e * u[uRow + t]!;
    }
  }
}
