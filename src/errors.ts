/**
 * The error classes of vitslim. Each says whose fault a failure is, so the CLI can print one
 * line and choose an exit code, and a library user can catch by kind.
 */

/** Base class: every error vitslim throws on purpose is one of these. */
export class VitslimError extends Error {
  override name = 'VitslimError';
  /** The file, node or tensor the message is about, when there is one. */
  readonly subject: string | undefined;

  constructor(message: string, subject?: string) {
    super(message);
    this.subject = subject;
  }
}

/** The user's input is wrong: a corrupt file, a missing folder, a bad option value. */
export class InputError extends VitslimError {
  override name = 'InputError';
}

/** The model is valid ONNX but not a graph vitslim understands (not a ViT, an unknown op form). */
export class UnsupportedModelError extends VitslimError {
  override name = 'UnsupportedModelError';
}

/** Calibration could not produce usable statistics (no images decoded, NaN activations). */
export class CalibrationError extends VitslimError {
  override name = 'CalibrationError';
}

/** A bug in vitslim: a rewrite produced an invalid graph, an invariant did not hold. */
export class InternalError extends VitslimError {
  override name = 'InternalError';
}

/** Exhaustiveness guard for `switch` over a discriminated union. */
export function assertNever(value: never, what: string): never {
  throw new InternalError(`unhandled ${what}: ${JSON.stringify(value)}`);
}
