/**
 * The int8 deployable recipes on both weight grids (`reduced`, the default, and `full`): top-1,
 * agreement and mean KL against fp32 on the 500 images of `imagenet-val-500`, calibrated (w8a8)
 * on a seeded sample of `imagenet-calib-256` as the CLI does, then batch-1 latency of every
 * export against fp32, side by side in one process, repeated to show the spread of a shared
 * machine. The CPU's VNNI support is printed: the `full` grid only keeps accuracy with it.
 *
 *   npx tsx scripts/measure-deploy.ts                       # ViT-Tiny opset 17
 *   npx tsx scripts/measure-deploy.ts --model opset13 --repeats 5 --runs 50
 *   npx tsx scripts/measure-deploy.ts --model mnist --val 10000
 *   npx tsx scripts/measure-deploy.ts --grids reduced --no-accuracy   # latency only
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { ModelProto } from 'onnx-buf';
import {
  openDataset,
  packageRoot,
  resolvePreprocess,
  sampleDataset,
  type PreprocessConfig,
} from '../src/data/index.js';
import { evaluateAccuracy, type EvalBatch } from '../src/eval/accuracy.js';
import { measureLatency } from '../src/eval/latency.js';
import { loadModel } from '../src/onnx/model-io.js';
import { activationRanges, calibrate } from '../src/quant/calibrate.js';
import { exportDynamic } from '../src/quant/deploy/dynamic.js';
import { exportQdq, qdqCalibrationValues } from '../src/quant/deploy/qdq.js';
import type { WeightRange } from '../src/quant/deploy/types.js';
import { recognizeViT } from '../src/vit/index.js';

const fixtures = join(packageRoot(), '..', 'shared', 'fixtures');
const models: Record<string, { path: string; calib: string; val: string; dims: number[] }> = {
  opset17: {
    path: join(fixtures, 'models/vit_tiny_patch16_224/model.opset17.onnx'),
    calib: join(fixtures, 'images/imagenet-calib-256'),
    val: join(fixtures, 'images/imagenet-val-500'),
    dims: [3, 224, 224],
  },
  opset13: {
    path: join(fixtures, 'models/vit_tiny_patch16_224/model.opset13.onnx'),
    calib: join(fixtures, 'images/imagenet-calib-256'),
    val: join(fixtures, 'images/imagenet-val-500'),
    dims: [3, 224, 224],
  },
  mnist: {
    path: join(fixtures, 'models/vit4mnist/model.opset17.onnx'),
    calib: join(packageRoot(), 'assets', 'mnist-calib-256'),
    val: join(fixtures, 'mnist'),
    dims: [1, 28, 28],
  },
};
const threads = 2;
const pct = (x: number | undefined | null) => `${(100 * (x ?? NaN)).toFixed(1)} %`;

async function hold(folder: string, preprocess: PreprocessConfig, limit?: number) {
  const dataset = await openDataset(folder, preprocess, limit ? { limit } : {});
  const held: EvalBatch[] = [];
  for await (const b of dataset.batches(16)) {
    held.push({ data: b.data.slice(), dims: [...b.dims], labels: b.labels.slice() });
  }
  return held;
}

async function* stream<T>(items: readonly T[]): AsyncIterable<T> {
  for (const item of items) yield item;
}

/** Min-max ranges of `values` on a seeded sample of the calibration folder, as the CLI takes. */
async function ranges(model: ModelProto, folder: string, preprocess: PreprocessConfig) {
  const structure = recognizeViT(model);
  const values = qdqCalibrationValues(model, structure);
  const sample = sampleDataset(await openDataset(folder, preprocess), 32, 0);
  const result = await calibrate(model, structure, sample.batches(16), { values, threads });
  return activationRanges(result, 'minmax', { bits: 8, signed: false, symmetric: false });
}

async function vnni(): Promise<string> {
  const info = await readFile('/proc/cpuinfo', 'utf8').catch(() => '');
  const flags = new Set(/^flags\s*:(.*)$/m.exec(info)?.[1]?.trim().split(/\s+/) ?? []);
  const has = (f: string) => (flags.has(f) ? f : `no ${f}`);
  return ['avx2', 'avx512f', 'avx512_vnni', 'avx_vnni'].map(has).join(', ');
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      model: { type: 'string', default: 'opset17' },
      val: { type: 'string' },
      repeats: { type: 'string', default: '3' },
      runs: { type: 'string', default: '40' },
      grids: { type: 'string', default: 'full,reduced' },
      'no-accuracy': { type: 'boolean', default: false },
    },
  });
  const chosen = models[values.model];
  if (!chosen) throw new Error(`--model must be one of ${Object.keys(models).join(', ')}`);
  console.log(`CPU flags: ${await vnni()}`);
  const model = await loadModel(chosen.path);
  const structure = recognizeViT(model);
  const preprocess = await resolvePreprocess(chosen.path);
  const calibrated = await ranges(model, chosen.calib, preprocess);

  const grids = values.grids.split(',') as WeightRange[];
  const exports: [string, ModelProto][] = grids.flatMap((weightRange) => [
    [`w8a8 ${weightRange}`, exportQdq(model, structure, calibrated, { weightRange }).model],
    [`dynamic-int8 ${weightRange}`, exportDynamic(model, structure, { weightRange }).model],
  ]);
  if (!values['no-accuracy']) {
    const val = await hold(chosen.val, preprocess, Number(values.val) || undefined);
    await accuracy(model, exports, val);
  }
  await latency(model, exports, chosen.dims, Number(values.repeats), Number(values.runs));
}

async function accuracy(
  model: ModelProto,
  exports: readonly [string, ModelProto][],
  val: readonly EvalBatch[],
) {
  console.log('| export | weights | top-1 | agreement | mean KL |');
  console.log('| --- | --- | --- | --- | --- |');
  for (const [name, exported] of exports) {
    const r = await evaluateAccuracy(exported, stream(val), { threads, baseline: model });
    const [recipe, grid] = name.split(' ');
    if (name === exports[0]![0]) {
      console.log(`| fp32 | float | ${pct(r.baseline?.top1)} | | |`);
    }
    const kl = r.meanKl?.toFixed(4);
    console.log(`| ${recipe} | ${grid} | ${pct(r.top1)} | ${pct(r.agreement)} | ${kl} |`);
  }
}

async function latency(
  model: ModelProto,
  exports: readonly [string, ModelProto][],
  dims: number[],
  repeats: number,
  runs: number,
) {
  if (repeats === 0) return;
  const ratios: number[][] = exports.map(() => []);
  for (let i = 0; i < repeats; i++) {
    const [row] = await measureLatency([model, ...exports.map(([, m]) => m)], {
      sampleDims: dims,
      threads,
      runs,
      warmup: 5,
    });
    row!.medianMs.slice(1).forEach((ms, j) => ratios[j]!.push(ms / row!.medianMs[0]!));
  }
  console.log(`batch-1 latency vs fp32, ${threads} threads, median of ${runs} interleaved runs:`);
  exports.forEach(([name], j) => {
    const list = ratios[j]!.map((r) => r.toFixed(2));
    console.log(`  ${name}: ${list.join(' ')}`);
  });
}

await main();
