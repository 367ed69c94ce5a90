/**
 * Helpers for tracing a graph by data flow. Shape computations (Shape, Size and what they feed)
 * run beside the tensor data in every export; tracing skips them so that the next node on a
 * path is the next node that touches the activations.
 */
import type { NodeProto } from 'onnx-buf';
import { UnsupportedModelError } from '../errors.js';
import type { GraphIndex } from '../graph/graph.js';
import type { ShapeMap } from './shapes.js';

/** What every recogniser reads: the graph index and the shapes of its values for one image. */
export interface TraceContext {
  index: GraphIndex;
  shapes: ShapeMap;
}

/** Ops that leave their input's values unchanged in an exported inference graph. */
const passThroughOps = new Set(['Identity', 'Dropout']);

/** Ops that only move the elements of a tensor. */
export const layoutOps = new Set(['Reshape', 'Transpose', 'Flatten', 'Squeeze', 'Unsqueeze']);

/** Consumers of a value that read its data (not only its shape). */
export function dataConsumers(ctx: TraceContext, value: string): NodeProto[] {
  return ctx.index
    .consumersOf(value)
    .filter((node) => node.opType !== 'Shape' && node.opType !== 'Size');
}

/** The single data consumer of a value, or undefined when there are none or several. */
export function soleDataConsumer(ctx: TraceContext, value: string): NodeProto | undefined {
  const list = dataConsumers(ctx, value);
  return list.length === 1 ? list[0] : undefined;
}

/** Follows Identity/Dropout nodes forward to the value that carries the same data. */
export function skipPassThrough(ctx: TraceContext, value: string): string {
  let current = value;
  for (let next = soleDataConsumer(ctx, current); next; next = soleDataConsumer(ctx, current)) {
    if (!passThroughOps.has(next.opType) || next.input[0] !== current) break;
    current = next.output[0]!;
  }
  return current;
}

/** Follows Identity/Dropout nodes backward to the value they copy. */
export function skipPassThroughBack(ctx: TraceContext, value: string): string {
  let current = value;
  for (let p = ctx.index.producer.get(current); p; p = ctx.index.producer.get(current)) {
    if (!passThroughOps.has(p.opType)) break;
    current = p.input[0]!;
  }
  return current;
}

/** The data consumer of a value with one of the given op types, if any. */
export function consumerOfType(
  ctx: TraceContext,
  value: string,
  opTypes: readonly string[],
): NodeProto | undefined {
  return dataConsumers(ctx, value).find((node) => opTypes.includes(node.opType));
}

/** The input of a binary node that is not `value`. */
export function otherInput(node: NodeProto, value: string): string | undefined {
  if (node.input[0] === value) return node.input[1];
  if (node.input[1] === value) return node.input[0];
  return undefined;
}

/** The value of a one-element float constant, or undefined. */
export function constantScalar(ctx: TraceContext, value: string | undefined): number | undefined {
  if (!value) return undefined;
  const values = ctx.index.constantFloat32(value);
  return values && values.length === 1 ? values[0] : undefined;
}

/** `name (OpType)`, the way messages name a node. */
export function nodeLabel(node: NodeProto): string {
  return `${node.name} (${node.opType})`;
}

/** Where tracing from `value` stopped, for an error message: its readers or their absence. */
export function stoppedAt(ctx: TraceContext, value: string): string {
  const readers = dataConsumers(ctx, value);
  if (readers.length === 0) {
    return ctx.index.isGraphOutput(value)
      ? `value ${value} is a graph output and nothing reads it`
      : `nothing reads value ${value}`;
  }
  return `tracing stopped at node ${readers.map(nodeLabel).join(', ')}`;
}

/** Throws UnsupportedModelError naming the node or value a message is about. */
export function unsupported(message: string, subject?: string): never {
  throw new UnsupportedModelError(message, subject);
}
