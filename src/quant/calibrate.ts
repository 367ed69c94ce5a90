/**
 * Calibration: run images through the float model and accumulate statistics of the activation
 * tensors that will be quantized. Tensors are captured one batch at a time (runtime/capture.ts)
 * and folded into fixed-size accumulators (statistics.ts), so memory holds one batch of
 * activations however many images there are.
 */
import type { ModelProto } from 'onnx-buf';
import { CalibrationError } from '../errors.js';
import { noProgress, silentLogger, type Reporting } from '../log.js';
import { capture, type CaptureBatch } from '../runtime/capture.js';
import type { SessionOptions } from '../runtime/session.js';
import type { ViTStructure } from '../vit/types.js';
import {
  createObserver,
  type Observer,
  type ObserverOptions,
  type QuantGrid,
} from './observers.js';
import { quantPoints } from './quant-points.js';
import { TensorStatistics, type TensorStatisticsOptions } from './statistics.js';
import type { ActivationRanges, ObserverKind, TensorRange } from './types.js';

export interface CalibrationOptions extends Reporting, SessionOptions {
  /** Values to observe; by default every activation quantization point of the structure. */
  values?: readonly string[];
  /** Histogram bins per tensor (default 2048). */
  bins?: number;
  /** Raw values sampled per tensor for the OMSE observer (default 16,384; 0: none). */
  sampleSize?: number;
  /** Values that also get per-channel statistics along `channelAxis` (default none). */
  channelValues?: readonly string[];
  /** Axis of the per-channel statistics (default −1: the hidden channels of [N, T, C]). */
  channelAxis?: number;
  /** Images that the batches will hold, for progress events (0 or unset: unknown). */
  total?: number;
  /** Seed of the reservoir samples. */
  seed?: number;
}

export interface CalibrationResult {
  /** Statistics per observed graph value. */
  statistics: ReadonlyMap<string, TensorStatistics>;
  images: number;
  batches: number;
  seconds: number;
}

/**
 * Runs `batches` through `model` and returns statistics of the activation tensors. Throws
 * CalibrationError when there are no images or when a tensor holds NaN or ±Inf.
 */
export async function calibrate(
  model: ModelProto,
  structure: ViTStructure,
  batches: AsyncIterable<CaptureBatch> | Iterable<CaptureBatch>,
  options: CalibrationOptions = {},
): Promise<CalibrationResult> {
  const logger = options.logger ?? silentLogger;
  const onProgress = options.onProgress ?? noProgress;
  const values = options.values ?? defaultValues(structure);
  const statistics = createStatistics(values, options);
  const total = options.total ?? 0;
  const started = performance.now();
  let images = 0;
  let count = 0;

  onProgress({ status: 'start', stage: 'calibration', total });
  const counted = async function* () {
    for await (const batch of batches) {
      images += batch.dims[0] ?? 0;
      yield batch;
    }
  };
  await capture(
    model,
    values,
    counted(),
    (tensors) => {
      for (const [value, tensor] of tensors) {
        statistics.get(value)!.update(tensor.data as Float32Array, tensor.dims);
      }
      count++;
      onProgress({ status: 'advance', stage: 'calibration', done: images, total });
    },
    options,
  );
  onProgress({ status: 'end', stage: 'calibration' });

  checkStatistics(statistics, images);
  const seconds = (performance.now() - started) / 1000;
  logger.info(`calibrated ${values.length} tensors on ${images} images in ${seconds.toFixed(1)} s`);
  return { statistics, images, batches: count, seconds };
}

/** The distinct values read by the structure's activation quantization points. */
export function defaultValues(structure: ViTStructure): string[] {
  return [...new Set(quantPoints(structure).activations.map((p) => p.value))];
}

function createStatistics(values: readonly string[], options: CalibrationOptions) {
  const channelValues = new Set(options.channelValues ?? []);
  const map = new Map<string, TensorStatistics>();
  for (const value of values) {
    const settings: TensorStatisticsOptions = {
      ...(options.bins !== undefined ? { bins: options.bins } : {}),
      ...(options.sampleSize !== undefined ? { sampleSize: options.sampleSize } : {}),
      ...(options.seed !== undefined ? { seed: options.seed } : {}),
      ...(channelValues.has(value) ? { channelAxis: options.channelAxis ?? -1 } : {}),
    };
    map.set(value, new TensorStatistics(settings));
  }
  return map;
}

function checkStatistics(statistics: ReadonlyMap<string, TensorStatistics>, images: number): void {
  if (images === 0) {
    throw new CalibrationError('calibration saw no images: the calibration set is empty');
  }
  const bad = [...statistics].filter(([, s]) => s.minMax.nonFinite > 0);
  if (bad.length > 0) {
    const listed = bad
      .slice(0, 3)
      .map(([value, s]) => `${value} (${s.minMax.nonFinite} values)`)
      .join(', ');
    throw new CalibrationError(
      `calibration found NaN or infinite activations in ${listed}${bad.length > 3 ? ` and ${bad.length - 3} more tensors` : ''}; check the preprocessing and the model`,
      bad[0]![0],
    );
  }
}

/**
 * The clipping range of every calibrated tensor, chosen by an observer for a grid. With the
 * grid's bit width, `mse` and `omse` clip harder at 4 bits than at 8.
 */
export function activationRanges(
  result: CalibrationResult,
  observer: Observer | ObserverKind,
  grid: QuantGrid,
  options: ObserverOptions = {},
): ActivationRanges {
  const chosen = typeof observer === 'string' ? createObserver(observer, options) : observer;
  const ranges = new Map<string, TensorRange>();
  for (const [value, stats] of result.statistics) {
    try {
      ranges.set(value, chosen.activationRange(stats, grid));
    } catch (error) {
      if (error instanceof CalibrationError)
        throw new CalibrationError(`${value}: ${error.message}`, value);
      throw error;
    }
  }
  return ranges;
}
