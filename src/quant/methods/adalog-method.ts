/**
 * AdaLog (Wu et al., arXiv:2407.12951, ECCV 2024; reference notes §14), gradient-free
 * calibration form: RepQ-ViT's quantizers and scale reparameterisation (repq.ts: per-channel
 * weights, post-LayerNorm activations folded to one grid, percentile-MSE uniform grids), with
 * AdaLog's adaptive-base logarithmic quantizer (adalog.ts) on
 *
 * - every softmax output: s = 1, q_b searched on the attention output P̂·V̂;
 * - every GELU output (fc2's input): shifted by η = 0.16997, q_b and s by the fast progressive
 *   combining search on fc2's output (adalog-search.ts). The shift, taken away after
 *   dequantization in the simulated chain, is what the paper folds into fc2's bias.
 *
 * - every query, key and value operand of the attention matmuls: one uniform grid per head
 *   (adalog-heads.ts), as the paper's per-head MatMul quantizers.
 *
 * The AdaLog searches run on the reparameterised float model's tensors (the paper calibrates each
 * module in parallel on float inputs). The uniform grids are chosen by RepQ-ViT's percentile-MSE
 * search over candidates that reach down to AdaLog's narrowest range (the 0.1–0.9 quantiles).
 * Differences from the paper, all on the uniform side: percentile-MSE grids on the tensor instead
 * of FPCS-searched ones on the layer output, one search round instead of three. `weights` sets
 * the weight values by GPTQ or ERQ after the searches, for the inputs as AdaLog quantizes them.
 * Its "retrain" numbers (block reconstruction with gradients) are out of scope.
 */
import type { ModelProto } from 'onnx-buf';
import { z } from 'zod';
import { GraphIndex } from '../../graph/graph.js';
import type { Reporting } from '../../log.js';
import { holdImages, type CaptureBatch } from '../../runtime/capture.js';
import type { SessionOptions } from '../../runtime/session.js';
import type { ViTStructure } from '../../vit/types.js';
import { adaLogFakeQuantCommands, type AdaLogQuantizer } from '../adalog.js';
import {
  NamePrefixes,
  outputChannelAxis,
  readWeight,
  weightCommands,
  type ActivationSetting,
} from '../quantizer-commands.js';
import { logFakeQuantize } from '../log-quantizers.js';
import { roundHalfEven } from '../uniform.js';
import {
  attentionReference,
  attentionSquaredError,
  matmulRows,
  outputSquaredError,
  paperProgressiveSearch,
  searchGeluQuantizer,
  searchSoftmaxBase,
  type AttentionProblem,
  type OutputProblem,
} from './adalog-search.js';
import {
  applyHeadGrids,
  headReplacement,
  searchHeadGrids,
  type HeadGrids,
} from './adalog-heads.js';
import { calibrateRepQ, type RepQCalibration, type RepQResult } from './repq.js';
import {
  captureFloat,
  insertWithReplacements,
  replacedWeights,
  settingsWithRole,
} from './replaced-quantizers.js';
import { parseMethodOptions, splitRunOptions } from './method-options.js';

const bits = z.number().int().min(2).max(8);

/** Candidate percentiles of AdaLog's uniform activation grids, from q(0.9) to RepQ-ViT's. */
export const adaLogUniformPercentiles: readonly number[] = [
  0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999, 0.99999,
];
const count = z.number().int().min(1);

export const adaLogOptionsSchema = z.strictObject({
  weightBits: bits,
  activationBits: bits,
  /** Selectors of points kept in float (see quant-points.ts). */
  keepFloat: z.array(z.string()).default([]),
  /**
   * Weight values on RepQ-ViT's grids: round to nearest, GPTQ or ERQ, solved after the AdaLog
   * search for the inputs as AdaLog's quantizers give them.
   */
  weights: z.enum(['rtn', 'gptq', 'erq']).default('rtn'),
  /**
   * Candidate percentiles of the percentile-MSE search of the uniform grids (weights per output
   * channel, activations per tensor or per LayerNorm channel). AdaLog's own uniform search
   * spans clipping ranges from the 0.1–0.9 quantile range up to the full range (reference
   * notes §14 (3)); RepQ-ViT's three candidates (0.999 and up) stop far short of that, and at
   * 3 bits the squared error keeps falling below them.
   */
  uniformPercentiles: z
    .array(z.number().gt(0.5).lt(1))
    .min(1)
    .default([...adaLogUniformPercentiles]),
  /**
   * The head's input calibrated per channel and folded into the final LayerNorm, as RepQ-ViT
   * folds the block norms (repq-reparam.ts): the final norm's output carries the same outlier
   * channels as the block norms', which one per-tensor grid of 2^b levels cannot cover.
   */
  foldFinalNorm: z.boolean().default(true),
  /** Query, key and value on one grid per head, as the paper does (otherwise per tensor). */
  perHead: z.boolean().default(true),
  /** Levels in the shift-and-table form the paper deploys (otherwise exact powers). */
  hardware: z.boolean().default(true),
  /** Attention rows (one query's probabilities in one head) scoring the softmax search. */
  attentionRows: count.default(128),
  /** Rows of fc2's input (tokens) scoring the GELU search, at an even stride. */
  geluRows: count.default(32),
  /** Rows of fc2's input with the largest max|x| added to the strided ones. */
  outlierRows: z.number().int().min(0).default(16),
  /**
   * FPCS sizes. By default smaller than the paper's (129 bases on the output, 8 × 16 pairs,
   * keep 32): 16 bases preselected by tensor error, 4 × 16 pairs, keep 4, 6 steps of 4 — about
   * 180 output scores per layer instead of about 1,000, which a CPU search can afford.
   */
  search: z
    .strictObject({
      preselect: count,
      topBases: count,
      scales: count.min(2),
      keep: count,
      steps: z.number().int().min(0),
      perStep: count,
    })
    .default({ ...paperProgressiveSearch, preselect: 16, topBases: 4, keep: 4 }),
});

export type AdaLogOptions = z.input<typeof adaLogOptionsSchema> & Reporting & SessionOptions;

export interface AdaLogPointReport {
  role: string;
  baseNumerator: number;
  scale: number;
  shift: number;
  /** Output error of the chosen quantizer over that of RepQ-ViT's quantizer of the point. */
  errorRatio: number;
}

export interface AdaLogReport {
  method: 'adalog';
  hardware: boolean;
  softmax: AdaLogPointReport[];
  gelu: AdaLogPointReport[];
  /** Candidates scored by the GELU searches, all layers. */
  candidates: number;
  /** The attention operands quantized with one grid per head. */
  perHead: string[];
  seconds: number;
}

export interface AdaLogResult {
  model: ModelProto;
  report: RepQResult['report'] & { adalog: AdaLogReport };
}

type Batches = AsyncIterable<CaptureBatch> | Iterable<CaptureBatch>;

/** AdaLog on RepQ-ViT's calibration; the input model is not modified. */
export async function quantizeAdaLog(
  model: ModelProto,
  structure: ViTStructure,
  batches: Batches,
  options: AdaLogOptions,
): Promise<AdaLogResult> {
  const { run, rest } = splitRunOptions(options);
  const s = parseMethodOptions(adaLogOptionsSchema, rest, 'AdaLog');
  const { logger, onProgress, threads, optimization } = run;
  const images = await holdImages(batches);
  const { weightBits, activationBits, keepFloat } = s;
  const calibration = await calibrateRepQ(model, structure, images, {
    weightBits,
    activationBits,
    keepFloat,
    percentiles: s.uniformPercentiles,
    foldFinalNorm: s.foldFinalNorm,
    ...run,
  });

  const started = performance.now();
  const session = { threads, optimization: optimization ?? ('basic' as const) };
  const softmax = settingsWithRole(calibration, '.attn.softmax');
  const gelu = settingsWithRole(calibration, '.mlp.fc2.input');
  const operands = ['.attn.query', '.attn.key', '.attn.value'].flatMap((r) =>
    settingsWithRole(calibration, r),
  );
  const heads = s.perHead
    ? await searchHeadGrids(calibration.model, operands, images, s.uniformPercentiles, session)
    : [];
  const headsOf = new Map(heads.map((g) => [g.setting.value, g]));
  const problems = await captureProblems(calibration, softmax, gelu, images, s, session, headsOf);
  const report: AdaLogReport = {
    method: 'adalog',
    hardware: s.hardware,
    softmax: [],
    gelu: [],
    candidates: 0,
    perHead: heads.map((g) => g.setting.roles[0] ?? g.setting.value),
    seconds: 0,
  };
  const chosen = new Map<string, AdaLogQuantizer>();
  const total = softmax.length + gelu.length;
  onProgress({ status: 'start', stage: 'AdaLog search', total });
  for (const setting of softmax) {
    const problem = problems.attention.get(setting.value)!;
    const { quantizer, error } = searchSoftmaxBase(problem, activationBits, s.hardware);
    chosen.set(setting.value, quantizer);
    const before = attentionSquaredError(problems.repqSoftmax.get(setting.value)!, problem);
    report.softmax.push(pointReport(setting, quantizer, error / before));
    onProgress({ status: 'advance', stage: 'AdaLog search', done: chosen.size, total });
  }
  for (const setting of gelu) {
    const problem = problems.output.get(setting.value)!;
    const found = searchGeluQuantizer(problem, activationBits, s.hardware, s.search);
    chosen.set(setting.value, found.quantizer);
    report.candidates += found.evaluated;
    const before = problems.repqGelu.get(setting.value)!;
    report.gelu.push(pointReport(setting, found.quantizer, found.error / before));
    onProgress({ status: 'advance', stage: 'AdaLog search', done: chosen.size, total });
  }
  onProgress({ status: 'end', stage: 'AdaLog search' });
  report.seconds = (performance.now() - started) / 1000;
  logger.info(
    `AdaLog W${weightBits}A${activationBits}: ${softmax.length} softmax and ${gelu.length} GELU quantizers searched (${report.candidates} GELU candidates), ${report.seconds.toFixed(1)} s`,
  );

  const replacements = [
    ...[...softmax, ...gelu].map((setting) => ({
      setting,
      tag: 'adalog',
      chain: (value: string, prefix: string) =>
        adaLogFakeQuantCommands(value, prefix, chosen.get(setting.value)!),
    })),
    ...heads.map(headReplacement),
  ];
  const weighted = await replacedWeights(calibration, images, s.weights, replacements, run);
  const context = `AdaLog W${weightBits}A${activationBits} simulated quantization`;
  const result = insertWithReplacements(weighted, replacements, context);
  return { model: result.model, report: { ...result.report, adalog: report } };
}

function pointReport(
  setting: ActivationSetting,
  q: AdaLogQuantizer,
  errorRatio: number,
): AdaLogPointReport {
  return {
    role: setting.roles[0] ?? setting.value,
    baseNumerator: q.baseNumerator,
    scale: q.scale,
    shift: q.shift ?? 0,
    errorRatio,
  };
}

interface Problems {
  attention: Map<string, AttentionProblem>;
  output: Map<string, OutputProblem>;
  /** RepQ-ViT's softmax quantizer applied to the sampled rows (the report's comparison). */
  repqSoftmax: Map<string, Float32Array>;
  /** RepQ-ViT's GELU grid's fc2-output error on the sampled rows. */
  repqGelu: Map<string, number>;
}

/** The sampled rows and references of every searched point, from one float capture. */
async function captureProblems(
  calibration: RepQCalibration,
  softmax: readonly ActivationSetting[],
  gelu: readonly ActivationSetting[],
  images: readonly CaptureBatch[],
  s: z.output<typeof adaLogOptionsSchema>,
  session: SessionOptions,
  headsOf: ReadonlyMap<string, HeadGrids>,
): Promise<Problems> {
  const blocks = calibration.structure.blocks;
  const valueOf = new Map(
    blocks.map((b) => [b.attention.context.probabilities, b.attention.context.value]),
  );
  const byValue = new Map(calibration.quantizers.activations.map((a) => [a.value, a]));
  const pRows = new Map<string, { rows: number[][]; group: number[]; groups: number }>();
  const vs = new Map<string, Float32Array[]>();
  const xs = new Map<string, GeluRows>();
  const softmaxValues = new Set(softmax.map((a) => a.value));
  const geluValues = new Set(gelu.map((a) => a.value));
  const perBatch = (budget: number) => Math.max(1, Math.ceil(budget / images.length));
  await captureFloat(
    calibration.model,
    [...softmax.flatMap((a) => [a.value, valueOf.get(a.value)!]), ...gelu.map((a) => a.value)],
    images,
    (value, data, dims) => {
      const last = dims.at(-1)!;
      if (softmaxValues.has(value)) {
        const entry = pRows.get(value) ?? { rows: [], group: [], groups: 0 };
        const total = data.length / last;
        const take = Math.min(total, perBatch(s.attentionRows));
        for (let i = 0; i < take; i++) {
          const r = Math.floor((i * total) / take);
          entry.rows.push(Array.from(data.subarray(r * last, (r + 1) * last)));
          entry.group.push(entry.groups + Math.floor(r / last));
        }
        entry.groups += total / last;
        pRows.set(value, entry);
      }
      if (geluValues.has(value)) {
        const entry = xs.get(value) ?? { rows: [], top: [], total: 0, inner: last, max: 0 };
        const total = data.length / last;
        const take = Math.min(total, perBatch(s.geluRows));
        for (let i = 0; i < take; i++) {
          const r = Math.floor((i * total) / take);
          entry.rows.push(Array.from(data.subarray(r * last, (r + 1) * last)));
        }
        keepLargestRows(entry, data, last, s.outlierRows);
        entry.total += total;
        xs.set(value, entry);
      }
      if ([...valueOf.values()].includes(value)) {
        vs.set(value, [...(vs.get(value) ?? []), data.slice()]);
      }
    },
    session,
  );

  const problems: Problems = {
    attention: new Map(),
    output: new Map(),
    repqSoftmax: new Map(),
    repqGelu: new Map(),
  };
  for (const setting of softmax) {
    const p = pRows.get(setting.value)!;
    const vValue = valueOf.get(setting.value)!;
    const vFloat = concat(vs.get(vValue)!);
    const n = p.rows[0]!.length;
    const d = vFloat.length / (p.groups * n);
    const grids = headsOf.get(vValue);
    const vQuantized = grids
      ? applyHeadGrids(vFloat, grids, vFloat.length / p.groups)
      : applyAffine(vFloat, byValue.get(vValue));
    const pData = Float32Array.from(p.rows.flat());
    const group = Int32Array.from(p.group);
    const reference = attentionReference(pData, group, vFloat, n, d);
    problems.attention.set(setting.value, { p: pData, group, values: vQuantized, n, d, reference });
    problems.repqSoftmax.set(setting.value, repqSoftmax(pData, setting));
  }
  const index = new GraphIndex(calibration.model);
  const names = new NamePrefixes(index);
  for (const setting of gelu) {
    const fc2 = blocks.find((b) => b.mlp.fc2.input === setting.value)!.mlp.fc2;
    const weightSetting = calibration.quantizers.weights.find((w) => w.layer.node === fc2.node);
    const float = readWeight(index, fc2.role, fc2);
    const quantized = weightSetting
      ? weightCommands(index, names, weightSetting).quantized
      : float.values;
    const axis = outputChannelAxis(fc2);
    const inOut = (w: Float32Array) => (axis === 1 ? w : transpose(w, float.dims));
    const x = xs.get(setting.value)!;
    const all = [...x.rows, ...x.top.map((t) => t.row)];
    const xData = Float32Array.from(all.flat());
    const rows = all.length;
    const outer = fc2.outFeatures;
    const reference = matmulRows(xData, rows, x.inner, inOut(float.values), outer);
    const stand = (x.total - x.top.length) / Math.max(1, x.rows.length);
    const rowWeights = Float64Array.from(all, (_, i) => (i < x.rows.length ? stand : 1));
    const weight = inOut(quantized);
    const max = x.max + 0.16997;
    const problem = { x: xData, rows, inner: x.inner, weight, outer, reference, rowWeights, max };
    problems.output.set(setting.value, problem);
    const repq = applyAffine(xData, setting);
    problems.repqGelu.set(setting.value, outputErrorOf(repq, problem));
  }
  return problems;
}

function outputErrorOf(xq: Float32Array, p: OutputProblem): number {
  return outputSquaredError(xq, p);
}

/** Sampled rows of fc2's input: strided rows, the rows of largest max|x|, and counts. */
interface GeluRows {
  rows: number[][];
  top: { peak: number; row: number[] }[];
  total: number;
  inner: number;
  /** max x over the whole tensor. */
  max: number;
}

/** Keeps the `count` rows of largest max|x| seen so far, and the running max of x. */
function keepLargestRows(entry: GeluRows, data: Float32Array, last: number, count: number) {
  for (let r = 0; r < data.length / last; r++) {
    let peak = 0;
    for (let k = r * last; k < (r + 1) * last; k++) {
      peak = Math.max(peak, Math.abs(data[k]!));
      entry.max = Math.max(entry.max, data[k]!);
    }
    if (entry.top.length >= count && peak <= entry.top.at(-1)!.peak) continue;
    entry.top.push({ peak, row: Array.from(data.subarray(r * last, (r + 1) * last)) });
    entry.top.sort((a, b) => b.peak - a.peak);
    if (entry.top.length > count) entry.top.pop();
  }
}

/** The value operand on its RepQ-ViT grid, as the float chain computes it (or as is). */
function applyAffine(x: Float32Array, setting: ActivationSetting | undefined): Float32Array {
  const q = setting?.quantizer;
  if (!q || q.kind !== 'affine') return x;
  const scale = Math.fround(q.scale);
  const top = 2 ** q.bits - 1;
  return Float32Array.from(x, (v) => {
    const code = Math.min(Math.max(roundHalfEven(Math.fround(v / scale)) + q.zeroPoint, 0), top);
    return (code - q.zeroPoint) * scale;
  });
}

/** RepQ-ViT's log√2 softmax quantizer on the rows, for the report's comparison. */
function repqSoftmax(p: Float32Array, setting: ActivationSetting): Float32Array {
  const q = setting.quantizer;
  if (q.kind !== 'log') return p;
  return logFakeQuantize(p, q.quantizer);
}

function concat(parts: readonly Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((n, a) => n + a.length, 0));
  let at = 0;
  for (const a of parts) {
    out.set(a, at);
    at += a.length;
  }
  return out;
}

/** A [rows, cols] matrix as [cols, rows]. */
function transpose(w: Float32Array, dims: readonly number[]): Float32Array {
  const [rows, cols] = [dims[0]!, dims[1]!];
  const out = new Float32Array(w.length);
  for (let r = 0; r < rows; r++)
    for (let c = 0; c < cols; c++) out[c * rows + r] = w[r * cols + c]!;
  return out;
}
