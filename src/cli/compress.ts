/**
 * `vitslim compress model.onnx --mlp 0.3 --recipe w8a8 --calib DIR -o OUT [--data DIR]`: prune,
 * then quantize the pruned model, with one report against the original model.
 */
import type { Command } from 'commander';
import { parseOptions, pruneOptionsSchema, quantizeOptionsSchema } from '../options.js';
import { compressModel, type CompressReport } from '../pipeline/compress.js';
import { preprocessFor } from '../pipeline/evaluate.js';
import { openModel } from '../pipeline/model.js';
import { ratio } from '../report/markdown.js';
import { modelConfig, writeOutputFolder } from '../report/output.js';
import { compressReportJson, compressReportMarkdown } from '../report/prune-report.js';
import type { CliContext } from './main.js';
import { addPruneFlags, evaluationSummary, prepareOutput, pruneKeys } from './prune.js';
import {
  addPreprocessFlags,
  addRunFlags,
  evaluationFlags,
  pick,
  preprocessOverrides,
} from './shared.js';

/** Quantize options of compress; the calibration images and seed are shared with pruning. */
const quantizeKeys = [
  'recipe',
  'method',
  'weights',
  'fpFormat',
  'noisyQuant',
  'weightRange',
  'bits',
  'observer',
  'weightObserver',
  'percentile',
  'keepFloat',
  'blockSize',
  'calib',
  'calibCount',
  'seed',
];

/** Splits a recipe file's keys between the two schemas; keys neither knows go to pruning. */
function splitRecipe(fromFile: Record<string, unknown>) {
  // the `options` of a compress report.json: already split
  const nested = (v: unknown): v is Record<string, unknown> =>
    typeof v === 'object' && v !== null && !Array.isArray(v);
  if (nested(fromFile.prune) && nested(fromFile.quantize) && Object.keys(fromFile).length === 2) {
    return { quantize: fromFile.quantize, prune: fromFile.prune };
  }
  const quantize: Record<string, unknown> = {};
  const prune: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(fromFile)) {
    const quantizes = quantizeKeys.includes(key);
    if (quantizes) quantize[key] = value;
    if (!quantizes || pruneKeys.includes(key)) prune[key] = value;
  }
  return { quantize, prune };
}

export function registerCompress(program: Command, context: () => CliContext): void {
  const command = program
    .command('compress')
    .description('prune, then quantize the pruned model; one report against the original')
    .argument('<model>', 'ONNX model file (never modified)')
    .requiredOption(
      '-o, --out <dir>',
      'output folder: model.onnx, config.json, report.json, report.md',
    )
    .option(
      '--recipe <name>',
      'deployable: w8a8 | dynamic-int8 | int4-weights; simulated, the best measured ' +
        'method: w6a6 | w4a8 | w4a4 | w3a3',
    )
    .option('--bits <WxAy>', 'simulated (fake-quant) bit widths, e.g. w4a4, w6a6, w8a8')
    .option(
      '--method <name>',
      'as in quantize: baseline | repq | ptq4vit | fqvit | fp | adalog | isvit',
    )
    .option('--weights <how>', 'as in quantize: rtn | gptq | erq')
    .option('--fp-format <f>', 'float format of --method fp, as in quantize')
    .option('--noisy-quant', 'PTQ4ViT with NoisyQuant noise, as in quantize')
    .option('--weight-range <grid>', 'int8 weights of w8a8 and dynamic-int8: reduced | full')
    .option('--observer <kind>', 'activation ranges: minmax | percentile | mse | omse')
    .option('--weight-observer <kind>', 'weight ranges: minmax | percentile | mse | omse')
    .option('--percentile <p>', 'percentile of the percentile observer (default 99.99)')
    .option('--keep-float <selector...>', 'layers kept in float: role globs or node:<regex>')
    .option('--block-size <n>', 'int4-weights block size along K (default 32)')
    .option('--eval-pruned', 'also measure the pruned float model against the original');
  addRunFlags(addPreprocessFlags(addPruneFlags(command))).action(
    async (path: string, flags: Record<string, unknown>) => {
      const ctx = context();
      const { out, fromFile, run, input } = await prepareOutput(path, flags);
      const recipe = splitRecipe(fromFile);
      const prune = parseOptions(
        pruneOptionsSchema,
        { ...recipe.prune, ...pick(flags, pruneKeys) },
        'prune options',
      );
      const quantize = parseOptions(
        quantizeOptionsSchema,
        { ...recipe.quantize, ...pick(flags, quantizeKeys) },
        'quantize options',
      );
      const source = await openModel(path);
      const preprocess = await preprocessFor([path], preprocessOverrides(flags));
      const { bytes, report } = await compressModel(
        {
          source,
          prune,
          quantize,
          run,
          preprocess,
          latencyRuns: evaluationFlags(flags).latencyRuns,
          evaluatePruned: flags.evalPruned === true,
        },
        ctx,
      );
      const reportContext = { input, options: { prune, quantize }, preprocess };
      await writeOutputFolder(
        out,
        [
          { name: 'model.onnx', contents: bytes },
          { name: 'report.json', contents: compressReportJson(report, reportContext) },
          { name: 'report.md', contents: compressReportMarkdown(report, reportContext) },
          { name: 'config.json', contents: modelConfig(preprocess) },
        ],
        flags.force === true,
      );
      ctx.done(summaryLine(out, report));
    },
  );
}

function summaryLine(out: string, report: CompressReport): string {
  const { original, output } = report;
  const parts = [
    `wrote ${out}/model.onnx (${report.quantize.recipe}, ${report.quantize.kind})`,
    `MACs ${ratio(output.macs / original.macs)}, size ${ratio(output.bytes / original.bytes)} ` +
      `the input model`,
  ];
  if (report.evaluation) parts.push(...evaluationSummary(report.evaluation));
  return parts.join('; ');
}
