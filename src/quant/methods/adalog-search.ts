/**
 * AdaLog's searches (arXiv:2407.12951, §3.3; reference notes §14(3)), scored by the error of the
 * layer output the quantized tensor feeds, as the paper scores them:
 *
 * - post-Softmax: s = 1 and every base numerator q_b in 10 … 138 tried; the score is
 *   Σ(P̂·V̂ − P·V)² over sampled attention rows, V̂ the value operand on its uniform grid;
 * - post-GELU (η = 0.16997): the fast progressive combining search (FPCS). The bases are ranked
 *   at s = max(x + η), first all of them by the tensor's own squared error, then the best
 *   `preselect` by the output error (the paper scores all 129 on the output; the tensor error
 *   only narrows the list, at a fraction of the cost); the best `topBases` are crossed with
 *   `scales` values of s spaced linearly
 *   from the 0.9 quantile to the max of the positive x + η; the best `keep` pairs are refined
 *   `steps` times, each pair giving `perStep` new scales spread over ±½ of the current spacing,
 *   which then shrinks by 1/(perStep − ½). The score is Σ(X̂·Ŵ − X·W)² over sampled rows of
 *   fc2's input, Ŵ its quantized weight, each row weighted by the rows it stands for: the
 *   sample holds the rows of largest max|x| (outlier tokens, which a strided sample misses and
 *   which dominate the error of a clipping grid) once each, and strided rows for the rest.
 */
import {
  adaLogFakeQuantize,
  adaLogSquaredError,
  geluShift,
  type AdaLogQuantizer,
} from '../adalog.js';

/** q_b candidates of the paper: 10 … 138 (base 2^0.27 … 2^3.73 with r = 37). */
export const adaLogBaseNumerators: readonly number[] = Array.from(
  { length: 129 },
  (_, i) => 10 + i,
);

/** Rows of a matrix product problem: X [rows × inner] against W [inner × outer], and X·W. */
export interface OutputProblem {
  x: Float32Array;
  rows: number;
  inner: number;
  /** The quantized weight the rows meet, [inner × outer] row-major. */
  weight: Float32Array;
  outer: number;
  /** The float reference output, [rows × outer]. */
  reference: Float64Array;
  /** How many rows of the whole tensor each sampled row stands for (1 when absent). */
  rowWeights?: Float64Array;
  /** max(x + η) over the whole tensor, when the sample may have missed it. */
  max?: number;
}

/** Σ(X̂·W − reference)² for candidate rows X̂ [rows × inner], in float64. */
export function outputSquaredError(xq: Float32Array, p: OutputProblem): number {
  const acc = new Float64Array(p.outer);
  let error = 0;
  for (let r = 0; r < p.rows; r++) {
    acc.fill(0);
    for (let k = 0; k < p.inner; k++) {
      const a = xq[r * p.inner + k]!;
      if (a === 0) continue;
      const off = k * p.outer;
      for (let m = 0; m < p.outer; m++) acc[m]! += a * p.weight[off + m]!;
    }
    let row = 0;
    for (let m = 0; m < p.outer; m++) {
      const d = acc[m]! - p.reference[r * p.outer + m]!;
      row += d * d;
    }
    error += row * (p.rowWeights?.[r] ?? 1);
  }
  return error;
}

/** X·W in float64 (the reference of a problem). */
export function matmulRows(
  x: Float32Array,
  rows: number,
  inner: number,
  weight: Float32Array,
  outer: number,
): Float64Array {
  const out = new Float64Array(rows * outer);
  for (let r = 0; r < rows; r++) {
    for (let k = 0; k < inner; k++) {
      const a = x[r * inner + k]!;
      if (a === 0) continue;
      for (let m = 0; m < outer; m++) out[r * outer + m]! += a * weight[k * outer + m]!;
    }
  }
  return out;
}

/**
 * Sampled attention rows: `p` holds rows of N probabilities, row i belonging to head group
 * `group[i]`, whose value matrix (N × d, already on its quantized grid) starts at
 * `group[i]·N·d` of `values`; `reference` is P·V with the float V.
 */
export interface AttentionProblem {
  p: Float32Array;
  group: Int32Array;
  values: Float32Array;
  n: number;
  d: number;
  reference: Float64Array;
}

/** Σ(P̂·V̂ − P·V)² over the sampled rows, in float64. */
export function attentionSquaredError(pq: Float32Array, a: AttentionProblem): number {
  const acc = new Float64Array(a.d);
  let error = 0;
  for (let i = 0; i < a.group.length; i++) {
    acc.fill(0);
    const base = a.group[i]! * a.n * a.d;
    for (let j = 0; j < a.n; j++) {
      const w = pq[i * a.n + j]!;
      if (w === 0) continue;
      const off = base + j * a.d;
      for (let m = 0; m < a.d; m++) acc[m]! += w * a.values[off + m]!;
    }
    for (let m = 0; m < a.d; m++) {
      const e = acc[m]! - a.reference[i * a.d + m]!;
      error += e * e;
    }
  }
  return error;
}

/** P·V in float64 for sampled rows (the reference of an attention problem). */
export function attentionReference(
  p: Float32Array,
  group: Int32Array,
  v: Float32Array,
  n: number,
  d: number,
): Float64Array {
  const out = new Float64Array(group.length * d);
  for (let i = 0; i < group.length; i++) {
    const base = group[i]! * n * d;
    for (let j = 0; j < n; j++) {
      const w = p[i * n + j]!;
      for (let m = 0; m < d; m++) out[i * d + m]! += w * v[base + j * d + m]!;
    }
  }
  return out;
}

/** The post-Softmax quantizer: s = 1, the q_b of least attention-output error. */
export function searchSoftmaxBase(
  a: AttentionProblem,
  bits: number,
  hardware: boolean,
  bases: readonly number[] = adaLogBaseNumerators,
): { quantizer: AdaLogQuantizer; error: number } {
  let best: { quantizer: AdaLogQuantizer; error: number } | undefined;
  for (const baseNumerator of bases) {
    const quantizer = { bits, baseNumerator, scale: 1, hardware };
    const error = attentionSquaredError(adaLogFakeQuantize(a.p, quantizer), a);
    if (!best || error < best.error) best = { quantizer, error };
  }
  return best!;
}

/** FPCS's sizes (the paper's: 8 bases × 16 scales, keep 32, 6 steps of 4 scales). */
export interface ProgressiveSearch {
  /** Bases (of the 129) ranked by output error after a ranking by tensor error. */
  preselect: number;
  topBases: number;
  scales: number;
  keep: number;
  steps: number;
  perStep: number;
}

export const paperProgressiveSearch: ProgressiveSearch = {
  preselect: 129,
  topBases: 8,
  scales: 16,
  keep: 32,
  steps: 6,
  perStep: 4,
};

interface Scored {
  quantizer: AdaLogQuantizer;
  error: number;
}

/** The post-GELU quantizer by FPCS on fc2's output (see the file comment). */
export function searchGeluQuantizer(
  problem: OutputProblem,
  bits: number,
  hardware: boolean,
  search: ProgressiveSearch = paperProgressiveSearch,
): Scored & { evaluated: number } {
  let evaluated = 0;
  const score = (baseNumerator: number, scale: number): Scored => {
    const quantizer = { bits, baseNumerator, scale, shift: geluShift, hardware };
    evaluated++;
    return {
      quantizer,
      error: outputSquaredError(adaLogFakeQuantize(problem.x, quantizer), problem),
    };
  };
  const { low, high } = scaleRange(problem.x, problem.max);
  const tensorError = (b: number) =>
    adaLogSquaredError(problem.x, {
      bits,
      baseNumerator: b,
      scale: high,
      shift: geluShift,
      hardware,
    });
  const bases = adaLogBaseNumerators
    .map((b) => ({ b, error: tensorError(b) }))
    .sort((u, v) => u.error - v.error)
    .slice(0, search.preselect)
    .map(({ b }) => score(b, high))
    .sort((u, v) => u.error - v.error)
    .slice(0, search.topBases)
    .map((s) => s.quantizer.baseNumerator);
  const count = Math.max(2, search.scales);
  let spacing = (high - low) / (count - 1);
  let kept: Scored[] = [];
  for (const b of bases) {
    for (let i = 0; i < count; i++) kept.push(score(b, low + spacing * i));
  }
  kept = best(kept, search.keep);
  for (let step = 0; step < search.steps && spacing > 0; step++) {
    const fresh: Scored[] = [];
    for (const k of kept) {
      for (let j = 0; j < search.perStep; j++) {
        const offset = spacing * ((j + 0.5) / search.perStep - 0.5);
        const scale = k.quantizer.scale + offset;
        if (scale > 0) fresh.push(score(k.quantizer.baseNumerator, scale));
      }
    }
    kept = best([...kept, ...fresh], search.keep);
    spacing /= search.perStep - 0.5;
  }
  return { ...kept[0]!, evaluated };
}

function best(candidates: Scored[], keep: number): Scored[] {
  return candidates.sort((u, v) => u.error - v.error).slice(0, Math.max(1, keep));
}

/** The 0.9 quantile and the max of the positive x + η (η the GELU shift). */
function scaleRange(x: Float32Array, max?: number): { low: number; high: number } {
  const positive = Float32Array.from(x, (v) => v + geluShift)
    .filter((v) => v > 0)
    .sort();
  if (positive.length === 0) return { low: 1, high: max ?? 1 };
  const high = Math.max(positive[positive.length - 1]!, max ?? 0);
  return { low: positive[Math.floor(0.9 * (positive.length - 1))]!, high };
}
