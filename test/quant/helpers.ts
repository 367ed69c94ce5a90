/**
 * Helpers of the quantization tests: fixture images through the data module, held in memory
 * once so that several models can be compared on the same batches, and top-1 over a session.
 */
import type { ModelProto } from 'onnx-buf';
import { openDataset, resolvePreprocess, type Dataset } from '../../src/data/index.js';
import { createSession, runSingle } from '../../src/runtime/session.js';

export interface HeldBatch {
  data: Float32Array;
  dims: number[];
  labels: Int32Array;
}

/** The images at positions [from, from + count) of a fixture folder, for the model's config. */
export async function fixtureImages(
  modelPath: string,
  folder: string,
  from: number,
  count: number,
): Promise<Dataset> {
  const dataset = await openDataset(folder, await resolvePreprocess(modelPath));
  const positions = Array.from({ length: count }, (_, i) => from + i);
  return dataset.subset(positions, `${dataset.name}[${from}, ${from + count})`);
}

/** Every batch of a dataset copied out of the dataset's reused buffers. */
export async function holdBatches(dataset: Dataset, size: number): Promise<HeldBatch[]> {
  const held: HeldBatch[] = [];
  for await (const batch of dataset.batches(size)) {
    held.push({ data: batch.data.slice(), dims: [...batch.dims], labels: batch.labels.slice() });
  }
  return held;
}

export function labelsOf(batches: readonly HeldBatch[]): Int32Array {
  return concat(batches.map((b) => b.labels));
}

/** The predicted class of every image. */
export async function predictions(
  model: ModelProto,
  batches: readonly HeldBatch[],
): Promise<Int32Array> {
  const session = await createSession(model, { threads: 2 });
  const out: Int32Array[] = [];
  try {
    for (const batch of batches) {
      const result = await runSingle(session, batch.data, batch.dims);
      out.push(argmaxRows(result[session.outputNames[0]!]!.data as Float32Array, batch.dims[0]!));
    }
  } finally {
    await session.release();
  }
  return concat(out);
}

function argmaxRows(logits: Float32Array, rows: number): Int32Array {
  const classes = logits.length / rows;
  const out = new Int32Array(rows);
  for (let n = 0; n < rows; n++) {
    let best = 0;
    for (let c = 1; c < classes; c++) {
      if (logits[n * classes + c]! > logits[n * classes + best]!) best = c;
    }
    out[n] = best;
  }
  return out;
}

/** Fraction of positions where `a` equals `b`. */
export function agreement(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let same = 0;
  for (let i = 0; i < a.length; i++) if (a[i] === b[i]) same++;
  return same / a.length;
}

function concat(parts: readonly Int32Array[]): Int32Array {
  const out = new Int32Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const p of parts) {
    out.set(p, offset);
    offset += p.length;
  }
  return out;
}

/** The float32 `direction` steps from positive `x`, through its bit pattern. */
export function float32Step(x: number, direction: number): number {
  const view = new DataView(new ArrayBuffer(4));
  view.setFloat32(0, x);
  view.setUint32(0, view.getUint32(0) + direction);
  return view.getFloat32(0);
}
