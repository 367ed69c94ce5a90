/**
 * Choosing which units to keep from importance scores, in one of three scopes
 * (pruning-methods.md §2.1):
 * - `local`: every group removes the same fraction of its own units;
 * - `global`: one threshold over every group's normalised scores, so that a block with weak
 *   units loses more of them (at most `maxRatio` of any group);
 * - `isomorphic`: one threshold per set of groups of the same structure (same kind, units and
 *   member shapes), after Isomorphic Pruning (arXiv 2407.04616). In a ViT whose blocks all have
 *   one width it is the same as global; it differs once blocks differ.
 * Kept counts are rounded to a multiple of `roundTo` (8 for MLP channels: SIMD kernels run whole
 * multiples of 8 or 16), never below `roundTo` and never above the group's size.
 */
import { lampNormalize } from './importance.js';
import type { DependencyGroup, GroupSelection, PruningScope } from './types.js';

export interface SelectionOptions {
  /** Fraction of the units to remove, in [0, 1). */
  ratio: number;
  scope: PruningScope;
  /** Kept counts are multiples of this (default 1). */
  roundTo?: number;
  /** In global and isomorphic scopes, the largest fraction of one group removed (default 0.9). */
  maxRatio?: number;
  /** Units every group keeps at least (default 1). */
  minKeep?: number;
  /** Scores of different groups are on one scale: rank them as they are, not LAMP-normalised. */
  comparable?: boolean;
}

/** The `count` highest-scoring units, in increasing order. */
export function topUnits(scores: Float64Array, count: number): number[] {
  const order = Array.from(scores.keys()).sort((a, b) => scores[b]! - scores[a]! || a - b);
  return order.slice(0, count).sort((a, b) => a - b);
}

/** `kept` rounded to the nearest multiple of `roundTo`, within [roundTo, units]. */
export function roundKept(kept: number, units: number, roundTo: number): number {
  const rounded = Math.round(kept / roundTo) * roundTo;
  return Math.min(units, Math.max(Math.min(roundTo, units), rounded));
}

function checkOptions(o: SelectionOptions): void {
  if (!(o.ratio >= 0 && o.ratio < 1)) {
    throw new RangeError(`pruning ratio must be in [0, 1), got ${o.ratio}`);
  }
  const roundTo = o.roundTo ?? 1;
  if (!Number.isInteger(roundTo) || roundTo < 1) {
    throw new RangeError(`roundTo must be an integer ≥ 1, got ${roundTo}`);
  }
  const max = o.maxRatio ?? 0.9;
  if (!(max > 0 && max < 1)) throw new RangeError(`maxRatio must be in (0, 1), got ${max}`);
}

/** Selections for `groups` given one score array per group (same order). */
export function selectUnits(
  groups: readonly DependencyGroup[],
  scores: readonly Float64Array[],
  options: SelectionOptions,
): GroupSelection[] {
  checkOptions(options);
  if (options.scope === 'local') {
    const roundTo = options.roundTo ?? 1;
    return groups.map((group, i) => {
      const kept = roundKept(group.units * (1 - options.ratio), group.units, roundTo);
      return { group, keep: topUnits(scores[i]!, kept) };
    });
  }
  const sets = options.scope === 'global' ? [groups.map((_, i) => i)] : isomorphicSets(groups);
  const selections = new Array<GroupSelection>(groups.length);
  for (const set of sets) {
    const chosen = thresholdSelect(
      set.map((i) => groups[i]!),
      set.map((i) => scores[i]!),
      options,
    );
    set.forEach((i, k) => (selections[i] = chosen[k]!));
  }
  return selections;
}

/** Indices of groups partitioned by structure. */
function isomorphicSets(groups: readonly DependencyGroup[]): number[][] {
  const sets = new Map<string, number[]>();
  groups.forEach((g, i) => {
    const shape = g.members.map((m) => `${m.role}:${m.axis}:${m.channels[0]?.length ?? 0}`);
    const key = `${g.kind}|${g.units}|${shape.join(',')}`;
    sets.set(key, [...(sets.get(key) ?? []), i]);
  });
  return [...sets.values()];
}

/** One threshold over LAMP-normalised scores of all `groups`. */
function thresholdSelect(
  groups: readonly DependencyGroup[],
  scores: readonly Float64Array[],
  options: SelectionOptions,
): GroupSelection[] {
  const normalised = options.comparable ? scores : scores.map(lampNormalize);
  const pool: { group: number; score: number }[] = [];
  normalised.forEach((s, g) => s.forEach((score) => pool.push({ group: g, score })));
  pool.sort((a, b) => a.score - b.score || a.group - b.group);
  const total = groups.reduce((sum, g) => sum + g.units, 0);
  const target = Math.round(options.ratio * total);
  const minKeep = options.minKeep ?? 1;
  const floor = (g: DependencyGroup) => Math.ceil(g.units * (1 - (options.maxRatio ?? 0.9)) - 1e-9);
  const cap = groups.map((g) => Math.max(0, g.units - Math.max(minKeep, floor(g))));
  const removed = new Array<number>(groups.length).fill(0);
  let count = 0;
  for (const { group } of pool) {
    if (count >= target) break;
    if (removed[group]! >= cap[group]!) continue;
    removed[group]!++;
    count++;
  }
  const roundTo = options.roundTo ?? 1;
  return groups.map((group, g) => {
    const kept = roundKept(group.units - removed[g]!, group.units, roundTo);
    return { group, keep: topUnits(scores[g]!, kept) };
  });
}

/**
 * Removes `count` units from some groups: the groups named by `blocks`, or the `blocks` groups
 * whose `count` weakest units have the lowest scores (LAMP-normalised unless `comparable`).
 */
export function selectInBlocks(
  groups: readonly DependencyGroup[],
  scores: readonly Float64Array[],
  count: number,
  blocks: readonly number[] | number,
  comparable = false,
): GroupSelection[] {
  const weakest = scores.map((s) => {
    const sorted = Array.from(comparable ? s : lampNormalize(s)).sort((a, b) => a - b);
    return sorted.slice(0, count).reduce((sum, v) => sum + v, 0);
  });
  const chosen = new Set<number>();
  if (typeof blocks === 'number') {
    const order = groups.map((_, i) => i).sort((a, b) => weakest[a]! - weakest[b]! || a - b);
    for (const i of order.slice(0, blocks)) chosen.add(groups[i]!.block!);
  } else {
    for (const b of blocks) chosen.add(b);
  }
  return groups.map((group, i) => {
    if (!chosen.has(group.block!)) return { group, keep: topUnits(scores[i]!, group.units) };
    if (count < 0 || count >= group.units) {
      throw new RangeError(`${group.name}: cannot remove ${count} of ${group.units} units`);
    }
    return { group, keep: topUnits(scores[i]!, group.units - count) };
  });
}
