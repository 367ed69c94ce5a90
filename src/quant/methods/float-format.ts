/**
 * Floating-point post-training quantization in the manner of LLM-FP4's FPQ baseline
 * (arXiv:2310.16836, §3), gradient-free with the MSE metric:
 *
 * - weights: every linear layer's weight on the weight format with one scale per output channel
 *   (the per-channel exponent bias), each searched by the channel's squared error;
 * - activations: the inputs of every linear layer and both operands of both attention matmuls
 *   (the points of quant-points.ts, as the uniform simulation uses) on the activation format with
 *   one scale per tensor, searched by the squared error on captured calibration values.
 *
 * A scale s is the real-valued exponent bias b̃ in another guise (x̂ = s·FP(x / s)); the search
 * starts from s₀ = max|x| / max_format (the paper's initial b̃, the max mapped to the format's
 * max) and tries s₀·2^(−j/16), j = 0 … 63 (up to 16× more clipping), where the paper scans b̃
 * linearly on [0.01, 1.2]·b̃_init. The pre-shifted exponent bias (folding per-channel activation
 * biases into weights) is not part of this method.
 */
import type { ModelProto } from 'onnx-buf';
import { z } from 'zod';
import { CalibrationError, InputError, UnsupportedModelError } from '../../errors.js';
import { applyCommands, type Command } from '../../graph/commands.js';
import { GraphIndex } from '../../graph/graph.js';
import { noProgress, silentLogger, type Reporting } from '../../log.js';
import { capture, holdImages, type CaptureBatch } from '../../runtime/capture.js';
import type { SessionOptions } from '../../runtime/session.js';
import type { ViTStructure } from '../../vit/types.js';
import {
  floatFakeQuantCommands,
  floatFakeQuantizeChannels,
  floatFormats,
  floatScaleForMax,
  floatSquaredError,
  type FloatFormat,
} from '../float-formats.js';
import { excludePoints, quantPoints, type ActivationPoint } from '../quant-points.js';
import {
  NamePrefixes,
  outputChannelAxis,
  readWeight,
  replaceConstant,
} from '../quantizer-commands.js';

const format = z.enum(['e4m3', 'e5m2', 'e3m2', 'e2m1']);

export const floatFormatOptionsSchema = z.strictObject({
  weightFormat: format,
  activationFormat: format,
  /** Candidate scales per search: s₀·2^(−j/16), j < candidates. */
  candidates: z.number().int().min(1).max(256).default(64),
  /** Captured values kept per activation tensor for its search (an even stride per batch). */
  samplesPerTensor: z.number().int().min(1024).default(65536),
  /** Selectors of points kept in float (see quant-points.ts). */
  keepFloat: z.array(z.string()).default([]),
});

export type FloatFormatOptions = z.input<typeof floatFormatOptionsSchema> &
  Reporting &
  SessionOptions;

export interface FloatFormatReport {
  method: 'fp';
  weightFormat: string;
  activationFormat: string;
  calibration: { images: number; seconds: number };
  /** One per quantized activation value: its roles, scale and the scale's ratio to s₀. */
  activations: { roles: string[]; value: string; scale: number; clipRatio: number }[];
  weights: { role: string; meanClipRatio: number }[];
  kept: string[];
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

/** Up to `limit` values of every captured tensor, an even stride through each batch. */
async function captureSamples(
  model: ModelProto,
  values: string[],
  images: readonly CaptureBatch[],
  limit: number,
  session: SessionOptions,
): Promise<Map<string, Float32Array>> {
  const perBatch = Math.ceil(limit / images.length);
  const parts = new Map<string, Float32Array[]>(values.map((v) => [v, []]));
  await capture(
    model,
    values,
    images,
    (tensors) => {
      for (const [value, tensor] of tensors) {
        const data = tensor.data as Float32Array;
        const stride = Math.max(1, data.length / perBatch);
        const count = Math.min(perBatch, data.length);
        parts
          .get(value)!
          .push(Float32Array.from({ length: count }, (_, i) => data[Math.floor(i * stride)]!));
      }
    },
    session,
  );
  const out = new Map<string, Float32Array>();
  for (const [value, list] of parts) {
    const all = new Float32Array(list.reduce((n, a) => n + a.length, 0));
    let at = 0;
    for (const a of list) {
      all.set(a, at);
      at += a.length;
    }
    out.set(value, all);
  }
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
  const {
    logger = silentLogger,
    onProgress = noProgress,
    threads,
    optimization,
    ...rest
  } = options;
  const parsed = floatFormatOptionsSchema.safeParse(rest);
  if (!parsed.success) {
    const problems = parsed.error.issues.map(
      (i) => `${i.path.join('.') || '(root)'}: ${i.message}`,
    );
    throw new InputError(`invalid float-format options: ${problems.join('; ')}`);
  }
  const settings = parsed.data;
  const weightFormat = floatFormats[settings.weightFormat];
  const activationFormat = floatFormats[settings.activationFormat];
  const started = performance.now();
  const images = await holdImages(batches);
  const count = images.reduce((n, b) => n + (b.dims[0] ?? 0), 0);
  if (count === 0) throw new CalibrationError('float-format PTQ needs calibration images');

  const { points, kept } = excludePoints(quantPoints(structure), settings.keepFloat);
  const groups = groupByValue(points.activations);
  const session = { threads, optimization };
  const samples = await captureSamples(
    model,
    [...groups.keys()],
    images,
    settings.samplesPerTensor,
    session,
  );

  const index = new GraphIndex(model);
  const names = new NamePrefixes(index);
  const commands: Command[] = [];
  const activations: FloatFormatReport['activations'] = [];
  for (const [value, group] of groups) {
    const best = searchFloatScale(samples.get(value)!, activationFormat, settings.candidates);
    const prefix = names.prefix(`vitslim/fp/${group.roles[0] ?? value}`);
    const chain = floatFakeQuantCommands(value, prefix, activationFormat, {
      values: Float32Array.of(best.scale),
      dims: [],
    });
    commands.push(
      ...chain.commands,
      ...group.nodes.flatMap((n) => rewire(index, n, value, chain.output)),
    );
    activations.push({ roles: group.roles, value, scale: best.scale, clipRatio: best.ratio });
  }
  const weights: FloatFormatReport['weights'] = [];
  onProgress({ status: 'start', stage: 'weight scales', total: points.weights.length });
  for (const point of points.weights) {
    const { values, dims } = readWeight(index, point.role, point.layer);
    const axis = outputChannelAxis(point.layer);
    const { scales, meanRatio } = channelScales(
      values,
      dims,
      axis,
      weightFormat,
      settings.candidates,
    );
    const quantized = floatFakeQuantizeChannels(values, dims, axis, scales, weightFormat);
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
      calibration: { images: count, seconds },
      activations,
      weights,
      kept: kept.map((k) => k.role),
    },
  };
}
