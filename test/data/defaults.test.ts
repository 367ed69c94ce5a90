import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { findDefaults, packageRoot } from '../../src/data/defaults.js';
import { readIdx } from '../../src/data/idx.js';

const repo = resolve(import.meta.dirname, '..', '..');
const fixtureMnist = join(repo, '..', 'shared', 'fixtures', 'mnist');

describe('findDefaults', () => {
  it('finds the repository root from the module', () => {
    expect(packageRoot()).toBe(repo);
  });

  it('chooses the ImageNet ViT-Tiny when ../shared/fixtures exists', () => {
    const defaults = findDefaults(repo);
    expect(defaults.kind).toBe('imagenet-vit-tiny');
    for (const path of [defaults.model, defaults.calib, defaults.val, defaults.classes!]) {
      expect(existsSync(path)).toBe(true);
    }
    expect(defaults.description).toMatch(/ViT-Tiny/);
  });

  it('falls back to the embedded MNIST ViT elsewhere, with files that exist in the repo', () => {
    const elsewhere = mkdtempSync(join(tmpdir(), 'vitslim-root-'));
    writeFileSync(join(elsewhere, 'package.json'), '{}');
    const defaults = findDefaults(elsewhere);
    expect(defaults.kind).toBe('mnist-embedded');
    expect(defaults.description).toMatch(/MNIST/);
    const inRepo = (path: string) => join(repo, path.slice(elsewhere.length));
    for (const path of [defaults.model, defaults.calib, defaults.val]) {
      expect(existsSync(inRepo(path))).toBe(true);
    }
  });
});

describe('the embedded MNIST digits', () => {
  async function pair(dir: string) {
    const images = await readIdx(join(dir, 't10k-images-idx3-ubyte.gz'));
    const labels = await readIdx(join(dir, 't10k-labels-idx1-ubyte.gz'));
    return { images, labels };
  }

  it('are test digits 0–999 for evaluation and 1000–1255 for calibration, unchanged', async () => {
    const full = await pair(fixtureMnist);
    const val = await pair(join(repo, 'assets', 'mnist-1k'));
    const calib = await pair(join(repo, 'assets', 'mnist-calib-256'));
    const digit = 28 * 28;
    expect(val.images.dims).toEqual([1000, 28, 28]);
    expect(calib.images.dims).toEqual([256, 28, 28]);
    expect(Buffer.compare(val.images.data, full.images.data.subarray(0, 1000 * digit))).toBe(0);
    expect(Buffer.compare(val.labels.data, full.labels.data.subarray(0, 1000))).toBe(0);
    const calibRange = full.images.data.subarray(1000 * digit, 1256 * digit);
    expect(Buffer.compare(calib.images.data, calibRange)).toBe(0);
    expect(Buffer.compare(calib.labels.data, full.labels.data.subarray(1000, 1256))).toBe(0);
  });
});
