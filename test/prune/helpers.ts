/**
 * Helpers of the pruning tests: running a model on one input, copies of a model with some
 * weight slices set to zero (the independent truth a pruned model is compared with), and
 * fixture images held in memory.
 */
import type { ModelProto } from 'onnx-buf';
import { openDataset, resolvePreprocess } from '../../src/data/index.js';
import { applyCommands } from '../../src/graph/commands.js';
import { GraphIndex } from '../../src/graph/graph.js';
import { floatTensor, readFloat32, tensorDims } from '../../src/onnx/tensor.js';
import { createSession, runSingle } from '../../src/runtime/session.js';

/** The first output of `model` for `data` of `dims`. */
export async function run(
  model: ModelProto,
  data: Float32Array,
  dims: number[],
): Promise<Float32Array> {
  const session = await createSession(model, { threads: 2 });
  try {
    const out = await runSingle(session, data, dims);
    return out[session.outputNames[0]!]!.data as Float32Array;
  } finally {
    await session.release();
  }
}

export function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) return Infinity;
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i]! - b[i]!));
  return max;
}

/**
 * A copy of `model` where the initializer `name` has zeros at `indices` along `axis` (a 1-D or
 * 2-D tensor), through a plain replaceInitializer command.
 */
export function zeroed(
  model: ModelProto,
  name: string,
  axis: number,
  indices: readonly number[],
): ModelProto {
  const tensor = new GraphIndex(model).initializers.get(name)!;
  const dims = tensorDims(tensor);
  const data = readFloat32(tensor).slice();
  const cols = dims.length === 2 ? dims[1]! : 1;
  const rows = dims[0]!;
  for (const i of indices) {
    if (axis === 0) data.fill(0, i * cols, (i + 1) * cols);
    else for (let r = 0; r < rows; r++) data[r * cols + i] = 0;
  }
  return applyCommands(model, [
    { kind: 'replaceInitializer', tensor: floatTensor(name, dims, data) },
  ]);
}

/** A copy of `model` with initializer `name` replaced by `data` (same dims). */
export function replaced(model: ModelProto, name: string, data: Float32Array): ModelProto {
  const dims = tensorDims(new GraphIndex(model).initializers.get(name)!);
  return applyCommands(model, [
    { kind: 'replaceInitializer', tensor: floatTensor(name, dims, data) },
  ]);
}

export function initializer(model: ModelProto, name: string): Float32Array {
  return readFloat32(new GraphIndex(model).initializers.get(name)!).slice();
}

export interface HeldBatch {
  data: Float32Array;
  dims: number[];
  labels: Int32Array;
}

/** Images `positions` of a fixture folder, preprocessed for the model, in batches of 16. */
export async function heldImages(
  modelPath: string,
  folder: string,
  positions: readonly number[],
): Promise<HeldBatch[]> {
  const dataset = await openDataset(folder, await resolvePreprocess(modelPath));
  const held: HeldBatch[] = [];
  for await (const b of dataset.subset(positions, 'test images').batches(16)) {
    held.push({ data: b.data.slice(), dims: [...b.dims], labels: b.labels.slice() });
  }
  return held;
}

export async function* stream<T>(items: readonly T[]): AsyncIterable<T> {
  for (const item of items) yield item;
}
