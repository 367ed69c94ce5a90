/**
 * The model and images used when the user names none (`npm run demo`, quick tries): the real
 * ImageNet ViT-Tiny of `../shared/fixtures` when that folder exists, else the MNIST ViT and
 * digits embedded in `assets/` (the only model and images the repository may ship; see NOTICE).
 * Calibration and evaluation images never overlap: the ImageNet calibration images come from
 * another split than the validation ones, and the embedded calibration digits are test digits
 * 1000–1255, after the 1,000 evaluation digits.
 */
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { InternalError } from '../errors.js';

export interface Defaults {
  kind: 'imagenet-vit-tiny' | 'mnist-embedded';
  model: string;
  /** Calibration images (a dataset folder). */
  calib: string;
  /** Evaluation images (a dataset folder), disjoint from `calib`. */
  val: string;
  /** Class list, for the ImageNet images. */
  classes?: string;
  description: string;
}

/** The folder holding vitslim's package.json, found from this file's location. */
export function packageRoot(from = dirname(fileURLToPath(import.meta.url))): string {
  for (let dir = resolve(from); ; dir = dirname(dir)) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    if (dirname(dir) === dir) throw new InternalError(`no package.json above ${from}`);
  }
}

/** The default model and images, with a sentence saying which they are. */
export function findDefaults(root = packageRoot()): Defaults {
  const fixtures = join(root, '..', 'shared', 'fixtures');
  if (existsSync(fixtures)) {
    const images = join(fixtures, 'images');
    return {
      kind: 'imagenet-vit-tiny',
      model: join(fixtures, 'models', 'vit_tiny_patch16_224', 'model.opset17.onnx'),
      calib: join(images, 'imagenet-calib-256'),
      val: join(images, 'imagenet-val-500'),
      classes: join(images, 'imagenet_classes.tsv'),
      description:
        'ViT-Tiny/16 (ImageNet-1k) from ../shared/fixtures: calibration on a sample of the ' +
        '256 images of imagenet-calib-256 (another split), evaluation on 500 ImageNet ' +
        'validation images',
    };
  }
  const assets = join(root, 'assets');
  return {
    kind: 'mnist-embedded',
    model: join(assets, 'vit4mnist', 'model.opset17.onnx'),
    calib: join(assets, 'mnist-calib-256'),
    val: join(assets, 'mnist-1k'),
    description:
      'embedded MNIST ViT (no ../shared/fixtures here): calibration on a sample of MNIST ' +
      'test digits 1000–1255, evaluation on test digits 0–999',
  };
}
