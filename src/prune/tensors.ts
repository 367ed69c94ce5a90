/**
 * Float tensors as the pruning passes read and write them: typed data with dims, slicing along
 * one axis, and the command that puts a changed tensor back under its own name (an initializer
 * is replaced; a Constant node becomes an initializer of the same value name).
 */
import type { Command } from '../graph/commands.js';
import type { GraphIndex } from '../graph/graph.js';
import { DataType, dataTypeName, floatTensor, readFloat32, tensorDims } from '../onnx/tensor.js';
import { unsupported } from '../vit/trace.js';

export interface FloatData {
  data: Float32Array;
  dims: number[];
}

/** The float32 constant behind `value`; UnsupportedModelError for other types. */
export function readConstant(index: GraphIndex, value: string): FloatData {
  const tensor = index.constantTensor(value);
  if (!tensor) unsupported(`expected ${value} to be a constant tensor`, value);
  if (tensor.dataType !== DataType.FLOAT) {
    unsupported(
      `pruning needs float32 weights, but ${value} is ${dataTypeName(tensor.dataType)}`,
      value,
    );
  }
  return { data: readFloat32(tensor), dims: tensorDims(tensor) };
}

/** An axis counted from the end when negative, checked against the rank. */
export function normalizeAxis(axis: number, rank: number, what: string): number {
  const a = axis < 0 ? axis + rank : axis;
  if (a < 0 || a >= rank) throw new RangeError(`${what}: axis ${axis} is outside rank ${rank}`);
  return a;
}

/**
 * The tensor with only the indices `keep` (in that order) along `axis`. One pass over the data:
 * the tensor is viewed as [outer, dims[axis], inner] and each kept slab is copied.
 */
export function sliceAxis(tensor: FloatData, axis: number, keep: readonly number[]): FloatData {
  const { data, dims } = tensor;
  const a = normalizeAxis(axis, dims.length, 'sliceAxis');
  const size = dims[a]!;
  let outer = 1;
  for (let i = 0; i < a; i++) outer *= dims[i]!;
  let inner = 1;
  for (let i = a + 1; i < dims.length; i++) inner *= dims[i]!;
  const out = new Float32Array(outer * keep.length * inner);
  let at = 0;
  for (let o = 0; o < outer; o++) {
    const base = o * size * inner;
    for (const k of keep) {
      const from = base + k * inner;
      out.set(data.subarray(from, from + inner), at);
      at += inner;
    }
  }
  const outDims = [...dims];
  outDims[a] = keep.length;
  return { data: out, dims: outDims };
}

/** The command writing `tensor` under the constant value name `value`. */
export function writeConstant(index: GraphIndex, value: string, tensor: FloatData): Command[] {
  const proto = floatTensor(value, tensor.dims, tensor.data);
  if (index.initializers.has(value)) return [{ kind: 'replaceInitializer', tensor: proto }];
  const node = index.producer.get(value)!;
  return [
    { kind: 'removeNode', name: node.name },
    { kind: 'addInitializer', tensor: proto },
  ];
}

/** Fresh names that clash with nothing in the graph or handed out before. */
export class NameAllocator {
  private readonly taken = new Set<string>();

  constructor(index: GraphIndex) {
    for (const node of index.nodes) {
      this.taken.add(node.name);
      for (const v of [...node.input, ...node.output]) this.taken.add(v);
    }
    for (const name of index.initializers.keys()) this.taken.add(name);
    for (const v of index.graph.input) this.taken.add(v.name);
  }

  name(base: string): string {
    let candidate = base;
    for (let i = 1; this.taken.has(candidate); i++) candidate = `${base}_${i}`;
    this.taken.add(candidate);
    return candidate;
  }
}
