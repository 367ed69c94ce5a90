/**
 * Multiply-accumulates of a token-reduced model, from the structure map and the tokens of each
 * block: linear layers scale with the tokens they see, the two attention products with the
 * square (pruning-methods.md §1: Na·D·3A + Na·A·D + 2·Na²·A + 2·Nm·D·M). The matrix products
 * the reduction itself adds are counted too, so the ratio is the one the graph really has.
 */
import type { BlockMap, ViTStructure } from '../../vit/types.js';
import type { BlockPlan } from './schedule.js';
import type { TokenSchedule } from './types.js';

/** MACs per image of one block with `attention` tokens entering attention and `mlp` the MLP. */
export function blockMacs(block: BlockMap, attention: number, mlp: number): number {
  const { qkv, q, k, v, proj, heads, headDim } = block.attention;
  const projections = [qkv, q, k, v, proj].reduce(
    (sum, layer) => sum + (layer ? layer.inFeatures * layer.outFeatures : 0),
    0,
  );
  const { fc1, fc2 } = block.mlp;
  const perMlpToken = fc1.inFeatures * fc1.outFeatures + fc2.inFeatures * fc2.outFeatures;
  return attention * projections + 2 * attention * attention * heads * headDim + mlp * perMlpToken;
}

/** MACs of the products a block's reduction adds (similarities, merges, fused tokens). */
function reductionMacs(schedule: TokenSchedule, plan: BlockPlan, block: BlockMap, width: number) {
  if (plan.amount === 0) return 0;
  const n = plan.attention;
  if (schedule.kind === 'tome') {
    const [a, b] = [Math.ceil(n / 2), Math.floor(n / 2)];
    return a * b * block.attention.headDim + b * plan.amount * (width + 1);
  }
  const fused = schedule.kind === 'single' || schedule.fuse !== false;
  return fused ? (n - 1) * width : 0;
}

export function tokenMacs(
  structure: ViTStructure,
  schedule: TokenSchedule,
  plans: readonly BlockPlan[],
): { before: number; after: number; ratio: number } {
  const n = structure.counts.tokens;
  let after = structure.counts.macs;
  for (const block of structure.blocks) {
    const plan = plans[block.index]!;
    after -= blockMacs(block, n, n);
    after += blockMacs(block, plan.attention, plan.mlp);
    after += reductionMacs(schedule, plan, block, structure.counts.width);
  }
  const before = structure.counts.macs;
  return { before, after, ratio: before / after };
}
