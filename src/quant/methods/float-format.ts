/**
 * Floating-point post-training quantization in the manner of LLM-FP4's FPQ
 * (arXiv:2310.16836, §3), gradient-free with the MSE metric:
 *
 * - weights: every linear layer's weight on the weight format with one scale per output channel
 *   (the per-channel exponent bias), each searched by the channel's squared error;
 * - activations: the inputs of every linear layer and both operands of both attention matmuls
 *   (the points of quant-points.ts, as the uniform simulation uses) on the activation format,
 *   searched by the squared error on captured calibration values. With `preShift` (default) the
 *   inputs of MatMul/Gemm layers get the paper's pre-shifted exponent bias
 *   (float-format-shift.ts): one searched tensor scale ρ times a power of two per input channel,
 *   folded into the layer's weight rows before the weight is quantized; the other points (the
 *   attention matmul operands, the image) one scale per tensor.
 *
 * A scale s is the real-valued exponent bias b̃ in another guise (x̂ = s·FP(x / s)); the search
 * starts from s₀ = max|x| / max_format (the paper's initial b̃, the max mapped to the format's
 * max) and tries s₀·2^(−j/16), j = 0 … 63 (up to 16× more clipping), where the paper scans b̃
 * linearly on [0.01, 1.2]·b̃_init. The paper's ViT numbers score candidates by a Hessian-based
 * loss (gradients) and search the format per layer; here the error is the tensor's own squared
 * error and the format is the one asked for.
 */
import type { ModelProto } from 'onnx-buf';
import { z } from 'zod';
import { CalibrationError, UnsupportedModelError } from '../../errors.js';
import { applyCommands, type Command } from '../../graph/commands.js';
import { GraphIndex } from '../../graph/graph.js';
import type { Reporting } from '../../log.js';
import { mulberry32 } from '../../data/sample.js';
import { capture, holdImages, type CaptureBatch } from '../../runtime/capture.js';
import type { SessionOptions } from '../../runtime/session.js';
import type { LinearLayer, ViTStructure } from '../../vit/types.js';
import {
  floatFakeQuantCommands,
  floatFakeQuantizeChannels,
  floatFormats,
  floatScaleForMax,
  floatSquaredError,
  type FloatFormat,
  type FloatScaleTensor,
} from '../float-formats.js';
import {
  excludePoints,
  quantPoints,
  type ActivationPoint,
  type KeptPoint,
  type QuantPoints,
} from '../quant-points.js';
import {
  NamePrefixes,
  outputChannelAxis,
  readWeight,
  replaceConstant,
} from '../quantizer-commands.js';
import {
  preShiftedWeight,
  preShiftScales,
  scaleInputChannels,
  searchPreShift,
} from './float-format-shift.js';
import { parseMethodOptions, splitRunOptions } from './method-options.js';

const format = z.enum(['e4m3', 'e5m2', 'e3m2', 'e2m1']);

export const floatFormatOptionsSchema = z.strictObject({
  weightFormat: format,
  activationFormat: format,
  /** Candidate scales per search: s₀·2^(−j/16), j < candidates. */
  candidates: z.number().int().min(1).max(256).default(64),
  /** Captured values kept per activation tensor for its search (whole rows drawn at random). */
  samplesPerTensor: z.number().int().min(1024).default(65536),
  /** Selectors of points kept in float (see quant-points.ts). */
  keepFloat: z.array(z.string()).default([]),
  /** LLM-FP4's pre-shifted exponent bias on the inputs of MatMul/Gemm layers. */
  preShift: z.boolean().default(true),
});

export type FloatFormatOptions = z.input<typeof floatFormatOptionsSchema> &
  Reporting &
  SessionOptions;

export interface FloatFormatReport {
  method: 'fp';
  weightFormat: string;
  activationFormat: string;
  preShift: boolean;
  calibration: { images: number; seconds: number };
  /** One per quantized activation value: its roles, scale and the scale's ratio to s₀. */
  activations: FloatActivationReport[];
  weights: { role: string; meanClipRatio: number }[];
  keptFloat: KeptPoint[];
}

export interface FloatActivationReport {
  roles: string[];
  value: string;
  /** The tensor scale (ρ when pre-shifted). */
  scale: number;
  clipRatio: number;
  /** Pre-shifted inputs: the largest k_c and the mean k_c of the per-channel powers of two. */
  shift?: { max: number; mean: number };
}

export interface FloatFormatResult {
  model: ModelProto;
  report: FloatFormatReport;
}

type Batches = AsyncIterable<CaptureBatch> | Iterable<CaptureBatch>;

/** The scale of least squared error among s₀·2^(−j/16), and its ratio to s₀. */
export function searchFloatScale(
  values: Float32Array,
  f: FloatFormat,
  candidates: number,
): { scale: number; ratio: number } {
  let absMax = 0;
  for (const v of values) absMax = Math.max(absMax, Math.abs(v));
  const start = floatScaleForMax(absMax, f);
  let best = { scale: start, ratio: 1 };
  let bestError = Infinity;
  for (let j = 0; j < candidates; j++) {
    const ratio = 2 ** (-j / 16);
    const scale = Math.fround(start * ratio);
    if (!(scale > 0)) break;
    const error = floatSquaredError(values, f, scale);
    if (error < bestError) [best, bestError] = [{ scale, ratio }, error];
  }
  return best;
}

/** Per-output-channel scales of a weight, each searched on its channel. */
function channelScales(
  values: Float32Array,
  dims: readonly number[],
  axis: number,
  f: FloatFormat,
  candidates: number,
): { scales: Float32Array; meanRatio: number } {
  const channels = dims[axis]!;
  const inner = dims.slice(axis + 1).reduce((p, d) => p * d, 1);
  const perChannel = values.length / channels;
  const byChannel = Array.from({ length: channels }, () => new Float32Array(perChannel));
  const filled = new Int32Array(channels);
  for (let i = 0; i < values.length; i++) {
    const c = Math.floor(i / inner) % channels;
    byChannel[c]![filled[c]!++] = values[i]!;
  }
  const scales = new Float32Array(channels);
  let ratios = 0;
  byChannel.forEach((channel, c) => {
    const best = searchFloatScale(channel, f, candidates);
    scales[c] = best.scale;
    ratios += best.ratio;
  });
  return { scales, meanRatio: ratios / channels };
}

/**
 * Values read only as the input of MatMul/Gemm layers with a 2-D weight (the last axis is the
 * input channel), where a power of two per channel folds into the weight rows.
 */
function preShiftValues(points: QuantPoints): Set<string> {
  const readers = new Map<string, LinearLayer[]>();
  for (const w of points.weights) {
    readers.set(w.layer.input, [...(readers.get(w.layer.input) ?? []), w.layer]);
  }
  const out = new Set<string>();
  for (const [value, layers] of readers) {
    const shared = points.activations.filter((p) => p.value === value);
    const linearOnly = shared.every((p) => p.kind === 'linear-input');
    if (linearOnly && layers.every((l) => l.opType !== 'Conv')) out.add(value);
  }
  return out;
}

/** Activation points grouped by the value they quantize. */
function groupByValue(points: readonly ActivationPoint[]) {
  const groups = new Map<string, { roles: string[]; nodes: string[] }>();
  for (const p of points) {
    const g = groups.get(p.value) ?? { roles: [], nodes: [] };
    g.roles.push(p.role);
    if (!g.nodes.includes(p.node)) g.nodes.push(p.node);
    groups.set(p.value, g);
  }
  return groups;
}

/** Sampled rows of a captured tensor (its last axis) and the max |x| of each of its channels. */
interface CapturedRows {
  rows: Float32Array;
  channelMax: Float32Array;
}

/**
 * About `limit` values of every captured tensor, as whole rows of its last axis, and the exact
 * per-channel max |x| over all of it. Row n of the whole calibration set (counted across batches)
 * is kept when a draw seeded by n falls below limit / total: the sample does not depend on how
 * the images are batched, and it cannot alias with the tensor's own period (an even stride
 * through [B, H, dh, N] keys, for one, keeps the same few of the dh rows of every head, and so
 * keeps or misses the outlier channels by chance of alignment).
 */
async function captureRows(
  model: ModelProto,
  values: string[],
  images: readonly CaptureBatch[],
  limit: number,
  session: SessionOptions,
): Promise<Map<string, CapturedRows>> {
  const parts = new Map<string, Float32Array[]>(values.map((v) => [v, []]));
  const maxima = new Map<string, Float32Array>();
  const rowsSeen = new Map<string, number>();
  const totalImages = images.reduce((n, b) => n + (b.dims[0] ?? 0), 0);
  await capture(
    model,
    values,
    images,
    (tensors) => {
      for (const [value, tensor] of tensors) {
        const data = tensor.data as Float32Array;
        const channels = Number(tensor.dims.at(-1) ?? 1);
        const max = maxima.get(value) ?? new Float32Array(channels);
        for (let i = 0; i < data.length; i++) {
          const a = Math.abs(data[i]!);
          if (a > max[i % channels]!) max[i % channels] = a;
        }
        maxima.set(value, max);
        const perImage = data.length / Math.max(1, Number(tensor.dims[0] ?? 1));
        const share = Math.min(1, limit / (perImage * totalImages));
        const first = rowsSeen.get(value) ?? 0;
        parts.get(value)!.push(sampleRows(data, channels, first, share));
        rowsSeen.set(value, first + data.length / channels);
      }
    },
    session,
  );
  const out = new Map<string, CapturedRows>();
  for (const [value, list] of parts) {
    const rows = new Float32Array(list.reduce((n, a) => n + a.length, 0));
    let at = 0;
    for (const a of list) {
      rows.set(a, at);
      at += a.length;
    }
    out.set(value, { rows, channelMax: maxima.get(value)! });
  }
  return out;
}

/** The rows of `data` (rows first, first + 1, … of the whole set) whose draw is below `share`. */
function sampleRows(
  data: Float32Array,
  channels: number,
  first: number,
  share: number,
): Float32Array {
  const total = data.length / channels;
  const kept: number[] = [];
  for (let r = 0; r < total; r++) {
    if (share >= 1 || mulberry32(first + r)() < share) kept.push(r);
  }
  const out = new Float32Array(kept.length * channels);
  kept.forEach((r, k) => out.set(data.subarray(r * channels, (r + 1) * channels), k * channels));
  return out;
}

function rewire(index: GraphIndex, node: string, value: string, output: string): Command[] {
  const commands: Command[] = [];
  index.node(node).input.forEach((input, slot) => {
    if (input === value) commands.push({ kind: 'setNodeInput', node, index: slot, value: output });
  });
  if (commands.length === 0) {
    throw new UnsupportedModelError(`node ${node} does not read ${value} as expected`, node);
  }
  return commands;
}

/**
 * A simulated FP copy of `model`: weights baked as fake-quantized values, activation chains of
 * float-formats.ts on every selected point. The input model is not modified.
 */
export async function quantizeFloatFormat(
  model: ModelProto,
  structure: ViTStructure,
  batches: Batches,
  options: FloatFormatOptions,
): Promise<FloatFormatResult> {
  const { run, rest } = splitRunOptions(options);
  const { logger, onProgress, threads, optimization } = run;
  const settings = parseMethodOptions(floatFormatOptionsSchema, rest, 'float-format');
  const weightFormat = floatFormats[settings.weightFormat];
  const activationFormat = floatFormats[settings.activationFormat];
  const started = performance.now();
  const images = await holdImages(batches);
  const count = images.reduce((n, b) => n + (b.dims[0] ?? 0), 0);
  if (count === 0) throw new CalibrationError('float-format PTQ needs calibration images');

  const { points, kept } = excludePoints(quantPoints(structure), settings.keepFloat);
  const groups = groupByValue(points.activations);
  const shifted = settings.preShift ? preShiftValues(points) : new Set<string>();
  const session = { threads, optimization };
  const captured = await captureRows(
    model,
    [...groups.keys()],
    images,
    settings.samplesPerTensor,
    session,
  );

  const index = new GraphIndex(model);
  const names = new NamePrefixes(index);
  const commands: Command[] = [];
  const activations: FloatActivationReport[] = [];
  const exponents = new Map<string, Int32Array>();
  for (const [value, group] of groups) {
    const { rows, channelMax } = captured.get(value)!;
    const prefix = names.prefix(`vitslim/fp/${group.roles[0] ?? value}`);
    let scale: FloatScaleTensor;
    let report: FloatActivationReport;
    if (shifted.has(value)) {
      const best = searchPreShift(rows, channelMax, activationFormat, settings.candidates);
      exponents.set(value, best.exponents);
      const ks = [...best.exponents];
      scale = { values: preShiftScales(best.rho, best.exponents), dims: [ks.length] };
      const shift = { max: Math.max(...ks), mean: ks.reduce((t, k) => t + k, 0) / ks.length };
      report = { roles: group.roles, value, scale: best.rho, clipRatio: best.ratio, shift };
    } else {
      const best = searchFloatScale(rows, activationFormat, settings.candidates);
      scale = { values: Float32Array.of(best.scale), dims: [] };
      report = { roles: group.roles, value, scale: best.scale, clipRatio: best.ratio };
    }
    const chain = floatFakeQuantCommands(value, prefix, activationFormat, scale);
    commands.push(
      ...chain.commands,
      ...group.nodes.flatMap((n) => rewire(index, n, value, chain.output)),
    );
    activations.push(report);
  }
  const weights: FloatFormatReport['weights'] = [];
  onProgress({ status: 'start', stage: 'weight scales', total: points.weights.length });
  for (const point of points.weights) {
    const { values, dims } = readWeight(index, point.role, point.layer);
    const axis = outputChannelAxis(point.layer);
    const shift = exponents.get(point.layer.input);
    const folded = shift ? scaleInputChannels(values, dims, 1 - axis, shift, -1) : values;
    const { scales, meanRatio } = channelScales(
      folded,
      dims,
      axis,
      weightFormat,
      settings.candidates,
    );
    const quantized = shift
      ? preShiftedWeight(values, dims, axis, shift, scales, weightFormat)
      : floatFakeQuantizeChannels(values, dims, axis, scales, weightFormat);
    commands.push(
      ...replaceConstant(index, names, point.layer.weight, point.layer.node, dims, quantized),
    );
    weights.push({ role: point.role, meanClipRatio: meanRatio });
    const done = weights.length;
    onProgress({ status: 'advance', stage: 'weight scales', done, total: points.weights.length });
  }
  onProgress({ status: 'end', stage: 'weight scales' });
  const quantizedModel = applyCommands(model, commands, {
    removeUnused: true,
    context: `float-format W-${settings.weightFormat} A-${settings.activationFormat}`,
  });
  const seconds = (performance.now() - started) / 1000;
  logger.info(
    `FP PTQ W ${settings.weightFormat} A ${settings.activationFormat}: ${activations.length} activation tensors, ${weights.length} weights, ${seconds.toFixed(1)} s`,
  );
  return {
    model: quantizedModel,
    report: {
      method: 'fp',
      weightFormat: settings.weightFormat,
      activationFormat: settings.activationFormat,
      preShift: settings.preShift,
      calibration: { images: count, seconds },
      activations,
      weights,
      keptFloat: kept,
    },
  };
}
