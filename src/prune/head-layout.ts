/**
 * Where each head lives in an attention block's tensors, read from the graph. The heads are made
 * by a Reshape of the q/k/v projection output ([B, N, 3·H·dh] → [B, N, 3, H, dh] in timm,
 * [B, N, H·dh] → [B, N, H, dh] per projection in Hugging Face) and merged again by a Reshape
 * before the output projection. Which axes of those Reshapes hold the heads and the head
 * dimension is found by following the axes of the query, key, value and context backwards and
 * forwards through Transpose, Gather, Squeeze, Split and elementwise ops, never from names: the
 * same numbers can sit in one target twice (timm's [B, N, 3, 3, 64] for ViT-Tiny), and only the
 * data flow tells which one is the head count.
 */
import type { NodeProto } from 'onnx-buf';
import { attributeInt, attributeInts } from '../graph/attributes.js';
import { nodeLabel, unsupported, type TraceContext } from '../vit/trace.js';
import type { AttentionMap, LinearLayer } from '../vit/types.js';

/** Axes of a tensor that hold the head index and the index within a head. */
interface HeadAxes {
  heads: number;
  dim: number;
}

/** A Reshape splitting a projection's output channels into heads. */
export interface HeadSplit {
  node: string;
  /** The projection whose output it splits (qkv, or one of q, k, v). */
  layer: LinearLayer;
  /** Output axes holding heads and head dimension. */
  axes: HeadAxes;
  /** The projection's output channels of head h, dimension j (three for a fused qkv). */
  channels(h: number, j: number): number[];
}

/** The Reshape merging the heads back into the input of the output projection. */
export interface HeadMerge {
  node: string;
  /** The output axis holding heads × headDim (the projection's input features). */
  axis: number;
  /** The projection's input channel of head h, dimension j. */
  channel(h: number, j: number): number;
}

export interface HeadLayout {
  heads: number;
  headDim: number;
  splits: HeadSplit[];
  merge: HeadMerge;
}

/** Ops whose output axes are their first data input's axes. */
const sameAxesOps = new Set(['Identity', 'Dropout', 'Cast', 'Split', 'Slice']);
const elementwiseOps = new Set(['Mul', 'Div', 'Add', 'Sub']);

/** The head layout of one block's attention. */
export function headLayout(ctx: TraceContext, block: number, a: AttentionMap): HeadLayout {
  const at = `block ${block}`;
  const query = rankOf(ctx, a.scores.query);
  const key = rankOf(ctx, a.scores.key);
  const value = rankOf(ctx, a.context.value);
  const sources = [
    traceBack(ctx, at, a.scores.query, headAxes(query, query - 1)),
    traceBack(ctx, at, a.scores.key, headAxes(key, key - 2)),
    traceBack(ctx, at, a.context.value, headAxes(value, value - 1)),
  ];
  const projections = a.qkv ? [a.qkv, a.qkv, a.qkv] : [a.q!, a.k!, a.v!];
  const splits: HeadSplit[] = [];
  sources.forEach((source, i) => {
    if (splits.some((s) => s.node === source.node.name)) return;
    splits.push(headSplit(ctx, at, source.node, source.axes, projections[i]!, a));
  });
  const context = rankOf(ctx, a.context.output);
  const merge = headMerge(ctx, at, a.context.output, headAxes(context, context - 1), a);
  return { heads: a.heads, headDim: a.headDim, splits, merge };
}

/** [B, H, N, dh] has heads on axis 1; [B·H, N, dh] on axis 0. */
function headAxes(rank: number, dim: number): HeadAxes {
  return { heads: rank === 4 ? 1 : 0, dim };
}

function rankOf(ctx: TraceContext, value: string): number {
  const shape = ctx.shapes.shape(value);
  if (!shape) unsupported(`the shape of ${value} is unknown`, value);
  return shape.length;
}

/** Follows the head axes of `value` back to the Reshape that created them. */
function traceBack(ctx: TraceContext, at: string, value: string, axes: HeadAxes) {
  let current = value;
  let now = axes;
  for (let step = 0; step < 32; step++) {
    const node = ctx.index.producer.get(current);
    if (!node) break;
    if (node.opType === 'Reshape') return { node, axes: now };
    const next = stepBack(ctx, node, current, now);
    if (!next) break;
    [current, now] = next;
  }
  return unsupported(
    `${at}: cannot follow the heads of ${value} back to the Reshape that splits them (stopped at ${current})`,
    current,
  );
}

/** The input a node's `value` axes come from, and where they sit in it. */
function stepBack(
  ctx: TraceContext,
  node: NodeProto,
  value: string,
  axes: HeadAxes,
): [string, HeadAxes] | undefined {
  const map = (f: (axis: number) => number) => ({ heads: f(axes.heads), dim: f(axes.dim) });
  const input = node.input[0]!;
  if (sameAxesOps.has(node.opType)) return [input, axes];
  switch (node.opType) {
    case 'Transpose': {
      const perm = attributeInts(node, 'perm') ?? reversed(rankOf(ctx, input));
      return [input, map((axis) => perm[axis]!)];
    }
    case 'Gather':
      return gatherBack(ctx, node, axes);
    case 'Squeeze':
    case 'Unsqueeze':
      return squeezeBack(ctx, node, value, axes);
    default:
      return elementwiseOps.has(node.opType) ? elementwiseBack(ctx, node, value, axes) : undefined;
  }
}

function reversed(rank: number): number[] {
  return Array.from({ length: rank }, (_, i) => rank - 1 - i);
}

function gatherBack(ctx: TraceContext, node: NodeProto, axes: HeadAxes) {
  const input = node.input[0]!;
  const rank = rankOf(ctx, input);
  const raw = attributeInt(node, 'axis', 0);
  const axis = raw < 0 ? raw + rank : raw;
  const indices = ctx.index.constantDims(node.input[1]!);
  if (!indices || indices.length > 1) return undefined;
  // a scalar index removes the gathered axis; a one-element vector keeps it
  const shift = indices.length === 0 ? 1 : 0;
  const f = (a: number) => (a >= axis ? a + shift : a);
  return [input, { heads: f(axes.heads), dim: f(axes.dim) }] as [string, HeadAxes];
}

/** Maps axes through a Squeeze or Unsqueeze, from the output back to the input. */
function squeezeBack(ctx: TraceContext, node: NodeProto, value: string, axes: HeadAxes) {
  const input = node.input[0]!;
  const inShape = ctx.shapes.shape(input);
  const outShape = ctx.shapes.shape(value);
  if (!inShape || !outShape) return undefined;
  // output axis i of a squeeze is the i-th input axis that survives; inverse for unsqueeze
  const kept = keptAxes(ctx, node, inShape, outShape);
  if (!kept) return undefined;
  const f = node.opType === 'Squeeze' ? (a: number) => kept[a]! : (a: number) => kept.indexOf(a);
  const mapped = { heads: f(axes.heads), dim: f(axes.dim) };
  return mapped.heads < 0 || mapped.dim < 0 ? undefined : ([input, mapped] as [string, HeadAxes]);
}

/**
 * The axes of the larger side (a Squeeze's input, an Unsqueeze's output) that the smaller side
 * keeps, in order.
 */
function keptAxes(ctx: TraceContext, node: NodeProto, inShape: number[], outShape: number[]) {
  const fromInput = node.input[1] ? ctx.index.constantValues(node.input[1]) : undefined;
  const listed = fromInput ? Array.from(fromInput, Number) : attributeInts(node, 'axes');
  const big = node.opType === 'Squeeze' ? inShape : outShape;
  const small = node.opType === 'Squeeze' ? outShape : inShape;
  const ones = big.flatMap((d, i) => (d === 1 ? [i] : []));
  const removed = new Set((listed ?? ones).map((a) => (a < 0 ? a + big.length : a)));
  const kept = big.map((_, i) => i).filter((i) => !removed.has(i));
  return kept.length === small.length ? kept : undefined;
}

/** A scale or bias applied elementwise: the axes are those of the non-constant input. */
function elementwiseBack(ctx: TraceContext, node: NodeProto, value: string, axes: HeadAxes) {
  const variable = node.input.filter((v) => v && !ctx.index.isConstant(v));
  const rank = rankOf(ctx, value);
  if (variable.length !== 1 || rankOf(ctx, variable[0]!) !== rank) return undefined;
  return [variable[0]!, axes] as [string, HeadAxes];
}

/** Strides of row-major axes `from`… of `shape`. */
function trailingStrides(shape: number[], from: number): number[] {
  const strides = new Array<number>(shape.length).fill(0);
  let stride = 1;
  for (let i = shape.length - 1; i >= from; i--) {
    strides[i] = stride;
    stride *= shape[i]!;
  }
  return strides;
}

/** The first axis from which the trailing axes of `shape` hold exactly `features` elements. */
function featureStart(shape: number[], features: number): number | undefined {
  let product = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    product *= shape[i]!;
    if (product === features) return i;
    if (product > features) return undefined;
  }
  return undefined;
}

function headSplit(
  ctx: TraceContext,
  at: string,
  node: NodeProto,
  axes: HeadAxes,
  layer: LinearLayer,
  a: AttentionMap,
): HeadSplit {
  const shape = ctx.shapes.shape(node.output[0]!);
  const start = shape && featureStart(shape, layer.outFeatures);
  const fits =
    shape &&
    start !== undefined &&
    axes.heads >= start &&
    axes.dim >= start &&
    shape[axes.heads] === a.heads &&
    shape[axes.dim] === a.headDim;
  if (!fits) {
    unsupported(
      `${at}: ${nodeLabel(node)} does not split the ${layer.outFeatures} outputs of ${layer.node} into ${a.heads} heads of ${a.headDim} (output shape ${shape ? `[${shape.join(', ')}]` : 'unknown'})`,
      node.name,
    );
  }
  const strides = trailingStrides(shape, start);
  // any other trailing axis (the q/k/v axis of a fused projection) is enumerated whole
  const others = shape
    .map((_, i) => i)
    .filter((i) => i >= start && i !== axes.heads && i !== axes.dim);
  const offsets = enumerate(
    others.map((i) => shape[i]!),
    others.map((i) => strides[i]!),
  );
  const hs = strides[axes.heads]!;
  const js = strides[axes.dim]!;
  return {
    node: node.name,
    layer,
    axes,
    channels: (h, j) => offsets.map((o) => o + h * hs + j * js),
  };
}

/** Every offset Σ iₖ·strideₖ over the index ranges of `sizes`. */
function enumerate(sizes: number[], strides: number[]): number[] {
  let offsets = [0];
  sizes.forEach((size, k) => {
    const next: number[] = [];
    for (const o of offsets) for (let i = 0; i < size; i++) next.push(o + i * strides[k]!);
    offsets = next;
  });
  return offsets;
}

/** Follows the context's head axes forward to the Reshape that merges them. */
function headMerge(
  ctx: TraceContext,
  at: string,
  context: string,
  axes: HeadAxes,
  a: AttentionMap,
): HeadMerge {
  let current = context;
  let now = axes;
  for (let step = 0; step < 8; step++) {
    const readers = ctx.index.consumersOf(current).filter((n) => n.opType !== 'Shape');
    const node = readers.length === 1 ? readers[0]! : undefined;
    if (node?.opType === 'Reshape') return mergeAt(ctx, at, node, now, a);
    if (node?.opType === 'Transpose') {
      const perm = attributeInts(node, 'perm') ?? reversed(rankOf(ctx, current));
      now = { heads: perm.indexOf(now.heads), dim: perm.indexOf(now.dim) };
    } else if (!node || !sameAxesOps.has(node.opType)) break;
    current = node!.output[0]!;
  }
  return unsupported(
    `${at}: cannot follow the attention context ${context} forward to the Reshape that merges its heads`,
    context,
  );
}

function mergeAt(
  ctx: TraceContext,
  at: string,
  node: NodeProto,
  axes: HeadAxes,
  a: AttentionMap,
): HeadMerge {
  const inShape = ctx.shapes.shape(node.input[0]!);
  const outShape = ctx.shapes.shape(node.output[0]!);
  const features = a.heads * a.headDim;
  const start = inShape && featureStart(inShape, features);
  const fits =
    inShape &&
    outShape &&
    start !== undefined &&
    axes.heads >= start &&
    axes.dim >= start &&
    outShape[outShape.length - 1] === features &&
    a.proj.inFeatures === features;
  if (!fits) {
    unsupported(
      `${at}: ${nodeLabel(node)} does not merge ${a.heads} heads of ${a.headDim} into the ${a.proj.inFeatures} inputs of ${a.proj.node}`,
      node.name,
    );
  }
  const strides = trailingStrides(inShape, start);
  const hs = strides[axes.heads]!;
  const js = strides[axes.dim]!;
  return { node: node.name, axis: outShape.length - 1, channel: (h, j) => h * hs + j * js };
}
