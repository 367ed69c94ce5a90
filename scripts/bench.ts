/**
 * `npm run bench`: the main job's numbers, measured. Each configuration runs the real CLI in a
 * child process (so wall time and peak memory are its own), quantizing and evaluating against
 * the fp32 input in the same process: accuracy, agreement, latency ratios measured side by
 * side, size, integer kernels. Writes bench-results/bench.json and bench.md.
 *
 *   npm run bench                 # every model and recipe
 *   npm run bench -- --quick      # ViT-Tiny opset 17 only, 100 images
 */
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { findDefaults, packageRoot } from '../src/data/index.js';
import { markdownTable, percent, ratio } from '../src/report/markdown.js';
import { runCli } from './run-cli.js';

const root = packageRoot();
const fixtures = join(root, '..', 'shared', 'fixtures');
const quick = process.argv.includes('--quick');
const threads = '2';

interface Target {
  name: string;
  model: string;
  calib: string;
  data: string;
  limit?: number;
}

function targets(): Target[] {
  if (!existsSync(fixtures)) {
    const d = findDefaults();
    return [{ name: 'mnist (embedded)', model: d.model, calib: d.calib, data: d.val }];
  }
  const vit = join(fixtures, 'models', 'vit_tiny_patch16_224');
  const images = join(fixtures, 'images');
  const imagenet = (opset: number): Target => ({
    name: `vit-tiny opset ${opset}`,
    model: join(vit, `model.opset${opset}.onnx`),
    calib: join(images, 'imagenet-calib-256'),
    data: join(images, 'imagenet-val-500'),
    ...(quick ? { limit: 100 } : {}),
  });
  const mnist: Target = {
    name: 'mnist vit (10,000 digits)',
    model: join(fixtures, 'models', 'vit4mnist', 'model.opset17.onnx'),
    calib: join(root, 'assets', 'mnist-calib-256'),
    data: join(fixtures, 'mnist'),
  };
  return quick ? [imagenet(17)] : [imagenet(17), imagenet(13), mnist];
}

const configs: { label: string; args: string[]; opset13?: boolean }[] = [
  { label: 'w8a8', args: ['--recipe', 'w8a8'], opset13: true },
  { label: 'dynamic-int8', args: ['--recipe', 'dynamic-int8'], opset13: true },
  { label: 'int4-weights', args: ['--recipe', 'int4-weights'], opset13: true },
  { label: 'sim w8a8 min-max', args: ['--bits', 'w8a8'] },
  { label: 'sim w6a6 min-max', args: ['--bits', 'w6a6'] },
  { label: 'sim w4a4 min-max', args: ['--bits', 'w4a4'] },
  { label: 'sim w4a4 omse', args: ['--bits', 'w4a4', '--observer', 'omse'] },
];

interface Row {
  model: string;
  config: string;
  top1: number | null;
  top5: number | null;
  fp32Top1: number | null;
  agreement?: number;
  batch1Ratio?: number;
  batchNRatio?: number;
  sizeRatio: number;
  integerKernels?: string;
  calibrationSeconds?: number;
  wallSeconds: number;
  peakRssMb?: number;
  images: number;
}

async function benchOne(target: Target, config: (typeof configs)[number]): Promise<Row | null> {
  const out = join(
    root,
    'bench-results',
    'models',
    `${target.name}-${config.label}`.replace(/\W+/g, '-'),
  );
  const args = [
    'quantize',
    target.model,
    ...config.args,
    '--calib',
    target.calib,
    '--calib-count',
    '32',
    '--data',
    target.data,
    '--threads',
    threads,
    '--batch',
    '16',
    '--latency-runs',
    quick ? '10' : '30',
    '--force',
    '-q',
    '-o',
    out,
    ...(target.limit ? ['--limit', String(target.limit)] : []),
  ];
  const run = await runCli(args);
  if (run.code !== 0) {
    process.stderr.write(`${target.name} ${config.label}: failed: ${run.stderr}\n`);
    return null;
  }
  const report = JSON.parse(await readFile(join(out, 'report.json'), 'utf8'));
  const e = report.evaluation;
  const rows = e.latency?.rows ?? [];
  return {
    model: target.name,
    config: config.label,
    top1: e.accuracy.top1,
    top5: e.accuracy.top5,
    fp32Top1: e.accuracy.baseline.top1,
    agreement: e.accuracy.agreement,
    batch1Ratio: rows.find((r: { batch: number }) => r.batch === 1)?.ratio,
    batchNRatio: rows.find((r: { batch: number }) => r.batch !== 1)?.ratio,
    sizeRatio: report.output.bytes / report.input.bytes,
    integerKernels: report.kernels
      ? `${report.kernels.integer}/${report.kernels.layers.length}`
      : undefined,
    calibrationSeconds: report.calibration?.seconds,
    wallSeconds: run.seconds,
    peakRssMb: report.peakRssMb,
    images: e.accuracy.images,
  };
}

const results: Row[] = [];
for (const target of targets()) {
  for (const config of configs) {
    if (target.name.includes('opset 13') && !config.opset13) continue;
    process.stderr.write(`bench: ${target.name} ${config.label}\n`);
    const row = await benchOne(target, config);
    if (row) results.push(row);
  }
}

const dir = join(root, 'bench-results');
await mkdir(dir, { recursive: true });
const meta = {
  date: new Date().toISOString(),
  threads: Number(threads),
  quick,
  node: process.version,
};
await writeFile(join(dir, 'bench.json'), `${JSON.stringify({ meta, results }, null, 2)}\n`);
const table = markdownTable(
  [
    'model',
    'config',
    'top-1',
    'fp32 top-1',
    'agree',
    'b1 time',
    'b16 time',
    'size',
    'int kernels',
    'calib s',
    'wall s',
    'peak MB',
  ],
  results.map((r) => [
    r.model,
    r.config,
    percent(r.top1),
    percent(r.fp32Top1),
    percent(r.agreement),
    ratio(r.batch1Ratio),
    ratio(r.batchNRatio),
    ratio(r.sizeRatio),
    r.integerKernels,
    r.calibrationSeconds?.toFixed(1),
    r.wallSeconds.toFixed(0),
    r.peakRssMb,
  ]),
);
await writeFile(join(dir, 'bench.md'), `${table}\n`);
process.stdout.write(`${table}\n\nwrote ${join(dir, 'bench.json')}\n`);
