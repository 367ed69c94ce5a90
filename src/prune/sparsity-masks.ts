/**
 * Sparsity masks of one weight matrix (rows = outputs, columns = inputs) from a score per
 * weight (pruning-methods.md §3): the lowest-scored weights are set to zero, unstructured (a
 * fraction of the whole matrix or of each row) or N:M (n kept in every m consecutive inputs of
 * a row, the layout sparse tensor cores read). Scores are |w| (magnitude) or |w|·‖x_j‖ (Wanda,
 * arXiv 2306.11695).
 */
import type { WeightMatrix } from './sparsity-layers.js';

/** A fraction of the weights, or n kept in every group of m consecutive inputs of a row. */
export type SparsityPattern =
  { kind: 'unstructured'; sparsity: number } | { kind: 'n-m'; n: number; m: number };

/** Where an unstructured fraction is counted: over the whole matrix, or within each row. */
export type MaskScope = 'layer' | 'row';

/** Marks in `pruned` (1 = zero it) the `count` lowest of scores[from, from + length). */
export function markLowest(
  scores: Float64Array,
  from: number,
  length: number,
  count: number,
  pruned: Uint8Array,
): void {
  if (count <= 0) return;
  const slice = scores.slice(from, from + length).sort();
  const threshold = slice[count - 1]!;
  // everything below the threshold, then ties at it in index order until `count` are marked
  let marked = 0;
  for (let i = from; i < from + length; i++) {
    if (scores[i]! < threshold) {
      pruned[i] = 1;
      marked++;
    }
  }
  for (let i = from; i < from + length && marked < count; i++) {
    if (scores[i] === threshold) {
      pruned[i] = 1;
      marked++;
    }
  }
}

/**
 * Marks, in each of `rows` rows of a [rows, stride] score matrix, the m − n lowest of every
 * group of m consecutive columns in [from, to); a last group of s < m columns loses s − n.
 */
export function markNM(
  scores: Float64Array,
  rows: number,
  stride: number,
  range: { from: number; to: number },
  nm: { n: number; m: number },
  pruned: Uint8Array,
): void {
  for (let r = 0; r < rows; r++) {
    for (let g = range.from; g < range.to; g += nm.m) {
      const size = Math.min(nm.m, range.to - g);
      markLowest(scores, r * stride + g, size, size - nm.n, pruned);
    }
  }
}

/** The mask of `pattern` over `scores` (same layout as the weight). */
export function maskOf(
  scores: Float64Array,
  rows: number,
  cols: number,
  pattern: SparsityPattern,
  scope: MaskScope,
): Uint8Array {
  const pruned = new Uint8Array(rows * cols);
  if (pattern.kind === 'n-m') {
    markNM(scores, rows, cols, { from: 0, to: cols }, pattern, pruned);
  } else if (scope === 'layer') {
    markLowest(scores, 0, rows * cols, Math.round(pattern.sparsity * rows * cols), pruned);
  } else {
    const count = Math.round(pattern.sparsity * cols);
    for (let r = 0; r < rows; r++) markLowest(scores, r * cols, cols, count, pruned);
  }
  return pruned;
}

/** |w|: magnitude pruning. */
export function magnitudeScores(weight: WeightMatrix): Float64Array {
  return weight.data.map(Math.abs);
}

/** |w_rj|·‖x_j‖, with ‖x_j‖ the norm of input j over the calibration rows: Wanda. */
export function wandaScores(weight: WeightMatrix, inputNorms: Float64Array): Float64Array {
  const { data, rows, cols } = weight;
  const scores = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let j = 0; j < cols; j++)
      scores[r * cols + j] = Math.abs(data[r * cols + j]!) * inputNorms[j]!;
  }
  return scores;
}

/** The weight with the marked entries set to zero. */
export function applyMask(weight: WeightMatrix, pruned: Uint8Array): WeightMatrix {
  const data = Float64Array.from(weight.data);
  for (let i = 0; i < data.length; i++) if (pruned[i]) data[i] = 0;
  return { ...weight, data };
}
