/**
 * The structure map of a ViT graph, traced by data flow from the image input: patch embedding,
 * class token and position embedding, then one pre-norm block per residual stream value that
 * feeds a residual Add (norm1 → attention → Add, norm2 → MLP → Add), then the final norm,
 * pooling and head. Node names are never read; a graph that does not follow this data flow gets
 * an UnsupportedModelError that says what was expected and where tracing stopped.
 */
import type { ModelProto } from 'onnx-buf';
import { UnsupportedModelError } from '../errors.js';
import { GraphIndex } from '../graph/graph.js';
import { attentionAt } from './attention.js';
import { countParameters, graphMacs, macNodesByRole } from './counts.js';
import { tailAt } from './head.js';
import { mlpAt } from './mlp.js';
import { normAt } from './norm.js';
import { embeddingsAfter, patchEmbedAt } from './patch-embed.js';
import { quantizedNode } from './quantized.js';
import { imageInput, ShapeMap } from './shapes.js';
import {
  dataConsumers,
  nodeLabel,
  otherInput,
  stoppedAt,
  unsupported,
  type TraceContext,
} from './trace.js';
import type { BlockMap, StructureCounts, ViTStructure } from './types.js';

/** Recognises the ViT in `model`, or throws UnsupportedModelError saying what was not found. */
export function recognizeViT(model: ModelProto): ViTStructure {
  try {
    return traceViT(model);
  } catch (error) {
    if (!(error instanceof UnsupportedModelError)) throw error;
    // a quantized export fails somewhere in the trace; what to say is that it is quantized
    const node = quantizedNode(model, error.subject);
    if (!node) throw error;
    unsupported(
      `the model is already quantized: it holds quantized or integer ops such as ` +
        `${node.opType} (node ${node.name}); inspect, quantize, prune and compress read the ` +
        'float ViT it was made from (eval measures a quantized model as it is)',
      node.name,
    );
  }
}

function traceViT(model: ModelProto): ViTStructure {
  const index = new GraphIndex(model);
  const [input, inputShape] = imageInput(index);
  const output = index.outputs[0]?.name;
  if (!output) unsupported('the graph has no output');
  const shapes = new ShapeMap(index, new Map([[input, inputShape]]));
  const ctx: TraceContext = { index, shapes };

  const patchEmbed = patchEmbedAt(ctx, input);
  const { output: stream, ...embeddings } = embeddingsAfter(ctx, patchEmbed.tokens);
  const blocks = blocksFrom(ctx, stream);
  const tail = tailAt(ctx, blocks[blocks.length - 1]!.output, output);

  const map = { input, output, patchEmbed, ...embeddings, blocks, ...tail };
  return { ...map, counts: structureCounts(ctx, map, inputShape) };
}

function blocksFrom(ctx: TraceContext, stream: string): BlockMap[] {
  const blocks: BlockMap[] = [];
  for (let x = stream; hasResidualAdd(ctx, x); x = blocks[blocks.length - 1]!.output) {
    blocks.push(blockAt(ctx, blocks.length, x));
  }
  if (blocks.length === 0) {
    unsupported(
      `no transformer block found after the patch embedding: expected ${stream} to feed a LayerNorm (feeding a qkv projection) and a residual Add; ${stoppedAt(ctx, stream)}`,
      dataConsumers(ctx, stream)[0]?.name ?? stream,
    );
  }
  return blocks;
}

/** A block input is read by its first norm and by the residual Add after attention. */
function hasResidualAdd(ctx: TraceContext, x: string): boolean {
  return dataConsumers(ctx, x).some((node) => {
    const other = node.opType === 'Add' ? otherInput(node, x) : undefined;
    return other !== undefined && !ctx.index.isConstant(other);
  });
}

function blockAt(ctx: TraceContext, index: number, x: string): BlockMap {
  const norm1 = normAt(ctx, x, `blocks.${index}.norm1`);
  if (!norm1) missingNorm(ctx, index, 'norm1', x);
  const { attention, residual: residual1 } = attentionAt(ctx, index, x, norm1);
  const norm2 = normAt(ctx, residual1.output, `blocks.${index}.norm2`);
  if (!norm2) missingNorm(ctx, index, 'norm2', residual1.output);
  const { mlp, residual: residual2 } = mlpAt(ctx, index, residual1.output, norm2);
  return {
    index,
    input: x,
    norm1,
    attention,
    residual1,
    norm2,
    mlp,
    residual2,
    output: residual2.output,
  };
}

function missingNorm(ctx: TraceContext, block: number, role: string, x: string): never {
  const readers = dataConsumers(ctx, x).map(nodeLabel).join(', ') || 'nothing';
  return unsupported(
    `block ${block}: expected ${role}, a LayerNormalization or its decomposed form (ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add) over the last axis, reading ${x}; it is read by ${readers}`,
    x,
  );
}

function structureCounts(
  ctx: TraceContext,
  map: Omit<ViTStructure, 'counts'>,
  inputShape: number[],
): StructureCounts {
  const first = map.blocks[0]!;
  const macs = graphMacs(ctx);
  const macsByRole: Record<string, number> = {};
  for (const [role, node] of macNodesByRole(map)) macsByRole[role] = macs.get(node) ?? 0;
  const [, channels, height, width] = inputShape as [number, number, number, number];
  return {
    width: map.patchEmbed.linear.outFeatures,
    depth: map.blocks.length,
    heads: first.attention.heads,
    headDim: first.attention.headDim,
    mlpWidth: first.mlp.fc1.outFeatures,
    tokens: ctx.shapes.shape(first.input)?.[1] ?? 0,
    patches: ctx.shapes.shape(map.patchEmbed.tokens)?.[1] ?? 0,
    imageSize: [channels, height, width],
    numClasses: map.head.outFeatures,
    parameters: countParameters(ctx.index.model),
    macs: [...macs.values()].reduce((sum, m) => sum + m, 0),
    macsByRole,
  };
}
