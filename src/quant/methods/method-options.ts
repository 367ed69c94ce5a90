/**
 * What every method's entry point does first: take the run options (logger, progress, threads,
 * graph optimisation) apart from the method's own settings, validate those with the method's
 * schema into one InputError line, and refuse graphs too old for the fake-quant chains.
 */
import type { ModelProto } from 'onnx-buf';
import type { z } from 'zod';
import { InputError, UnsupportedModelError } from '../../errors.js';
import { noProgress, silentLogger, type Reporting } from '../../log.js';
import { opsetVersion } from '../../onnx/model-io.js';
import type { SessionOptions } from '../../runtime/session.js';

export type RunOptions = Required<Reporting> & SessionOptions;

/** The run options of `options` (defaults filled in) and the rest, the method's settings. */
export function splitRunOptions<T extends Reporting & SessionOptions>(
  options: T,
): { run: RunOptions; rest: Omit<T, keyof Reporting | 'threads' | 'optimization'> } {
  const {
    logger = silentLogger,
    onProgress = noProgress,
    threads,
    optimization,
    ...rest
  } = options;
  return { run: { logger, onProgress, threads, optimization }, rest };
}

/** `value` validated by `schema`; every problem of it in one InputError naming `method`. */
export function parseMethodOptions<S extends z.ZodType>(
  schema: S,
  value: unknown,
  method: string,
): z.output<S> {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const problems = result.error.issues.map(
    (issue) => `${issue.path.length ? issue.path.join('.') : '(root)'}: ${issue.message}`,
  );
  throw new InputError(`invalid ${method} options: ${problems.join('; ')}`);
}

/** Fake-quant chains need Clip with tensor bounds and Round: opset 13 or later. */
export function requireOpset13(model: ModelProto, method: string): void {
  const opset = opsetVersion(model) ?? 0;
  if (opset < 13) {
    throw new UnsupportedModelError(
      `${method}'s simulated quantization needs opset ≥ 13 (Clip with inputs, Round), ` +
        `the model has opset ${opset}`,
    );
  }
}
