/**
 * Width pruning of the ViT-Tiny without retraining, measured on all 500 images of
 * `imagenet-val-500` against fp32, calibrated on `imagenet-calib-256` (never on the evaluation
 * images). Prints, for each configuration of the accuracy floors — MLP −30 %, one head of three
 * removed in six blocks, head dimensions −25 % — top-1 with and without compensation, the drop
 * against fp32, the calibration images and seconds, and the MAC ratio.
 *
 *   npx tsx scripts/measure-prune.ts                     # every row, 256 calibration images
 *   npx tsx scripts/measure-prune.ts --calib 64 --val 100 --only mlp
 *   npx tsx scripts/measure-prune.ts --options '{"sequential":false}'   # extra pruneModel options
 *   npx tsx scripts/measure-prune.ts --threads 1 --only heads --options '{"scope":"sensitivity"}'
 *
 * --threads sets onnxruntime's intra-op threads (default 2); --no-plain skips the uncompensated
 * row; --fp32 gives the fp32 top-1 when it is known, to skip its evaluation.
 *
 * --holdout N tunes without the evaluation images: the pruning is fitted on the first
 * (calib − N) calibration images and measured on the last N against fp32 (top-1 agreement and
 * mean KL; the calibration folder has no labels file), so that settings are chosen before
 * the val images are ever run:
 *
 *   npx tsx scripts/measure-prune.ts --holdout 64 --only mlp --no-plain --options '{...}'
 */
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { ModelProto } from 'onnx-buf';
import { openDataset, packageRoot, resolvePreprocess } from '../src/data/index.js';
import { evaluateAccuracy } from '../src/eval/accuracy.js';
import { loadModel } from '../src/onnx/model-io.js';
import { pruneModel, type PruneOptions } from '../src/prune/prune.js';
import { recognizeViT } from '../src/vit/index.js';

const fixtures = join(packageRoot(), '..', 'shared', 'fixtures');
const modelPath = join(fixtures, 'models/vit_tiny_patch16_224/model.opset17.onnx');

interface Held {
  data: Float32Array;
  dims: number[];
  labels: Int32Array;
}

/** The floors' configurations (pruneModel's defaults otherwise). */
const configs: { key: string; name: string; floor: number; options: PruneOptions }[] = [
  { key: 'mlp', name: 'MLP −30 %', floor: 3, options: { mlp: 0.3 } },
  {
    key: 'heads',
    name: 'heads −1 of 3 in 6 blocks',
    floor: 5,
    options: { heads: { count: 1, blocks: 6 } },
  },
  { key: 'headdims', name: 'head dims −25 %', floor: 5, options: { headDims: 0.25 } },
];

async function hold(folder: string, count: number | undefined): Promise<Held[]> {
  const preprocess = await resolvePreprocess(modelPath);
  const dataset = await openDataset(folder, preprocess, count ? { limit: count } : {});
  const held: Held[] = [];
  for await (const b of dataset.batches(16)) {
    held.push({ data: b.data.slice(), dims: [...b.dims], labels: b.labels.slice() });
  }
  return held;
}

async function* stream<T>(items: readonly T[]): AsyncIterable<T> {
  for (const item of items) yield item;
}

let threads = 2;

async function top1(model: ModelProto, val: readonly Held[]): Promise<number> {
  return (await evaluateAccuracy(model, stream(val), { threads })).top1!;
}

const pct = (x: number) => `${(100 * x).toFixed(1)} %`;

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      calib: { type: 'string', default: '256' },
      val: { type: 'string' },
      only: { type: 'string' },
      options: { type: 'string', default: '{}' },
      'no-plain': { type: 'boolean', default: false },
      /** fp32 top-1 on these images when already known (skips its evaluation). */
      fp32: { type: 'string' },
      threads: { type: 'string', default: '2' },
      holdout: { type: 'string' },
    },
  });
  const holdout = Number(values.holdout ?? 0);
  const extra = JSON.parse(values.options) as PruneOptions;
  threads = Number(values.threads);
  const wanted = values.only?.split(',');
  const model = await loadModel(modelPath);
  const structure = recognizeViT(model);
  const all = await hold(join(fixtures, 'images/imagenet-calib-256'), Number(values.calib));
  if (holdout > 0) {
    await measureHeldOut(model, structure, all, holdout, wanted, extra);
    return;
  }
  const calib = all;
  const val = await hold(
    join(fixtures, 'images/imagenet-val-500'),
    Number(values.val) || undefined,
  );
  const fp32 = values.fp32 ? Number(values.fp32) : await top1(model, val);
  const images = val.reduce((n, b) => n + b.labels.length, 0);
  console.log(`fp32 top-1 ${pct(fp32)} on ${images} images of imagenet-val-500`);
  console.log(
    '| configuration | compensation | top-1 | drop | floor | calib images | calib s | MACs |',
  );
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const c of configs.filter((c) => !wanted || wanted.includes(c.key))) {
    const runs: [string, PruneOptions][] = [['default', { ...extra }]];
    if (!values['no-plain']) runs.push(['none', { ...extra, compensation: 'none' }]);
    for (const [label, options] of runs) {
      const started = performance.now();
      const result = await pruneModel(model, structure, {
        ...c.options,
        ...options,
        calibration: stream(calib),
        threads,
      });
      const seconds = (performance.now() - started) / 1000;
      const t = await top1(result.model, val);
      const r = result.report;
      const drop = (fp32 - t) * 100;
      const met = drop <= c.floor ? 'met' : 'not met';
      const cells = [
        c.name,
        label === 'none' ? 'none' : `${r.compensation} (${r.criterion}, ${r.scope})`,
        pct(t),
        `${drop.toFixed(1)}`,
        `≤ ${c.floor} (${met})`,
        `${r.calibrationImages}`,
        seconds.toFixed(1),
        `${(r.macs[1] / r.macs[0]).toFixed(3)}×`,
      ];
      console.log(`| ${cells.join(' | ')} |`);
    }
  }
}

/** Fits on all but the last `count` calibration images and measures on those against fp32. */
async function measureHeldOut(
  model: ModelProto,
  structure: ReturnType<typeof recognizeViT>,
  all: readonly Held[],
  count: number,
  wanted: string[] | undefined,
  extra: PruneOptions,
): Promise<void> {
  const size = all[0]!.labels.length;
  if (count % size !== 0) throw new RangeError(`--holdout must be a multiple of ${size}`);
  const fit = all.slice(0, all.length - count / size);
  const held = all.slice(all.length - count / size);
  const images = fit.reduce((n, b) => n + b.labels.length, 0);
  console.log(`fitted on ${images} calibration images, measured on the other ${count}`);
  console.log('| configuration | options | agreement | mean KL | calib s | MACs |');
  console.log('| --- | --- | --- | --- | --- | --- |');
  for (const c of configs.filter((c) => !wanted || wanted.includes(c.key))) {
    const started = performance.now();
    const result = await pruneModel(model, structure, {
      ...c.options,
      ...extra,
      calibration: stream(fit),
      threads,
    });
    const seconds = (performance.now() - started) / 1000;
    const r = await evaluateAccuracy(result.model, stream(held), { threads, baseline: model });
    const cells = [
      c.name,
      JSON.stringify(extra),
      pct(r.agreement!),
      r.meanKl!.toFixed(4),
      seconds.toFixed(1),
      `${(result.report.macs[1] / result.report.macs[0]).toFixed(3)}×`,
    ];
    console.log(`| ${cells.join(' | ')} |`);
    console.log(`MLP widths: ${result.report.blocks.map((b) => b.mlp[1]).join(' ')}`);
  }
}

await main();
