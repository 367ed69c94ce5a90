/** The calibration images of the pipelines: a seeded sample of `--calib`, shared by every stage. */
import { openDataset, sampleDataset, type PreprocessConfig } from '../data/index.js';
import { CalibrationError, InputError } from '../errors.js';
import type { Reporting } from '../log.js';
import type { RunOptions } from '../options.js';

/** What a calibration sample needs to know of a prune or quantize request. */
export interface CalibrationRequest {
  options: { calibCount: number; seed: number };
  run: RunOptions;
  preprocess: PreprocessConfig;
}

/**
 * A seeded sample of the images in `path`; `batches()` reads it anew for each pass, and
 * `unreadable` turns a calibration failure into the folder's fault when no image decoded.
 */
export async function calibrationSample(
  path: string,
  request: CalibrationRequest,
  reporting: Reporting,
) {
  const { options, run } = request;
  const dataset = await openDataset(path, request.preprocess, {
    logger: reporting.logger,
    strict: run.strict,
    classes: run.classes,
    flag: '--calib',
  });
  if (options.calibCount > dataset.size) {
    reporting.logger?.warn(
      `--calib-count ${options.calibCount} is more than the ${dataset.size} images in ${path}; ` +
        `calibrating on all ${dataset.size}`,
    );
  }
  const sample = sampleDataset(dataset, Math.min(options.calibCount, dataset.size), options.seed);
  const batches = () =>
    sample.batches(run.batch, { stage: 'calibration', onProgress: reporting.onProgress });
  const unreadable = (error: unknown): never => {
    if (sample.stats.decoded > 0 || !(error instanceof CalibrationError)) throw error;
    throw new InputError(`no readable image among the calibration images of ${path}`, path);
  };
  return { sample, batches, unreadable, path };
}
