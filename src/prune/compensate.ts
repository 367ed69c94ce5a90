/**
 * Compensation without gradients: what the removed channels contributed to the next layer is
 * estimated from calibration statistics and folded into that layer's kept weights and bias
 * (pruning-methods.md §2.3). For a layer y = Σ_c x_c·W[c, :] + b reading channels c, with the
 * removed channels R and the kept channels K, and the dense output t = Wᵀx + b as target:
 *
 * - `mean`: b ← μ_t − W_Kᵀ μ_K = b + W_Rᵀ μ_R, so that the mean output is kept: the removed
 *   channels are replaced by their means (variance-based pruning, arXiv 2507.12988).
 * - `ridge`: W_K ← argmin E‖t − μ_t − (x_K − μ_K)ᵀ W'‖² + λ‖W' − W_K‖², in closed form
 *   W_K ← (C_KK + λI)⁻¹ (C_Kt + λ W_K), and b ← μ_t − W_Kᵀ μ_K, on centred covariances
 *   C (the regression has an unpenalised intercept). As C_Kt = C_KK W_K + C_KR W_R, this is
 *   the fold of CORP (arXiv 2602.05243): W_K ← W_K + B·W_R with
 *   B = (C_KK + λI)⁻¹ C_KR = argmin ‖X̃_R − X̃_K B‖² + λ‖B‖², and
 *   b ← b + W_Rᵀ (μ_R − Bᵀ μ_K). λ = alpha · mean(diag C_KK), so that alpha does not depend
 *   on the activations' scale. The regression form is kept because it also takes another
 *   target (a dense model's output for a pruned model's input) without change.
 *
 * The solve is in float64 through a Cholesky factorisation (linalg.ts).
 */
import type { GraphIndex } from '../graph/graph.js';
import { CalibrationError } from '../errors.js';
import type { LinearLayer } from '../vit/types.js';
import { spdSolve, withShift } from './linalg.js';
import type { ChannelMoments } from './statistics.js';
import type { WeightUpdates } from './surgery.js';
import { readConstant } from './tensors.js';
import type { CompensationMethod, GroupSelection } from './types.js';

export interface CompensationOptions {
  method: CompensationMethod;
  /** Ridge strength relative to the mean variance of the kept channels (default 1e-2). */
  alpha?: number;
}

/** A layer's weight as [in, out] rows, whatever its layout, in float64. */
export interface Rows {
  in: number;
  out: number;
  /** Row-major [in, out]. */
  data: Float64Array;
}

export function toRows(layer: LinearLayer, data: Float32Array): Rows {
  const { inFeatures: n, outFeatures: m } = layer;
  const rows = new Float64Array(n * m);
  if (layer.weightLayout === 'in-out') for (let i = 0; i < n * m; i++) rows[i] = data[i]!;
  else for (let o = 0; o < m; o++) for (let c = 0; c < n; c++) rows[c * m + o] = data[o * n + c]!;
  return { in: n, out: m, data: rows };
}

export function fromRows(layer: LinearLayer, rows: Rows): Float32Array {
  const { in: n, out: m, data } = rows;
  const out = new Float32Array(n * m);
  if (layer.weightLayout === 'in-out') for (let i = 0; i < n * m; i++) out[i] = data[i]!;
  else for (let o = 0; o < m; o++) for (let c = 0; c < n; c++) out[o * n + c] = data[c * m + o]!;
  return out;
}

/** Input channels of each consumer layer that the selections remove. */
export function removedInputs(selections: readonly GroupSelection[]) {
  const removed = new Map<string, { layer: LinearLayer; channels: Set<number> }>();
  for (const { group, keep } of selections) {
    const kept = new Set(keep);
    for (const m of group.members) {
      if (m.role !== 'consumer-weight' || !m.layer) continue;
      const entry = removed.get(m.layer.node) ?? { layer: m.layer, channels: new Set<number>() };
      removed.set(m.layer.node, entry);
      m.channels.forEach((cs, unit) => {
        if (!kept.has(unit)) for (const c of cs) entry.channels.add(c);
      });
    }
  }
  return [...removed.values()].filter((e) => e.channels.size > 0);
}

/**
 * The weight and bias changes that compensate the removal of `selections`, to be applied before
 * slicing (see `applyPruning`). `moments` must hold each consumer layer's input statistics,
 * with Gram matrices for `ridge`.
 */
export function compensationUpdates(
  index: GraphIndex,
  selections: readonly GroupSelection[],
  moments: ReadonlyMap<string, ChannelMoments>,
  options: CompensationOptions,
): WeightUpdates {
  const tensors = new Map<string, Float32Array>();
  const newBiases = new Map<string, { layer: LinearLayer; data: Float32Array }>();
  if (options.method === 'none') return { tensors, newBiases };
  for (const { layer, channels } of removedInputs(selections)) {
    const stats = moments.get(layer.input);
    if (!stats) {
      throw new CalibrationError(
        `compensation needs statistics of ${layer.input}; none were collected`,
      );
    }
    const kept = Array.from({ length: layer.inFeatures }, (_, c) => c).filter(
      (c) => !channels.has(c),
    );
    const rows = toRows(layer, readConstant(index, layer.weight).data);
    const bias = layer.bias ? readConstant(index, layer.bias).data : new Float32Array(rows.out);
    const fit = fitKept(rows, bias, kept, stats, options);
    for (const [i, c] of kept.entries()) {
      rows.data.set(fit.weight.subarray(i * rows.out, (i + 1) * rows.out), c * rows.out);
    }
    tensors.set(layer.weight, fromRows(layer, rows));
    const newBias = Float32Array.from(fit.bias);
    if (layer.bias) tensors.set(layer.bias, newBias);
    else newBiases.set(layer.node, { layer, data: newBias });
  }
  return { tensors, newBiases };
}

/** New rows for the kept channels ([K, out]) and the new bias. */
export function fitKept(
  rows: Rows,
  bias: Float32Array,
  kept: readonly number[],
  stats: ChannelMoments,
  options: CompensationOptions,
): { weight: Float64Array; bias: Float64Array } {
  const { in: n, out: d } = rows;
  const mean = stats.mean();
  const weight = new Float64Array(kept.length * d);
  kept.forEach((c, i) => weight.set(rows.data.subarray(c * d, (c + 1) * d), i * d));
  if (options.method === 'ridge') {
    const delta = ridgeDelta(rows, kept, stats, options.alpha ?? 1e-2);
    for (let i = 0; i < weight.length; i++) weight[i] = weight[i]! + delta[i]!;
  }
  // b = μ_t − W_Kᵀ μ_K with μ_t = Wᵀμ + b
  const b = Float64Array.from(bias);
  for (let c = 0; c < n; c++) {
    const m = mean[c]!;
    for (let o = 0; o < d; o++) b[o] = b[o]! + m * rows.data[c * d + o]!;
  }
  kept.forEach((c, i) => {
    const m = mean[c]!;
    for (let o = 0; o < d; o++) b[o] = b[o]! - m * weight[i * d + o]!;
  });
  return { weight, bias: b };
}

/**
 * New rows for the kept channels ([K, out]) and bias that reproduce the target the statistics
 * were collected with (`stats.target`): W_K ← (C_KK + λI)⁻¹ (C_Kt + λ W_K),
 * b ← μ_t − W_Kᵀ μ_K. The target may be anything the layer should output on these inputs,
 * e.g. what a dense model's block adds to the residual stream when the input comes from an
 * already pruned prefix, so that the layer also corrects the error it receives.
 */
export function fitTarget(
  rows: Rows,
  kept: readonly number[],
  stats: ChannelMoments,
  alpha = 1e-2,
): { weight: Float64Array; bias: Float64Array } {
  if (!stats.gram || !stats.target) {
    throw new CalibrationError('fitting a target needs Gram and target statistics');
  }
  const { in: n, out: d } = rows;
  if (stats.target.channels !== d || stats.channels !== n) {
    throw new RangeError(
      `fitTarget: statistics of ${stats.channels} → ${stats.target.channels} channels for a ${n} → ${d} layer`,
    );
  }
  const k = kept.length;
  const cov = stats.covariance();
  const cross = stats.crossCovariance();
  const a = new Float64Array(k * k);
  let trace = 0;
  kept.forEach((p, i) => {
    for (let j = 0; j < k; j++) a[i * k + j] = cov[p * n + kept[j]!]!;
    trace += cov[p * n + p]!;
  });
  const lambda = Math.max((alpha * trace) / Math.max(1, k), 1e-12);
  const rhs = new Float64Array(k * d);
  kept.forEach((p, i) => {
    for (let o = 0; o < d; o++) rhs[i * d + o] = cross[p * d + o]! + lambda * rows.data[p * d + o]!;
  });
  const weight = withShift(a, k, lambda, (shifted) => spdSolve(shifted, k, rhs, d));
  if (!weight) throw new CalibrationError('the covariance of the kept channels is singular');
  const mean = stats.mean();
  const bias = stats.targetMean();
  kept.forEach((p, i) => {
    for (let o = 0; o < d; o++) bias[o] = bias[o]! - mean[p]! * weight[i * d + o]!;
  });
  return { weight, bias };
}

/**
 * B·W_R = (C_KK + λI)⁻¹ C_KR W_R, the change of the kept rows: the regression form's
 * (C_KK + λI)⁻¹ (C_Kt + λ W_K) minus W_K, solved without forming C_Kt.
 */
function ridgeDelta(
  rows: Rows,
  kept: readonly number[],
  stats: ChannelMoments,
  alpha: number,
): Float64Array {
  if (!stats.gram) throw new CalibrationError('ridge compensation needs Gram statistics');
  const n = stats.channels;
  const d = rows.out;
  const k = kept.length;
  const keptSet = new Set(kept);
  const removed = Array.from({ length: n }, (_, c) => c).filter((c) => !keptSet.has(c));
  const cov = stats.covariance();
  const a = new Float64Array(k * k);
  let trace = 0;
  kept.forEach((p, i) => {
    for (let j = 0; j < k; j++) a[i * k + j] = cov[p * n + kept[j]!]!;
    trace += cov[p * n + p]!;
  });
  const lambda = Math.max((alpha * trace) / Math.max(1, k), 1e-12);
  // rhs = C_KR · W_R
  const rhs = new Float64Array(k * d);
  kept.forEach((p, i) => {
    for (const r of removed) {
      const f = cov[p * n + r]!;
      const at = r * d;
      for (let o = 0; o < d; o++) rhs[i * d + o] = rhs[i * d + o]! + f * rows.data[at + o]!;
    }
  });
  const solved = withShift(a, k, lambda, (shifted) => spdSolve(shifted, k, rhs, d));
  if (!solved) throw new CalibrationError('the covariance of the kept channels is singular');
  return solved;
}
