/** `vitslim quantize model.onnx --recipe w8a8 --calib DIR -o OUT` (or `--bits w4a4`). */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { parseOptions, quantizeOptionsSchema, runOptionsSchema } from '../options.js';
import { preprocessFor } from '../pipeline/evaluate.js';
import { openModel } from '../pipeline/model.js';
import { quantizeModel } from '../pipeline/quantize.js';
import {
  checkNotInputFolder,
  checkOutputFree,
  modelConfig,
  writeOutputFolder,
} from '../report/output.js';
import { percent, ratio } from '../report/markdown.js';
import { quantizeReportJson, quantizeReportMarkdown } from '../report/quantize-report.js';
import type { CliContext } from './main.js';
import {
  addPreprocessFlags,
  addRunFlags,
  evaluationFlags,
  pick,
  preprocessOverrides,
} from './shared.js';
import { readRecipeFile } from './recipe-file.js';

const quantizeKeys = [
  'recipe',
  'method',
  'weights',
  'noisyQuant',
  'fpFormat',
  'bits',
  'observer',
  'weightObserver',
  'percentile',
  'calib',
  'calibCount',
  'seed',
  'keepFloat',
  'overrides',
  'blockSize',
  'weightRange',
  'data',
  'limit',
];

export function registerQuantize(program: Command, context: () => CliContext): void {
  const command = program
    .command('quantize')
    .description('quantize a ViT: deployable (--recipe) or simulated (--bits WxAy)')
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
      'method: baseline (observers, default) | repq (RepQ-ViT; deployable with --recipe ' +
        'w8a8) | ptq4vit (PTQ4ViT) | fqvit (FQ-ViT) | fp (LLM-FP4 float formats) | ' +
        'adalog (AdaLog) | isvit (I&S-ViT softmax quantizer) (all but repq simulated, with --bits)',
    )
    .option(
      '--weights <how>',
      'weight rounding: rtn (default) | gptq | erq, on RepQ-ViT (--method repq, adalog or ' +
        'isvit); gptq also with --recipe int4-weights (in MatMulNBits blocks)',
    )
    .option(
      '--fp-format <f>',
      'float format of --method fp, or <weights>,<activations>: e4m3 | e5m2 | e3m2 | e2m1 ' +
        '(default by bit width: 8 e4m3, 6 e3m2, 4 e2m1)',
    )
    .option('--noisy-quant', 'PTQ4ViT with NoisyQuant noise before the post-GELU quantizers')
    .option('--observer <kind>', 'activation ranges: minmax | percentile | mse | omse')
    .option('--weight-observer <kind>', 'weight ranges: minmax | percentile | mse | omse')
    .option('--percentile <p>', 'percentile of the percentile observer (default 99.99)')
    .option('--calib <dir>', 'calibration images (never the evaluation images)')
    .option('--calib-count <n>', 'calibration images to sample (default 32)')
    .option('--seed <n>', 'seed of the calibration sample (default 0)')
    .option(
      '--keep-float <selector...>',
      'layers kept in float: role globs (head, patch_embed, blocks.3, blocks.*.attn.softmax) ' +
        'or node:<regex>',
    )
    .option(
      '--override <spec...>',
      'per-layer settings of a simulation, <selector>=<settings>: blocks.*.mlp.fc2=a8, ' +
        'head=w8a8,observer:mse (w<bits>, a<bits>, observer:, weight-observer:, percentile:)',
    )
    .option('--block-size <n>', 'int4-weights block size along K (default 32)')
    .option(
      '--weight-range <grid>',
      'int8 weights of w8a8 and dynamic-int8: reduced (default, |q| ≤ 64, exact on every x86 ' +
        'CPU) | full (8 bits, for CPUs with VNNI)',
    )
    .option('--data <dir>', 'also evaluate on these labelled images against the input model')
    .option('--limit <n>', 'evaluate only the first n images')
    .option('--latency-runs <n>', 'timed runs per model and batch size in evaluation', '20')
    .option('--config <file>', 'recipe file (JSON) with the same options; flags override it')
    .option('--force', 'replace an existing output folder');
  addRunFlags(addPreprocessFlags(command)).action(
    async (path: string, flags: Record<string, unknown>) => {
      const ctx = context();
      const out = String(flags.out);
      // paths are recorded absolute, so a report's options reproduce the run from anywhere
      for (const key of ['calib', 'data'] as const) {
        if (typeof flags[key] === 'string') flags[key] = resolve(flags[key] as string);
      }
      const inputs = [path, flags.calib, flags.data].filter((p) => typeof p === 'string');
      checkNotInputFolder(out, inputs as string[]);
      await checkOutputFree(out, flags.force === true);
      if (flags.override !== undefined) flags.overrides = flags.override;
      const fromFile = flags.config ? await readRecipeFile(String(flags.config)) : {};
      const options = parseOptions(
        quantizeOptionsSchema,
        { ...fromFile, ...pick(flags, quantizeKeys) },
        'quantize options',
      );
      const run = parseOptions(
        runOptionsSchema,
        pick(flags, ['threads', 'batch', 'strict', 'classes']),
        'flags',
      );
      const source = await openModel(path);
      const preprocess = await preprocessFor([path], preprocessOverrides(flags));
      const { bytes, report } = await quantizeModel(
        { source, options, run, preprocess, latencyRuns: evaluationFlags(flags).latencyRuns },
        ctx,
      );
      const inputBytes = await readFile(path);
      const reportContext = {
        input: {
          path,
          bytes: inputBytes.byteLength,
          sha256: createHash('sha256').update(inputBytes).digest('hex'),
        },
        options,
        preprocess,
      };
      await writeOutputFolder(
        out,
        [
          { name: 'model.onnx', contents: bytes },
          { name: 'report.json', contents: quantizeReportJson(report, reportContext) },
          { name: 'report.md', contents: quantizeReportMarkdown(report, reportContext) },
          // the preprocessing travels with the model: `vitslim eval OUT/model.onnx` needs no flags
          { name: 'config.json', contents: modelConfig(preprocess) },
        ],
        flags.force === true,
      );
      ctx.done(summaryLine(out, report));
    },
  );
}

function summaryLine(out: string, report: Awaited<ReturnType<typeof quantizeModel>>['report']) {
  const what = [report.recipe, report.method, report.weights].filter((w) => w && w !== 'rtn');
  const parts = [`wrote ${out}/model.onnx (${what.join(' ')}, ${report.kind})`];
  if (report.kernels) {
    parts.push(`integer kernels ${report.kernels.integer}/${report.kernels.layers.length}`);
  }
  const e = report.evaluation;
  if (e) {
    parts.push(
      `top-1 ${percent(e.accuracy.top1)} (input model ${percent(e.accuracy.baseline?.top1)})`,
    );
    const r1 = e.latency?.rows.find((r) => r.batch === 1);
    if (r1?.ratio !== undefined) parts.push(`batch-1 time ${ratio(r1.ratio)} the input model`);
  }
  return parts.join('; ');
}
