/**
 * Classification metrics over rows of logits, as plain loops over typed arrays.
 */

/** Indices of the k largest values of row `row` of a [rows, classes] array, largest first. */
export function topK(logits: Float32Array, classes: number, row: number, k: number): number[] {
  const best: number[] = [];
  const base = row * classes;
  for (let c = 0; c < classes; c++) {
    const v = logits[base + c]!;
    if (best.length === k && v <= logits[base + best[k - 1]!]!) continue;
    let i = best.length === k ? k - 1 : best.length;
    if (best.length < k) best.push(c);
    while (i > 0 && logits[base + best[i - 1]!]! < v) {
      best[i] = best[i - 1]!;
      i--;
    }
    best[i] = c;
  }
  return best;
}

export function argmax(logits: Float32Array, classes: number, row: number): number {
  const base = row * classes;
  let best = 0;
  for (let c = 1; c < classes; c++) if (logits[base + c]! > logits[base + best]!) best = c;
  return best;
}

/** log-softmax of one row, in float64 for a stable KL. */
export function logSoftmax(logits: Float32Array, classes: number, row: number): Float64Array {
  const base = row * classes;
  let max = -Infinity;
  for (let c = 0; c < classes; c++) max = Math.max(max, logits[base + c]!);
  let sum = 0;
  for (let c = 0; c < classes; c++) sum += Math.exp(logits[base + c]! - max);
  const logSum = Math.log(sum) + max;
  const out = new Float64Array(classes);
  for (let c = 0; c < classes; c++) out[c] = logits[base + c]! - logSum;
  return out;
}

/** KL(p‖q) where p is the baseline's softmax and q the candidate's, in nats. */
export function klDivergence(
  baseline: Float32Array,
  candidate: Float32Array,
  classes: number,
  row: number,
): number {
  const logP = logSoftmax(baseline, classes, row);
  const logQ = logSoftmax(candidate, classes, row);
  let kl = 0;
  for (let c = 0; c < classes; c++) kl += Math.exp(logP[c]!) * (logP[c]! - logQ[c]!);
  return Math.max(kl, 0);
}

/** Median of a list of numbers (mean of the two middle values for an even count). */
export function median(values: readonly number[]): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}
