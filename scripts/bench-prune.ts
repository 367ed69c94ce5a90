/**
 * `npm run bench:prune`: what pruning buys in onnxruntime, measured. Each row runs the real CLI
 * (`vitslim prune` or `vitslim compress`) on the ViT-Tiny in a child process: calibrate on 32
 * images of `imagenet-calib-256` (seed 0; the rows that say so, on all 256), evaluate on
 * `imagenet-val-500` against the fp32 input, and time both models side by side in one process
 * (two sessions alive, interleaved runs). The table sets the measured batch-1 speed-up beside
 * the MAC reduction; "realised" is (speed-up − 1) / (MAC reduction − 1), the share of the time
 * saving the MACs promise that the runtime delivers. Writes bench-results/bench-prune.json and
 * bench-prune.md after every row.
 *
 *   npm run bench:prune                    # every row, all 500 images
 *   npm run bench:prune -- --quick         # 100 images, fewer timed runs
 *   npm run bench:prune -- --only w8a8     # rows whose label contains "w8a8"
 *   npm run bench:prune -- --only "MLP −30 %"   # that row alone (an exact label)
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { packageRoot } from '../src/data/index.js';
import { markdownTable, percent, ratio } from '../src/report/markdown.js';
import { runCli } from './run-cli.js';

const root = packageRoot();
const fixtures = join(root, '..', 'shared', 'fixtures');
const threads = '2';

const { values: flags } = parseArgs({
  options: { quick: { type: 'boolean', default: false }, only: { type: 'string' } },
});

/** MLP pruning with the defaults: greedy reconstruction ranked globally, ridge compensation. */
const mlp30 = ['--mlp', '0.3'];

interface Config {
  label: string;
  /** The kind of change, for the target the row is judged against. */
  kind: 'structured' | 'tokens' | 'low rank' | 'stack';
  command: 'prune' | 'compress';
  args: string[];
  /** Calibration images (default 32). */
  calibCount?: number;
}

const configs: Config[] = [
  { label: 'MLP −30 %', kind: 'structured', command: 'prune', args: mlp30 },
  {
    label: 'MLP −30 % (256 calibration images)',
    kind: 'structured',
    command: 'prune',
    args: mlp30,
    calibCount: 256,
  },
  {
    label: 'MLP −50 %',
    kind: 'structured',
    command: 'prune',
    args: ['--mlp', '0.5'],
  },
  { label: 'heads −1 in 6 blocks', kind: 'structured', command: 'prune', args: ['--heads', '1@6'] },
  {
    label: 'heads −1 in 6 blocks (sensitivity, 256 calibration images)',
    kind: 'structured',
    command: 'prune',
    args: ['--heads', '1@6', '--scope', 'sensitivity'],
    calibCount: 256,
  },
  {
    label: 'heads 3→2 everywhere',
    kind: 'structured',
    command: 'prune',
    args: ['--heads', '1@all'],
  },
  { label: 'head dims −25 %', kind: 'structured', command: 'prune', args: ['--head-dims', '0.25'] },
  { label: 'tokens tome:8', kind: 'tokens', command: 'prune', args: ['--tokens', 'tome:8'] },
  {
    label: 'tokens evit:0.7@3,6,9',
    kind: 'tokens',
    command: 'prune',
    args: ['--tokens', 'evit:0.7@3,6,9'],
  },
  { label: 'rank 0.5 (whitened)', kind: 'low rank', command: 'prune', args: ['--rank', '0.5'] },
  {
    label: 'MLP −30 % + w8a8',
    kind: 'stack',
    command: 'compress',
    args: [...mlp30, '--recipe', 'w8a8'],
  },
  {
    label: 'MLP −30 % + dynamic-int8',
    kind: 'stack',
    command: 'compress',
    args: [...mlp30, '--recipe', 'dynamic-int8'],
  },
  {
    label: 'tome:8 + w8a8',
    kind: 'stack',
    command: 'compress',
    args: ['--tokens', 'tome:8', '--recipe', 'w8a8'],
  },
  {
    label: 'tome:14 + w8a8',
    kind: 'stack',
    command: 'compress',
    args: ['--tokens', 'tome:14', '--recipe', 'w8a8'],
  },
  {
    label: 'evit:0.8 + w8a8',
    kind: 'stack',
    command: 'compress',
    args: ['--tokens', 'evit:0.8@3,6,9', '--recipe', 'w8a8'],
  },
  {
    label: 'evit:0.7 + w8a8',
    kind: 'stack',
    command: 'compress',
    args: ['--tokens', 'evit:0.7@3,6,9', '--recipe', 'w8a8'],
  },
];

interface Row {
  config: string;
  kind: Config['kind'];
  top1: number;
  fp32Top1: number;
  agreement: number;
  macRatio: number;
  parameterRatio: number;
  sizeRatio: number;
  batch1Ratio: number | undefined;
  batch8Ratio: number | undefined;
  /** (speed-up − 1) / (MAC reduction − 1); undefined where the MACs did not change. */
  realised: number | undefined;
  wallSeconds: number;
  peakRssMb: number;
  images: number;
}

interface ReportJson {
  original: { parameters: number; macs: number; bytes: number };
  output: { parameters: number; macs: number; bytes: number };
  peakRssMb: number;
  evaluation: {
    accuracy: { top1: number; agreement: number; images: number; baseline: { top1: number } };
    latency?: { rows: { batch: number; ratio: number }[] };
  };
}

async function benchOne(config: Config): Promise<Row | null> {
  const out = join(root, 'bench-results', 'prune-models', config.label.replace(/\W+/g, '-'));
  const images = join(fixtures, 'images');
  const args = [
    config.command,
    join(fixtures, 'models', 'vit_tiny_patch16_224', 'model.opset17.onnx'),
    ...config.args,
    ...['--calib', join(images, 'imagenet-calib-256')],
    ...['--calib-count', String(config.calibCount ?? 32)],
    ...['--data', join(images, 'imagenet-val-500'), '--threads', threads, '--batch', '8'],
    ...['--latency-runs', flags.quick ? '10' : '20', '--force', '-q', '-o', out],
    ...(flags.quick ? ['--limit', '100'] : []),
  ];
  const run = await runCli(args);
  if (run.code !== 0) {
    process.stderr.write(`bench:prune ${config.label}: failed: ${run.stderr}\n`);
    return null;
  }
  const report = JSON.parse(await readFile(join(out, 'report.json'), 'utf8')) as ReportJson;
  const { accuracy, latency } = report.evaluation;
  const timeRatio = (batch: number) => latency?.rows.find((r) => r.batch === batch)?.ratio;
  const macRatio = report.output.macs / report.original.macs;
  const b1 = timeRatio(1);
  const changed = Math.abs(1 - macRatio) > 1e-6;
  return {
    config: config.label,
    kind: config.kind,
    top1: accuracy.top1,
    fp32Top1: accuracy.baseline.top1,
    agreement: accuracy.agreement,
    macRatio,
    parameterRatio: report.output.parameters / report.original.parameters,
    sizeRatio: report.output.bytes / report.original.bytes,
    batch1Ratio: b1,
    batch8Ratio: timeRatio(8),
    // quantization speeds up without changing MACs: a stack's ratio would mean nothing
    realised:
      b1 !== undefined && changed && config.kind !== 'stack'
        ? (1 / b1 - 1) / (1 / macRatio - 1)
        : undefined,
    wallSeconds: run.seconds,
    peakRssMb: report.peakRssMb,
    images: accuracy.images,
  };
}

/** Whether a row meets its target in the issue; undefined where none applies. */
function target(r: Row): string | undefined {
  const drop = (r.fp32Top1 - r.top1) * 100;
  if (r.kind === 'stack' && r.config.includes('w8a8')) {
    const speedUp = r.batch1Ratio === undefined ? 0 : 1 / r.batch1Ratio;
    const met = speedUp >= 1.8 && drop <= 4;
    return `${met ? 'met' : 'not met'}: ≥ 1.8× within 4 points`;
  }
  if (r.realised === undefined) return undefined;
  if (r.kind === 'structured') return `${r.realised >= 0.75 ? 'met' : 'not met'}: ≥ 75 %`;
  if (r.kind === 'tokens') return `${r.realised >= 0.6 ? 'met' : 'not met'}: ≥ 60 %`;
  return undefined;
}

function markdown(rows: readonly Row[]): string {
  const header = [
    'config',
    'top-1',
    'fp32 top-1',
    'agree',
    'MACs',
    'params',
    'size',
    'b1 time',
    'b1 speed-up',
    'MAC reduction',
    'realised',
    'target',
    'b8 time',
    'wall s',
    'peak MB',
    'images',
  ];
  return markdownTable(
    header,
    rows.map((r) => [
      r.config,
      percent(r.top1),
      percent(r.fp32Top1),
      percent(r.agreement),
      ratio(r.macRatio),
      ratio(r.parameterRatio),
      ratio(r.sizeRatio),
      ratio(r.batch1Ratio),
      ratio(r.batch1Ratio === undefined ? undefined : 1 / r.batch1Ratio),
      ratio(1 / r.macRatio),
      r.realised === undefined ? undefined : `${Math.round(r.realised * 100)} %`,
      target(r),
      ratio(r.batch8Ratio),
      r.wallSeconds.toFixed(0),
      r.peakRssMb,
      r.images,
    ]),
  );
}

async function main(): Promise<void> {
  const dir = join(root, 'bench-results');
  await mkdir(dir, { recursive: true });
  const meta = {
    date: new Date().toISOString(),
    node: process.version,
    threads: Number(threads),
    quick: flags.quick,
    realised: '(speed-up − 1) / (MAC reduction − 1), speed-up = fp32 time / candidate time',
  };
  const rows: Row[] = [];
  // a label given exactly picks that row alone; otherwise every label containing the text
  const exact = configs.filter((c) => c.label === flags.only);
  const chosen =
    exact.length > 0 ? exact : configs.filter((c) => !flags.only || c.label.includes(flags.only));
  for (const config of chosen) {
    process.stderr.write(`bench:prune: ${config.label}\n`);
    const row = await benchOne(config);
    if (!row) continue;
    rows.push(row);
    // written after every row: a long run stopped half-way keeps what it measured
    await writeFile(join(dir, 'bench-prune.json'), `${JSON.stringify({ meta, rows }, null, 2)}\n`);
    await writeFile(join(dir, 'bench-prune.md'), `${markdown(rows)}\n`);
  }
  process.stdout.write(`${markdown(rows)}\n`);
}

await main();
