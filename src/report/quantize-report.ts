/**
 * report.json and report.md of a quantization: what was done (recipe, options, versions), how
 * each layer was quantized, and what it gave (kernels, size, accuracy, latency).
 */
import type { PreprocessConfig } from '../data/index.js';
import { optionsInEffect, weightGridInEffect, type QuantizeOptions } from '../options.js';
import type { QuantizeReport } from '../pipeline/quantize.js';
import { evaluationMarkdown } from './evaluation.js';
import { markdownTable, megabytes, percent } from './markdown.js';
import { reportJson } from './output.js';

export interface ReportContext {
  input: { path: string; bytes: number; sha256: string };
  options: QuantizeOptions;
  preprocess: PreprocessConfig;
}

export function quantizeReportJson(report: QuantizeReport, context: ReportContext): string {
  return reportJson('quantize', report, { ...context, options: optionsInEffect(context.options) });
}

export function quantizeReportMarkdown(report: QuantizeReport, context: ReportContext): string {
  const parts = [
    `# vitslim quantize: ${report.recipe}${report.method ? ` ${report.method}` : ''}` +
      `${report.weights && report.weights !== 'rtn' ? ` + ${report.weights}` : ''} ` +
      `(${report.kind})`,
    `Input: \`${context.input.path}\` (${megabytes(context.input.bytes)}). ` +
      `Output: model.onnx (${megabytes(report.output.bytes)}, ` +
      `${(report.output.bytes / context.input.bytes).toFixed(3)}× the input).`,
    ...report.notes.map((n) => `- ${n}`),
  ];
  if (report.calibration) {
    const c = report.calibration;
    parts.push(
      `Calibration: ${c.images} images of \`${c.path}\` (seed ${c.seed}), observer ${c.observer}, ` +
        `${c.tensors} tensors, ${c.seconds.toFixed(1)} s.`,
    );
  }
  const grid = weightGridLine(context.options);
  if (grid) parts.push(grid);
  if (report.kernels) {
    const k = report.kernels;
    parts.push(
      `## Integer kernels\n\n${k.integer} of ${k.layers.length} linear layers run as integer ` +
        `kernels (${percent(k.fraction)}) in onnxruntime's optimised graph.`,
      markdownTable(
        ['layer', 'form', 'kernel', 'reason'],
        k.layers.map((l) => {
          const row = report.layers?.find((r) => r.node === l.node);
          return [l.role, row?.form, l.kernel, row?.reason];
        }),
      ),
    );
  }
  if (report.simulation) parts.push(simulationMarkdown(report));
  if (report.repq) parts.push(repqMarkdown(report.repq));
  if (report.ptq4vit) {
    const r = report.ptq4vit;
    parts.push(
      `## PTQ4ViT\n\nMetric ${r.metric}, softmax ${r.softmax}, post-GELU ${r.gelu}, ` +
        `per-head q/k/v ${r.perHead ? 'yes' : 'no'}, NoisyQuant ${r.noisyQuant}; ` +
        `${r.layers.length} layers searched in ${r.calibration.seconds.toFixed(1)} s.`,
    );
  }
  if (report.fqvit) {
    const r = report.fqvit;
    parts.push(
      `## FQ-ViT\n\n${r.ptf.length} LayerNorm inputs with power-of-two factors, ` +
        `${r.softmax.roles.length} softmax outputs on a ${r.softmax.bits}-bit log2 grid, ` +
        `${r.calibration.seconds.toFixed(1)} s.`,
      markdownTable(
        ['LayerNorm input', 'bits', 'base step', 'zero point', 'channels per factor 1, 2, 4, 8…'],
        r.ptf.map((p) => [
          p.role,
          p.bits,
          p.baseScale.toPrecision(4),
          p.zeroPoint,
          p.factors.join(', '),
        ]),
      ),
    );
  }
  if (report.fp) parts.push(floatFormatMarkdown(report.fp));
  if (report.adalog) parts.push(adaLogMarkdown(report.adalog));
  if (report.isvit) parts.push(isVitMarkdown(report.isvit));
  if (report.keptFloat.length) {
    parts.push(`Kept in float: ${report.keptFloat.map((k) => k.role).join(', ')}.`);
  }
  if (report.evaluation) parts.push(`## Evaluation\n\n${evaluationMarkdown(report.evaluation)}`);
  return parts.join('\n\n') + '\n';
}

/** Which int8 weight grid the model holds, as a report line; undefined without int8 weights. */
export function weightGridLine(options: QuantizeOptions): string | undefined {
  const grid = weightGridInEffect(options);
  if (grid === undefined) return undefined;
  const given = options.weightRange === undefined ? ', the default' : '';
  const what =
    grid === 'reduced'
      ? 'one bit less than the full grid, exact on every x86 CPU'
      : '8 bits, exact only where the int8 kernel sums in 32 bits (VNNI, ARM)';
  return `Int8 weights on the ${grid} grid (\`--weight-range ${grid}\`${given}): ${what}.`;
}

function simulationMarkdown(report: QuantizeReport): string {
  const s = report.simulation!;
  const weights = markdownTable(
    ['weight', 'bits', 'rel. MSE', 'SQNR dB'],
    s.weights.map((w) => [w.role, w.bits, w.relativeMse.toExponential(2), w.sqnrDb?.toFixed(1)]),
  );
  const activations = markdownTable(
    ['activation', 'bits', 'min', 'max', 'scale', 'form'],
    s.activations.map((a) => [
      a.role,
      a.bits,
      a.range.min.toPrecision(4),
      a.range.max.toPrecision(4),
      a.scale.toPrecision(4),
      a.form,
    ]),
  );
  return `## Weights\n\n${weights}\n\n## Activations\n\n${activations}`;
}

function repqMarkdown(r: NonNullable<QuantizeReport['repq']>): string {
  const weights = markdownTable(
    ['weight', 'bits', 'channels', 'rel. MSE'],
    r.weights.map((w) => [w.role, w.bits, w.channels, w.relativeMse.toExponential(2)]),
  );
  const activations = markdownTable(
    ['activation', 'quantizer', 'bits', 'scale', 'zero point', 'percentile', 'channels folded'],
    r.activations.map((a) => [
      a.roles.join(', '),
      a.kind === 'log' ? 'log' : 'uniform',
      a.bits,
      a.scale.toPrecision(4),
      a.zeroPoint?.toFixed(2),
      a.percentile.toFixed(5),
      a.channels
        ? `${a.channels.count} (steps ${a.channels.scaleMin.toPrecision(3)}–` +
          `${a.channels.scaleMax.toPrecision(3)})`
        : undefined,
    ]),
  );
  const norms = markdownTable(
    ['LayerNorm', 'read by', 'reparameterised', 'r = Δc/Δ̃'],
    r.norms.map((n) => [
      n.role,
      n.targets.join(', '),
      n.reparameterised ? 'yes' : `no: ${n.reason ?? ''}`,
      n.ratio ? `${n.ratio.min.toPrecision(3)}–${n.ratio.max.toPrecision(3)}` : undefined,
    ]),
  );
  return [
    `## RepQ-ViT\n\nW${r.weightBits}A${r.activationBits}, image input ${r.patchEmbedBits} bits, ` +
      `softmax ${r.softmax}, calibration ${r.calibration.images} images in ` +
      `${r.calibration.passes} passes, ${r.calibration.seconds.toFixed(1)} s.`,
    `### Reparameterised LayerNorms\n\n${norms}`,
    `### Weights\n\n${weights}`,
    ...(r.weightMethod ? [weightMethodMarkdown(r.weightMethod)] : []),
    `### Activations\n\n${activations}`,
  ].join('\n\n');
}

/** GPTQ's proxy losses or ERQ's output errors per layer, beside rounding to nearest's. */
function weightMethodMarkdown(w: NonNullable<QuantizeReport['repq']>['weightMethod']): string {
  if (!w) return '';
  const measure = w.method === 'erq' ? 'relative output error' : 'relative proxy loss';
  const rows = w.layers.map((l) => {
    const [rounded, method] =
      'roundingError' in l ? [l.roundingError, l.error] : [l.roundingLoss, l.loss];
    return [
      l.role,
      rounded.toExponential(2),
      method.toExponential(2),
      (method / rounded).toFixed(3),
    ];
  });
  const table = markdownTable(['layer', 'rounding to nearest', w.method, 'ratio'], rows);
  const skipped = w.skipped.map((s) => `${s.role} (${s.reason})`).join(', ');
  return (
    `### Weights by ${w.method.toUpperCase()}\n\n${measure} per layer on the calibration ` +
    `images, ${w.seconds.toFixed(1)} s${skipped ? `; left to rounding: ${skipped}` : ''}.` +
    `\n\n${table}`
  );
}

function floatFormatMarkdown(r: NonNullable<QuantizeReport['fp']>): string {
  const activations = markdownTable(
    ['activation', 'scale (ρ)', 'clip ratio', 'per-channel 2^k: max k, mean k'],
    r.activations.map((a) => [
      a.roles.join(', '),
      a.scale.toPrecision(4),
      a.clipRatio.toFixed(3),
      a.shift ? `${a.shift.max}, ${a.shift.mean.toFixed(2)}` : undefined,
    ]),
  );
  const weights = markdownTable(
    ['weight', 'mean clip ratio'],
    r.weights.map((w) => [w.role, w.meanClipRatio.toFixed(3)]),
  );
  return [
    `## Float formats (LLM-FP4)\n\nWeights ${r.weightFormat}, activations ` +
      `${r.activationFormat}, pre-shifted exponent bias ${r.preShift ? 'on' : 'off'}; ` +
      `${r.calibration.images} images, ${r.calibration.seconds.toFixed(1)} s.`,
    `### Activations\n\n${activations}`,
    `### Weights\n\n${weights}`,
  ].join('\n\n');
}

function adaLogMarkdown(r: NonNullable<QuantizeReport['adalog']>): string {
  const table = markdownTable(
    ['activation', 'base 2^(q_b/37): q_b', 'scale', 'shift', 'output error / RepQ-ViT’s'],
    [...r.softmax, ...r.gelu].map((p) => [
      p.role,
      p.baseNumerator,
      p.scale.toPrecision(4),
      p.shift,
      p.errorRatio.toFixed(3),
    ]),
  );
  return (
    `## AdaLog\n\n${r.softmax.length} softmax and ${r.gelu.length} GELU outputs on ` +
    `adaptive-base log grids (${r.hardware ? 'shift-and-table levels' : 'exact levels'}), ` +
    `${r.candidates} GELU candidates scored, ${r.seconds.toFixed(1)} s; ` +
    `${r.perHead.length} query/key/value operands on one grid per head.\n\n${table}`
  );
}

function isVitMarkdown(r: NonNullable<QuantizeReport['isvit']>): string {
  const table = markdownTable(
    ['softmax', 'shift η', 'log2 range', 'MSE'],
    r.softmax.map((p) => [
      p.role,
      p.shift,
      `${p.logMin.toFixed(2)} … ${p.logMax.toFixed(2)}`,
      p.mse.toExponential(2),
    ]),
  );
  return (
    `## I&S-ViT softmax quantizer (SULQ)\n\n${r.softmax.length} softmax outputs, ` +
    `${r.seconds.toFixed(1)} s.\n\n${table}`
  );
}
