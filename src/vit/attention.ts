/**
 * Recognising multi-head self-attention by data flow from the block's first norm: the q/k/v
 * projections (one fused or three separate), the first Softmax after them, the score MatMul
 * and scale before it, the context MatMul after it, the output projection and the residual Add.
 * Heads and head size come from the shape of the query as the graph computes it (its Reshape
 * target, constant or built by a Shape/Gather/Concat chain), never from names.
 */
import type { NodeProto } from 'onnx-buf';
import { attributeInt } from '../graph/attributes.js';
import { isLinearNode, linearAt } from './linear.js';
import {
  constantScalar,
  dataConsumers,
  layoutOps,
  nodeLabel,
  otherInput,
  skipPassThrough,
  soleDataConsumer,
  stoppedAt,
  unsupported,
  type TraceContext,
} from './trace.js';
import type { AttentionMap, LinearLayer, NormLayer } from './types.js';

/** How far the searches below may wander before giving up. */
const searchLimit = 64;

export interface AttentionTrace {
  attention: AttentionMap;
  residual: { node: string; output: string };
}

/** The attention of block `block`, reading `norm`'s output; `x` is the block input. */
export function attentionAt(
  ctx: TraceContext,
  block: number,
  x: string,
  norm: NormLayer,
): AttentionTrace {
  const at = `block ${block}`;
  const projections = projectionsOf(ctx, at, norm);
  const softmax = softmaxAfter(ctx, at, projections);
  const { scores, scale } = scoresBefore(ctx, at, softmax);
  const context = contextAfter(ctx, at, softmax);
  const proj = outputProjection(ctx, at, context.output, `blocks.${block}.attn.proj`);
  const residual = residualAdd(ctx, x, proj.biasedOutput);
  if (!residual) {
    unsupported(
      `${at}: the attention output projection ${proj.node} does not feed a residual Add with the block input ${x}; ${stoppedAt(ctx, proj.biasedOutput)}`,
      proj.node,
    );
  }
  const roles = assignRoles(ctx, at, block, projections, scores, context);
  const { heads, headDim } = headsOf(ctx, at, scores, roles);
  const attention: AttentionMap = {
    ...roles,
    scores,
    ...(scale ? { scale } : {}),
    softmax: softmaxMap(softmax),
    context,
    proj,
    heads,
    headDim,
  };
  return { attention, residual };
}

/** The residual Add summing `value` with `x`. */
export function residualAdd(ctx: TraceContext, x: string, value: string) {
  const add = dataConsumers(ctx, value).find(
    (node) => node.opType === 'Add' && otherInput(node, value) === x,
  );
  return add ? { node: add.name, output: add.output[0]! } : undefined;
}

function projectionsOf(ctx: TraceContext, at: string, norm: NormLayer): LinearLayer[] {
  const readers = dataConsumers(ctx, norm.output);
  const layers = readers.map((node) => linearAt(ctx, node, ''));
  const other = readers.find((_, i) => !layers[i]);
  if (other || (layers.length !== 1 && layers.length !== 3)) {
    const found = readers.map(nodeLabel).join(', ') || 'nothing';
    unsupported(
      `${at}: expected ${norm.role} (${norm.output}) to feed a fused qkv projection or separate q, k and v projections (MatMul/Gemm with a constant weight), but it feeds ${found}`,
      other?.name ?? norm.output,
    );
  }
  return layers as LinearLayer[];
}

function softmaxOverLastAxis(ctx: TraceContext, node: NodeProto): boolean {
  const axis = attributeInt(node, 'axis', -1);
  const rank = ctx.shapes.shape(node.input[0]!)?.length;
  return axis === -1 || (rank !== undefined && axis === rank - 1);
}

/** The first Softmax over the last axis reached from the projections' outputs. */
function softmaxAfter(ctx: TraceContext, at: string, projections: LinearLayer[]): NodeProto {
  const queue = projections.map((p) => p.biasedOutput);
  const seen = new Set<string>();
  while (queue.length && seen.size < searchLimit) {
    for (const node of dataConsumers(ctx, queue.shift()!)) {
      if (seen.has(node.name) || isLinearNode(ctx, node)) continue;
      seen.add(node.name);
      if (node.opType === 'Softmax' && softmaxOverLastAxis(ctx, node)) return node;
      queue.push(...node.output);
    }
  }
  const from = projections.map((p) => p.node).join(', ');
  return unsupported(
    `${at}: no Softmax over the last axis found after the projection ${from}; the attention scores were not recognised`,
    projections[0]?.node,
  );
}

function softmaxMap(softmax: NodeProto) {
  return { node: softmax.name, input: softmax.input[0]!, output: softmax.output[0]! };
}

/**
 * The MatMul computing QKᵀ, walking back from the Softmax over a constant scale (Mul or Div)
 * and a constant mask or bias Add.
 */
function scoresBefore(ctx: TraceContext, at: string, softmax: NodeProto) {
  let value = softmax.input[0]!;
  let scale: AttentionMap['scale'];
  for (let step = 0; step < 4; step++) {
    const node = ctx.index.producer.get(value);
    if (!node) break;
    if (node.opType === 'MatMul' && !node.input.some((v) => ctx.index.isConstant(v))) {
      const scores = { node: node.name, query: node.input[0]!, key: node.input[1]!, output: value };
      return { scores, scale };
    }
    const factor = scaleFactor(ctx, node);
    const isMask = node.opType === 'Add' && node.input.some((v) => ctx.index.isConstant(v));
    if (factor === undefined && !isMask) break;
    if (factor !== undefined) scale = { node: node.name, factor };
    value = node.input.find((v) => !ctx.index.isConstant(v))!;
  }
  return unsupported(
    `${at}: the input of ${nodeLabel(softmax)} is not computed by a MatMul of queries and keys (with an optional constant scale or mask)`,
    softmax.name,
  );
}

/** The factor a Mul by a constant scalar, or a Div by one, multiplies its input with. */
function scaleFactor(ctx: TraceContext, node: NodeProto): number | undefined {
  if (node.opType === 'Div') {
    const divisor = constantScalar(ctx, node.input[1]);
    return divisor === undefined ? undefined : 1 / divisor;
  }
  if (node.opType !== 'Mul') return undefined;
  return constantScalar(ctx, node.input[1]) ?? constantScalar(ctx, node.input[0]);
}

/** The MatMul multiplying the attention probabilities with the values. */
function contextAfter(ctx: TraceContext, at: string, softmax: NodeProto) {
  const probabilities = skipPassThrough(ctx, softmax.output[0]!);
  const node = dataConsumers(ctx, probabilities).find(
    (n) => n.opType === 'MatMul' && n.input[0] === probabilities,
  );
  if (!node) {
    unsupported(
      `${at}: the output of ${nodeLabel(softmax)} does not feed a MatMul with the values; ${stoppedAt(ctx, probabilities)}`,
      softmax.name,
    );
  }
  return { node: node.name, probabilities, value: node.input[1]!, output: node.output[0]! };
}

/** The output projection, after the context has been transposed back and its heads merged. */
function outputProjection(ctx: TraceContext, at: string, context: string, role: string) {
  let value = context;
  for (let step = 0; step < 8; step++) {
    const node = soleDataConsumer(ctx, value);
    const layer = node && linearAt(ctx, node, role);
    if (layer) return layer;
    if (!node || !layoutOps.has(node.opType)) break;
    value = node.output[0]!;
  }
  return unsupported(
    `${at}: expected the attention context ${context} to reach the output projection (MatMul/Gemm with a constant weight) through Transpose/Reshape; ${stoppedAt(ctx, value)}`,
    context,
  );
}

/** The projection a value is computed from, walking back over non-linear nodes. */
function sourceOf(ctx: TraceContext, value: string, layers: LinearLayer[]) {
  const queue = [value];
  for (let step = 0; queue.length && step < searchLimit; step++) {
    const current = queue.shift()!;
    const layer = layers.find((l) => l.biasedOutput === current || l.output === current);
    if (layer) return layer;
    const node = ctx.index.producer.get(current);
    if (node) queue.push(...node.input.filter((v) => v && !ctx.index.isConstant(v)));
  }
  return undefined;
}

type Projections = Pick<AttentionMap, 'qkv' | 'q' | 'k' | 'v'>;

function assignRoles(
  ctx: TraceContext,
  at: string,
  block: number,
  layers: LinearLayer[],
  scores: AttentionMap['scores'],
  context: AttentionMap['context'],
): Projections {
  const role = (name: string) => `blocks.${block}.attn.${name}`;
  if (layers.length === 1) return { qkv: { ...layers[0]!, role: role('qkv') } };
  const q = sourceOf(ctx, scores.query, layers);
  const k = sourceOf(ctx, scores.key, layers);
  const v = sourceOf(ctx, context.value, layers);
  if (!q || !k || !v || new Set([q, k, v]).size !== 3) {
    unsupported(
      `${at}: could not tell which of ${layers.map((l) => l.node).join(', ')} computes the queries, keys and values of ${scores.node} and ${context.node}`,
      scores.node,
    );
  }
  return {
    q: { ...q, role: role('q') },
    k: { ...k, role: role('k') },
    v: { ...v, role: role('v') },
  };
}

/**
 * Heads and head size from the query's shape: [1, heads, tokens, headDim] (or [heads, tokens,
 * headDim] where batch and heads are merged), checked against the projection width.
 */
function headsOf(ctx: TraceContext, at: string, scores: AttentionMap['scores'], p: Projections) {
  const shape = ctx.shapes.shape(scores.query);
  const width = p.qkv ? p.qkv.outFeatures / 3 : p.q!.outFeatures;
  const headDim = shape?.[shape.length - 1];
  const heads = shape?.length === 4 ? shape[1] : shape?.length === 3 ? shape[0] : undefined;
  if (heads === undefined || headDim === undefined || heads * headDim !== width) {
    const found = shape ? `[${shape.join(', ')}]` : 'unknown';
    unsupported(
      `${at}: could not read the number of heads from the query ${scores.query} of ${scores.node}: expected a shape [1, heads, tokens, headDim] with heads × headDim = ${width}, found ${found}`,
      scores.node,
    );
  }
  return { heads, headDim };
}
