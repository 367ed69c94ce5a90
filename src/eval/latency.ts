/**
 * Latency measured side by side: every model runs in the same process, and runs are
 * interleaved (A, B, A, B, … with the order alternating each round) so that a machine that
 * slows down or speeds up affects all models alike. Ratios between models are what to trust;
 * absolute milliseconds move with the load of a shared machine.
 */
import type { ModelProto } from 'onnx-buf';
import { createSession, floatInput } from '../runtime/session.js';
import type { Reporting } from '../log.js';
import { median } from './metrics.js';

export interface LatencyOptions extends Reporting {
  /** Input dims without the batch axis, e.g. [3, 224, 224]. */
  sampleDims: readonly number[];
  batchSizes?: readonly number[];
  threads?: number;
  warmup?: number;
  runs?: number;
}

export interface LatencyRow {
  batch: number;
  /** Median milliseconds per run, one per model in the order given. */
  medianMs: number[];
  /** Images per second at that batch size, from the median. */
  throughput: number[];
}

/** Measures every model at each batch size; models are named for progress only. */
export async function measureLatency(
  models: readonly (ModelProto | Uint8Array)[],
  options: LatencyOptions,
): Promise<LatencyRow[]> {
  const sessions = await Promise.all(
    models.map((m) => createSession(m, { threads: options.threads, optimization: 'all' })),
  );
  const rows: LatencyRow[] = [];
  try {
    for (const batch of options.batchSizes ?? [1]) {
      rows.push(await measureBatch(sessions, batch, options));
    }
  } finally {
    await Promise.all(sessions.map((s) => s.release()));
  }
  return rows;
}

type Session = Awaited<ReturnType<typeof createSession>>;

async function measureBatch(
  sessions: Session[],
  batch: number,
  options: LatencyOptions,
): Promise<LatencyRow> {
  const dims = [batch, ...options.sampleDims];
  const data = new Float32Array(dims.reduce((a, b) => a * b, 1));
  // a fixed pseudo-random input: all zeros could take faster paths in some kernels
  for (let i = 0; i < data.length; i++) data[i] = Math.sin(i * 12.9898) * 0.5;
  const feeds = sessions.map((s) => ({ [s.inputNames[0]!]: floatInput(data, dims) }));
  const warmup = options.warmup ?? 3;
  const runs = options.runs ?? 20;
  const times: number[][] = sessions.map(() => []);
  const stage = `latency (batch ${batch})`;
  options.onProgress?.({ status: 'start', stage, total: warmup + runs });
  for (let round = 0; round < warmup + runs; round++) {
    const order = sessions.map((_, i) => i);
    if (round % 2) order.reverse();
    for (const i of order) {
      const start = performance.now();
      await sessions[i]!.run(feeds[i]!);
      if (round >= warmup) times[i]!.push(performance.now() - start);
    }
    options.onProgress?.({ status: 'advance', stage, done: round + 1, total: warmup + runs });
  }
  options.onProgress?.({ status: 'end', stage });
  const medianMs = times.map((t) => median(t));
  return { batch, medianMs, throughput: medianMs.map((ms) => (batch * 1000) / ms) };
}
