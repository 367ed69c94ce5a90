/**
 * Image folders: the ImageNet layout `<root>/<synset>/<file>` and flat folders with or without
 * a labels file. Only file names are held in memory; images are decoded when streamed.
 */
import { readdir } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { InputError } from '../errors.js';
import { silentLogger } from '../log.js';
import { classIndex, findClassList, readClassList, type ClassList } from './classes.js';
import type { Dataset, OpenDatasetOptions } from './dataset.js';
import { isImageFile, readPixels } from './image.js';
import { ItemDataset, type ItemSource } from './item-dataset.js';
import { findLabelFile, readLabelFile, resolveLabels } from './labels.js';
import type { PreprocessConfig } from './preprocess.js';

/** What a dataset folder holds at its top level, each list sorted. */
export interface FolderListing {
  images: string[];
  folders: string[];
  idxImages: string[];
}

const idxImagesPattern = /-images[.-]idx3-ubyte(\.gz)?$/;

/** Lists a folder's images, subfolders and MNIST image files; hidden entries are ignored. */
export async function listFolder(root: string): Promise<FolderListing> {
  const entries = await readdir(root, { withFileTypes: true });
  const visible = entries.filter((e) => !e.name.startsWith('.'));
  const names = (keep: (e: (typeof entries)[number]) => boolean) =>
    visible
      .filter(keep)
      .map((e) => e.name)
      .sort();
  return {
    images: names((e) => e.isFile() && isImageFile(e.name)),
    folders: names((e) => e.isDirectory()),
    idxImages: names((e) => e.isFile() && idxImagesPattern.test(e.name)),
  };
}

/** Files with their class indices, in dataset order. */
interface Listing {
  files: string[];
  labels: Int32Array;
  numClasses: number;
  classNames?: string[];
  /** The labels file, class list or folder the labels came from. */
  labelSource?: string;
}

/** Opens an ImageNet-layout or flat image folder. */
export async function openImageFolder(
  root: string,
  listing: FolderListing,
  preprocess: PreprocessConfig,
  options: OpenDatasetOptions,
): Promise<Dataset> {
  const flat = listing.images.length > 0;
  const items = flat ? await flatListing(root, listing, options) : await treeListing(root, options);
  if (items.files.length === 0) throw new InputError(`no images in ${root}`, root);
  const count = Math.min(items.files.length, options.limit ?? Infinity);
  const source: ItemSource = {
    size: count,
    file: (i) => items.files[i]!,
    label: (i) => items.labels[i]!,
    read: (i) => readPixels(items.files[i]!, preprocess.channels),
  };
  return new ItemDataset(source, {
    name: basename(root),
    numClasses: items.numClasses,
    ...(items.classNames ? { classNames: items.classNames } : {}),
    ...(items.labelSource ? { labelSource: items.labelSource } : {}),
    preprocess,
    logger: options.logger,
    strict: options.strict,
    concurrency: options.concurrency,
  });
}

/** `<root>/<class>/<file>`: the class of a folder comes from the class list when there is one. */
async function treeListing(root: string, options: OpenDatasetOptions): Promise<Listing> {
  const { folders } = await listFolder(root);
  const classes = await loadClassList(root, options.classes);
  if (!classes) return folderOrderListing(root, folders, options);
  const listing = await listClassFolders(root, folders, (folder) => {
    const index = classIndex(classes, folder);
    if (index === undefined) {
      throw new InputError(
        `folder ${join(root, folder)} names no class of ${classes.source}; ` +
          'expected a synset such as n01440764',
        join(root, folder),
      );
    }
    return index;
  });
  return {
    ...listing,
    numClasses: classes.ids.length,
    classNames: classes.names,
    labelSource: classes.source,
  };
}

/** Every image of each class folder, labelled with the folder's class index. */
async function listClassFolders(
  root: string,
  folders: readonly string[],
  classOf: (folder: string, position: number) => number,
): Promise<Pick<Listing, 'files' | 'labels'>> {
  const files: string[] = [];
  const labels: number[] = [];
  for (const [position, folder] of folders.entries()) {
    const index = classOf(folder, position);
    const names = (await listFolder(join(root, folder))).images;
    for (const name of names) files.push(join(root, folder, name));
    labels.push(...names.map(() => index));
  }
  return { files, labels: Int32Array.from(labels) };
}

/**
 * Without a class list, the sorted folder names are the classes (torchvision's ImageFolder).
 * Synset folders without a class list are refused: a subset of ImageNet would get wrong indices.
 */
async function folderOrderListing(
  root: string,
  folders: string[],
  options: OpenDatasetOptions,
): Promise<Listing> {
  if (folders.some((f) => /^n\d{8}$/.test(f))) {
    throw new InputError(
      `${root} has synset folders but no imagenet_classes.tsv beside it or in its parent; ` +
        'pass the class list (--classes)',
      root,
    );
  }
  (options.logger ?? silentLogger).info(`${root}: no class list; classes are the sorted folders`);
  const listing = await listClassFolders(root, folders, (_, position) => position);
  return { ...listing, numClasses: folders.length, classNames: folders, labelSource: root };
}

/** A flat folder: labels from `labels.txt`/`labels.csv` when present, else unlabelled. */
async function flatListing(
  root: string,
  listing: FolderListing,
  options: OpenDatasetOptions,
): Promise<Listing> {
  const files = listing.images.map((name) => join(root, name));
  const labelFile = findLabelFile(root);
  if (!labelFile) {
    const classes = await loadClassList(root, options.classes);
    const numClasses = classes?.ids.length ?? 0;
    return {
      files,
      labels: new Int32Array(files.length).fill(-1),
      numClasses,
      classNames: classes?.names,
    };
  }
  const raw = await readLabelFile(labelFile);
  const present = new Set(listing.images);
  for (const name of raw.keys()) {
    if (!present.has(name)) {
      throw new InputError(
        `${labelFile} names ${name}, which is not an image in ${root}`,
        labelFile,
      );
    }
  }
  const resolved = resolveLabels(raw, await loadClassList(root, options.classes), labelFile);
  const unlabelled = listing.images.filter((name) => !resolved.byFile.has(name)).length;
  if (unlabelled > 0) {
    (options.logger ?? silentLogger).warn(
      `${unlabelled} images in ${root} have no label in ${labelFile}`,
    );
  }
  const labels = Int32Array.from(listing.images, (name) => resolved.byFile.get(name) ?? -1);
  const { numClasses, classNames } = resolved;
  return { files, labels, numClasses, classNames, labelSource: labelFile };
}

async function loadClassList(root: string, explicit?: string): Promise<ClassList | undefined> {
  const path = findClassList(root, explicit);
  return path === undefined ? undefined : readClassList(path);
}
