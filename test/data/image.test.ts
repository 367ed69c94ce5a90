import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { beforeAll, describe, expect, it } from 'vitest';
import { InputError } from '../../src/errors.js';
import { loadImage, readPixels, writeTensor } from '../../src/data/image.js';
import type { PreprocessConfig } from '../../src/data/preprocess.js';

const fixtures = join(import.meta.dirname, '..', '..', '..', 'shared', 'fixtures');
const tench = join(fixtures, 'images', 'imagenet-calib-256', 'n01440764_tench.JPEG');

const vitTiny: PreprocessConfig = {
  channels: 3,
  mean: [0.5, 0.5, 0.5],
  std: [0.5, 0.5, 0.5],
  resize: 248,
  crop: 224,
  interpolation: 'bicubic',
  height: 224,
  width: 224,
};
const size = 3 * 224 * 224;
const plane = 224 * 224;
/** One grey level, in the normalised units of mean 0.5 and std 0.5. */
const level = 1 / 255 / 0.5;

let dir: string;
let original: Float32Array;

async function tensorOf(file: string): Promise<Float32Array> {
  const out = new Float32Array(size);
  await loadImage(file, vitTiny, out, 0);
  return out;
}

function meanAbsDiff(a: Float32Array, b: Float32Array): number {
  let sum = 0;
  for (let i = 0; i < a.length; i++) sum += Math.abs(a[i]! - b[i]!);
  return sum / a.length;
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vitslim-image-'));
  await sharp(tench).png().toFile(join(dir, 'rgb.png'));
  original = await tensorOf(join(dir, 'rgb.png'));
});

describe('decoding variants of one photo', () => {
  it('decodes a 16-bit PNG to the same tensor as the 8-bit original', async () => {
    await sharp(tench).toColourspace('rgb16').png().toFile(join(dir, 'rgb16.png'));
    // 8 → 16 → 8 bits is lossless: v · 257 / 257
    expect(meanAbsDiff(await tensorOf(join(dir, 'rgb16.png')), original)).toBeLessThan(1e-6);
  });

  it('drops the alpha channel of a half-transparent PNG rather than blending it', async () => {
    await sharp(tench).ensureAlpha(0.5).png().toFile(join(dir, 'rgba.png'));
    expect(meanAbsDiff(await tensorOf(join(dir, 'rgba.png')), original)).toBeLessThan(1e-6);
  });

  it('converts a CMYK JPEG back to nearly the RGB original', async () => {
    await sharp(tench).toColourspace('cmyk').jpeg({ quality: 100 }).toFile(join(dir, 'cmyk.jpg'));
    // sRGB → CMYK → sRGB through libvips' default CMYK profile loses some gamut: measured by
    // hand 6 grey levels on average on this photo, darker; 10 levels is the bound
    expect(meanAbsDiff(await tensorOf(join(dir, 'cmyk.jpg')), original)).toBeLessThan(10 * level);
  });

  it('replicates a grey image into three channels equal to the luma of the original', async () => {
    const { data, info } = await sharp(join(dir, 'rgb.png'))
      .raw()
      .toBuffer({ resolveWithObject: true });
    const grey = new Uint8Array(info.width * info.height);
    for (let i = 0; i < grey.length; i++) {
      grey[i] = Math.round(
        0.299 * data[3 * i]! + 0.587 * data[3 * i + 1]! + 0.114 * data[3 * i + 2]!,
      );
    }
    const raw = { width: info.width, height: info.height, channels: 1 as const };
    await sharp(grey, { raw }).png().toFile(join(dir, 'grey.png'));
    await sharp(grey, { raw }).toColourspace('grey16').png().toFile(join(dir, 'grey16.png'));

    const luma = new Float32Array(plane);
    for (let i = 0; i < plane; i++) {
      luma[i] =
        0.299 * original[i]! + 0.587 * original[plane + i]! + 0.114 * original[2 * plane + i]!;
    }
    for (const file of ['grey.png', 'grey16.png']) {
      const decoded = await tensorOf(join(dir, file));
      for (let c = 0; c < 3; c++) {
        // resizing is linear up to rounding, so luma and resize commute within a level or two
        const channel = decoded.subarray(c * plane, (c + 1) * plane);
        expect(meanAbsDiff(channel, luma)).toBeLessThan(0.5 * level);
      }
    }
  });
});

describe('readPixels', () => {
  it('throws an InputError naming a truncated JPEG', async () => {
    const bytes = readFileSync(tench);
    const file = join(dir, 'truncated.jpg');
    writeFileSync(file, bytes.subarray(0, bytes.length >> 1));
    const error = await readPixels(file, 3).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InputError);
    expect((error as Error).message).toContain(file);
  });

  it("gives the decoder's reason for a truncated JPEG read alongside other images", async () => {
    const bytes = readFileSync(tench);
    const file = join(dir, 'truncated-among-others.jpg');
    writeFileSync(file, bytes.subarray(0, bytes.length >> 1));
    // the reason sharp gives when the file is decoded with nothing else running
    const alone = await sharp(file, { failOn: 'error' })
      .raw()
      .toBuffer()
      .catch((e: unknown) => e);
    const reason = (alone as Error).message;
    expect(reason).toMatch(/premature end/i);
    // a neighbour that ends while the truncated one fails must not take the reason with it
    for (let round = 0; round < 20; round++) {
      const reads = [readPixels(tench, 3), readPixels(file, 3), readPixels(tench, 3)];
      const [before, truncated, after] = await Promise.allSettled(reads);
      expect([before?.status, after?.status]).toEqual(['fulfilled', 'fulfilled']);
      expect(truncated?.status).toBe('rejected');
      const error = (truncated as PromiseRejectedResult).reason as Error;
      expect(error.message).toBe(`cannot decode image ${file}: ${reason}`);
    }
  });

  it('throws an InputError naming a file that is not an image', async () => {
    const file = join(dir, 'notes.png');
    writeFileSync(file, 'not a picture');
    await expect(readPixels(file, 3)).rejects.toThrow(file);
  });
});

describe('writeTensor', () => {
  it('normalises each channel as (v / 255 − mean) / std into the slot at the offset', () => {
    const config: PreprocessConfig = {
      ...vitTiny,
      mean: [0.1, 0.2, 0.3],
      std: [0.5, 0.25, 2],
      resize: null,
      crop: null,
      height: 1,
      width: 2,
    };
    const image = {
      data: Uint8Array.of(0, 51, 255, 255, 102, 0),
      width: 2,
      height: 1,
      channels: 3,
    };
    const out = new Float32Array(8).fill(9);
    writeTensor(image, config, out, 1);
    // R: (0 − 0.1) / 0.5, (1 − 0.1) / 0.5; G: (0.2 − 0.2) / 0.25, (0.4 − 0.2) / 0.25;
    // B: (1 − 0.3) / 2, (0 − 0.3) / 2
    const expected = [9, -0.2, 1.8, 0, 0.8, 0.35, -0.15, 9];
    expect(Array.from(out)).toEqual(expected.map((v) => expect.closeTo(v, 6)));
  });

  it('refuses an offset that would write past the buffer', () => {
    const image = { data: new Uint8Array(28 * 28), width: 28, height: 28, channels: 1 };
    const config = {
      ...vitTiny,
      channels: 1 as const,
      mean: [0],
      std: [1],
      resize: null,
      crop: null,
    };
    expect(() => writeTensor(image, config, new Float32Array(plane), 1)).toThrow(RangeError);
  });
});
