/**
 * MNIST in its IDX files: `<prefix>-images-idx3-ubyte[.gz]` with
 * `<prefix>-labels-idx1-ubyte[.gz]`. The digits are held as their raw bytes (one byte a pixel,
 * 7.8 MB for the 10,000 test digits), because a gzip stream cannot be read at the random
 * positions a sampled subset needs; float inputs are still made one batch at a time.
 */
import { existsSync } from 'node:fs';
import { basename, join } from 'node:path';
import { InputError } from '../errors.js';
import { silentLogger } from '../log.js';
import type { Dataset, OpenDatasetOptions } from './dataset.js';
import type { FolderListing } from './folder-dataset.js';
import { readIdx, type IdxArray } from './idx.js';
import { ItemDataset, type ItemSource } from './item-dataset.js';
import type { PreprocessConfig } from './preprocess.js';

const digitNames = ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9'];

/** Opens the MNIST set in `root`. */
export async function openMnist(
  root: string,
  listing: FolderListing,
  preprocess: PreprocessConfig,
  options: OpenDatasetOptions,
): Promise<Dataset> {
  const imagesName = chooseImagesFile(root, listing.idxImages, options.idxPrefix);
  const imagesPath = join(root, imagesName);
  const images = await readIdx(imagesPath);
  if (images.dims.length !== 3) {
    throw new InputError(
      `${imagesPath}: expected N×rows×cols digits, got ${images.dims.join('×')}`,
    );
  }
  const labels = await readLabels(root, imagesName, images.dims[0]!, options);
  const source = digitSource(images, labels, imagesName, options.limit);
  return new ItemDataset(source, {
    name: basename(root),
    numClasses: 10,
    classNames: digitNames,
    preprocess,
    logger: options.logger,
    strict: options.strict,
    concurrency: options.concurrency,
  });
}

function chooseImagesFile(root: string, names: string[], prefix?: string): string {
  const candidates = prefix === undefined ? names : names.filter((n) => n.startsWith(`${prefix}-`));
  if (candidates.length === 1) return candidates[0]!;
  if (candidates.length === 0) {
    throw new InputError(`no ${prefix}-images-idx3-ubyte file in ${root}`, root);
  }
  throw new InputError(
    `${root} holds several MNIST image files (${candidates.join(', ')}); choose one by its prefix`,
    root,
  );
}

/** The labels beside the images, or −1 for every digit when there is no labels file. */
async function readLabels(
  root: string,
  imagesName: string,
  count: number,
  options: OpenDatasetOptions,
): Promise<Uint8Array | null> {
  const stem = imagesName.replace(/-images[.-]idx3-ubyte(\.gz)?$/, '');
  const names = ['-labels-idx1-ubyte', '-labels.idx1-ubyte'].flatMap((s) => [s, `${s}.gz`]);
  const path = names.map((s) => join(root, stem + s)).find((p) => existsSync(p));
  if (!path) {
    // debug only: calibration needs no labels, and evaluation warns once for the folder
    (options.logger ?? silentLogger).debug(
      `no labels file for ${imagesName}: digits are unlabelled`,
    );
    return null;
  }
  const labels = await readIdx(path);
  if (labels.dims.length !== 1 || labels.dims[0] !== count) {
    throw new InputError(`${path}: expected ${count} labels, got ${labels.dims.join('×')}`, path);
  }
  return labels.data;
}

function digitSource(
  images: IdxArray,
  labels: Uint8Array | null,
  name: string,
  limit?: number,
): ItemSource {
  const [count, height, width] = images.dims as [number, number, number];
  const pixels = height * width;
  return {
    size: Math.min(count, limit ?? Infinity),
    file: (i) => `${name}[${i}]`,
    label: (i) => (labels ? labels[i]! : -1),
    read: (i) =>
      Promise.resolve({
        data: images.data.subarray(i * pixels, (i + 1) * pixels),
        width,
        height,
        channels: 1,
      }),
  };
}
