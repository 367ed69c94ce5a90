/**
 * Shape and value rules of single ops, for ShapeMap: broadcasting, Reshape with 0 and -1,
 * Transpose, Gather, Slice, Conv output sizes, and arithmetic on the small integer tensors of
 * Shape/Gather/Concat chains. Each returns undefined (or empty facts) where ONNX's rule cannot
 * be applied to what is known.
 */
import type { NodeProto, TensorProto } from 'onnx-buf';
import { attributeInt, attributeInts, attributeTensor } from '../graph/attributes.js';
import { DataType, readTensor, tensorDims, type TensorData } from '../onnx/tensor.js';
import type { ValueFacts } from './shapes.js';

/** Largest constant whose values are kept (shape tensors, axes, scalars). */
const maxValues = 64;

const floatTypes = new Set<number>([
  DataType.FLOAT,
  DataType.DOUBLE,
  DataType.FLOAT16,
  DataType.BFLOAT16,
]);

export function constantFacts(tensor: TensorProto | undefined): ValueFacts {
  if (!tensor) return {};
  const shape = tensorDims(tensor);
  const integer = !floatTypes.has(tensor.dataType);
  if (shape.reduce((p, d) => p * d, 1) > maxValues) return { shape, integer };
  const values = numbersOf(tensor);
  return values ? { shape, values, integer } : { shape, integer };
}

/**
 * The values of a small constant as numbers; int64 clamped to the safe range, because exporters
 * write "to the end" as INT64_MAX in Slice ends. Undefined for types read as raw bits.
 */
function numbersOf(tensor: TensorProto): number[] | undefined {
  const rawBits = tensor.dataType === DataType.FLOAT16 || tensor.dataType === DataType.BFLOAT16;
  if (rawBits) return undefined;
  let data: TensorData;
  try {
    data = readTensor(tensor);
  } catch {
    return undefined;
  }
  if (!(data instanceof BigInt64Array)) return Array.from(data);
  const limit = BigInt(Number.MAX_SAFE_INTEGER);
  return Array.from(data, (v) => Number(v > limit ? limit : v < -limit ? -limit : v));
}

export function vector(values: number[]): ValueFacts {
  return { shape: [values.length], values, integer: true };
}

function axisOf(axis: number, rank: number): number {
  return axis < 0 ? axis + rank : axis;
}

export function sliceShape(node: NodeProto, shape: number[]): number[] {
  const start = axisOf(attributeInt(node, 'start', 0), shape.length);
  const end = axisOf(attributeInt(node, 'end', shape.length), shape.length);
  return shape.slice(Math.max(0, start), Math.min(shape.length, end));
}

function broadcastShapes(a: number[], b: number[]): number[] {
  const rank = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < rank; i++) {
    const x = a[a.length - rank + i] ?? 1;
    const y = b[b.length - rank + i] ?? 1;
    if (x !== y && x !== 1 && y !== 1) throw new RangeError('shapes do not broadcast');
    out.push(x === 1 ? y : x);
  }
  return out;
}

function elementwise(op: string, x: number, y: number, integer: boolean): number {
  switch (op) {
    case 'Add':
      return x + y;
    case 'Sub':
      return x - y;
    case 'Mul':
      return x * y;
    case 'Div':
      return integer ? Math.trunc(x / y) : x / y;
    case 'Pow':
      return x ** y;
    case 'Equal':
      return x === y ? 1 : 0;
    case 'Less':
      return x < y ? 1 : 0;
    case 'Greater':
      return x > y ? 1 : 0;
    default:
      return Math.max(x, y);
  }
}

export function binary(op: string, a: ValueFacts, b: ValueFacts): ValueFacts {
  if (!a.shape || !b.shape) return {};
  const shape = broadcastShapes(a.shape, b.shape);
  if (!a.values || !b.values || shape.length > 1) return { shape };
  const integer = Boolean(a.integer && b.integer);
  const n = shape[0] ?? 1;
  const values: number[] = [];
  for (let i = 0; i < n; i++) {
    const x = a.values[a.values.length === 1 ? 0 : i] ?? NaN;
    const y = b.values[b.values.length === 1 ? 0 : i] ?? NaN;
    values.push(elementwise(op, x, y, integer));
  }
  return { shape, values, integer };
}

export function where(c: ValueFacts, a: ValueFacts, b: ValueFacts): ValueFacts {
  if (!c.shape || !a.shape || !b.shape) return {};
  const shape = broadcastShapes(broadcastShapes(c.shape, a.shape), b.shape);
  if (!c.values || !a.values || !b.values || shape.length > 1) return { shape };
  const pick = (v: number[], i: number) => v[v.length === 1 ? 0 : i] ?? NaN;
  const values = Array.from({ length: shape[0] ?? 1 }, (_, i) =>
    pick(c.values!, i) ? pick(a.values!, i) : pick(b.values!, i),
  );
  return { shape, values, integer: Boolean(a.integer && b.integer) };
}

export function constantOfShape(node: NodeProto, a: ValueFacts): ValueFacts {
  if (!a.values) return {};
  const fill = constantFacts(attributeTensor(node, 'value'));
  const count = a.values.reduce((p, d) => p * d, 1);
  const values = count <= maxValues ? new Array<number>(count).fill(fill.values?.[0] ?? 0) : [];
  return { shape: a.values, values: values.length ? values : undefined, integer: fill.integer };
}

export function gather(node: NodeProto, data: ValueFacts, indices: ValueFacts): ValueFacts {
  if (!data.shape || !indices.shape) return {};
  const axis = axisOf(attributeInt(node, 'axis', 0), data.shape.length);
  const dim = data.shape[axis] ?? 0;
  const shape = [...data.shape.slice(0, axis), ...indices.shape, ...data.shape.slice(axis + 1)];
  if (!data.values || !indices.values || data.shape.length !== 1) return { shape };
  const values = indices.values.map((i) => data.values![i < 0 ? i + dim : i] ?? NaN);
  return { shape, values, integer: data.integer };
}

export function squeeze(node: NodeProto, a: ValueFacts, axesInput: ValueFacts): ValueFacts {
  if (!a.shape) return {};
  const axes = axesInput.values ?? attributeInts(node, 'axes');
  let shape: number[];
  if (node.opType === 'Squeeze') {
    const rank = a.shape.length;
    const drop = new Set((axes ?? []).map((x) => axisOf(x, rank)));
    shape = a.shape.filter((d, i) => (axes ? !drop.has(i) : d !== 1));
  } else {
    const rank = a.shape.length + (axes?.length ?? 0);
    const add = new Set((axes ?? []).map((x) => axisOf(x, rank)));
    const rest = [...a.shape];
    shape = Array.from({ length: rank }, (_, i) => (add.has(i) ? 1 : (rest.shift() ?? 1)));
  }
  return { shape, values: a.values, integer: a.integer };
}

export function concat(node: NodeProto, parts: ValueFacts[]): ValueFacts {
  const shapes = parts.map((p) => p.shape);
  if (shapes.some((s) => !s)) return {};
  const first = shapes[0]!;
  const axis = axisOf(attributeInt(node, 'axis', 0), first.length);
  const shape = [...first];
  shape[axis] = shapes.reduce((sum, s) => sum + (s![axis] ?? 0), 0);
  if (first.length !== 1 || parts.some((p) => !p.values)) return { shape };
  const values = parts.flatMap((p) => p.values!);
  return { shape, values, integer: parts.every((p) => p.integer) };
}

export function slice(a: ValueFacts, args: (number[] | undefined)[]): ValueFacts {
  const [starts, ends, axesArg, stepsArg] = args;
  if (!a.shape || !starts || !ends) return {};
  const rank = a.shape.length;
  const axes = axesArg ?? starts.map((_, i) => i);
  const shape = [...a.shape];
  let range: [number, number, number] | undefined;
  axes.forEach((axisArg, i) => {
    const axis = axisOf(axisArg, rank);
    const dim = a.shape![axis] ?? 0;
    const step = stepsArg?.[i] ?? 1;
    const clamp = (v: number) => Math.min(Math.max(v < 0 ? v + dim : v, 0), dim);
    const start = clamp(starts[i] ?? 0);
    const end = clamp(ends[i] ?? dim);
    shape[axis] = Math.max(0, Math.ceil((end - start) / step));
    if (rank === 1) range = [start, end, step];
  });
  if (!a.values || !range) return { shape };
  const [start, end, step] = range;
  const values = a.values.slice(start, end).filter((_, i) => i % step === 0);
  return { shape, values, integer: a.integer };
}

export function reshape(
  shape: number[] | undefined,
  target: number[] | undefined,
): number[] | undefined {
  if (!shape || !target) return undefined;
  const total = shape.reduce((p, d) => p * d, 1);
  const out = target.map((d, i) => (d === 0 ? (shape[i] ?? 0) : d));
  const known = out.reduce((p, d) => (d === -1 ? p : p * d), 1);
  const inferred = out.map((d) => (d === -1 ? total / known : d));
  if (inferred.some((d) => !Number.isInteger(d) || d < 0)) return undefined;
  return inferred.reduce((p, d) => p * d, 1) === total ? inferred : undefined;
}

export function flatten(shape: number[] | undefined, axisArg: number): number[] | undefined {
  if (!shape) return undefined;
  const axis = axisOf(axisArg, shape.length);
  const product = (dims: number[]) => dims.reduce((p, d) => p * d, 1);
  return [product(shape.slice(0, axis)), product(shape.slice(axis))];
}

export function transpose(shape: number[] | undefined, perm: number[] | undefined) {
  if (!shape) return undefined;
  const order = perm ?? shape.map((_, i) => shape.length - 1 - i);
  return order.map((p) => shape[p] ?? NaN);
}

export function broadcast(shape: number[] | undefined, target: number[] | undefined) {
  return shape && target ? broadcastShapes(shape, target) : undefined;
}

export function reduce(
  node: NodeProto,
  shape: number[] | undefined,
  axesInput: number[] | undefined,
) {
  if (!shape) return undefined;
  const axes = axesInput ?? attributeInts(node, 'axes') ?? shape.map((_, i) => i);
  const keep = attributeInt(node, 'keepdims', 1) === 1;
  const reduced = new Set(axes.map((a) => axisOf(a, shape.length)));
  return shape.flatMap((d, i) => (reduced.has(i) ? (keep ? [1] : []) : [d]));
}

export function matMul(a: number[] | undefined, b: number[] | undefined): number[] | undefined {
  if (!a || !b || a.length < 2 || b.length < 1) return undefined;
  if (b.length === 1) return a.slice(0, -1);
  const batch = broadcastShapes(a.slice(0, -2), b.slice(0, -2));
  return [...batch, a[a.length - 2]!, b[b.length - 1]!];
}

export function gemm(node: NodeProto, a: number[] | undefined, b: number[] | undefined) {
  if (!a || !b || a.length !== 2 || b.length !== 2) return undefined;
  const rows = attributeInt(node, 'transA', 0) ? a[1]! : a[0]!;
  const cols = attributeInt(node, 'transB', 0) ? b[0]! : b[1]!;
  return [rows, cols];
}

export function conv(node: NodeProto, x: number[] | undefined, w: number[] | undefined) {
  if (!x || !w || x.length < 3) return undefined;
  const spatial = x.length - 2;
  const kernel = attributeInts(node, 'kernel_shape') ?? w.slice(2);
  const strides = attributeInts(node, 'strides') ?? new Array<number>(spatial).fill(1);
  const pads = attributeInts(node, 'pads') ?? new Array<number>(spatial * 2).fill(0);
  const dilations = attributeInts(node, 'dilations') ?? new Array<number>(spatial).fill(1);
  const out = [x[0]!, w[0]!];
  for (let i = 0; i < spatial; i++) {
    const size = x[i + 2]! + pads[i]! + pads[i + spatial]!;
    const extent = dilations[i]! * (kernel[i]! - 1) + 1;
    out.push(Math.floor((size - extent) / strides[i]!) + 1);
  }
  return out;
}

export function pool(node: NodeProto, x: number[] | undefined) {
  const kernel = attributeInts(node, 'kernel_shape');
  return kernel && x ? conv(node, x, [x[1]!, 1, ...kernel]) : undefined;
}

export function split(
  node: NodeProto,
  shape: number[] | undefined,
  sizesInput: number[] | undefined,
) {
  if (!shape) return [];
  const axis = axisOf(attributeInt(node, 'axis', 0), shape.length);
  const count = node.output.length;
  const sizes =
    sizesInput ??
    attributeInts(node, 'split') ??
    new Array<number>(count).fill(Math.ceil((shape[axis] ?? 0) / count));
  return sizes.map((size) => ({ shape: shape.map((d, i) => (i === axis ? size : d)) }));
}
