/**
 * `reduceTokens`: writes a token schedule into a ViT graph (pruning-methods.md §4.6). In each
 * block the schedule touches, a subgraph is inserted on the output of the residual Add that
 * closes the attention branch; the block's second norm and MLP residual, and everything after,
 * read the shorter sequence instead. For ToMe, the log of the token sizes is also added to the
 * attention logits of every later block.
 *
 * Token counts are constants of the inserted ops (the image size, hence every count, is fixed);
 * the batch axis stays dynamic. The graph must compute its own reshape targets from the tokens
 * it is given (Shape/Gather/Concat chains, as exporters write them): a Reshape whose target
 * holds the token count as a constant would break, and is refused before anything is written.
 */
import type { ModelProto } from 'onnx-buf';
import { applyCommands, type Command } from '../../graph/commands.js';
import { GraphIndex } from '../../graph/graph.js';
import { opsetVersion } from '../../onnx/model-io.js';
import { imageInput, ShapeMap } from '../../vit/shapes.js';
import { nodeLabel, unsupported, type TraceContext } from '../../vit/trace.js';
import type { BlockMap, ViTStructure } from '../../vit/types.js';
import { NameAllocator } from '../tensors.js';
import { evitSelect, singleSelect } from './evit.js';
import { planTokens, scheduleLabel, type BlockPlan } from './schedule.js';
import { SubgraphWriter } from './subgraph.js';
import { sizeBias, tomeMerge } from './tome.js';
import { tokenMacs } from './macs.js';
import type {
  ReduceTokensOptions,
  ReduceTokensResult,
  TokenSchedule,
  TomeSchedule,
} from './types.js';

/**
 * A copy of `model` whose token count shrinks through the blocks as `schedule` says, with a
 * report of the tokens per block and the MACs before and after. A schedule that removes nothing
 * gives a graph computing exactly what the input does. Throws RangeError for a schedule that does
 * not fit the model and UnsupportedModelError for a graph the rewrite cannot handle.
 */
export function reduceTokens(
  model: ModelProto,
  structure: ViTStructure,
  schedule: TokenSchedule,
  options: ReduceTokensOptions = {},
): ReduceTokensResult {
  const index = new GraphIndex(model);
  const ctx: TraceContext = { index, shapes: new ShapeMap(index, new Map([imageInput(index)])) };
  const opset = checkModel(ctx, structure, options.source ?? 'model');
  const plans = planTokens(schedule, structure.counts.tokens, structure.blocks.length);
  const first = plans.find((p) => p.amount > 0);
  if (first) checkComputedShapes(ctx, structure, first.block);

  const writer = new SubgraphWriter(new NameAllocator(index), opset);
  const rewires: Command[] = [];
  let size: string | undefined;
  let bias: string | undefined;
  for (const block of structure.blocks) {
    const plan = plans[block.index]!;
    writer.prefix = `tokens/blocks.${block.index}`;
    if (bias) rewires.push(...addToLogits(writer, block, bias));
    if (plan.amount === 0) continue;
    const x = block.residual1.output;
    let reduced: string;
    if (schedule.kind === 'tome') {
      const merge = tomeStep(writer, block, plan, structure, size);
      reduced = merge.x;
      size = merge.size;
      if (schedule.propAttention !== false) bias = sizeBias(writer, size, plan.mlp);
    } else {
      reduced = selectStep(writer, block, plan, structure, schedule);
    }
    rewires.push({ kind: 'replaceUses', from: x, to: reduced });
  }

  // uses are moved before the new nodes exist, so the nodes keep reading the full sequence
  const commands = [...rewires, ...writer.commands];
  options.logger?.debug(
    `tokens per block (attention → MLP): ${plans.map((p) => `${p.attention}→${p.mlp}`).join(', ')}`,
  );
  const reduced = applyCommands(model, commands, { context: 'token-reduced graph' });
  const applied = appliedSchedule(schedule, plans);
  return {
    model: reduced,
    report: {
      schedule: applied,
      label: scheduleLabel(applied),
      blocks: plans.map(({ block, attention, mlp }) => ({ block, attention, mlp })),
      tokens: { before: structure.counts.tokens, after: plans[plans.length - 1]?.mlp ?? 0 },
      macs: tokenMacs(structure, applied, plans),
      addedNodes: commands.filter((c) => c.kind === 'addNode').length,
    },
  };
}

function tomeStep(
  writer: SubgraphWriter,
  block: BlockMap,
  plan: BlockPlan,
  structure: ViTStructure,
  size: string | undefined,
) {
  return tomeMerge(writer, {
    x: block.residual1.output,
    keys: block.attention.scores.key,
    ...(size ? { size } : {}),
    tokens: plan.attention,
    width: structure.counts.width,
    r: plan.amount,
  });
}

function selectStep(
  writer: SubgraphWriter,
  block: BlockMap,
  plan: BlockPlan,
  structure: ViTStructure,
  schedule: Exclude<TokenSchedule, TomeSchedule>,
): string {
  const inputs = {
    x: block.residual1.output,
    probabilities: block.attention.softmax.output,
    tokens: plan.attention,
    width: structure.counts.width,
    kept: schedule.kind === 'evit' ? plan.amount : plan.attention - plan.amount - 2,
  };
  return schedule.kind === 'evit'
    ? evitSelect(writer, inputs, schedule.fuse !== false)
    : singleSelect(writer, inputs, block.attention.context.value);
}

/** Adds `bias` to the input of the block's softmax. */
function addToLogits(writer: SubgraphWriter, block: BlockMap, bias: string): Command[] {
  const { softmax } = block.attention;
  const biased = writer.op('Add', [softmax.input, bias]);
  return [{ kind: 'setNodeInput', node: softmax.node, index: 0, value: biased }];
}

/** The schedule with ToMe's r capped per block, as it was written into the graph. */
function appliedSchedule(schedule: TokenSchedule, plans: readonly BlockPlan[]): TokenSchedule {
  if (schedule.kind !== 'tome') return schedule;
  const r = plans.map((p) => p.amount);
  const same = r.every((v) => v === r[0]) && typeof schedule.r === 'number';
  return { ...schedule, r: same ? r[0]! : r };
}

/**
 * TODO: a distillation token (DeiT-distilled, at index 1) is treated as a patch token: ToMe may
 * merge it and EViT may drop it. The structure map must first recognise a second prefix token;
 * then it must be protected like the class token and kept at index 1.
 *
 * Token reduction needs: opset 13 or later (Squeeze/Unsqueeze with axes as inputs), a class
 * token at index 0 read by the pooling (ToMe keeps it first and unmerged; EViT ranks by its
 * attention), and attention written as MatMul/Softmax/MatMul over [B, H, N, ·] tensors.
 */
function checkModel(ctx: TraceContext, structure: ViTStructure, source: string): number {
  const opset = opsetVersion(ctx.index.model) ?? 0;
  if (opset < 13) {
    unsupported(`${source}: token reduction needs opset 13 or later; the model has opset ${opset}`);
  }
  if (!structure.classToken || structure.pooling?.kind !== 'class-token') {
    const pooling = structure.pooling?.kind ?? 'none recognised';
    unsupported(
      `${source}: token reduction needs a class token read by the pooling (pooling: ${pooling}); averaging merged tokens by size is not implemented`,
    );
  }
  const n = structure.counts.tokens;
  for (const block of structure.blocks) {
    const { scores, softmax, context, heads, headDim } = block.attention;
    const expect = [
      [scores.key, [1, heads, headDim, n], 'keys'],
      [softmax.output, [1, heads, n, n], 'attention probabilities'],
      [context.value, [1, heads, n, headDim], 'values'],
    ] as const;
    for (const [value, shape, what] of expect) {
      const found = ctx.shapes.shape(value);
      if (found?.join() !== shape.join()) {
        unsupported(
          `block ${block.index}: the ${what} ${value} must have shape [${shape.join(', ')}] for one image; found ${found ? `[${found.join(', ')}]` : 'an unknown shape'}`,
          value,
        );
      }
    }
  }
  return opset;
}

/**
 * Refuses a graph where a Reshape after the first reduced block has the token count written as
 * a constant in its target (whole, or as a constant part of a Concat): it would still ask for
 * the original count after tokens are removed.
 */
function checkComputedShapes(ctx: TraceContext, structure: ViTStructure, from: number): void {
  const tokens = structure.counts.tokens;
  const start = structure.blocks[from]!.residual1.output;
  for (const node of ctx.index.downstream(start)) {
    if (node.opType !== 'Reshape') continue;
    const target = node.input[1]!;
    const concat = ctx.index.producer.get(target);
    const parts = concat?.opType === 'Concat' ? concat.input : [target];
    for (const part of parts) {
      const values = ctx.index.isConstant(part) ? ctx.shapes.get(part).values : undefined;
      if (values?.includes(tokens)) {
        unsupported(
          `${nodeLabel(node)}: its target ${target} holds the token count ${tokens} as a constant, so the graph cannot run with fewer tokens; export the model with shapes computed from the input (Shape/Gather/Concat), or reduce tokens only after this node`,
          node.name,
        );
      }
    }
  }
}
