/**
 * The deployable recipes side by side: top-1, agreement and mean KL against fp32 on the 500
 * images of `imagenet-val-500` (calibrated on a seeded sample of 32 images of
 * `imagenet-calib-256`, as the CLI does), file size against fp32, and batch-1 latency of every
 * export against fp32, side by side in one process, repeated to show the spread of a shared
 * machine. The CPU's VNNI support is printed: the `full` weight grid only keeps accuracy with it.
 *
 * Configurations (`--configs`, comma-separated):
 *   w8a8           the w8a8 recipe on the input model
 *   dynamic-int8   the dynamic-int8 recipe
 *   w8a8-repq      w8a8 of RepQ-ViT's reparameterised model, RepQ-ViT's weights
 *   w8a8-gptq      the same with GPTQ weights on RepQ-ViT's grids
 *   w8a8-erq       the same with ERQ weights and biases
 *   int4           int4-weights, blocks rounded to nearest with the clipping search
 *   int4-gptq      int4-weights with GPTQ in the same blocks
 *
 *   npx tsx scripts/measure-deploy.ts                       # ViT-Tiny opset 17, every config
 *   npx tsx scripts/measure-deploy.ts --model opset13 --configs w8a8,w8a8-repq
 *   npx tsx scripts/measure-deploy.ts --model mnist --val 10000
 *   npx tsx scripts/measure-deploy.ts --grid full --configs w8a8,dynamic-int8
 *   npx tsx scripts/measure-deploy.ts --no-accuracy          # latency only
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
import { loadModel, serializeModel } from '../src/onnx/model-io.js';
import { activationRanges, calibrate } from '../src/quant/calibrate.js';
import { exportDynamic } from '../src/quant/deploy/dynamic.js';
import { gptqBlocks } from '../src/quant/deploy/gptq-blocks.js';
import { exportInt4 } from '../src/quant/deploy/int4.js';
import { countIntegerKernels } from '../src/quant/deploy/kernels.js';
import {
  methodWeights,
  repqForDeployment,
  type DeployWeightMethod,
} from '../src/quant/deploy/method-weights.js';
import { exportQdq, qdqCalibrationValues, type QdqOptions } from '../src/quant/deploy/qdq.js';
import type { WeightRange } from '../src/quant/deploy/types.js';
import { holdImages, type CaptureBatch } from '../src/runtime/capture.js';
import { recognizeViT } from '../src/vit/index.js';
import type { ViTStructure } from '../src/vit/types.js';

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

/** The seeded sample of 32 calibration images the CLI takes (`--calib-count 32 --seed 0`). */
async function calibrationImages(folder: string, preprocess: PreprocessConfig) {
  const sample = sampleDataset(await openDataset(folder, preprocess), 32, 0);
  return holdImages(sample.batches(16));
}

/** Min-max ranges of what the w8a8 export of `model` quantizes, as the CLI takes them. */
async function ranges(
  model: ModelProto,
  structure: ViTStructure,
  images: readonly CaptureBatch[],
  threads: number,
  options: QdqOptions,
) {
  const values = qdqCalibrationValues(model, structure, options);
  const result = await calibrate(model, structure, images, { values, threads });
  return activationRanges(result, 'minmax', { bits: 8, signed: false, symmetric: false });
}

interface Export {
  name: string;
  model: ModelProto;
  integer: string;
  seconds: number;
}

/** One configuration's export, with its integer-kernel count and the time it took. */
async function build(
  config: string,
  model: ModelProto,
  images: readonly CaptureBatch[],
  weightRange: WeightRange,
  threads: number,
): Promise<Export> {
  const started = performance.now();
  const structure = recognizeViT(model);
  let exported: ModelProto;
  let counted = { structure, model };
  if (config === 'w8a8') {
    const options = { weightRange };
    const calibrated = await ranges(model, structure, images, threads, options);
    exported = exportQdq(model, structure, calibrated, options).model;
  } else if (config === 'dynamic-int8') {
    exported = exportDynamic(model, structure, { weightRange }).model;
  } else if (config.startsWith('w8a8-')) {
    const weights = config.slice(5) as DeployWeightMethod;
    const repq = await repqForDeployment(model, structure, images, {
      weights,
      weightRange,
      threads,
    });
    const options = { weightRange, weightOf: methodWeights(repq) };
    const calibrated = await ranges(repq.model, repq.structure, images, threads, options);
    exported = exportQdq(repq.model, repq.structure, calibrated, options).model;
    counted = { structure: repq.structure, model: repq.model };
  } else if (config === 'int4') {
    exported = exportInt4(model, structure).model;
  } else if (config === 'int4-gptq') {
    const gptq = await gptqBlocks(model, structure, images, { blockSize: 32, threads });
    const blocksOf = (layer: { node: string }) => gptq.blocks.get(layer.node);
    exported = exportInt4(model, structure, { blocksOf }).model;
  } else {
    throw new Error(`unknown config ${config}`);
  }
  const seconds = (performance.now() - started) / 1000;
  const kernels = await countIntegerKernels(exported, counted.structure, counted.model);
  const integer = `${kernels.integer}/${kernels.layers.length}`;
  return { name: config, model: exported, integer, seconds };
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
      configs: { type: 'string', default: 'w8a8,w8a8-repq,w8a8-gptq,w8a8-erq,int4,int4-gptq' },
      grid: { type: 'string', default: 'reduced' },
      threads: { type: 'string', default: '1' },
      'latency-threads': { type: 'string', default: '2' },
      'no-accuracy': { type: 'boolean', default: false },
    },
  });
  const chosen = models[values.model];
  if (!chosen) throw new Error(`--model must be one of ${Object.keys(models).join(', ')}`);
  const threads = Number(values.threads);
  console.log(`CPU flags: ${await vnni()}`);
  const model = await loadModel(chosen.path);
  const preprocess = await resolvePreprocess(chosen.path);
  const images = await calibrationImages(chosen.calib, preprocess);
  const grid = values.grid as WeightRange;

  const exports: Export[] = [];
  for (const config of values.configs.split(',')) {
    exports.push(await build(config, model, images, grid, threads));
    const last = exports.at(-1)!;
    console.log(`built ${config} in ${last.seconds.toFixed(1)} s, integer kernels ${last.integer}`);
  }
  if (!values['no-accuracy']) {
    const val = await hold(chosen.val, preprocess, Number(values.val) || undefined);
    await accuracy(model, exports, val, threads, grid);
  }
  const latencyThreads = Number(values['latency-threads']);
  await latency(
    model,
    exports,
    chosen.dims,
    Number(values.repeats),
    Number(values.runs),
    latencyThreads,
  );
}

async function accuracy(
  model: ModelProto,
  exports: readonly Export[],
  val: readonly EvalBatch[],
  threads: number,
  grid: string,
) {
  const size = serializeModel(model).byteLength;
  console.log(
    `| export | weights | top-1 | agreement | mean KL | size | integer kernels | build s |`,
  );
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const [i, e] of exports.entries()) {
    const r = await evaluateAccuracy(e.model, stream(val), { threads, baseline: model });
    if (i === 0) console.log(`| fp32 | float | ${pct(r.baseline?.top1)} | | | 1.00× | | |`);
    const kl = r.meanKl?.toFixed(4);
    const ratio = (serializeModel(e.model).byteLength / size).toFixed(2);
    const cells = [e.name, grid, pct(r.top1), pct(r.agreement), kl, `${ratio}×`, e.integer];
    console.log(`| ${cells.join(' | ')} | ${e.seconds.toFixed(1)} |`);
  }
}

async function latency(
  model: ModelProto,
  exports: readonly Export[],
  dims: number[],
  repeats: number,
  runs: number,
  threads: number,
) {
  if (repeats === 0) return;
  const ratios: number[][] = exports.map(() => []);
  for (let i = 0; i < repeats; i++) {
    const [row] = await measureLatency([model, ...exports.map((e) => e.model)], {
      sampleDims: dims,
      threads,
      runs,
      warmup: 5,
    });
    row!.medianMs.slice(1).forEach((ms, j) => ratios[j]!.push(ms / row!.medianMs[0]!));
  }
  console.log(`batch-1 latency vs fp32, ${threads} threads, median of ${runs} interleaved runs:`);
  exports.forEach((e, j) => {
    const list = ratios[j]!.map((r) => r.toFixed(2));
    console.log(`  ${e.name}: ${list.join(' ')}`);
  });
}

await main();
