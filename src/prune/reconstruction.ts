/**
 * A criterion that knows about ridge compensation: the units are ranked by the error that is
 * left after the removed channels have been reconstructed from the kept ones, chosen greedily
 * as in structured Optimal Brain Surgeon (ZipLM, arXiv 2302.04089; OBC, arXiv 2208.11580) with
 * the layer-input covariance C as the Hessian. For a layer y = xᵀW reading channels x, removing
 * a unit's channels G with the best linear correction of the other rows costs
 *
 *   ΔE = tr(W_Gᵀ (P_GG)⁻¹ W_G),  P = (C + λI)⁻¹,
 *
 * the increase of E‖Δy‖² over the calibration rows. After each removal the remaining rows get
 * the correction W ← W − P_{:,G} (P_GG)⁻¹ W_G and P is downdated to the remaining channels, so
 * the next choice accounts for what was already removed. The correction is the ridge fold of
 * compensate.ts for the final kept set, which is what makes this order the right one to use with
 * it; magnitude and Wanda scores ignore that a channel well predicted by others costs little.
 *
 * A unit's score is the cumulative error at the step it would be removed, so the order of
 * removal is the order of the scores; the last unit standing scores highest.
 */
import { CalibrationError } from '../errors.js';
import type { Importance, ImportanceInputs } from './importance.js';
import { spdInverse, withShift } from './linalg.js';
import { readConstant } from './tensors.js';
import type { DependencyGroup, GroupMember } from './types.js';

export class ReconstructionImportance implements Importance {
  readonly name = 'reconstruction';
  readonly needsActivations = true;
  readonly comparable = true;

  /** `alpha`: ridge strength relative to the mean channel variance, as in compensation. */
  constructor(readonly alpha = 1e-2) {}

  score(group: DependencyGroup, inputs: ImportanceInputs): Float64Array {
    const out = new Float64Array(group.units);
    for (const m of group.members) {
      if (m.role !== 'consumer-weight' || !m.layer) continue;
      const scores = this.memberScores(m, inputs);
      for (let u = 0; u < out.length; u++) out[u] = out[u]! + scores[u]!;
    }
    return out;
  }

  private memberScores(m: GroupMember, inputs: ImportanceInputs): Float64Array {
    const layer = m.layer!;
    const stats = inputs.moments?.get(layer.input);
    if (!stats?.gram) {
      throw new CalibrationError(
        `ReconstructionImportance needs Gram statistics of ${layer.input}`,
      );
    }
    const n = layer.inFeatures;
    const cov = stats.covariance();
    let trace = 0;
    for (let i = 0; i < n; i++) trace += cov[i * n + i]!;
    const lambda = Math.max((this.alpha * trace) / n, 1e-12);
    const p = withShift(cov, n, lambda, (shifted) => spdInverse(shifted, n));
    if (!p) throw new CalibrationError(`the covariance of ${layer.input} is singular`);
    const weight = readConstant(inputs.index, layer.weight).data;
    const rows = new Float64Array(n * layer.outFeatures);
    const d = layer.outFeatures;
    for (let c = 0; c < n; c++) {
      for (let o = 0; o < d; o++) {
        rows[c * d + o] = layer.weightLayout === 'in-out' ? weight[c * d + o]! : weight[o * n + c]!;
      }
    }
    const steps = Math.min(
      m.channels.length - 1,
      Math.ceil(m.channels.length * (inputs.removable ?? 1)),
    );
    return greedyOrder(new GreedyState(n, d, p, rows), m.channels, steps);
  }
}

/** The inverse covariance and the corrected rows of the channels still kept. */
class GreedyState {
  readonly alive: Uint8Array;

  constructor(
    readonly n: number,
    readonly d: number,
    readonly p: Float64Array,
    readonly rows: Float64Array,
  ) {
    this.alive = new Uint8Array(n).fill(1);
  }

  /** ΔE of removing channels `g` now. */
  cost(g: readonly number[]): number {
    const { n, d, p, rows } = this;
    if (g.length === 1) {
      const c = g[0]!;
      let s = 0;
      for (let o = 0; o < d; o++) s += rows[c * d + o]! ** 2;
      return s / p[c * n + c]!;
    }
    const q = this.blockInverse(g);
    let s = 0;
    for (let a = 0; a < g.length; a++) {
      for (let b = 0; b < g.length; b++) {
        const qab = q[a * g.length + b]!;
        const ra = g[a]! * d;
        const rb = g[b]! * d;
        let dot = 0;
        for (let o = 0; o < d; o++) dot += rows[ra + o]! * rows[rb + o]!;
        s += qab * dot;
      }
    }
    return s;
  }

  /** (P_GG)⁻¹. */
  private blockInverse(g: readonly number[]): Float64Array {
    const k = g.length;
    const block = new Float64Array(k * k);
    for (let a = 0; a < k; a++)
      for (let b = 0; b < k; b++) block[a * k + b] = this.p[g[a]! * this.n + g[b]!]!;
    const q = spdInverse(block, k);
    if (!q)
      throw new CalibrationError('a block of the inverse covariance is not positive definite');
    return q;
  }

  /** Removes channels `g`, correcting the remaining rows and downdating P. */
  remove(g: readonly number[]): void {
    const { n, d, p, rows, alive } = this;
    const k = g.length;
    const q = k === 1 ? Float64Array.of(1 / p[g[0]! * n + g[0]!]!) : this.blockInverse(g);
    // t = P_{:,G} · Q (n × k), over the live channels
    const t = new Float64Array(n * k);
    for (let i = 0; i < n; i++) {
      if (!alive[i]) continue;
      for (let b = 0; b < k; b++) {
        let s = 0;
        for (let a = 0; a < k; a++) s += p[i * n + g[a]!]! * q[a * k + b]!;
        t[i * k + b] = s;
      }
    }
    for (const c of g) alive[c] = 0;
    // full contiguous row updates are faster than skipping removed channels; their entries are
    // never read again
    const gRows = g.map((c) => rows.slice(c * d, c * d + d));
    const gP = g.map((c) => p.slice(c * n, c * n + n));
    for (let i = 0; i < n; i++) {
      if (!alive[i]) continue;
      for (let b = 0; b < k; b++) {
        const f = t[i * k + b]!;
        if (f === 0) continue;
        const row = gRows[b]!;
        const at = i * d;
        for (let o = 0; o < d; o++) rows[at + o] = rows[at + o]! - f * row[o]!;
        const pRow = gP[b]!;
        const pAt = i * n;
        for (let j = 0; j < n; j++) p[pAt + j] = p[pAt + j]! - f * pRow[j]!;
      }
    }
    for (const c of g) rows.fill(0, c * d, c * d + d);
  }
}

/**
 * Removes up to `steps` units one by one, cheapest first; returns each unit's cumulative error.
 * The units still standing share the score just above the last removal.
 */
function greedyOrder(
  state: GreedyState,
  channels: readonly (readonly number[])[],
  steps: number,
): Float64Array {
  const units = channels.length;
  const scores = new Float64Array(units);
  const done = new Uint8Array(units);
  let total = 0;
  for (let step = 0; step < steps; step++) {
    let best = -1;
    let bestCost = Infinity;
    for (let u = 0; u < units; u++) {
      if (done[u]) continue;
      const cost = state.cost(channels[u]!);
      if (cost < bestCost) [best, bestCost] = [u, cost];
    }
    total += Math.max(0, bestCost);
    scores[best] = total;
    done[best] = 1;
    state.remove(channels[best]!);
  }
  const standing = total * 2 + 1;
  for (let u = 0; u < units; u++) if (!done[u]) scores[u] = standing;
  return scores;
}
