/**
 * Accuracy of a model on labelled images, and agreement with a baseline model run on the same
 * batches. Batches stream through both sessions; only running sums are kept.
 */
import type { ModelProto } from 'onnx-buf';
import type { Reporting } from '../log.js';
import { createSession, firstLine, floatInput, type SessionOptions } from '../runtime/session.js';
import { InputError } from '../errors.js';
import { argmax, klDivergence, topK } from './metrics.js';

export interface EvalBatch {
  data: Float32Array;
  dims: readonly number[];
  /** Class index per image, −1 when unlabelled. */
  labels: Int32Array;
  /** The file of each image, for messages. */
  files?: readonly string[];
}

export interface AccuracyResult {
  images: number;
  /** Images with a label; top-1/top-5 are over these. */
  labelled: number;
  top1: number | null;
  top5: number | null;
  /** Only with a baseline: fraction of images where both models predict the same class. */
  agreement?: number;
  /** Only with a baseline: mean KL(baseline ‖ candidate) of the softmax outputs, in nats. */
  meanKl?: number;
  baseline?: { top1: number | null; top5: number | null };
}

export interface AccuracyOptions extends Reporting, SessionOptions {
  /** Name of the progress stage. */
  stage?: string;
  /** Total images, for progress. */
  total?: number;
  /** The labels file or class list the labels came from, named when a label does not fit. */
  labelSource?: string;
}

class Tally {
  top1 = 0;
  top5 = 0;

  add(logits: Float32Array, classes: number, row: number, label: number): void {
    if (label < 0) return;
    const best = topK(logits, classes, row, Math.min(5, classes));
    if (best[0] === label) this.top1++;
    if (best.includes(label)) this.top5++;
  }

  rates(labelled: number) {
    return labelled
      ? { top1: this.top1 / labelled, top5: this.top5 / labelled }
      : { top1: null, top5: null };
  }
}

/** Evaluates `candidate` (and `baseline`, when given) over the batches. */
export async function evaluateAccuracy(
  candidate: ModelProto | Uint8Array,
  batches: AsyncIterable<EvalBatch>,
  options: AccuracyOptions & { baseline?: ModelProto | Uint8Array } = {},
): Promise<AccuracyResult> {
  const session = await createSession(candidate, options, 'candidate model');
  const base = options.baseline
    ? await createSession(options.baseline, options, 'baseline model')
    : undefined;
  const stage = options.stage ?? 'evaluation';
  const ours = new Tally();
  const theirs = new Tally();
  let images = 0;
  let labelled = 0;
  let agree = 0;
  let kl = 0;
  options.onProgress?.({ status: 'start', stage, total: options.total ?? 0 });
  try {
    for await (const batch of batches) {
      const logits = await runLogits(session, batch);
      const baseLogits = base ? await runLogits(base, batch) : undefined;
      const rows = batch.dims[0]!;
      const classes = logits.length / rows;
      for (let r = 0; r < rows; r++) {
        const label = batch.labels[r] ?? -1;
        if (label >= classes) {
          const file = batch.files?.[r];
          const source = options.labelSource;
          throw new InputError(
            `label ${label}${file ? ` of ${file}` : ''}${source ? ` in ${source}` : ''} is ` +
              `outside the model's ${classes} classes`,
            source,
          );
        }
        if (label >= 0) labelled++;
        ours.add(logits, classes, r, label);
        if (baseLogits) {
          theirs.add(baseLogits, classes, r, label);
          if (argmax(logits, classes, r) === argmax(baseLogits, classes, r)) agree++;
          kl += klDivergence(baseLogits, logits, classes, r);
        }
      }
      images += rows;
      options.onProgress?.({ status: 'advance', stage, done: images, total: options.total ?? 0 });
    }
  } finally {
    options.onProgress?.({ status: 'end', stage });
    await session.release();
    await base?.release();
  }
  const result: AccuracyResult = { images, labelled, ...ours.rates(labelled) };
  if (base && images > 0) {
    result.agreement = agree / images;
    result.meanKl = kl / images;
    result.baseline = theirs.rates(labelled);
  }
  return result;
}

async function runLogits(
  session: Awaited<ReturnType<typeof createSession>>,
  batch: EvalBatch,
): Promise<Float32Array> {
  const feeds = { [session.inputNames[0]!]: floatInput(batch.data, batch.dims) };
  let out;
  try {
    out = await session.run(feeds);
  } catch (error) {
    const reason = firstLine(error);
    throw new InputError(
      `the model cannot run on images of shape [${batch.dims.join(', ')}]: ${reason}`,
    );
  }
  return out[session.outputNames[0]!]!.data as Float32Array;
}
