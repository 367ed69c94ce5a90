/**
 * Capture of intermediate tensors: the wanted values are added as graph outputs of a copy of
 * the model, and each batch's values are handed to a callback and then dropped, so memory holds
 * one batch of activations at a time whatever the number of images.
 */
import type { ModelProto } from 'onnx-buf';
import { applyCommands, type Command } from '../graph/commands.js';
import { GraphIndex } from '../graph/graph.js';
import { InternalError } from '../errors.js';
import { createSession, floatInput, ort, type SessionOptions } from './session.js';

/** A copy of `model` that also outputs `values` (float tensors of the graph). */
export function withOutputs(model: ModelProto, values: readonly string[]): ModelProto {
  const index = new GraphIndex(model);
  const commands: Command[] = [];
  for (const value of new Set(values)) {
    if (index.isGraphOutput(value)) continue;
    if (!index.producer.has(value) && !index.inputs.some((i) => i.name === value)) {
      throw new InternalError(`cannot capture ${value}: no node produces it`);
    }
    commands.push({ kind: 'addOutput', name: value });
  }
  return applyCommands(model, commands, { context: 'capture graph' });
}

export interface CaptureBatch {
  data: Float32Array;
  dims: readonly number[];
}

export type CaptureCallback = (
  values: ReadonlyMap<string, ort.Tensor>,
  batchIndex: number,
) => void | Promise<void>;

/**
 * Runs `batches` through a copy of the model with `values` exposed and calls `onBatch` with the
 * captured tensors of each batch. The graph input of a captured value is passed as is.
 */
export async function capture(
  model: ModelProto,
  values: readonly string[],
  batches: AsyncIterable<CaptureBatch> | Iterable<CaptureBatch>,
  onBatch: CaptureCallback,
  options: SessionOptions = {},
): Promise<void> {
  const session = await createSession(withOutputs(model, values), options, 'capture graph');
  try {
    const inputName = session.inputNames[0]!;
    let batchIndex = 0;
    for await (const batch of batches) {
      const feeds = { [inputName]: floatInput(batch.data, batch.dims) };
      const fetched = await session.run(
        feeds,
        values.filter((v) => v !== inputName),
      );
      const map = new Map<string, ort.Tensor>();
      for (const value of values) {
        map.set(value, value === inputName ? feeds[inputName]! : fetched[value]!);
      }
      await onBatch(map, batchIndex++);
    }
  } finally {
    await session.release();
  }
}

/**
 * The calibration batches copied out, since datasets reuse their buffers between batches; with
 * `perBatch`, each batch is split into batches of at most that many images.
 */
export async function holdImages(
  batches: AsyncIterable<CaptureBatch> | Iterable<CaptureBatch>,
  perBatch?: number,
): Promise<CaptureBatch[]> {
  const held: CaptureBatch[] = [];
  for await (const b of batches) {
    if (perBatch === undefined) {
      held.push({ data: b.data.slice(), dims: [...b.dims] });
      continue;
    }
    const n = b.dims[0] ?? 1;
    const size = b.data.length / n;
    for (let from = 0; from < n; from += perBatch) {
      const take = Math.min(perBatch, n - from);
      const data = b.data.slice(from * size, (from + take) * size);
      held.push({ data, dims: [take, ...b.dims.slice(1)] });
    }
  }
  return held;
}
