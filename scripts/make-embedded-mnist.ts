/**
 * Writes the embedded default of machines without ../shared: the MNIST ViT and its config in
 * assets/vit4mnist/, test digits 0–999 in assets/mnist-1k/ (evaluation) and test digits
 * 1000–1255 in assets/mnist-calib-256/ (calibration), as gzip IDX files. Reproducible: the
 * gzip output carries no time stamp, so the same inputs give the same bytes.
 *
 *   npx tsx scripts/make-embedded-mnist.ts [fixtures folder, default ../shared/fixtures]
 */
import { chmodSync, copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { gzipSync } from 'node:zlib';
import { packageRoot } from '../src/data/defaults.js';
import { formatIdx, readIdx, type IdxArray } from '../src/data/idx.js';

const root = packageRoot();
const fixtures = resolve(process.argv[2] ?? join(root, '..', 'shared', 'fixtures'));
const assets = join(root, 'assets');

/** Rows `first … first + count − 1` of an IDX array along its first axis. */
function rows(array: IdxArray, first: number, count: number): IdxArray {
  const [n, ...rest] = array.dims as [number, ...number[]];
  if (first + count > n) throw new Error(`asked rows ${first}–${first + count - 1} of ${n}`);
  const size = rest.reduce((a, b) => a * b, 1);
  return {
    dims: [count, ...rest],
    data: array.data.slice(first * size, (first + count) * size),
  };
}

function writeSet(folder: string, images: IdxArray, labels: IdxArray): void {
  const dir = join(assets, folder);
  mkdirSync(dir, { recursive: true });
  const gz = (array: IdxArray) => gzipSync(formatIdx(array), { level: 9 });
  writeFileSync(join(dir, 't10k-images-idx3-ubyte.gz'), gz(images));
  writeFileSync(join(dir, 't10k-labels-idx1-ubyte.gz'), gz(labels));
}

const model = join(assets, 'vit4mnist');
mkdirSync(model, { recursive: true });
for (const file of ['model.opset17.onnx', 'config.json']) {
  copyFileSync(join(fixtures, 'models', 'vit4mnist', file), join(model, file));
  // the fixtures are read-only; the copies must stay writable for the next run of this script
  chmodSync(join(model, file), 0o644);
}

const images = await readIdx(join(fixtures, 'mnist', 't10k-images-idx3-ubyte.gz'));
const labels = await readIdx(join(fixtures, 'mnist', 't10k-labels-idx1-ubyte.gz'));
writeSet('mnist-1k', rows(images, 0, 1000), rows(labels, 0, 1000));
writeSet('mnist-calib-256', rows(images, 1000, 256), rows(labels, 1000, 256));
process.stdout.write(`wrote ${assets}/vit4mnist, mnist-1k and mnist-calib-256\n`);
