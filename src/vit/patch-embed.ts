/**
 * Recognising the patch embedding and the token embeddings after it. The embedding is a Conv
 * whose stride equals its kernel, or a Reshape/Transpose of the image into patches followed by
 * a MatMul/Gemm (as some exporters write it). Constant elementwise ops before it (a mean and std
 * normalisation baked into the graph) are stepped over.
 */
import type { NodeProto } from 'onnx-buf';
import { attributeInt, attributeInts } from '../graph/attributes.js';
import { linearAt } from './linear.js';
import {
  layoutOps,
  nodeLabel,
  otherInput,
  skipPassThrough,
  soleDataConsumer,
  stoppedAt,
  unsupported,
  type TraceContext,
} from './trace.js';
import type { LinearLayer, PatchEmbedMap, ViTStructure } from './types.js';

const role = 'patch_embed';
const preprocessingOps = new Set(['Sub', 'Div', 'Mul', 'Add', 'Cast', 'Identity']);

/** The patch embedding reading the image `input`. */
export function patchEmbedAt(ctx: TraceContext, input: string): PatchEmbedMap {
  let value = input;
  let reshaped = false;
  for (let step = 0; step < 16; step++) {
    const node = soleDataConsumer(ctx, value);
    if (!node) break;
    const linear = linearAt(ctx, node, role);
    if (linear?.opType === 'Conv') return convEmbed(ctx, node, linear);
    if (linear && reshaped) return linearEmbed(ctx, input, linear);
    if (linear || !isPatchStep(ctx, node, value)) {
      notFound(ctx, input, `tracing stopped at node ${nodeLabel(node)}`, node.name);
    }
    reshaped ||= node.opType === 'Reshape';
    value = node.output[0]!;
  }
  return notFound(ctx, input, stoppedAt(ctx, value));
}

function notFound(ctx: TraceContext, input: string, where: string, subject?: string): never {
  return unsupported(
    `no patch embedding found: expected a Conv with stride equal to its kernel, or a Reshape of the image ${input} into patches followed by a MatMul/Gemm with a constant weight; ${where}`,
    subject ?? input,
  );
}

function isPatchStep(ctx: TraceContext, node: NodeProto, value: string): boolean {
  if (layoutOps.has(node.opType)) return node.input[0] === value;
  if (!preprocessingOps.has(node.opType)) return false;
  const other = otherInput(node, value);
  return other === undefined || ctx.index.isConstant(other);
}

function convEmbed(ctx: TraceContext, node: NodeProto, linear: LinearLayer): PatchEmbedMap {
  const kernel =
    attributeInts(node, 'kernel_shape') ?? ctx.index.constantDims(linear.weight)!.slice(2);
  const strides = attributeInts(node, 'strides') ?? kernel.map(() => 1);
  const pads = attributeInts(node, 'pads') ?? [];
  if (kernel.join() !== strides.join() || pads.some((p) => p !== 0)) {
    unsupported(
      `no patch embedding found: ${nodeLabel(node)} has kernel ${kernel.join('×')}, stride ${strides.join('×')} and pads [${pads.join(', ')}], where a patch embedding has stride equal to its kernel and no padding`,
      node.name,
    );
  }
  let tokens = linear.biasedOutput;
  for (let next = soleDataConsumer(ctx, tokens); next; next = soleDataConsumer(ctx, tokens)) {
    if (!layoutOps.has(next.opType) || next.input[0] !== tokens) break;
    tokens = next.output[0]!;
  }
  checkTokens(ctx, linear, tokens);
  return { form: 'conv', linear, patchSize: kernel[0]!, tokens };
}

function linearEmbed(ctx: TraceContext, input: string, linear: LinearLayer): PatchEmbedMap {
  const channels = ctx.shapes.shape(input)?.[1] ?? 0;
  const patchSize = Math.round(Math.sqrt(linear.inFeatures / channels));
  if (channels === 0 || patchSize * patchSize * channels !== linear.inFeatures) {
    unsupported(
      `${linear.node}: a linear patch embedding with ${linear.inFeatures} inputs does not cover square patches of the ${channels}-channel image ${input}`,
      linear.node,
    );
  }
  checkTokens(ctx, linear, linear.biasedOutput);
  return { form: 'linear', linear, patchSize, tokens: linear.biasedOutput };
}

/** The tokens must be [1, patches, width] once the patch grid is flattened. */
function checkTokens(ctx: TraceContext, linear: LinearLayer, tokens: string): void {
  const shape = ctx.shapes.shape(tokens);
  if (shape?.length !== 3 || shape[2] !== linear.outFeatures) {
    const found = shape ? `[${shape.join(', ')}]` : 'an unknown shape';
    unsupported(
      `the patch embedding ${linear.node} does not give tokens [batch, patches, ${linear.outFeatures}]: ${tokens} has ${found}`,
      linear.node,
    );
  }
}

export interface EmbeddingsTrace {
  classToken?: ViTStructure['classToken'];
  positionEmbedding?: ViTStructure['positionEmbedding'];
  /** The value entering the first block. */
  output: string;
}

/** The class-token Concat and position-embedding Add after the patch tokens, in either order. */
export function embeddingsAfter(ctx: TraceContext, tokens: string): EmbeddingsTrace {
  const trace: EmbeddingsTrace = { output: skipPassThrough(ctx, tokens) };
  for (let step = 0; step < 4; step++) {
    const node = soleDataConsumer(ctx, trace.output);
    const other = node && otherInput(node, trace.output);
    if (!node || !other || node.input.length !== 2) break;
    if (node.opType === 'Concat' && !trace.classToken) {
      const initializer = constantSource(ctx, other);
      if (!initializer || !isTokenAxis(ctx, node)) break;
      trace.classToken = { initializer, concat: node.name };
    } else if (node.opType === 'Add' && !trace.positionEmbedding && ctx.index.isConstant(other)) {
      trace.positionEmbedding = { initializer: other, add: node.name };
    } else {
      break;
    }
    trace.output = skipPassThrough(ctx, node.output[0]!);
  }
  return trace;
}

function isTokenAxis(ctx: TraceContext, concat: NodeProto): boolean {
  const rank = ctx.shapes.shape(concat.output[0]!)?.length ?? 3;
  const axis = attributeInt(concat, 'axis', 0);
  return axis === 1 || axis === 1 - rank;
}

/** The constant a value is broadcast from (the class token through Expand/Tile/Cast). */
function constantSource(ctx: TraceContext, value: string): string | undefined {
  let current = value;
  for (let step = 0; step < 6; step++) {
    if (ctx.index.isConstant(current)) return current;
    const node = ctx.index.producer.get(current);
    const copies = ['Expand', 'Tile', 'Identity', 'Cast', 'Reshape', 'Unsqueeze'];
    if (!node || !copies.includes(node.opType)) return undefined;
    current = node.input[0]!;
  }
  return undefined;
}
