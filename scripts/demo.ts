/**
 * `npm run demo`: the main job on the default model and images. With ../shared/fixtures beside
 * the project that is the ImageNet ViT-Tiny (calibrated on imagenet-calib-256, evaluated on
 * imagenet-val-500); without it, the MNIST ViT and digits embedded in assets/.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { main } from '../src/cli/main.js';
import { findDefaults, packageRoot } from '../src/data/index.js';

const defaults = findDefaults();
const out = join(packageRoot(), 'out', 'demo-w8a8');
process.stdout.write(`vitslim demo on the ${defaults.description}\n`);
process.stdout.write(`model: ${defaults.model}\n\n`);

const code = await main([
  process.argv[0]!,
  'vitslim',
  'quantize',
  defaults.model,
  '--recipe',
  'w8a8',
  '--calib',
  defaults.calib,
  '--calib-count',
  '32',
  '--data',
  defaults.val,
  '--batch',
  '16',
  '--latency-runs',
  '20',
  '--force',
  '-o',
  out,
  ...process.argv.slice(2),
]);
if (code !== 0) process.exit(code);

const report = JSON.parse(await readFile(join(out, 'report.json'), 'utf8'));
const e = report.evaluation;
const pct = (x: number) => `${(x * 100).toFixed(1)} %`;
const batch1 = e.latency?.rows.find((r: { batch: number }) => r.batch === 1);
process.stdout.write(
  [
    '',
    `images evaluated: ${e.accuracy.images} (${e.data.path})`,
    `fp32 top-1: ${pct(e.accuracy.baseline.top1)}   top-5: ${pct(e.accuracy.baseline.top5)}`,
    `w8a8 top-1: ${pct(e.accuracy.top1)}   top-5: ${pct(e.accuracy.top5)}   ` +
      `agreement with fp32: ${pct(e.accuracy.agreement)}`,
    `integer kernels: ${report.kernels.integer} of ${report.kernels.layers.length} linear layers`,
    batch1 ? `batch-1 latency: ${batch1.ratio.toFixed(2)}× fp32 (measured side by side)` : '',
    `size: ${(report.output.bytes / 1e6).toFixed(2)} MB vs ${(report.input.bytes / 1e6).toFixed(2)} MB`,
    `report: ${join(out, 'report.md')}`,
    '',
  ].join('\n'),
);
