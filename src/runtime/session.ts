/**
 * onnxruntime-node sessions for in-memory models. Every model vitslim builds is run from bytes,
 * so the input file on disk is never needed again after loading.
 */
import * as ort from 'onnxruntime-node';
import type { ModelProto } from 'onnx-buf';
import { InputError } from '../errors.js';
import { serializeModel } from '../onnx/model-io.js';

export { ort };

export interface SessionOptions {
  /** Intra-op threads; defaults to onnxruntime's choice (all cores). */
  threads?: number;
  /** Graph optimisation level; 'all' lets onnxruntime fuse QDQ groups into integer kernels. */
  optimization?: 'disabled' | 'basic' | 'extended' | 'all';
  /** Where onnxruntime writes the graph after its optimisations (to count fused kernels). */
  optimizedModelPath?: string;
}

export async function createSession(
  model: ModelProto | Uint8Array,
  options: SessionOptions = {},
  source = 'model',
): Promise<ort.InferenceSession> {
  const bytes = model instanceof Uint8Array ? model : serializeModel(model);
  const sessionOptions: ort.InferenceSession.SessionOptions = {
    graphOptimizationLevel: options.optimization ?? 'all',
    executionProviders: ['cpu'],
    interOpNumThreads: 1,
    // warnings (e.g. about saving an optimised graph) would reach the user's terminal directly
    logSeverityLevel: 3,
    ...(options.threads ? { intraOpNumThreads: options.threads } : {}),
    ...(options.optimizedModelPath ? { optimizedModelFilePath: options.optimizedModelPath } : {}),
  };
  try {
    return await ort.InferenceSession.create(bytes, sessionOptions);
  } catch (error) {
    const reason = firstLine(error);
    throw new InputError(`${source}: onnxruntime cannot load the model (${reason})`, source);
  }
}

export function firstLine(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error);
  return text.split('\n')[0] ?? text;
}

/** A float32 input tensor over `data` without copying. */
export function floatInput(data: Float32Array, dims: readonly number[]): ort.Tensor {
  return new ort.Tensor('float32', data, dims);
}

/** Runs one input, returning the requested outputs (all when `fetches` is omitted). */
export async function runSingle(
  session: ort.InferenceSession,
  data: Float32Array,
  dims: readonly number[],
  fetches?: readonly string[],
): Promise<ort.InferenceSession.OnnxValueMapType> {
  const feeds = { [session.inputNames[0]!]: floatInput(data, dims) };
  return fetches ? session.run(feeds, fetches as string[]) : session.run(feeds);
}
