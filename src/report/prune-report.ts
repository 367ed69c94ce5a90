/**
 * report.json and report.md of a prune: what was removed (per-block widths, criterion,
 * compensation), what it saved (parameters, MACs, size) and what it cost (accuracy, agreement,
 * measured latency against the original).
 */
import type { PreprocessConfig } from '../data/index.js';
import type { PruneFlags } from '../options.js';
import type { PruneJobReport } from '../pipeline/prune.js';
import type { PruneReport } from '../prune/types.js';
import { versions } from '../version.js';
import { evaluationMarkdown } from './evaluation.js';
import { markdownTable, megabytes, ratio } from './markdown.js';

export interface PruneReportContext {
  input: { path: string; bytes: number; sha256: string };
  options: PruneFlags;
  preprocess: PreprocessConfig;
}

export function pruneReportJson(report: PruneJobReport, context: PruneReportContext): string {
  const document = {
    tool: 'vitslim',
    command: 'prune',
    versions: versions(),
    input: context.input,
    options: context.options,
    preprocess: context.preprocess,
    ...report,
  };
  return `${JSON.stringify(document, null, 2)}\n`;
}

export function pruneReportMarkdown(report: PruneJobReport, context: PruneReportContext): string {
  const parts = [
    `# vitslim prune: ${pruneTitle(context.options)}`,
    `Input: \`${context.input.path}\` (${megabytes(context.input.bytes)}). ` +
      `Output: model.onnx (${megabytes(report.output.bytes)}, ` +
      `${(report.output.bytes / context.input.bytes).toFixed(3)}× the input).`,
    ...report.notes.map((n) => `- ${n}`),
  ];
  if (report.calibration) {
    const c = report.calibration;
    parts.push(`Calibration: ${c.images} images of \`${c.path}\` (seed ${c.seed}).`);
  }
  parts.push(`## What was removed\n\n${passesMarkdown(report.passes)}`);
  parts.push(countsMarkdown(report));
  if (report.evaluation) {
    parts.push(`## Evaluation against the input model\n\n${evaluationMarkdown(report.evaluation)}`);
  }
  return parts.join('\n\n') + '\n';
}

/** `mlp −30 %, heads 1@6` and the like, from the options. */
export function pruneTitle(o: PruneFlags): string {
  const parts: string[] = [];
  const pct = (x: number) => `−${Math.round(x * 1000) / 10} %`;
  if (o.mlp) parts.push(`MLP ${pct(o.mlp)}`);
  if (typeof o.heads === 'number' && o.heads > 0) parts.push(`heads ${pct(o.heads)}`);
  else if (o.heads !== undefined && typeof o.heads !== 'number') {
    const where = Array.isArray(o.heads.blocks)
      ? `blocks ${o.heads.blocks.join(', ')}`
      : o.heads.blocks === 'all'
        ? 'every block'
        : `${o.heads.blocks} blocks`;
    parts.push(`${o.heads.count} head${o.heads.count === 1 ? '' : 's'} in ${where}`);
  }
  if (o.headDims) parts.push(`head dims ${pct(o.headDims)}`);
  return parts.join(', ');
}

/** The per-block widths after all passes, with the settings of each pass. */
export function passesMarkdown(passes: readonly PruneReport[]): string {
  if (passes.length === 0) return 'Nothing was removed.';
  const first = passes[0]!;
  const last = passes[passes.length - 1]!;
  const settings = passes.map(
    (p, i) =>
      `Pass ${i + 1}: criterion ${p.criterion}, scope ${p.scope}, compensation ` +
      `${p.compensation}, ${p.calibrationImages} calibration images.`,
  );
  const rows = first.blocks.map((b, i) => {
    const a = last.blocks[i]!;
    const change = (before: number, after: number) =>
      before === after ? String(before) : `${before} → ${after}`;
    return [
      `blocks.${i}`,
      change(b.mlp[0], a.mlp[1]),
      change(b.heads[0], a.heads[1]),
      change(b.headDim[0], a.headDim[1]),
    ];
  });
  return [
    settings.join('\n'),
    markdownTable(['block', 'MLP width', 'heads', 'head size'], rows),
  ].join('\n\n');
}

function countsMarkdown(report: PruneJobReport): string {
  const { original: input, output } = report;
  const rows = [
    [
      'parameters',
      input.parameters,
      output.parameters,
      ratio(output.parameters / input.parameters),
    ],
    ['MACs per image', input.macs, output.macs, ratio(output.macs / input.macs)],
    [
      'file size',
      megabytes(input.bytes),
      megabytes(output.bytes),
      ratio(output.bytes / input.bytes),
    ],
  ];
  return `## Size and cost\n\n${markdownTable(['', 'input', 'pruned', 'ratio'], rows)}`;
}
