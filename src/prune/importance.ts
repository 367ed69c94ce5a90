/**
 * Importance criteria: one score per unit of a dependency group, higher meaning more important
 * (pruning-methods.md §2.3). Scores are comparable within a group; `lampNormalize` makes them
 * comparable across groups for global ranking.
 *
 * - `MagnitudeImportance` (data-free): Σ |w|ᵖ over every weight slice of the unit, in the layers
 *   computing it and the layers reading it (Torch-Pruning's group magnitude, p = 1 or 2).
 * - `WandaImportance`: Σ ‖x_c‖₂ · Σᵢ |W[c, i]| over the unit's input channels c of each layer
 *   reading it (Wanda, arXiv 2306.11695, summed over a channel for structured pruning): the size
 *   of what the unit contributes to the next layer, on calibration activations.
 * - `VarianceImportance`: Σ var(x_c) · Σᵢ W[c, i]², the expected squared change of the next
 *   layer's output when channel c is replaced by its mean — what is lost after mean folding
 *   (variance-based pruning, arXiv 2507.12988, weighted by the outgoing weights; with
 *   `weighted: false` the plain activation variance of the paper).
 *
 * The activation criteria read dense-model statistics of each consumer layer's input, as Wanda's
 * ViT code does: one calibration pass serves every block.
 */
import type { GraphIndex } from '../graph/graph.js';
import { AblationImportance } from './ablation.js';
import { ReconstructionImportance } from './reconstruction.js';
import type { ChannelMoments } from './statistics.js';
import { normalizeAxis, readConstant, type FloatData } from './tensors.js';
import type { CriterionName, DependencyGroup, GroupMember } from './types.js';

export interface ImportanceInputs {
  index: GraphIndex;
  /** Statistics of activations, keyed by value name (each consumer layer's input). */
  moments?: ReadonlyMap<string, ChannelMoments>;
  /**
   * The largest fraction of a group's units that the selection may remove (default 1). Scores
   * need only order those correctly; a criterion may stop early and score the rest as kept.
   */
  removable?: number;
  /** Ablation scores by group name (ablation.ts), for the `ablation` criterion. */
  ablation?: ReadonlyMap<string, Float64Array>;
}

export interface Importance {
  readonly name: CriterionName;
  /** Whether `score` reads the statistics of the consumer layers' inputs. */
  readonly needsActivations: boolean;
  /**
   * Whether scores of different groups are on one scale (an output error), so that global
   * ranking may compare them as they are; otherwise they are LAMP-normalised first.
   */
  readonly comparable: boolean;
  score(group: DependencyGroup, inputs: ImportanceInputs): Float64Array;
}

/**
 * For each index c along `axis`, Σ |w|ᵖ over the rest of the tensor (p = 1 or 2). The tensor is
 * viewed as [outer, size, inner].
 */
export function channelSums(tensor: FloatData, axis: number, p: 1 | 2): Float64Array {
  const { data, dims } = tensor;
  const a = normalizeAxis(axis, dims.length, 'channelSums');
  const size = dims[a]!;
  let inner = 1;
  for (let i = a + 1; i < dims.length; i++) inner *= dims[i]!;
  const outer = data.length / (size * inner);
  const out = new Float64Array(size);
  for (let o = 0; o < outer; o++) {
    for (let c = 0; c < size; c++) {
      const base = (o * size + c) * inner;
      let s = 0;
      if (p === 1) for (let i = 0; i < inner; i++) s += Math.abs(data[base + i]!);
      else for (let i = 0; i < inner; i++) s += data[base + i]! * data[base + i]!;
      out[c] = out[c]! + s;
    }
  }
  return out;
}

/** Adds per-channel scores of one member into its units' scores. */
function addByUnit(into: Float64Array, member: GroupMember, perChannel: Float64Array): void {
  member.channels.forEach((channels, unit) => {
    let s = 0;
    for (const c of channels) s += perChannel[c]!;
    into[unit] = into[unit]! + s;
  });
}

function weightMembers(group: DependencyGroup, roles: readonly GroupMember['role'][]) {
  return group.members.filter((m) => roles.includes(m.role));
}

export class MagnitudeImportance implements Importance {
  readonly name: CriterionName;
  readonly needsActivations = false;
  readonly comparable = false;

  constructor(readonly p: 1 | 2 = 2) {
    this.name = p === 1 ? 'l1' : 'l2';
  }

  score(group: DependencyGroup, { index }: ImportanceInputs): Float64Array {
    const out = new Float64Array(group.units);
    for (const m of weightMembers(group, ['producer-weight', 'consumer-weight'])) {
      addByUnit(out, m, channelSums(readConstant(index, m.tensor), m.axis, this.p));
    }
    return out;
  }
}

/** The statistics of a consumer member's input, or a RangeError saying they are missing. */
function inputMoments(member: GroupMember, inputs: ImportanceInputs, who: string) {
  const value = member.layer!.input;
  const m = inputs.moments?.get(value);
  if (!m) throw new RangeError(`${who}: no activation statistics for ${value}; calibrate first`);
  return m;
}

export class WandaImportance implements Importance {
  readonly name = 'wanda';
  readonly needsActivations = true;
  readonly comparable = false;

  score(group: DependencyGroup, inputs: ImportanceInputs): Float64Array {
    const out = new Float64Array(group.units);
    for (const m of weightMembers(group, ['consumer-weight'])) {
      const norms = inputMoments(m, inputs, 'WandaImportance').norm();
      const rows = channelSums(readConstant(inputs.index, m.tensor), m.axis, 1);
      addByUnit(
        out,
        m,
        rows.map((r, c) => r * norms[c]!),
      );
    }
    return out;
  }
}

export class VarianceImportance implements Importance {
  readonly name = 'variance';
  readonly needsActivations = true;
  readonly comparable = false;

  constructor(readonly options: { weighted?: boolean } = {}) {}

  score(group: DependencyGroup, inputs: ImportanceInputs): Float64Array {
    const out = new Float64Array(group.units);
    const weighted = this.options.weighted ?? true;
    for (const m of weightMembers(group, ['consumer-weight'])) {
      const variance = inputMoments(m, inputs, 'VarianceImportance').variance();
      const rows = weighted
        ? channelSums(readConstant(inputs.index, m.tensor), m.axis, 2)
        : undefined;
      addByUnit(out, m, rows ? rows.map((r, c) => r * variance[c]!) : variance);
    }
    return out;
  }
}

/** The criterion named `name`; `alpha` is the ridge strength of the reconstruction criterion. */
export function createImportance(name: CriterionName, alpha = 1e-2): Importance {
  switch (name) {
    case 'l1':
      return new MagnitudeImportance(1);
    case 'l2':
      return new MagnitudeImportance(2);
    case 'wanda':
      return new WandaImportance();
    case 'variance':
      return new VarianceImportance();
    case 'reconstruction':
      return new ReconstructionImportance(alpha);
    case 'ablation':
      return new AblationImportance();
  }
}

/**
 * LAMP normalisation (Lee et al., arXiv 2010.07611): with the scores sorted ascending,
 * sᵢ / Σ_{j ≥ i} sⱼ — a score relative to everything at least as important in its own group, so
 * that groups of different scale can share one threshold. It keeps the order within a group.
 * The paper defines it on squared weights; with L2 magnitude scores that is what it gets.
 *
 * Worked example: [1, 2, 3, 4] → [1/10, 2/9, 3/7, 4/4] = [0.1, 0.222…, 0.428…, 1].
 */
export function lampNormalize(scores: Float64Array): Float64Array {
  const order = Array.from(scores.keys()).sort((a, b) => scores[a]! - scores[b]!);
  const out = new Float64Array(scores.length);
  let tail = 0;
  for (let k = order.length - 1; k >= 0; k--) {
    const i = order[k]!;
    tail += scores[i]!;
    out[i] = tail > 0 ? scores[i]! / tail : 0;
  }
  return out;
}
