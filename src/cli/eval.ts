/** `vitslim eval model.onnx --data DIR [--baseline fp.onnx]`: accuracy, agreement, speed, size. */
import type { Command } from 'commander';
import { parseOptions, runOptionsSchema } from '../options.js';
import { evaluate, preprocessFor, type EvaluationReport } from '../pipeline/evaluate.js';
import { openAnyModel } from '../pipeline/model.js';
import { evaluationMarkdown } from '../report/evaluation.js';
import type { CliContext } from './main.js';
import {
  addPreprocessFlags,
  addRunFlags,
  evaluationFlags,
  pick,
  preprocessOverrides,
} from './shared.js';

export function registerEval(program: Command, context: () => CliContext): void {
  const command = program
    .command('eval')
    .description('top-1/top-5 on labelled images, agreement and latency against a baseline')
    .argument('<model>', 'ONNX model file')
    .requiredOption('--data <dir>', 'labelled images (ImageNet layout, flat + labels, or MNIST)')
    .option('--baseline <model>', 'reference model (usually the fp32 original)')
    .option('--limit <n>', 'evaluate only the first n images')
    .option('--latency-runs <n>', 'timed runs per model and batch size (0 to skip)', '20')
    .option('--json', 'print the report as JSON');
  addRunFlags(addPreprocessFlags(command)).action(
    async (path: string, flags: Record<string, unknown>) => {
      const ctx = context();
      const run = parseOptions(
        runOptionsSchema,
        pick(flags, ['threads', 'batch', 'strict', 'classes']),
        'flags',
      );
      const { latencyRuns, limit } = evaluationFlags(flags, ['latencyRuns', 'limit']);
      const candidate = await openAnyModel(path);
      const baseline = flags.baseline ? await openAnyModel(String(flags.baseline)) : undefined;
      const paths = flags.baseline ? [path, String(flags.baseline)] : [path];
      const preprocess = await preprocessFor(paths, preprocessOverrides(flags));
      const report: EvaluationReport = await evaluate(
        {
          candidate,
          baseline,
          data: String(flags.data),
          preprocess,
          batch: run.batch,
          threads: run.threads,
          strict: run.strict,
          classes: run.classes,
          limit,
          latency: latencyRuns > 0 ? { runs: latencyRuns, batchSizes: [1, run.batch] } : false,
        },
        ctx,
      );
      ctx.print(flags.json ? JSON.stringify(report, null, 2) : evaluationMarkdown(report));
    },
  );
}
