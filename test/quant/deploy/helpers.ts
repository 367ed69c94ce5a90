/**
 * Test helpers of the deployable exports: ImageNet images decoded by the data module with the
 * ViT-Tiny's preprocessing, MNIST digits, min/max ranges captured with onnxruntime, top-1.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { loadImage, resolvePreprocess } from '../../../src/data/index.js';
import type { ModelProto } from 'onnx-buf';
import { capture } from '../../../src/runtime/capture.js';
import { createSession, runSingle } from '../../../src/runtime/session.js';
import type { TensorRange } from '../../../src/quant/types.js';
import { imagenetCalib, imagenetVal, mnistDir, vitTiny } from '../../fixtures.js';

/** One ImageNet image as the ViT-Tiny's [3, 224, 224] input, decoded by the data module. */
export async function imagenetImage(path: string): Promise<Float32Array> {
  const config = await resolvePreprocess(vitTiny.opset17);
  const out = new Float32Array(3 * 224 * 224);
  await loadImage(path, config, out, 0);
  return out;
}

/** The first `count` calibration images (sorted file names). */
export async function calibrationImages(count: number): Promise<Float32Array[]> {
  const files = (await readdir(imagenetCalib)).sort().slice(0, count);
  return Promise.all(files.map((f) => imagenetImage(join(imagenetCalib, f))));
}

/** Validation images spread over the classes: every `stride`-th of the sorted list. */
export async function validationImages(count: number, stride = 37) {
  const synsets = (await readdir(imagenetVal)).sort();
  const items: { path: string; label: number }[] = [];
  const classes = (await readFile(join(imagenetVal, '..', 'imagenet_classes.tsv'), 'utf8'))
    .split('\n')
    .filter((l) => l.trim());
  const indexOf = new Map(classes.map((l) => [l.split('\t')[1]!, Number(l.split('\t')[0])]));
  for (const synset of synsets) {
    for (const f of (await readdir(join(imagenetVal, synset))).sort()) {
      items.push({ path: join(imagenetVal, synset, f), label: indexOf.get(synset) ?? -1 });
    }
  }
  const chosen = items.filter((_, i) => i % stride === 0).slice(0, count);
  return Promise.all(
    chosen.map(async (it) => ({ data: await imagenetImage(it.path), label: it.label })),
  );
}

/** The first `count` MNIST test digits, normalised as the MNIST ViT expects, [1, 28, 28] each. */
export async function mnistDigits(count: number): Promise<{ data: Float32Array; label: number }[]> {
  const images = gunzipSync(await readFile(join(mnistDir, 't10k-images-idx3-ubyte.gz')));
  const labels = gunzipSync(await readFile(join(mnistDir, 't10k-labels-idx1-ubyte.gz')));
  return Array.from({ length: count }, (_, i) => {
    const data = new Float32Array(784);
    for (let p = 0; p < 784; p++) data[p] = (images[16 + i * 784 + p]! / 255 - 0.1307) / 0.3081;
    return { data, label: labels[8 + i]! };
  });
}

/** Min/max of `values` over `inputs` (each one sample), captured with onnxruntime. */
export async function minMaxRanges(
  model: ModelProto,
  values: readonly string[],
  inputs: readonly Float32Array[],
  sampleDims: readonly number[],
): Promise<Map<string, TensorRange>> {
  const ranges = new Map<string, TensorRange>();
  const batches = inputs.map((data) => ({ data, dims: [1, ...sampleDims] }));
  await capture(
    model,
    values,
    batches,
    (captured) => {
      for (const [name, tensor] of captured) {
        const data = tensor.data as Float32Array;
        const range = ranges.get(name) ?? { min: Infinity, max: -Infinity };
        for (let i = 0; i < data.length; i++) {
          const v = data[i]!;
          if (v < range.min) range.min = v;
          if (v > range.max) range.max = v;
        }
        ranges.set(name, range);
      }
    },
    { threads: 2 },
  );
  return ranges;
}

/** Top-1 class of each input under `model`. */
export async function top1(
  model: ModelProto,
  inputs: readonly Float32Array[],
  sampleDims: readonly number[],
): Promise<number[]> {
  const session = await createSession(model, { threads: 2 });
  try {
    const classes: number[] = [];
    for (const data of inputs) {
      const out = await runSingle(session, data, [1, ...sampleDims]);
      const logits = out[session.outputNames[0]!]!.data as Float32Array;
      let best = 0;
      for (let i = 1; i < logits.length; i++) if (logits[i]! > logits[best]!) best = i;
      classes.push(best);
    }
    return classes;
  } finally {
    await session.release();
  }
}
