/** Paths of the shared fixtures that tests and benchmarks read (never copied into the repo). */
import { fileURLToPath } from 'node:url';
import { join, resolve } from 'node:path';

export const repoRoot = resolve(fileURLToPath(new URL('..', import.meta.url)));
export const fixturesRoot = join(repoRoot, '..', 'shared', 'fixtures');

export const vitTiny = {
  opset17: join(fixturesRoot, 'models/vit_tiny_patch16_224/model.opset17.onnx'),
  opset13: join(fixturesRoot, 'models/vit_tiny_patch16_224/model.opset13.onnx'),
  config: join(fixturesRoot, 'models/vit_tiny_patch16_224/config.json'),
};
export const vitMnist = join(fixturesRoot, 'models/vit4mnist/model.opset17.onnx');
export const imagenetVal = join(fixturesRoot, 'images/imagenet-val-500');
export const imagenetCalib = join(fixturesRoot, 'images/imagenet-calib-256');
export const imagenetClasses = join(fixturesRoot, 'images/imagenet_classes.tsv');
export const mnistDir = join(fixturesRoot, 'mnist');

/** A deterministic pseudo-random float32 batch in [-1, 1) (a tiny LCG; values only need spread). */
export function noiseInput(count: number, seed = 1): Float32Array {
  const out = new Float32Array(count);
  let state = seed >>> 0;
  for (let i = 0; i < count; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    out[i] = state / 2 ** 31 - 1;
  }
  return out;
}
