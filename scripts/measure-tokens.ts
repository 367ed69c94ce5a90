/**
 * Token reduction on a fixture: for each schedule, top-1 on labelled images (the images decoded
 * once and held), the batch-1 speed-up measured beside the original model (pairwise, median of
 * rounds) and the MAC ratio. Writes JSON and Markdown to bench-results/tokens.{json,md}.
 *
 *   npx tsx scripts/measure-tokens.ts                         # the default schedules, ViT-Tiny
 *   npx tsx scripts/measure-tokens.ts tome:8 evit:0.7@3,6,9   # chosen schedules
 *   npx tsx scripts/measure-tokens.ts --limit 100 --rounds 5 --threads 2 tome:13
 *   npx tsx scripts/measure-tokens.ts --choose 1.25 tome      # mildest ToMe reaching 1.25×
 *
 * Flags: --model <onnx> (default ViT-Tiny opset 17), --data <folder> (default imagenet-val-500),
 * --limit <images>, --rounds <n> (default 5), --runs <n> (default 20), --threads <n> (default 2),
 * --no-accuracy, --choose <speed-up> followed by `tome` or `single@<block>` to search schedules
 * by measured latency. Latency ratios move with the load of a shared machine: repeat and compare.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ModelProto } from 'onnx-buf';
import { openDataset, packageRoot, resolvePreprocess } from '../src/data/index.js';
import { evaluateAccuracy, type EvalBatch } from '../src/eval/accuracy.js';
import { loadModel } from '../src/onnx/model-io.js';
import {
  chooseTokenSchedule,
  measureTokenSchedules,
  parseTokenSchedule,
  reduceTokens,
  singleCandidates,
  tomeCandidates,
  type ScheduleTiming,
  type TokenSchedule,
} from '../src/prune/tokens/index.js';
import { markdownTable } from '../src/report/markdown.js';
import { recognizeViT, type ViTStructure } from '../src/vit/index.js';

const root = packageRoot();
const fixtures = join(root, '..', 'shared', 'fixtures');
const defaults = ['tome:8', 'tome:13', 'evit:0.7@3,6,9', 'evit:0.5@3,6,9', 'single:98@3'];

interface Args {
  model: string;
  data: string;
  limit?: number;
  rounds: number;
  runs: number;
  threads: number;
  accuracy: boolean;
  choose?: { target: number; family: string };
  schedules: string[];
}

function parseArgs(argv: string[]): Args {
  const args: Args = {
    model: join(fixtures, 'models', 'vit_tiny_patch16_224', 'model.opset17.onnx'),
    data: join(fixtures, 'images', 'imagenet-val-500'),
    rounds: 5,
    runs: 20,
    threads: 2,
    accuracy: true,
    schedules: [],
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i]!;
    const value = () => argv[++i] ?? '';
    if (flag === '--model') args.model = value();
    else if (flag === '--data') args.data = value();
    else if (flag === '--limit') args.limit = Number(value());
    else if (flag === '--rounds') args.rounds = Number(value());
    else if (flag === '--runs') args.runs = Number(value());
    else if (flag === '--threads') args.threads = Number(value());
    else if (flag === '--no-accuracy') args.accuracy = false;
    else if (flag === '--choose') args.choose = { target: Number(value()), family: value() };
    else args.schedules.push(flag);
  }
  if (args.schedules.length === 0 && !args.choose) args.schedules = defaults;
  return args;
}

async function heldBatches(args: Args): Promise<EvalBatch[]> {
  const dataset = await openDataset(args.data, await resolvePreprocess(args.model));
  const positions = Array.from(
    { length: Math.min(args.limit ?? Infinity, dataset.size) },
    (_, i) => i,
  );
  const held: EvalBatch[] = [];
  for await (const b of dataset.subset(positions, 'images').batches(25)) {
    held.push({ data: b.data.slice(), dims: [...b.dims], labels: b.labels.slice() });
  }
  return held;
}

async function* stream<T>(items: readonly T[]): AsyncIterable<T> {
  for (const item of items) yield item;
}

async function top1(model: ModelProto, batches: EvalBatch[], threads: number) {
  const result = await evaluateAccuracy(model, stream(batches), { threads });
  return result.top1 ?? NaN;
}

function candidates(structure: ViTStructure, family: string): TokenSchedule[] {
  if (family === 'tome') return tomeCandidates(structure, 2);
  const block = /^single@(\d+)$/.exec(family);
  if (block) return singleCandidates(structure, Number(block[1]), 8);
  throw new Error(`--choose: family must be tome or single@<block>, got ${family}`);
}

async function timings(args: Args, model: ModelProto, structure: ViTStructure) {
  const options = { threads: args.threads, rounds: args.rounds, runs: args.runs };
  if (!args.choose) {
    const schedules = args.schedules.map(parseTokenSchedule);
    return measureTokenSchedules(model, structure, schedules, options);
  }
  const { target, family } = args.choose;
  const found = await chooseTokenSchedule(
    model,
    structure,
    candidates(structure, family),
    target,
    options,
  );
  console.log(found.chosen ? `chosen: ${found.chosen.report.label}` : 'no candidate reached it');
  return found.tried;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const model = await loadModel(args.model);
  const structure = recognizeViT(model);
  const measured: ScheduleTiming[] = await timings(args, model, structure);
  const batches = args.accuracy ? await heldBatches(args) : [];
  const fp32 = args.accuracy ? await top1(model, batches, args.threads) : NaN;
  const rows = [];
  for (const t of measured) {
    const reduced = reduceTokens(model, structure, t.report.schedule).model;
    const acc = args.accuracy ? await top1(reduced, batches, args.threads) : NaN;
    const saving = 1 - 1 / t.report.macs.ratio;
    const realised = (1 - 1 / t.speedup) / saving;
    rows.push({
      schedule: t.report.label,
      tokens: t.report.tokens.after,
      top1: acc,
      fp32Top1: fp32,
      macRatio: t.report.macs.ratio,
      speedup: t.speedup,
      medianMs: t.medianMs,
      realisedFraction: realised,
    });
    console.log(JSON.stringify(rows.at(-1)));
  }
  const pct = (v: number) => (Number.isNaN(v) ? '—' : `${(100 * v).toFixed(1)} %`);
  const table = markdownTable(
    [
      'schedule',
      'final tokens',
      'top-1',
      'fp32 top-1',
      'MACs ÷',
      'speed-up',
      'time saved / MACs saved',
    ],
    rows.map((r) => [
      r.schedule,
      String(r.tokens),
      pct(r.top1),
      pct(r.fp32Top1),
      r.macRatio.toFixed(2),
      `${r.speedup.toFixed(2)}×`,
      r.realisedFraction.toFixed(2),
    ]),
  );
  const out = join(root, 'bench-results');
  await mkdir(out, { recursive: true });
  const meta = {
    model: args.model,
    data: args.data,
    images: batches.reduce((n, b) => n + b.dims[0]!, 0),
    threads: args.threads,
    rounds: args.rounds,
    runs: args.runs,
  };
  await writeFile(join(out, 'tokens.json'), JSON.stringify({ ...meta, rows }, null, 2));
  await writeFile(join(out, 'tokens.md'), `${table}\n`);
  console.log(table);
}

await main();
