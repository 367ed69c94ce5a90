/**
 * report.json and report.md of a prune: what was removed (per-block widths, criterion,
 * compensation), what it saved (parameters, MACs, size) and what it cost (accuracy, agreement,
 * measured latency against the original); and those of a compress (prune, then quantize).
 */
import type { PreprocessConfig } from '../data/index.js';
import { optionsInEffect, type PruneFlags, type QuantizeOptions } from '../options.js';
import type { CompressReport } from '../pipeline/compress.js';
import type { PruneJobReport } from '../pipeline/prune.js';
import type { LowRankReport } from '../prune/low-rank.js';
import type { SparsityReport } from '../prune/sparsity.js';
import type { TokenReport } from '../prune/tokens/index.js';
import type { PruneReport } from '../prune/types.js';
import { evaluationMarkdown } from './evaluation.js';
import { markdownTable, megabytes, percent, ratio } from './markdown.js';
import { reportJson } from './output.js';
import { weightGridLine } from './quantize-report.js';

export interface PruneReportContext {
  input: { path: string; bytes: number; sha256: string };
  options: PruneFlags;
  preprocess: PreprocessConfig;
}

export function pruneReportJson(report: PruneJobReport, context: PruneReportContext): string {
  return reportJson('prune', report, context);
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
  parts.push(`## What was removed\n\n${stagesMarkdown(report)}`);
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
  if (o.rank !== undefined) parts.push(`rank ${o.rank}`);
  if (o.tokens !== undefined) parts.push(`tokens ${o.tokens}`);
  if (o.sparsity || o.sparsityPattern !== 'unstructured') {
    const share = o.sparsity ? `${pct(o.sparsity).slice(1)} ` : '';
    parts.push(`sparsity ${share}${o.sparsityPattern}`);
  }
  return parts.join(', ');
}

/** Every stage that ran: widths, low rank, tokens, sparsity. */
function stagesMarkdown(s: Pick<PruneJobReport, 'passes' | 'lowRank' | 'tokens' | 'sparsity'>) {
  const parts = s.passes.length > 0 ? [passesMarkdown(s.passes)] : [];
  if (s.lowRank) parts.push(lowRankMarkdown(s.lowRank));
  if (s.tokens) parts.push(tokensMarkdown(s.tokens));
  if (s.sparsity) parts.push(sparsityMarkdown(s.sparsity));
  return parts.join('\n\n');
}

function lowRankMarkdown(r: LowRankReport): string {
  const rows = r.layers.map((l) => [
    l.role,
    `${l.inFeatures}→${l.outFeatures}`,
    l.rank ?? 'dense',
    l.breakEvenRank,
    l.retainedEnergy.toFixed(3),
  ]);
  return [
    `Low rank (${r.method}): ${r.rank} of the chosen layers' weights kept ` +
      `(${r.layerParameters[0]} → ${r.layerParameters[1]} elements), ranks multiples of ` +
      `${r.roundTo}, ${r.calibrationImages} calibration images.`,
    markdownTable(['layer', 'shape', 'rank', 'break-even', 'energy kept'], rows),
  ].join('\n\n');
}

function tokensMarkdown(t: TokenReport): string {
  const rows = t.blocks.map((b) => [`blocks.${b.block}`, b.attention, b.mlp]);
  return [
    `Tokens ${t.label}: ${t.tokens.before} → ${t.tokens.after} at the end, MACs ` +
      `${t.macs.before} → ${t.macs.after} (${t.addedNodes} nodes added).`,
    markdownTable(['block', 'tokens into attention', 'tokens into MLP'], rows),
  ].join('\n\n');
}

function sparsityMarkdown(s: SparsityReport): string {
  const rows = s.layers.map((l) => [
    l.role,
    percent(l.zeros),
    l.outputError === null ? undefined : l.outputError.toExponential(2),
  ]);
  return [
    `Sparsity (${s.method}, ${s.pattern}): ${percent(s.zeros)} of the chosen weights are zero; ` +
      `gzip size ${megabytes(s.size.gzipBytes[0])} → ${megabytes(s.size.gzipBytes[1])} ` +
      `(${ratio(s.size.gzipRatio)}). ${s.speed}.`,
    markdownTable(['layer', 'zeros', 'relative output error'], rows),
  ].join('\n\n');
}

/** The per-block widths after all passes, with the settings of each pass. */
export function passesMarkdown(passes: readonly PruneReport[]): string {
  if (passes.length === 0) return 'No width was pruned.';
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

export interface CompressReportContext {
  input: { path: string; bytes: number; sha256: string };
  options: { prune: PruneFlags; quantize: QuantizeOptions };
  preprocess: PreprocessConfig;
}

export function compressReportJson(report: CompressReport, context: CompressReportContext): string {
  const { prune, quantize } = context.options;
  return reportJson('compress', report, {
    ...context,
    options: { prune, quantize: optionsInEffect(quantize) },
  });
}

export function compressReportMarkdown(
  report: CompressReport,
  context: CompressReportContext,
): string {
  const q = report.quantize;
  const parts = [
    `# vitslim compress: ${pruneTitle(context.options.prune)} + ${q.recipe} (${q.kind})`,
    `Input: \`${context.input.path}\` (${megabytes(context.input.bytes)}). ` +
      `Output: model.onnx (${megabytes(report.output.bytes)}, ` +
      `${(report.output.bytes / context.input.bytes).toFixed(3)}× the input).`,
    ...[...report.prune.notes, ...q.notes].map((n) => `- ${n}`),
  ];
  if (report.prune.calibration) {
    const c = report.prune.calibration;
    parts.push(`Pruning calibration: ${c.images} images of \`${c.path}\` (seed ${c.seed}).`);
  }
  parts.push(`## What was removed\n\n${stagesMarkdown(report.prune)}`);
  parts.push(
    `## Quantization of the pruned model\n\n${quantizeSummary(q, context.options.quantize)}`,
  );
  const { original, pruned, output } = report;
  const rows = [
    ['parameters', original.parameters, pruned.parameters, output.parameters],
    ['MACs per image', original.macs, pruned.macs, output.macs],
    ['file size', megabytes(original.bytes), megabytes(pruned.bytes), megabytes(output.bytes)],
    [
      'top-1',
      percent(report.evaluation?.accuracy.baseline?.top1),
      percent(pruned.evaluation?.accuracy.top1),
      percent(report.evaluation?.accuracy.top1),
    ],
    [
      'agreement with the original',
      '–',
      percent(pruned.evaluation?.accuracy.agreement),
      percent(report.evaluation?.accuracy.agreement),
    ],
  ];
  parts.push(
    `## Size and cost\n\n${markdownTable(['', 'original', 'pruned (float)', 'final'], rows)}`,
  );
  if (report.evaluation) {
    parts.push(
      `## Evaluation of the final model against the original\n\n` +
        evaluationMarkdown(report.evaluation),
    );
  }
  return parts.join('\n\n') + '\n';
}

function quantizeSummary(q: CompressReport['quantize'], options: QuantizeOptions): string {
  const lines = [];
  if (q.calibration) {
    const c = q.calibration;
    lines.push(
      `Calibration: ${c.images} images of \`${c.path}\` (seed ${c.seed}), observer ${c.observer}.`,
    );
  }
  const grid = weightGridLine(options);
  if (grid) lines.push(grid);
  if (q.kernels) {
    lines.push(
      `${q.kernels.integer} of ${q.kernels.layers.length} linear layers run as integer kernels ` +
        `(${percent(q.kernels.fraction)}) in onnxruntime's optimised graph.`,
    );
  }
  if (q.keptFloat.length)
    lines.push(`Kept in float: ${q.keptFloat.map((k) => k.role).join(', ')}.`);
  return lines.join(' ') || 'No details.';
}
