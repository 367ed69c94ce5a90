/**
 * The public contract of the pruning module: dependency groups (what must be removed together),
 * selections (which units of a group are kept), and the options and report of `pruneModel`.
 * The mechanics live in groups.ts, importance.ts, selection.ts, compensate.ts and surgery.ts.
 */
import type { LinearLayer } from '../vit/types.js';

/**
 * How a member tensor relates to the channels of its group: the weight or bias of a layer that
 * computes them (its output channels), the weight of a layer that reads them (its input
 * channels), or a parameter applied to them channel by channel (a norm's scale, an embedding).
 */
export type MemberRole = 'producer-weight' | 'producer-bias' | 'consumer-weight' | 'parameter';

/** One tensor sliced when units of a group are removed. */
export interface GroupMember {
  /** Initializer (or Constant output) holding the tensor. */
  tensor: string;
  role: MemberRole;
  /** The axis of the tensor that the group's channels index. */
  axis: number;
  /** The linear layer, for producer and consumer members. */
  layer?: LinearLayer;
  /** For each unit of the group, the indices along `axis` that belong to it. */
  channels: readonly (readonly number[])[];
}

/**
 * The kinds of groups of a plain ViT (pruning-methods.md §2.1):
 * - `mlp`: one block's MLP hidden channels (fc1 outputs and bias, fc2 inputs);
 * - `heads`: one block's whole heads (their q, k and v outputs, proj inputs);
 * - `head-dims`: one block's head dimensions, the same index removed in every head so that all
 *   heads keep one size (q, k and v outputs of that index in each head, proj inputs);
 * - `embedding`: the residual width, one group for the whole model (listed, not yet pruned).
 */
export type GroupKind = 'mlp' | 'heads' | 'head-dims' | 'embedding';

export interface DependencyGroup {
  /** `blocks.<i>.mlp`, `blocks.<i>.attn.heads`, `blocks.<i>.attn.head-dims` or `embedding`. */
  name: string;
  kind: GroupKind;
  /** The block, for per-block groups. */
  block?: number;
  /** Number of prunable units: channels, heads or head dimensions. */
  units: number;
  members: GroupMember[];
}

/** The units of a group that are kept, in increasing order. */
export interface GroupSelection {
  group: DependencyGroup;
  keep: readonly number[];
}

/**
 * Ranking scopes (pruning-methods.md §2.1), and `sensitivity`: per-group shares chosen from the
 * measured output change of each group pruned alone (allocation.ts).
 */
export type PruningScope = 'local' | 'global' | 'isomorphic' | 'sensitivity';

export type CriterionName = 'l1' | 'l2' | 'wanda' | 'variance' | 'reconstruction' | 'ablation';

export type CompensationMethod = 'none' | 'mean' | 'ridge';

/** Heads to remove: a fraction of every block's heads, or `count` heads in some blocks. */
export type HeadsOption =
  | number
  | {
      count: number;
      /** Block indices, or how many blocks (those whose weakest heads score lowest). */
      blocks: readonly number[] | number;
    };

export interface PruneWidths {
  /** MLP hidden width per block, before and after. */
  mlp: [number, number];
  heads: [number, number];
  headDim: [number, number];
}

export interface PruneReport {
  criterion: CriterionName;
  scope: PruningScope;
  compensation: CompensationMethod;
  /** Calibration images seen (0 when no statistics were needed). */
  calibrationImages: number;
  blocks: PruneWidths[];
  parameters: [number, number];
  macs: [number, number];
}
