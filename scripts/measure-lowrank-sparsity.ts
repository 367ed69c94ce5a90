/**
 * Low-rank factorization and sparsity of the ViT-Tiny (opset 17) without retraining, on the
 * images of `imagenet-val-500` against fp32, calibrated on a seeded sample of
 * `imagenet-calib-256` (never on the evaluation images).
 *
 * Low rank (MLP layers by default): top-1, the MAC ratio and the batch-1 speed-up, measured
 * with fp32 and the factored model side by side in one session pair (two sessions at a time:
 * more alive at once bias the measurement). Sparsity (every block layer): top-1, the zeros, the
 * mean relative layer-output error on the calibration inputs and the gzip size ratio; with
 * `--sparse-latency`, also the batch-1 speed-up (expected about 1×: onnxruntime does not skip
 * zeros).
 *
 *   npx tsx scripts/measure-lowrank-sparsity.ts                       # every row
 *   npx tsx scripts/measure-lowrank-sparsity.ts --only lowrank --val 100 --ranks 0.5,0.9
 *   npx tsx scripts/measure-lowrank-sparsity.ts --only sparsity --sparse-latency --patterns 2:4
 *   npx tsx scripts/measure-lowrank-sparsity.ts --only lowrank --options '{"allocation":"uniform"}'
 *
 * The rows are printed as Markdown tables and written to bench-results/lowrank-sparsity.json.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { ModelProto } from 'onnx-buf';
import { openDataset, packageRoot, resolvePreprocess, sampleDataset } from '../src/data/index.js';
import { evaluateAccuracy } from '../src/eval/accuracy.js';
import { measureLatency } from '../src/eval/latency.js';
import { loadModel } from '../src/onnx/model-io.js';
import {
  factorizeModel,
  type FactorizeOptions,
  type LowRankMethod,
} from '../src/prune/low-rank.js';
import { sparsifyModel, type SparsifyOptions } from '../src/prune/sparsity.js';
import { recognizeViT, type ViTStructure } from '../src/vit/index.js';

const fixtures = join(packageRoot(), '..', 'shared', 'fixtures');
const modelPath = join(fixtures, 'models/vit_tiny_patch16_224/model.opset17.onnx');
const threads = 2;

interface Held {
  data: Float32Array;
  dims: number[];
  labels: Int32Array;
}

interface Settings {
  model: ModelProto;
  structure: ViTStructure;
  val: Held[];
  calib: Held[];
  runs: number;
  /** More factorizeModel options (allocation, centre, damping, roundTo). */
  lowRank: Partial<FactorizeOptions>;
}

async function hold(folder: string, count: number, seed?: number): Promise<Held[]> {
  const opened = await openDataset(folder, await resolvePreprocess(modelPath));
  const dataset =
    seed === undefined
      ? opened.subset(
          Array.from({ length: Math.min(count, opened.size) }, (_, i) => i),
          'val',
        )
      : sampleDataset(opened, count, seed);
  const held: Held[] = [];
  for await (const b of dataset.batches(16)) {
    held.push({ data: b.data.slice(), dims: [...b.dims], labels: b.labels.slice() });
  }
  return held;
}

function* each<T>(items: readonly T[]): Iterable<T> {
  yield* items;
}

async function* stream<T>(items: readonly T[]): AsyncIterable<T> {
  yield* items;
}

async function top1(model: ModelProto, val: readonly Held[]): Promise<number> {
  return (await evaluateAccuracy(model, stream(val), { threads })).top1!;
}

/** fp32 ms / candidate ms at batch 1, the two sessions interleaved. */
async function speedUp(fp32: ModelProto, candidate: ModelProto, runs: number): Promise<number> {
  const [row] = await measureLatency([fp32, candidate], {
    sampleDims: [3, 224, 224],
    batchSizes: [1],
    threads,
    warmup: 5,
    runs,
  });
  return row!.medianMs[0]! / row!.medianMs[1]!;
}

const pct = (x: number) => `${(100 * x).toFixed(1)} %`;

async function lowRankRows(s: Settings, ranks: number[], layers: string[]) {
  const rows: Record<string, unknown>[] = [];
  console.log(`\nlow rank of ${layers.join(', ')}`);
  console.log('| rank | method | top-1 | layer params | MACs | speed-up b1 | factored | s |');
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const rank of ranks) {
    for (const method of ['svd', 'whitened'] as LowRankMethod[]) {
      const started = performance.now();
      const { model, report } = await factorizeModel(s.model, s.structure, {
        ...s.lowRank,
        rank,
        method,
        layers,
        calibration: method === 'whitened' ? each(s.calib) : undefined,
        threads,
      });
      const seconds = (performance.now() - started) / 1000;
      const accuracy = await top1(model, s.val);
      const speed = await speedUp(s.model, model, s.runs);
      const factored = report.layers.filter((l) => l.rank !== null).length;
      const row = {
        rank,
        method,
        top1: accuracy,
        layerParameterRatio: report.layerParameters[1] / report.layerParameters[0],
        macRatio: report.macs[1] / report.macs[0],
        speedUp: speed,
        factored: `${factored}/${report.layers.length}`,
        ranks: report.layers.map((l) => l.rank),
        seconds,
      };
      rows.push(row);
      const cells = [
        rank,
        method,
        pct(accuracy),
        row.layerParameterRatio.toFixed(3),
        `${row.macRatio.toFixed(3)}×`,
        `${speed.toFixed(2)}×`,
        row.factored,
        seconds.toFixed(0),
      ];
      console.log(`| ${cells.join(' | ')} |`);
    }
  }
  return rows;
}

const sparsityConfigs: Pick<SparsifyOptions, 'pattern' | 'sparsity'>[] = [
  { pattern: 'unstructured', sparsity: 0.5 },
  { pattern: '2:4' },
];

async function sparsityRows(s: Settings, latency: boolean, patterns: string[]) {
  const rows: Record<string, unknown>[] = [];
  console.log('\nsparsity of every block layer');
  console.log('| pattern | method | top-1 | zeros | output error | gzip ratio | speed-up b1 | s |');
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const config of sparsityConfigs.filter((c) => patterns.includes(c.pattern))) {
    for (const method of ['magnitude', 'wanda', 'sparsegpt'] as const) {
      const started = performance.now();
      const { model, report } = await sparsifyModel(s.model, s.structure, {
        ...config,
        method,
        calibration: each(s.calib),
        threads,
      });
      const seconds = (performance.now() - started) / 1000;
      const accuracy = await top1(model, s.val);
      const speed = latency ? await speedUp(s.model, model, s.runs) : undefined;
      const errors = report.layers.map((l) => l.outputError ?? 0);
      const row = {
        pattern: report.pattern,
        method,
        top1: accuracy,
        zeros: report.zeros,
        meanOutputError: errors.reduce((a, b) => a + b, 0) / errors.length,
        gzipBytes: report.size.gzipBytes,
        gzipRatio: report.size.gzipRatio,
        speedUp: speed,
        seconds,
      };
      rows.push(row);
      const cells = [
        report.pattern,
        method,
        pct(accuracy),
        pct(report.zeros),
        row.meanOutputError.toFixed(4),
        row.gzipRatio.toFixed(3),
        speed === undefined ? '–' : `${speed.toFixed(2)}×`,
        seconds.toFixed(0),
      ];
      console.log(`| ${cells.join(' | ')} |`);
    }
  }
  return rows;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      calib: { type: 'string', default: '64' },
      seed: { type: 'string', default: '0' },
      val: { type: 'string', default: '500' },
      only: { type: 'string' },
      ranks: { type: 'string', default: '0.5,0.75' },
      layers: { type: 'string', default: 'blocks.*.mlp' },
      runs: { type: 'string', default: '30' },
      'sparse-latency': { type: 'boolean', default: false },
      options: { type: 'string', default: '{}' },
      patterns: { type: 'string', default: 'unstructured,2:4' },
    },
  });
  const model = await loadModel(modelPath);
  const structure = recognizeViT(model);
  const val = await hold(join(fixtures, 'images/imagenet-val-500'), Number(values.val));
  const calibFolder = join(fixtures, 'images/imagenet-calib-256');
  const calib = await hold(calibFolder, Number(values.calib), Number(values.seed));
  const lowRank = JSON.parse(values.options) as Partial<FactorizeOptions>;
  const settings: Settings = { model, structure, val, calib, runs: Number(values.runs), lowRank };
  const fp32 = await top1(model, val);
  const images = val.reduce((n, b) => n + b.labels.length, 0);
  const calibImages = calib.reduce((n, b) => n + b.labels.length, 0);
  console.log(`fp32 top-1 ${pct(fp32)} on ${images} images of imagenet-val-500`);
  console.log(`calibration: ${calibImages} images of imagenet-calib-256, seed ${values.seed}`);

  const results: Record<string, unknown> = {
    fp32,
    images,
    calibImages,
    seed: values.seed,
    lowRankOptions: lowRank,
  };
  if (!values.only || values.only === 'lowrank') {
    const ranks = values.ranks.split(',').map(Number);
    results.lowRank = await lowRankRows(settings, ranks, values.layers.split(','));
  }
  if (!values.only || values.only === 'sparsity') {
    const patterns = values.patterns.split(',');
    results.sparsity = await sparsityRows(settings, values['sparse-latency'], patterns);
  }
  const folder = join(packageRoot(), 'bench-results');
  await mkdir(folder, { recursive: true });
  await writeFile(join(folder, 'lowrank-sparsity.json'), `${JSON.stringify(results, null, 2)}\n`);
}

await main();
