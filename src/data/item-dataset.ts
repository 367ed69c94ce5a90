/**
 * The streaming engine shared by every dataset: images are read a few at a time ahead of the
 * consumer and written into one batch buffer, so memory stays the same for ten images or a
 * million. Decoding runs in libvips' threads while the consumer runs the model; resizing and
 * normalising run when the consumer asks for the next batch, so the reused buffer is never
 * written while the consumer still reads it.
 */
import { InputError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import type { Batch, BatchOptions, Dataset, DatasetStats } from './dataset.js';
import { writeTensor, type PixelImage } from './image.js';
import type { PreprocessConfig } from './preprocess.js';

/** Random access to the images of a dataset, in its order. */
export interface ItemSource {
  readonly size: number;
  /** File name of item `i`, for batches and messages. */
  file(i: number): string;
  /** Class index of item `i`, −1 when unlabelled. */
  label(i: number): number;
  /** Decodes item `i`; rejects with InputError naming the file when it is unreadable. */
  read(i: number): Promise<PixelImage>;
}

export interface ItemDatasetInit {
  name: string;
  numClasses: number;
  classNames?: string[];
  labelSource?: string;
  preprocess: PreprocessConfig;
  logger?: Logger;
  strict?: boolean;
  concurrency?: number;
}

type Settled<T> = { ok: true; value: T } | { ok: false; error: unknown };

/**
 * Yields `read(0) … read(count − 1)` settled, in order, with at most `depth` reads started and
 * not yet consumed. Rejections become values, so an abandoned read never goes unhandled.
 */
export async function* readAhead<T>(
  count: number,
  read: (i: number) => Promise<T>,
  depth: number,
): AsyncGenerator<Settled<T>> {
  const pending: Promise<Settled<T>>[] = [];
  let next = 0;
  const start = () => {
    const promise = read(next++).then(
      (value): Settled<T> => ({ ok: true, value }),
      (error: unknown): Settled<T> => ({ ok: false, error }),
    );
    pending.push(promise);
  };
  while (next < Math.min(depth, count)) start();
  while (pending.length > 0) {
    const settled = await pending.shift()!;
    if (next < count) start();
    yield settled;
  }
}

export class ItemDataset implements Dataset {
  readonly name: string;
  readonly numClasses: number;
  readonly classNames?: string[];
  readonly labelSource?: string;
  readonly preprocess: PreprocessConfig;
  stats: DatasetStats = { decoded: 0, skipped: 0, skippedFiles: [] };
  private readonly logger: Logger;
  private readonly strict: boolean;
  private readonly concurrency: number;

  /** `positions` maps this view's items to the source's; null: all of them, in order. */
  constructor(
    private readonly source: ItemSource,
    init: ItemDatasetInit,
    private readonly positions: Int32Array | null = null,
  ) {
    this.name = init.name;
    this.numClasses = init.numClasses;
    if (init.classNames) this.classNames = init.classNames;
    if (init.labelSource) this.labelSource = init.labelSource;
    this.preprocess = init.preprocess;
    this.logger = init.logger ?? silentLogger;
    this.strict = init.strict ?? false;
    this.concurrency = checkConcurrency(init.concurrency ?? 3);
  }

  get size(): number {
    return this.positions ? this.positions.length : this.source.size;
  }

  subset(indices: readonly number[], name: string): Dataset {
    const positions = Int32Array.from(indices, (i) => {
      if (!Number.isInteger(i) || i < 0 || i >= this.size) {
        throw new RangeError(`subset: index must be in [0, ${this.size - 1}], got ${i}`);
      }
      return this.at(i);
    });
    const init = { ...this.init(), name };
    return new ItemDataset(this.source, init, positions);
  }

  async *batches(batchSize: number, options: BatchOptions = {}): AsyncGenerator<Batch> {
    checkBatchSize(batchSize);
    const stage = options.stage ?? this.name;
    const progress = options.onProgress;
    const { channels, height, width } = this.preprocess;
    const chw = channels * height * width;
    const data = new Float32Array(batchSize * chw);
    const labels = new Int32Array(batchSize);
    let files: string[] = [];
    let done = 0;
    this.stats = { decoded: 0, skipped: 0, skippedFiles: [] };

    progress?.({ status: 'start', stage, total: this.size });
    try {
      const reads = readAhead(this.size, (i) => this.source.read(this.at(i)), this.concurrency);
      for await (const settled of reads) {
        const item = this.at(done++);
        if (!settled.ok) {
          this.skip(this.source.file(item), settled.error);
          continue;
        }
        writeTensor(settled.value, this.preprocess, data, files.length * chw);
        labels[files.length] = this.source.label(item);
        files.push(this.source.file(item));
        this.stats.decoded++;
        if (files.length < batchSize) continue;
        yield makeBatch(data, labels, files, this.preprocess);
        progress?.({ status: 'advance', stage, done, total: this.size });
        files = [];
      }
      if (files.length > 0) yield makeBatch(data, labels, files, this.preprocess);
      progress?.({ status: 'advance', stage, done, total: this.size });
    } finally {
      progress?.({ status: 'end', stage });
    }
  }

  private at(i: number): number {
    return this.positions ? this.positions[i]! : i;
  }

  private init(): ItemDatasetInit {
    return {
      name: this.name,
      numClasses: this.numClasses,
      ...(this.classNames ? { classNames: this.classNames } : {}),
      ...(this.labelSource ? { labelSource: this.labelSource } : {}),
      preprocess: this.preprocess,
      logger: this.logger,
      strict: this.strict,
      concurrency: this.concurrency,
    };
  }

  private skip(file: string, error: unknown): void {
    // readers' InputErrors already name the file; anything else gets it added
    const named =
      error instanceof InputError ? error : new InputError(`${file}: ${String(error)}`, file);
    if (this.strict) throw named;
    this.logger.warn(`${named.message}; skipped`);
    this.stats.skipped++;
    this.stats.skippedFiles.push(file);
  }
}

function makeBatch(
  data: Float32Array,
  labels: Int32Array,
  files: string[],
  config: PreprocessConfig,
): Batch {
  const n = files.length;
  const chw = config.channels * config.height * config.width;
  return {
    data: n * chw === data.length ? data : data.subarray(0, n * chw),
    dims: [n, config.channels, config.height, config.width],
    labels: n === labels.length ? labels : labels.subarray(0, n),
    files,
  };
}

function checkBatchSize(batchSize: number): void {
  if (!Number.isInteger(batchSize) || batchSize < 1 || batchSize > 65536) {
    throw new RangeError(`batches: batchSize must be an integer in [1, 65536], got ${batchSize}`);
  }
}

function checkConcurrency(concurrency: number): number {
  if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > 64) {
    throw new RangeError(`concurrency must be an integer in [1, 64], got ${concurrency}`);
  }
  return concurrency;
}
