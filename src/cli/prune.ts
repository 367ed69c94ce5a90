/** `vitslim prune model.onnx --mlp 0.3 --heads 1@6 --calib DIR -o OUT [--data DIR]`. */
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { parseOptions, pruneOptionsSchema, runOptionsSchema } from '../options.js';
import { preprocessFor } from '../pipeline/evaluate.js';
import { openModel } from '../pipeline/model.js';
import { pruneJob, sha256, type PruneJobReport } from '../pipeline/prune.js';
import { percent, ratio } from '../report/markdown.js';
import {
  checkNotInputFolder,
  checkOutputFree,
  modelConfig,
  writeOutputFolder,
} from '../report/output.js';
import { pruneReportJson, pruneReportMarkdown } from '../report/prune-report.js';
import type { EvaluationReport } from '../pipeline/evaluate.js';
import type { CliContext } from './main.js';
import { readRecipeFile } from './recipe-file.js';
import {
  addPreprocessFlags,
  addRunFlags,
  evaluationFlags,
  pick,
  preprocessOverrides,
} from './shared.js';

/** The flags of pruneOptionsSchema, as commander names them. */
export const pruneKeys = [
  'mlp',
  'heads',
  'headDims',
  'criterion',
  'scope',
  'compensation',
  'maxRatio',
  'roundTo',
  'ridgeAlpha',
  'rank',
  'rankMethod',
  'rankLayers',
  'tokens',
  'sparsity',
  'sparsityPattern',
  'sparsityMethod',
  'calib',
  'calibCount',
  'seed',
  'data',
  'limit',
];

/** What to remove and how to choose it; shared by prune and compress. */
export function addPruneFlags(command: Command): Command {
  return command
    .option('--mlp <fraction>', 'share of every block’s MLP hidden channels to remove, in [0, 1)')
    .option(
      '--heads <spec>',
      'heads to remove: a share in [0, 1) per block, or COUNT@BLOCKS: 1@6 (one head in the 6 ' +
        'blocks where it matters least), 1@0,2,4 or 1@[6] (in those blocks), 1@all',
    )
    .option('--head-dims <fraction>', 'share of every head’s dimensions to remove, in [0, 1)')
    .option(
      '--criterion <name>',
      'importance: l1 | l2 | wanda | variance | reconstruction | ablation ' +
        '(default with --calib: reconstruction with --mlp, wanda otherwise; l2 without)',
    )
    .option(
      '--scope <name>',
      'ranking: local (per block) | global | isomorphic | sensitivity (per-block widths from ' +
        'the measured output change of each block pruned alone); default global with --mlp ' +
        'and --calib, local otherwise',
    )
    .option(
      '--compensation <name>',
      'fold what removed units contributed into the next layer: none | mean | ridge ' +
        '(default ridge with --calib, none without)',
    )
    .option('--max-ratio <fraction>', 'global/isomorphic/sensitivity: most of one block removed')
    .option('--round-to <n>', 'kept MLP channels and head dimensions are multiples of n (8)')
    .option('--ridge-alpha <x>', 'ridge strength relative to the kept channels’ variance (1e-2)')
    .option(
      '--rank <fraction>',
      'low rank after width pruning: share of the chosen layers’ weights kept, in (0, 1]',
    )
    .option('--rank-method <name>', 'svd | whitened (default whitened with --calib, svd without)')
    .option('--rank-layers <selector...>', 'layers to factor (role globs; default all in blocks)')
    .option(
      '--tokens <schedule>',
      'token reduction, last: tome:<r>, evit:<keep>[@<block>,…], single:<r>@<block>',
    )
    .option(
      '--sparsity <fraction>',
      'zero this share of the block weights (alone; a smaller compressed file, no speed-up)',
    )
    .option('--sparsity-pattern <p>', 'unstructured (default) | 2:4 | n:m')
    .option(
      '--sparsity-method <name>',
      'magnitude | wanda | sparsegpt (default wanda with --calib, magnitude without)',
    )
    .option('--calib <dir>', 'calibration images (never the evaluation images)')
    .option(
      '--calib-count <n>',
      'calibration images to sample (default 256 for pruning with --mlp, 32 otherwise)',
    )
    .option('--seed <n>', 'seed of the calibration sample (default 0)')
    .option('--data <dir>', 'also evaluate on these labelled images against the input model')
    .option('--limit <n>', 'evaluate only the first n images')
    .option('--latency-runs <n>', 'timed runs per model and batch size in evaluation', '20')
    .option('--config <file>', 'recipe file (JSON) with the same options; flags override it')
    .option('--force', 'replace an existing output folder');
}

/** The checks and inputs every model-writing command starts with. */
export async function prepareOutput(path: string, flags: Record<string, unknown>) {
  const out = String(flags.out);
  // paths are recorded absolute, so a report's options reproduce the run from anywhere
  for (const key of ['calib', 'data'] as const) {
    if (typeof flags[key] === 'string') flags[key] = resolve(flags[key] as string);
  }
  const inputs = [path, flags.calib, flags.data].filter((p) => typeof p === 'string');
  checkNotInputFolder(out, inputs as string[]);
  await checkOutputFree(out, flags.force === true);
  const fromFile: Record<string, unknown> = flags.config
    ? await readRecipeFile(String(flags.config))
    : {};
  const run = parseOptions(
    runOptionsSchema,
    pick(flags, ['threads', 'batch', 'strict', 'classes']),
    'flags',
  );
  const inputBytes = await readFile(path);
  const input = { path, bytes: inputBytes.byteLength, sha256: sha256(inputBytes) };
  return { out, fromFile, run, input };
}

export function registerPrune(program: Command, context: () => CliContext): void {
  const command = program
    .command('prune')
    .description(
      'remove MLP channels, heads or head dimensions, factor layers, reduce tokens (faster), ' +
        'or zero weights (smaller compressed file)',
    )
    .argument('<model>', 'ONNX model file (never modified)')
    .requiredOption(
      '-o, --out <dir>',
      'output folder: model.onnx, config.json, report.json, report.md',
    );
  addRunFlags(addPreprocessFlags(addPruneFlags(command))).action(
    async (path: string, flags: Record<string, unknown>) => {
      const ctx = context();
      const { out, fromFile, run, input } = await prepareOutput(path, flags);
      const options = parseOptions(
        pruneOptionsSchema,
        { ...fromFile, ...pick(flags, pruneKeys) },
        'prune options',
      );
      const source = await openModel(path);
      const preprocess = await preprocessFor([path], preprocessOverrides(flags));
      const { bytes, report } = await pruneJob(
        { source, options, run, preprocess, latencyRuns: evaluationFlags(flags).latencyRuns },
        ctx,
      );
      const reportContext = { input, options, preprocess };
      await writeOutputFolder(
        out,
        [
          { name: 'model.onnx', contents: bytes },
          { name: 'report.json', contents: pruneReportJson(report, reportContext) },
          { name: 'report.md', contents: pruneReportMarkdown(report, reportContext) },
          { name: 'config.json', contents: modelConfig(preprocess) },
        ],
        flags.force === true,
      );
      ctx.done(summaryLine(out, report));
    },
  );
}

function summaryLine(out: string, report: PruneJobReport): string {
  const { original: input, output } = report;
  const parts = [
    `wrote ${out}/model.onnx`,
    `parameters ${ratio(output.parameters / input.parameters)}, ` +
      `MACs ${ratio(output.macs / input.macs)} the input model`,
  ];
  if (report.evaluation) parts.push(...evaluationSummary(report.evaluation));
  return parts.join('; ');
}

/** Top-1 against the input model's and the batch-1 time ratio, for a one-line summary. */
export function evaluationSummary(e: EvaluationReport): string[] {
  const parts = [
    `top-1 ${percent(e.accuracy.top1)} (input model ${percent(e.accuracy.baseline?.top1)}), ` +
      `agreement ${percent(e.accuracy.agreement)}`,
  ];
  const r1 = e.latency?.rows.find((r) => r.batch === 1);
  if (r1?.ratio !== undefined) parts.push(`batch-1 time ${ratio(r1.ratio)} the input model`);
  return parts;
}
