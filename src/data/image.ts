/**
 * One image file to one model input: decode with sharp into 8-bit sRGB (or grey), resize and
 * centre-crop as torchvision's eval transform does on a Pillow image, then scale to [0, 1] and
 * normalise into a CHW float32 slice of a caller's batch buffer.
 *
 * Choices that decide accuracy, each taken to match the Pillow pipeline the reference numbers
 * come from (`Image.open(f).convert('RGB')`, Resize, CenterCrop, ToTensor, Normalize):
 * - alpha is dropped, not flattened on white: `convert('RGB')` drops it, so the model was
 *   trained and evaluated on the stored colour of transparent pixels;
 * - EXIF orientation is not applied, as Pillow does not apply it on open;
 * - embedded ICC profiles are ignored, as Pillow ignores them: the stored RGB values are what
 *   the model saw in training. With this, decoding is bit-identical to Pillow on all 756
 *   fixture images; honouring the profiles changes 27 of the 256 calibration images by up to
 *   15 levels on average, and leaves ViT-Tiny's top-1 on them unchanged (82.4 %);
 * - CMYK and 16-bit images go through libvips' conversions to 8-bit sRGB, which are more
 *   faithful than Pillow's (naive CMYK inversion; 16-bit grey clipped at 255);
 * - for one channel, colour is reduced with Pillow's `convert('L')` luma (ITU-R 601-2).
 */
import sharp from 'sharp';
import { InputError } from '../errors.js';
import { DecodeGate } from './decode-gate.js';
import type { PreprocessConfig } from './preprocess.js';
import { resizeWindow, type PixelImage, type ResizeWindow } from './resample.js';

export type { PixelImage } from './resample.js';

/** File name endings sharp's prebuilt libvips decodes, lower-case. */
export const imageExtensions = ['.jpg', '.jpeg', '.jpe', '.png', '.webp', '.tif', '.tiff', '.gif'];

/** Whether a file name looks like an image vitslim reads. */
export function isImageFile(name: string): boolean {
  const dot = name.lastIndexOf('.');
  return dot > 0 && imageExtensions.includes(name.slice(dot).toLowerCase());
}

/** Decodes run through one gate, so that a failure whose reason sharp lost can be retried alone. */
const decodeGate = new DecodeGate();

/** What sharp reports when libvips' error buffer was emptied before the failure was read. */
const lostReason = 'Unknown error';

/**
 * Decodes `file` into 8-bit pixels with `channels` channels. Throws InputError naming the file
 * when it is missing, not an image, truncated or corrupt, with the decoder's reason.
 */
export async function readPixels(file: string, channels: 1 | 3): Promise<PixelImage> {
  try {
    return await decodeGate.shared(() => decode(file, channels));
  } catch (error) {
    if ((error as Error).message !== lostReason) throw decodeError(file, error);
  }
  // another decode ended while this one failed and took the reason with it: decoding the file
  // again with nothing else in flight gives it back
  try {
    return await decodeGate.alone(() => decode(file, channels));
  } catch (error) {
    throw decodeError(file, error);
  }
}

async function decode(file: string, channels: 1 | 3): Promise<PixelImage> {
  // failOn 'error' rejects truncated and corrupt data but, like Pillow, accepts files that
  // only raise decoder warnings (extra bytes after a marker, and so on)
  const options = { failOn: 'error', sequentialRead: true, ignoreIcc: true } as const;
  const { data, info } = await sharp(file, options)
    .removeAlpha()
    .toColourspace('srgb')
    .raw({ depth: 'uchar' })
    .toBuffer({ resolveWithObject: true });
  const rgb = { data: new Uint8Array(data.buffer, data.byteOffset, data.length), ...info };
  return toChannels({ ...rgb, channels: info.channels }, channels);
}

function decodeError(file: string, error: unknown): InputError {
  return new InputError(`cannot decode image ${file}: ${(error as Error).message}`, file);
}

/**
 * Converts between grey and RGB. RGB → grey uses Pillow's `convert('L')` integer formula,
 * L = (19595 R + 38470 G + 7471 B + 2¹⁵) >> 16; grey → RGB repeats the value.
 */
export function toChannels(image: PixelImage, channels: 1 | 3): PixelImage {
  if (image.channels === channels) return image;
  const pixels = image.width * image.height;
  const out = new Uint8Array(pixels * channels);
  const src = image.data;
  if (channels === 1) {
    for (let i = 0; i < pixels; i++) {
      const j = i * image.channels;
      out[i] = (19595 * src[j]! + 38470 * src[j + 1]! + 7471 * src[j + 2]! + 0x8000) >>> 16;
    }
  } else {
    for (let i = 0; i < pixels; i++) out.fill(src[i * image.channels]!, i * 3, i * 3 + 3);
  }
  return { data: out, width: image.width, height: image.height, channels };
}

/**
 * torchvision's `Resize(size)` on a Pillow image: the shorter side becomes `size`, the longer
 * `int(size · long / short)`, truncated as Python's int() does.
 */
export function resizedSize(width: number, height: number, size: number): [number, number] {
  if (width <= height) return [size, Math.trunc((size * height) / width)];
  return [Math.trunc((size * width) / height), size];
}

/** Python's round(): half to even, the rounding torchvision's CenterCrop applies to offsets. */
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** torchvision's `CenterCrop` offset: int(round((size − crop) / 2)); negative means padding. */
export function centreCropOffset(size: number, crop: number): number {
  return roundHalfEven((size - crop) / 2);
}

/**
 * Where the model input lies in the resized image, for an input image of this size. Without
 * `resize`, a `crop` is taken from the image as it is; without either, the image is resized to
 * the input size (a no-op for images already that size, like MNIST digits).
 */
export function cropWindow(width: number, height: number, config: PreprocessConfig): ResizeWindow {
  const [rw, rh] =
    config.resize !== null
      ? resizedSize(width, height, config.resize)
      : config.crop !== null
        ? [width, height]
        : [config.width, config.height];
  return {
    width: rw,
    height: rh,
    left: centreCropOffset(rw, config.width),
    top: centreCropOffset(rh, config.height),
    outWidth: config.width,
    outHeight: config.height,
  };
}

/**
 * Resizes, crops and normalises `image` into `out` from `offset` on, as CHW float32:
 * (v / 255 − mean[c]) / std[c]. Writes exactly channels × height × width values.
 */
export function writeTensor(
  image: PixelImage,
  config: PreprocessConfig,
  out: Float32Array,
  offset: number,
): void {
  const plane = config.height * config.width;
  const size = config.channels * plane;
  if (offset < 0 || offset + size > out.length) {
    throw new RangeError(
      `writeTensor: offset must be in [0, ${out.length - size}] for ${size} values, got ${offset}`,
    );
  }
  const src = toChannels(image, config.channels);
  const window = cropWindow(src.width, src.height, config);
  const pixels = resizeWindow(src, window, config.interpolation).data;
  for (let c = 0; c < config.channels; c++) {
    const scale = 1 / (255 * config.std[c]!);
    const shift = config.mean[c]! / config.std[c]!;
    const base = offset + c * plane;
    for (let i = 0; i < plane; i++) {
      out[base + i] = pixels[i * config.channels + c]! * scale - shift;
    }
  }
}

/** Decodes `file` and writes its model input into `out` at `offset`. */
export async function loadImage(
  file: string,
  config: PreprocessConfig,
  out: Float32Array,
  offset: number,
): Promise<void> {
  writeTensor(await readPixels(file, config.channels), config, out, offset);
}
