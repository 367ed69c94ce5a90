import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { InputError } from '../../src/errors.js';
import type { Logger, ProgressEvent } from '../../src/log.js';
import {
  checkDatasetFolder,
  openDataset,
  type Batch,
  type Dataset,
} from '../../src/data/dataset.js';
import { ItemDataset } from '../../src/data/item-dataset.js';
import type { PreprocessConfig } from '../../src/data/preprocess.js';

const images = join(import.meta.dirname, '..', '..', '..', 'shared', 'fixtures', 'images');
const val = join(images, 'imagenet-val-500');
const calib = join(images, 'imagenet-calib-256');
const tsv = join(images, 'imagenet_classes.tsv');
const tsvLines = readFileSync(tsv, 'utf8').trim().split('\n');

const small: PreprocessConfig = {
  channels: 3,
  mean: [0.5, 0.5, 0.5],
  std: [0.5, 0.5, 0.5],
  resize: 36,
  crop: 32,
  interpolation: 'bicubic',
  height: 32,
  width: 32,
};

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'vitslim-dataset-'));
}

async function collect(dataset: Dataset, batchSize: number): Promise<Batch[]> {
  const out: Batch[] = [];
  for await (const batch of dataset.batches(batchSize)) {
    out.push({ ...batch, labels: batch.labels.slice(), data: batch.data.slice() });
  }
  return out;
}

function recordingLogger(): Logger & { warnings: string[] } {
  const warnings: string[] = [];
  return {
    warnings,
    error: () => {},
    warn: (m) => warnings.push(m),
    info: () => {},
    debug: () => {},
  };
}

/** A flat folder with `names` copied from the calibration images (their first 9 letters). */
function flatFolder(names: string[]): string {
  const dir = tempDir();
  for (const name of names) copyFileSync(join(calib, name), join(dir, name));
  return dir;
}

const tench = 'n01440764_tench.JPEG';
const hammerhead = 'n01494475_hammerhead.JPEG';
const finch = 'n01532829_house_finch.JPEG';

describe('openDataset on the ImageNet layout', () => {
  it('labels a synset with its line in imagenet_classes.tsv, not its folder position', async () => {
    const dataset = await openDataset(val, small, { limit: 3 });
    const [batch] = await collect(dataset, 3);
    // the first folder of val-500 is n01491361; its line (after the header) gives its index
    const line = tsvLines.findIndex((l) => l.split('\t')[1] === 'n01491361') - 1;
    expect(line).toBe(3);
    expect(batch!.files[0]).toContain('n01491361');
    expect(batch!.labels[0]).toBe(line);
    expect(dataset.numClasses).toBe(1000);
    expect(dataset.classNames?.[3]).toBe(tsvLines[4]!.split('\t')[2]);
  });

  it('counts all 500 validation images', async () => {
    expect((await openDataset(val, small)).size).toBe(500);
  });

  it('refuses a folder name that is not in the class list, naming it', async () => {
    const root = tempDir();
    mkdirSync(join(root, 'n01440764'));
    mkdirSync(join(root, 'goldfish-ish'));
    copyFileSync(join(calib, tench), join(root, 'n01440764', tench));
    const error = await openDataset(root, small, { classes: tsv }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InputError);
    expect((error as Error).message).toContain(join(root, 'goldfish-ish'));
  });

  it('refuses synset folders when no class list can be found', async () => {
    const root = tempDir();
    mkdirSync(join(root, 'n01440764'));
    copyFileSync(join(calib, tench), join(root, 'n01440764', tench));
    await expect(openDataset(root, small)).rejects.toThrow(/imagenet_classes\.tsv/);
  });

  it('uses the sorted folder names as classes for non-ImageNet folders', async () => {
    const root = tempDir();
    for (const [folder, file] of [
      ['dog', hammerhead],
      ['cat', tench],
    ] as const) {
      mkdirSync(join(root, folder));
      copyFileSync(join(calib, file), join(root, folder, file));
    }
    const dataset = await openDataset(root, small);
    const [batch] = await collect(dataset, 4);
    expect(dataset.classNames).toEqual(['cat', 'dog']);
    expect(Array.from(batch!.labels)).toEqual([0, 1]);
  });
});

describe('openDataset on flat folders', () => {
  it('reads labels given as synsets, class names or indices from labels.txt', async () => {
    const dir = flatFolder([tench, hammerhead, finch]);
    writeFileSync(
      join(dir, 'labels.txt'),
      `${tench}\tn01440764\n${hammerhead},hammerhead\n${finch}\t12\n`,
    );
    const dataset = await openDataset(dir, small, { classes: tsv });
    const [batch] = await collect(dataset, 8);
    // tench, hammerhead and house finch are lines 0, 4 and 12 of the class list
    expect(Array.from(batch!.labels)).toEqual([0, 4, 12]);
  });

  it('refuses a label that is not in the class list, naming it', async () => {
    const dir = flatFolder([tench]);
    writeFileSync(join(dir, 'labels.csv'), `file,label\n${tench},unicorn\n`);
    await expect(openDataset(dir, small, { classes: tsv })).rejects.toThrow(/"unicorn"/);
  });

  it('refuses synset labels when no class list can be found', async () => {
    const dir = flatFolder([tench, hammerhead]);
    writeFileSync(join(dir, 'labels.txt'), `${tench}\tn01440764\n${hammerhead}\tn01494475\n`);
    await expect(openDataset(dir, small)).rejects.toThrow(/synsets.*imagenet_classes\.tsv/);
  });

  it('leaves images unlabelled (−1) without a labels file', async () => {
    const dataset = await openDataset(flatFolder([tench, finch]), small);
    const [batch] = await collect(dataset, 8);
    expect(Array.from(batch!.labels)).toEqual([-1, -1]);
    expect(batch!.dims).toEqual([2, 3, 32, 32]);
  });
});

describe('unreadable images', () => {
  function folderWithTruncated(): { dir: string; broken: string } {
    const dir = flatFolder([tench, hammerhead, finch]);
    const bytes = readFileSync(join(calib, tench));
    const broken = join(dir, 'n01500000_broken.JPEG');
    writeFileSync(broken, bytes.subarray(0, bytes.length >> 1));
    return { dir, broken };
  }

  it('are skipped with a warning naming the file, and counted', async () => {
    const { dir, broken } = folderWithTruncated();
    const logger = recordingLogger();
    const dataset = await openDataset(dir, small, { logger });
    const batches = await collect(dataset, 2);
    expect(batches.map((b) => b.dims[0])).toEqual([2, 1]);
    expect(dataset.stats).toEqual({ decoded: 3, skipped: 1, skippedFiles: [broken] });
    expect(logger.warnings).toHaveLength(1);
    expect(logger.warnings[0]).toContain(broken);
  });

  it('raise an InputError naming the file when strict', async () => {
    const { dir, broken } = folderWithTruncated();
    const dataset = await openDataset(dir, small, { strict: true });
    const error = await collect(dataset, 2).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InputError);
    expect((error as Error).message).toContain(broken);
  });
});

describe('unusable dataset paths', () => {
  it('raise an InputError naming a missing folder', async () => {
    const path = join(tempDir(), 'nothing-here');
    const error = await openDataset(path, small).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InputError);
    expect((error as Error).message).toBe(`dataset folder not found: ${path}`);
  });

  it('raise an InputError naming an empty folder', async () => {
    const path = tempDir();
    writeFileSync(join(path, 'README.txt'), 'no images');
    const error = await openDataset(path, small).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InputError);
    expect((error as Error).message).toMatch(new RegExp(`^no images in ${path}`));
    expect((error as Error).message).not.toContain('\n');
  });

  it('raise an InputError naming a file given as a folder', async () => {
    const path = join(calib, tench);
    await expect(openDataset(path, small)).rejects.toThrow(`dataset path is not a folder: ${path}`);
  });

  it('name the flag that gave the folder first, when told it', async () => {
    const missing = join(tempDir(), 'nothing-here');
    await expect(openDataset(missing, small, { flag: '--calib' })).rejects.toThrow(
      `--calib: dataset folder not found: ${missing}`,
    );
    const file = join(calib, tench);
    await expect(openDataset(file, small, { flag: '--data' })).rejects.toThrow(
      `--data: dataset path is not a folder: ${file}`,
    );
  });
});

describe('checking a dataset folder before a job', () => {
  const noImages =
    'no images in {}: expected image files, <class>/ subfolders of images, or MNIST ' +
    '*-images-idx3-ubyte files';

  /** The message of the InputError `check` rejects with. */
  async function refusal(check: Promise<void>): Promise<string> {
    const error = await check.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(InputError);
    return (error as Error).message;
  }

  it('refuses a missing path, a file and a folder without images, naming the flag', async () => {
    const missing = join(tempDir(), 'nothing-here');
    expect(await refusal(checkDatasetFolder(missing, '--data'))).toBe(
      `--data: dataset folder not found: ${missing}`,
    );
    const file = join(calib, tench);
    expect(await refusal(checkDatasetFolder(file, '--data'))).toBe(
      `--data: dataset path is not a folder: ${file}`,
    );
    const empty = tempDir();
    writeFileSync(join(empty, 'README.txt'), 'no images');
    expect(await refusal(checkDatasetFolder(empty, '--data'))).toBe(
      `--data: ${noImages.replace('{}', empty)}`,
    );
    // class folders that hold no image are no dataset either
    const tree = tempDir();
    mkdirSync(join(tree, 'cats'));
    mkdirSync(join(tree, 'dogs'));
    expect(await refusal(checkDatasetFolder(tree, '--data'))).toBe(
      `--data: ${noImages.replace('{}', tree)}`,
    );
  });

  it('gives openDataset the same message for class folders without images', async () => {
    const tree = tempDir();
    mkdirSync(join(tree, 'cats'));
    await expect(openDataset(tree, small, { flag: '--data' })).rejects.toThrow(
      `--data: ${noImages.replace('{}', tree)}`,
    );
  });

  it('accepts the ImageNet tree, a flat folder and MNIST files', async () => {
    const mnist = join(import.meta.dirname, '..', '..', 'assets', 'mnist-1k');
    for (const path of [val, calib, flatFolder([tench]), mnist]) {
      await expect(checkDatasetFolder(path, '--data')).resolves.toBeUndefined();
    }
  });
});

describe('streaming', () => {
  it('keeps at most `concurrency` images decoded ahead of the consumer', async () => {
    let started = 0;
    const source = {
      size: 40,
      file: (i: number) => `item${i}`,
      label: () => -1,
      read: async () => {
        started++;
        await new Promise((resolve) => setTimeout(resolve, 1));
        return { data: new Uint8Array(4 * 4 * 3), width: 4, height: 4, channels: 3 };
      },
    };
    const config = { ...small, resize: null, crop: null, height: 4, width: 4 };
    const dataset = new ItemDataset(source, {
      name: 'fake',
      numClasses: 0,
      preprocess: config,
      concurrency: 3,
    });
    let consumed = 0;
    for await (const batch of dataset.batches(5)) {
      consumed += batch.dims[0];
      expect(started - consumed).toBeLessThanOrEqual(3);
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    expect(consumed).toBe(40);
  });

  it('reports progress under the stage name the caller gives', async () => {
    const events: ProgressEvent[] = [];
    const dataset = await openDataset(flatFolder([tench, hammerhead, finch]), small);
    for await (const batch of dataset.batches(2, {
      stage: 'calibration',
      onProgress: (e) => events.push(e),
    })) {
      expect(batch.dims[0]).toBeGreaterThan(0);
    }
    expect(events).toEqual([
      { status: 'start', stage: 'calibration', total: 3 },
      { status: 'advance', stage: 'calibration', done: 2, total: 3 },
      { status: 'advance', stage: 'calibration', done: 3, total: 3 },
      { status: 'end', stage: 'calibration' },
    ]);
  });
});

describe('openDataset on MNIST IDX files', () => {
  const mnist: PreprocessConfig = {
    channels: 1,
    mean: [0.1307],
    std: [0.3081],
    resize: null,
    crop: null,
    interpolation: 'bilinear',
    height: 28,
    width: 28,
  };
  const assets = join(import.meta.dirname, '..', '..', 'assets', 'mnist-1k');

  it('reads gzip IDX digits with their labels, taking the first N when asked', async () => {
    const dataset = await openDataset(assets, mnist, { limit: 10 });
    const [batch] = await collect(dataset, 16);
    expect(dataset.size).toBe(10);
    // the first ten MNIST test labels, as published with the data set
    expect(Array.from(batch!.labels)).toEqual([7, 2, 1, 0, 4, 1, 4, 9, 5, 9]);
    // the corner pixel of a digit is background: (0 − 0.1307) / 0.3081
    expect(batch!.data[0]).toBeCloseTo(-0.4242, 4);
  });

  it('reads uncompressed IDX files too', async () => {
    const { gunzipSync } = await import('node:zlib');
    const dir = tempDir();
    for (const kind of ['images-idx3', 'labels-idx1']) {
      const packed = readFileSync(join(assets, `t10k-${kind}-ubyte.gz`));
      writeFileSync(join(dir, `t10k-${kind}-ubyte`), gunzipSync(packed));
    }
    const dataset = await openDataset(dir, mnist);
    expect(dataset.size).toBe(1000);
  });
});
