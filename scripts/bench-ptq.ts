/**
 * `npm run bench:ptq`: post-training quantization methods on the fixtures, measured beside what
 * the methods' own code gives on the same model and images (`../shared/reference/
 * reference-results.md`) and the papers' numbers for the closest models. Each row runs in its
 * own child process, so its wall time and peak memory are its own: calibrate on 32 images of
 * `imagenet-calib-256` (sampleDataset, seed 0), evaluate on all 500 of `imagenet-val-500`
 * against the fp32 model. Writes bench-results/bench-ptq.json and bench-ptq.md.
 *
 *   npx tsx scripts/bench-ptq.ts              # every row (npm run bench:ptq once wired)
 *   npx tsx scripts/bench-ptq.ts --quick      # ViT-Tiny opset 17, W6A6 and W4A4, 100 images
 *   npx tsx scripts/bench-ptq.ts --only repq+erq,repq+gptq   # the rows of these methods only
 *   npx tsx scripts/bench-ptq.ts --bits w3a3,w4a8 --target opset 17   # these widths, this graph
 *
 * Rows measured by an earlier run are kept in the table until a run measures them again, so the
 * grid can be filled over several shorter runs; `--fresh` starts an empty table.
 */
import { spawn } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ModelProto } from 'onnx-buf';
import { openDataset, packageRoot, resolvePreprocess, sampleDataset } from '../src/data/index.js';
import type { Dataset } from '../src/data/index.js';
import { evaluateAccuracy } from '../src/eval/accuracy.js';
import { loadModel } from '../src/onnx/model-io.js';
import { calibrate } from '../src/quant/calibrate.js';
import { quantizeAdaLog } from '../src/quant/methods/adalog-method.js';
import { quantizeFloatFormat } from '../src/quant/methods/float-format.js';
import { quantizeFqVit } from '../src/quant/methods/fqvit.js';
import { quantizeIsVit } from '../src/quant/methods/isvit.js';
import { quantizePtq4Vit } from '../src/quant/methods/ptq4vit.js';
import { quantizeRepQ } from '../src/quant/methods/repq.js';
import { simulateQuantization } from '../src/quant/simulate.js';
import { recognizeViT } from '../src/vit/index.js';
import { markdownTable, percent } from '../src/report/markdown.js';

const root = packageRoot();
const fixtures = join(root, '..', 'shared', 'fixtures');
const threads = 2;

type Method =
  | 'fp32'
  | 'minmax'
  | 'fqvit'
  | 'repq'
  | 'ptq4vit'
  | 'ptq4vit-noisyquant'
  | 'repq+gptq'
  | 'repq+erq'
  | 'fp'
  | 'adalog'
  | 'adalog+gptq'
  | 'adalog+erq'
  | 'isvit';

interface RowSpec {
  target: 'vit-tiny opset 17' | 'vit-tiny opset 13' | 'mnist vit';
  method: Method;
  bits?: string;
  limit?: number;
}

interface Row extends RowSpec {
  top1: number | null;
  top5: number | null;
  fp32Top1: number | null;
  agreement: number | null;
  images: number;
  calibrationSeconds: number | null;
  wallSeconds: number;
  peakRssMb: number;
  /** When the row was measured (rows of earlier runs are kept until measured again). */
  date?: string;
}

/** Top-1 of the methods' own code on this ViT-Tiny (reference-results.md). */
const referenceTop1: Record<string, number> = {
  fp32: 83.0,
  'minmax w8a8': 80.8,
  'minmax w6a6': 63.2,
  'minmax w4a4': 0.0,
  'repq w8a8': 81.0,
  'repq w6a6': 79.0,
  'repq w4a4': 29.6,
};

/** Published top-1 (quantized / fp32) of PTQ4ViT (notes §1(7); W4A4 as others reproduced it). */
const publishedPtq4Vit: Record<string, string> = {
  'fqvit w8a8': 'DeiT-T 71.61 / 72.21 (attention 8 bits), 71.07 (4 bits)',
  'fqvit w6a6': 'DeiT-T 58.66 / 72.21, ViT-S 4.26 / 81.39 (as I&S-ViT reports it)',
  'fqvit w4a4': 'DeiT-T 0.10 / 72.21',
  'ptq4vit w8a8': 'ViT-S 81.00 / 81.39',
  'ptq4vit w6a6': 'DeiT-T 69.68 / 72.21, ViT-S 78.63 / 81.39',
  'ptq4vit w4a4': 'DeiT-T 36.96 / 72.21, ViT-S 42.57 / 81.39',
};

/** Published top-1 (fp32 / quantized) of RepQ-ViT on DeiT-T and ViT-S (reference notes §6, §19). */
const publishedTop1: Record<string, string> = {
  'repq w6a6': 'DeiT-T 70.76 / 72.21, ViT-S 80.43 / 81.39',
  'repq w4a4': 'DeiT-T 57.43 / 72.21, ViT-S 65.05 / 81.39',
  'repq+gptq w4a4': 'DeiT-T 58.96 / 72.21, ViT-S 67.59 / 81.39 (GPTQ* in ERQ)',
  'repq+erq w4a4': 'DeiT-T 60.29 / 72.21, ViT-S 68.91 / 81.39 (ERQ, ICML)',
};

/** Published top-1 (quantized / fp32) of LLM-FP4, AdaLog and I&S-ViT (notes §9, §12, §14). */
const publishedFloatAndLog: Record<string, string> = {
  'fp w6a6': 'DeiT-S 79.5 / 79.9, ViT-S 81.1 / 81.4 (FPQ, Hessian metric)',
  'fp w4a4': 'DeiT-S 75.0 / 79.9, ViT-S 73.2 / 81.4 (FPQ, Hessian metric)',
  'adalog w6a6': 'DeiT-T 71.38 / 72.21, ViT-S 80.91 / 81.39',
  'adalog w4a4': 'DeiT-T 63.52 / 72.21, ViT-S 72.75 / 81.39',
  'adalog w3a3': 'DeiT-T 31.56 / 72.21, ViT-S 13.88 / 81.39',
  'isvit w6a6': 'DeiT-T 70.85 / 72.21, ViT-S 80.43 / 81.39 (with reconstruction)',
  'isvit w4a4': 'DeiT-T 65.21 / 72.21, ViT-S 74.87 / 81.39 (with reconstruction)',
  'isvit w3a3': 'DeiT-T 41.52 / 72.21, ViT-S 45.16 / 81.39 (with reconstruction)',
};

/** The formats of `fp` rows: E4M3 at 8 bits, E3M2 at 6, E2M1 at 4 (no 3-bit format, no W3A3). */
const fpFormat = { 8: 'e4m3', 6: 'e3m2', 4: 'e2m1' } as const;

/** The bit widths of the grid. */
const allBits = ['w8a8', 'w6a6', 'w4a4', 'w3a3', 'w4a8'] as const;

function targetPaths(target: RowSpec['target']) {
  const vit = join(fixtures, 'models', 'vit_tiny_patch16_224');
  const images = join(fixtures, 'images');
  if (target === 'mnist vit') {
    return {
      model: join(fixtures, 'models', 'vit4mnist', 'model.opset17.onnx'),
      calib: join(root, 'assets', 'mnist-calib-256'),
      data: join(fixtures, 'mnist'),
    };
  }
  const opset = target.endsWith('13') ? 13 : 17;
  return {
    model: join(vit, `model.opset${opset}.onnx`),
    calib: join(images, 'imagenet-calib-256'),
    data: join(images, 'imagenet-val-500'),
  };
}

function rowSpecs(quick: boolean): RowSpec[] {
  if (quick) {
    const t = 'vit-tiny opset 17' as const;
    return [
      { target: t, method: 'repq', bits: 'w6a6', limit: 100 },
      { target: t, method: 'repq', bits: 'w4a4', limit: 100 },
    ];
  }
  const tiny = 'vit-tiny opset 17' as const;
  const specs: RowSpec[] = [{ target: tiny, method: 'fp32' }];
  const methods: Method[] = [
    'minmax',
    'fqvit',
    'ptq4vit',
    'repq',
    'repq+gptq',
    'repq+erq',
    'fp',
    'adalog',
    'adalog+gptq',
    'adalog+erq',
    'isvit',
  ];
  // every method at every width of the grid on the ViT-Tiny opset 17
  for (const method of methods) {
    for (const bits of allBits) {
      if (method !== 'fp' || bits !== 'w3a3') specs.push({ target: tiny, method, bits });
    }
  }
  specs.push({ target: tiny, method: 'ptq4vit-noisyquant', bits: 'w4a4' });
  // the other graphs at W4A4
  for (const method of methods) {
    if (method === 'fqvit') continue;
    specs.push({ target: 'vit-tiny opset 13', method, bits: 'w4a4' });
    specs.push({ target: 'mnist vit', method, bits: 'w4a4' });
  }
  return specs;
}

function parseBits(bits: string): { weightBits: number; activationBits: number } {
  const match = /^w(\d)a(\d)$/.exec(bits);
  if (!match) throw new Error(`bits must look like w4a4, got ${bits}`);
  return { weightBits: Number(match[1]), activationBits: Number(match[2]) };
}

/** The quantized model of a row and its calibration seconds (the fp32 model for fp32). */
async function quantized(spec: RowSpec, model: ModelProto, calib: Dataset) {
  if (spec.method === 'fp32' || !spec.bits) return { model, seconds: null };
  const structure = recognizeViT(model);
  const started = performance.now();
  const bits = parseBits(spec.bits);
  if (spec.method === 'repq' || spec.method === 'repq+gptq' || spec.method === 'repq+erq') {
    const weights = ({ repq: 'rtn', 'repq+gptq': 'gptq', 'repq+erq': 'erq' } as const)[spec.method];
    const options = { ...bits, threads, weights };
    const result = await quantizeRepQ(model, structure, calib.batches(32), options);
    return { model: result.model, seconds: (performance.now() - started) / 1000 };
  }
  if (spec.method === 'fp') {
    const weightFormat = fpFormat[bits.weightBits as keyof typeof fpFormat];
    const activationFormat = fpFormat[bits.activationBits as keyof typeof fpFormat];
    const options = { weightFormat, activationFormat, threads };
    const result = await quantizeFloatFormat(model, structure, calib.batches(32), options);
    return { model: result.model, seconds: (performance.now() - started) / 1000 };
  }
  if (spec.method === 'adalog' || spec.method === 'isvit') {
    const quantize = spec.method === 'adalog' ? quantizeAdaLog : quantizeIsVit;
    const result = await quantize(model, structure, calib.batches(32), { ...bits, threads });
    return { model: result.model, seconds: (performance.now() - started) / 1000 };
  }
  if (spec.method === 'adalog+gptq' || spec.method === 'adalog+erq') {
    const weights = spec.method === 'adalog+gptq' ? 'gptq' : 'erq';
    const options = { ...bits, threads, weights } as const;
    const result = await quantizeAdaLog(model, structure, calib.batches(32), options);
    return { model: result.model, seconds: (performance.now() - started) / 1000 };
  }
  if (spec.method === 'fqvit') {
    const result = await quantizeFqVit(model, structure, calib.batches(32), { ...bits, threads });
    return { model: result.model, seconds: (performance.now() - started) / 1000 };
  }
  if (spec.method === 'ptq4vit' || spec.method === 'ptq4vit-noisyquant') {
    const noisyQuant = spec.method === 'ptq4vit' ? 'off' : 'linear';
    const options = { ...bits, noisyQuant, threads } as const;
    const result = await quantizePtq4Vit(model, structure, calib.batches(32), options);
    return { model: result.model, seconds: (performance.now() - started) / 1000 };
  }
  const calibration = await calibrate(model, structure, calib.batches(32), { threads });
  const simulated = simulateQuantization(model, structure, calibration, {
    ...bits,
    activationForm: 'float',
  });
  return { model: simulated.model, seconds: (performance.now() - started) / 1000 };
}

/** One row, in this process (the child's side). */
async function runRow(spec: RowSpec): Promise<Row> {
  const started = performance.now();
  const paths = targetPaths(spec.target);
  const model = await loadModel(paths.model);
  const preprocess = await resolvePreprocess(paths.model);
  const calib = sampleDataset(await openDataset(paths.calib, preprocess), 32, 0);
  const { model: candidate, seconds } = await quantized(spec, model, calib);
  const data = await openDataset(paths.data, preprocess, spec.limit ? { limit: spec.limit } : {});
  const accuracy = await evaluateAccuracy(candidate, data.batches(50), {
    threads,
    ...(spec.method === 'fp32' ? {} : { baseline: model }),
  });
  return {
    ...spec,
    top1: accuracy.top1,
    top5: accuracy.top5,
    fp32Top1: accuracy.baseline?.top1 ?? accuracy.top1,
    agreement: accuracy.agreement ?? null,
    images: accuracy.images,
    calibrationSeconds: seconds,
    wallSeconds: (performance.now() - started) / 1000,
    peakRssMb: process.resourceUsage().maxRSS / 1024,
  };
}

/** Runs one row in a child process and reads its JSON line. */
function childRow(spec: RowSpec): Promise<Row | null> {
  return new Promise((resolve) => {
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', join(root, 'scripts', 'bench-ptq.ts'), '--row', JSON.stringify(spec)],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code) => {
      if (code === 0) return resolve(JSON.parse(stdout.trim().split('\n').pop()!) as Row);
      process.stderr.write(`bench:ptq ${label(spec)} failed: ${stderr}\n`);
      resolve(null);
    });
  });
}

function label(spec: RowSpec): string {
  return spec.method === 'fp32' ? 'fp32' : `${spec.method} ${spec.bits}`;
}

function markdown(rows: readonly Row[]): string {
  const header = [
    'model',
    'method',
    'top-1',
    'top-5',
    'fp32 top-1',
    'agreement',
    'reference code',
    'published (quantized / fp32)',
    'calibration',
    'peak memory',
    'images',
  ];
  return markdownTable(
    header,
    rows.map((r) => {
      const onTiny = r.target.startsWith('vit-tiny');
      const reference = onTiny ? referenceTop1[label(r)] : undefined;
      return [
        r.target,
        label(r),
        percent(r.top1),
        percent(r.top5),
        percent(r.fp32Top1),
        percent(r.agreement),
        reference === undefined ? undefined : `${reference.toFixed(1)} %`,
        onTiny
          ? (publishedTop1[label(r)] ??
            publishedPtq4Vit[label(r)] ??
            publishedFloatAndLog[label(r)])
          : undefined,
        r.calibrationSeconds === null ? undefined : `${r.calibrationSeconds.toFixed(1)} s`,
        `${Math.round(r.peakRssMb)} MB`,
        r.images,
      ];
    }),
  );
}

/** The value of `--flag a,b,c` as a list, or undefined without the flag. */
function listFlag(flag: string): string[] | undefined {
  const at = process.argv.indexOf(flag);
  return at >= 0 ? process.argv[at + 1]!.split(',') : undefined;
}

function rowKey(spec: RowSpec): string {
  return `${spec.target} | ${label(spec)} | ${spec.limit ?? 'all'}`;
}

/** Rows of an earlier run of the same grid (quick or full), to be completed by this one. */
async function earlierRows(file: string, quick: boolean): Promise<Row[]> {
  try {
    const saved = JSON.parse(await readFile(file, 'utf8')) as {
      meta?: { quick?: boolean };
      rows?: Row[];
    };
    return saved.meta?.quick === quick && Array.isArray(saved.rows) ? saved.rows : [];
  } catch {
    return [];
  }
}

async function main(): Promise<void> {
  const at = process.argv.indexOf('--row');
  if (at >= 0) {
    const row = await runRow(JSON.parse(process.argv[at + 1]!) as RowSpec);
    process.stdout.write(`${JSON.stringify(row)}\n`);
    return;
  }
  const quick = process.argv.includes('--quick');
  const dir = join(root, 'bench-results');
  await mkdir(dir, { recursive: true });
  const file = join(dir, 'bench-ptq.json');
  const meta = { date: new Date().toISOString(), node: process.version, threads, quick };
  const methods = listFlag('--only');
  const widths = listFlag('--bits');
  const targets = listFlag('--target');
  const grid = rowSpecs(quick);
  const chosen = grid.filter(
    (s) =>
      (!methods || methods.includes(s.method)) &&
      (!widths || !s.bits || widths.includes(s.bits)) &&
      (!targets || targets.some((t) => s.target.includes(t))),
  );
  // rows measured by an earlier run stay until this run measures them again (--fresh drops them)
  const measured = new Map<string, Row>();
  if (!process.argv.includes('--fresh')) {
    for (const row of await earlierRows(file, quick)) measured.set(rowKey(row), row);
  }
  const table = () => grid.flatMap((s) => measured.get(rowKey(s)) ?? []);
  for (const spec of chosen) {
    process.stderr.write(`bench:ptq: ${spec.target} ${label(spec)}\n`);
    const row = await childRow(spec);
    if (!row) continue;
    measured.set(rowKey(spec), { ...row, date: new Date().toISOString() });
    // written after every row: a long run stopped half-way keeps what it measured
    await writeFile(file, `${JSON.stringify({ meta, rows: table() }, null, 2)}\n`);
    await writeFile(join(dir, 'bench-ptq.md'), `${markdown(table())}\n`);
  }
  process.stdout.write(`${markdown(table())}\n`);
}

await main();
