/**
 * Datasets: labelled or unlabelled images that stream to a model in batches. `openDataset`
 * recognises three layouts in a folder:
 * - ImageNet: `<root>/<synset>/<file>`, class index from `imagenet_classes.tsv`;
 * - flat: `<root>/<file>`, with an optional `labels.txt`/`labels.csv`;
 * - MNIST: `*-images-idx3-ubyte[.gz]` with `*-labels-idx1-ubyte[.gz]`.
 */
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { InputError } from '../errors.js';
import type { Logger, ProgressListener } from '../log.js';
import { listFolder, openImageFolder, type FolderListing } from './folder-dataset.js';
import { openMnist } from './mnist-dataset.js';
import type { PreprocessConfig } from './preprocess.js';

/** A batch of model inputs. Its buffers are reused: it is valid until the next is requested. */
export interface Batch {
  /** NCHW float32 model input. */
  data: Float32Array;
  dims: [n: number, c: number, h: number, w: number];
  /** Class index per image, −1 when unlabelled. */
  labels: Int32Array;
  /** The file (or `file[index]` for MNIST) each image came from. */
  files: string[];
}

export interface BatchOptions {
  /** Name of the progress stage ("calibration", "evaluation"); the dataset's name by default. */
  stage?: string;
  onProgress?: ProgressListener;
}

/** What the last (or current) pass over a dataset did. */
export interface DatasetStats {
  decoded: number;
  /** Images skipped because they could not be decoded. */
  skipped: number;
  skippedFiles: string[];
}

export interface Dataset {
  readonly name: string;
  /** Number of images, counting those that will turn out unreadable. */
  readonly size: number;
  readonly classNames?: string[];
  readonly numClasses: number;
  /** Where the labels came from (labels file, class list, folder), for messages. */
  readonly labelSource?: string;
  readonly preprocess: PreprocessConfig;
  readonly stats: DatasetStats;
  /** The images in order, `batchSize` at a time (the last batch may be smaller). */
  batches(batchSize: number, options?: BatchOptions): AsyncIterable<Batch>;
  /** A view over the images at these positions, in this order. */
  subset(indices: readonly number[], name: string): Dataset;
}

export interface OpenDatasetOptions {
  logger?: Logger;
  /** Throw InputError on an unreadable image instead of skipping it with a warning. */
  strict?: boolean;
  /** Images decoded ahead of the consumer, at most (default 3). */
  concurrency?: number;
  /** Class list (`imagenet_classes.tsv`); by default looked for in the folder and its parent. */
  classes?: string;
  /** Take only the first `limit` images (in sorted order). */
  limit?: number;
  /** For MNIST folders with several sets: the file name prefix to use ("t10k", "train"). */
  idxPrefix?: string;
  /** The flag that gave the folder (`--calib`, `--data`), named when the folder is unusable. */
  flag?: string;
}

/** Opens the dataset in folder `path`; InputError naming the path when it is not usable. */
export async function openDataset(
  path: string,
  preprocess: PreprocessConfig,
  options: OpenDatasetOptions = {},
): Promise<Dataset> {
  const { limit } = options;
  if (limit !== undefined && (!Number.isInteger(limit) || limit < 1)) {
    throw new RangeError(`openDataset: limit must be an integer ≥ 1, got ${limit}`);
  }
  const listing = await datasetListing(path, options.flag);
  if (listing.idxImages.length > 0 && listing.images.length === 0) {
    return openMnist(path, listing, preprocess, options);
  }
  return openImageFolder(path, listing, preprocess, options);
}

/**
 * Refuses, with the InputError `openDataset` would give, a `path` that is missing, not a
 * folder, or holds no image in any of the three layouts; no image is read. A job runs it before
 * its minutes of calibration and pruning, so that a folder it evaluates on last fails first.
 * `flag` is the flag that gave the folder (`--data`), named in the message.
 */
export async function checkDatasetFolder(path: string, flag?: string): Promise<void> {
  await datasetListing(path, flag);
}

/** The listing of a dataset folder, once `checkDatasetFolder`'s conditions hold. */
async function datasetListing(path: string, flag?: string): Promise<FolderListing> {
  const named = flag ? `${flag}: ` : '';
  await requireFolder(path, named);
  const listing = await listFolder(path);
  if (listing.images.length > 0 || listing.idxImages.length > 0) return listing;
  for (const folder of listing.folders) {
    if ((await listFolder(join(path, folder))).images.length > 0) return listing;
  }
  throw new InputError(
    `${named}no images in ${path}: expected image files, <class>/ subfolders of images, ` +
      'or MNIST *-images-idx3-ubyte files',
    path,
  );
}

/** `named` is the flag that gave the path, with its separator, or nothing. */
async function requireFolder(path: string, named: string): Promise<void> {
  let info;
  try {
    info = await stat(path);
  } catch {
    throw new InputError(`${named}dataset folder not found: ${path}`, path);
  }
  if (!info.isDirectory()) {
    throw new InputError(`${named}dataset path is not a folder: ${path}`, path);
  }
}
