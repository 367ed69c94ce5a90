import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { centreCropOffset, resizedSize } from '../../src/data/image.js';
import type { Interpolation } from '../../src/data/preprocess.js';
import { resizeWindow, type PixelImage } from '../../src/data/resample.js';

/** Pillow's output for each case, from test/data/fixtures/make-pil-resize.py. */
const pillow = JSON.parse(
  readFileSync(new URL('./fixtures/pil-resize.json', import.meta.url), 'utf8'),
) as Record<string, number[]>;

/** The synthetic image of make-pil-resize.py. */
function synth(width: number, height: number): PixelImage {
  const data = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      for (let c = 0; c < 3; c++) {
        data[(y * width + x) * 3 + c] = (x * 37 + y * 91 + c * 53 + x * y * 13) % 256;
      }
    }
  }
  return { data, width, height, channels: 3 };
}

function wholeImage(width: number, height: number) {
  return { width, height, left: 0, top: 0, outWidth: width, outHeight: height };
}

describe('resizeWindow', () => {
  for (const [name, expected] of Object.entries(pillow)) {
    const [, w, h, ow, oh, filter] = /^(\d+)x(\d+)->(\d+)x(\d+) (\w+)$/.exec(name)!;
    it(`reproduces Pillow's ${filter} resize ${w}×${h} → ${ow}×${oh} exactly`, () => {
      const src = synth(Number(w), Number(h));
      const out = resizeWindow(src, wholeImage(Number(ow), Number(oh)), filter as Interpolation);
      expect(Array.from(out.data)).toEqual(expected);
    });
  }

  it('computes a window equal to the same part of the whole resized image', () => {
    const src = synth(20, 16);
    const whole = resizeWindow(src, wholeImage(13, 11), 'bicubic').data;
    const win = { width: 13, height: 11, left: 3, top: 2, outWidth: 7, outHeight: 6 };
    const part = resizeWindow(src, win, 'bicubic').data;
    for (let y = 0; y < 6; y++) {
      const row = whole.subarray(((y + 2) * 13 + 3) * 3, ((y + 2) * 13 + 10) * 3);
      expect(Array.from(part.subarray(y * 21, y * 21 + 21))).toEqual(Array.from(row));
    }
  });

  it('pads with zeros where the window leaves the resized image, as torchvision does', () => {
    const src = { data: new Uint8Array(4 * 4).fill(200), width: 4, height: 4, channels: 1 };
    const win = { width: 4, height: 4, left: -1, top: 0, outWidth: 6, outHeight: 1 };
    expect(Array.from(resizeWindow(src, win, 'bilinear').data)).toEqual([0, 200, 200, 200, 200, 0]);
  });
});

describe('torchvision geometry', () => {
  it('resizes the shorter side and truncates the longer, as Resize(int) does', () => {
    // 248 · 500 / 375 = 330.67 → 330; for a portrait image 165 · 500 / 333 = 247.7 → 247
    expect(resizedSize(500, 375, 248)).toEqual([330, 248]);
    expect(resizedSize(333, 500, 165)).toEqual([165, 247]);
    expect(resizedSize(227, 227, 248)).toEqual([248, 248]);
  });

  it('rounds centre-crop offsets half to even, as Python round() does', () => {
    expect(centreCropOffset(248, 224)).toBe(12);
    expect(centreCropOffset(330, 224)).toBe(53);
    // (249 − 224) / 2 = 12.5 → 12 and (251 − 224) / 2 = 13.5 → 14
    expect(centreCropOffset(249, 224)).toBe(12);
    expect(centreCropOffset(251, 224)).toBe(14);
    expect(centreCropOffset(200, 224)).toBe(-12);
  });
});
