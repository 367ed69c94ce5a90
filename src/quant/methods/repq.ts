/**
 * RepQ-ViT (Li et al., arXiv:2212.08254, ICCV 2023; reference notes §6), as its official code
 * (zkkli/RepQ-ViT, `classification/test_quant.py`) runs it:
 *
 * 1. Every linear layer (patch embedding and head included) gets asymmetric per-output-channel
 *    weights at w bits; its input, and both operands of both attention matmuls, an asymmetric
 *    per-tensor quantizer at a bits; the image entering the patch embedding 8 bits; the softmax
 *    output the log√2 quantizer at a bits. The LayerNorm outputs read by qkv and fc1 are
 *    quantized per channel. Every quantizer is initialised by the percentile-MSE search
 *    (percentile-mse.ts) on its own tensor.
 * 2. Calibration is sequential, as RepQ's single quantized forward pass: each activation
 *    quantizer sees the tensor produced with the weights and every earlier quantizer already
 *    quantized (sequential.ts does this level by level, exactly).
 * 3. Each per-channel LayerNorm grid is then folded into the LayerNorm's γ, β and the next
 *    layer's weight and bias (repq-reparam.ts) and replaced by one per-tensor grid; the weights
 *    of those layers are quantized again from their rewritten values. The other quantizers keep
 *    their calibration, as RepQ's second pass only re-initialises those weights.
 *
 * `calibrateRepQ` returns the reparameterised float model and every quantizer's setting;
 * `insertRepQQuantizers` writes them as a simulated (fake-quant) model; `quantizeRepQ` does both,
 * with the weight values of `options.weights` (RepQ-ViT's rounding, GPTQ or ERQ) in between.
 */
import type { ModelProto } from 'onnx-buf';
import { InternalError } from '../../errors.js';
import { applyCommands, type Command } from '../../graph/commands.js';
import { GraphIndex } from '../../graph/graph.js';
import { holdImages, type CaptureBatch } from '../../runtime/capture.js';
import type { SessionOptions } from '../../runtime/session.js';
import { recognizeViT } from '../../vit/index.js';
import type { ViTStructure } from '../../vit/types.js';
import {
  percentileMseAffine,
  percentileMseAffineChannels,
  percentileMseLog,
} from '../percentile-mse.js';
import {
  excludePoints,
  quantPoints,
  type ActivationPoint,
  type WeightPoint,
} from '../quant-points.js';
import {
  insertQuantizers,
  NamePrefixes,
  outputChannelAxis,
  readWeight,
  weightCommands,
  type ActivationQuantizer,
  type ActivationSetting,
  type WeightSetting,
} from '../quantizer-commands.js';
import { calibrateSequentially, type CapturedTensor, type PointGroup } from '../sequential.js';
import { erqWeights } from './erq.js';
import { gptqWeights } from './gptq.js';
import { foldCommands, planFolds, reparameterisation, type NormFold } from './repq-reparam.js';
import {
  repqOptionsSchema,
  type RepQActivationReport,
  type RepQCalibration,
  type RepQNormReport,
  type RepQOptions,
  type RepQResult,
  type RepQSettings,
} from './repq-types.js';
import { parseMethodOptions, requireOpset13, splitRunOptions } from './method-options.js';

export * from './repq-types.js';

type Batches = AsyncIterable<CaptureBatch> | Iterable<CaptureBatch>;

/** RepQ-ViT end to end: calibration, reparameterisation, fake-quant model. */
export async function quantizeRepQ(
  model: ModelProto,
  structure: ViTStructure,
  batches: Batches,
  options: RepQOptions,
): Promise<RepQResult> {
  const images = await holdImages(batches);
  const calibration = await calibrateRepQ(model, structure, images, options);
  return insertRepQQuantizers(await weightMethod(calibration, images, options));
}

/** The weight values chosen by `options.weights` on a calibration (as is for 'rtn'). */
async function weightMethod(
  calibration: RepQCalibration,
  images: readonly CaptureBatch[],
  options: RepQOptions,
): Promise<RepQCalibration> {
  const { logger, onProgress, threads, optimization } = options;
  const run = { logger, onProgress, threads, optimization };
  switch (options.weights ?? 'rtn') {
    case 'rtn':
      return calibration;
    case 'gptq':
      return gptqWeights(calibration, images, run);
    case 'erq':
      return erqWeights(calibration, images, run);
  }
}

/**
 * Calibrates RepQ-ViT's quantizers on `batches` and reparameterises the post-LayerNorm ones.
 * The calibration images are held in memory (32 is what the method uses). The input model is
 * not modified.
 */
export async function calibrateRepQ(
  model: ModelProto,
  structure: ViTStructure,
  batches: Batches,
  options: RepQOptions,
): Promise<RepQCalibration> {
  const { run, rest } = splitRunOptions(options);
  const { logger, onProgress, threads, optimization } = run;
  const settings = parseSettings(rest);
  requireOpset13(model, 'RepQ-ViT');
  const started = performance.now();
  const images = await holdImages(batches);
  const index = new GraphIndex(model);
  const { points, kept } = excludePoints(quantPoints(structure), settings.keepFloat);
  const groups = groupPoints(points.activations);
  const quantized = new Set(groups.map((g) => g.value));
  const { folds, norms } = planFolds(index, structure, quantized, settings.foldFinalNorm);

  // pass 1: weights from their original values, then activations sequentially in graph order
  const weights = points.weights.map((p) => weightSetting(index, p, settings));
  const weighted = insertQuantizers(model, { activations: [], weights }, 'RepQ-ViT weights');
  const chosen = new Map<string, number>();
  const choose = (group: PointGroup, tensor: CapturedTensor) =>
    chooseQuantizer(group, tensor, settings, folds.has(group.value), chosen);
  const sequential = await calibrateSequentially(
    weighted,
    [structure.input, ...structure.blocks.map((b) => b.input), structure.blocks.at(-1)!.output],
    groups,
    images,
    choose,
    { onProgress, stage: 'RepQ-ViT calibration', ...sessionOptions(threads, optimization) },
  );

  // reparameterisation, then the weights quantized again from the rewritten model
  const second = reparameterise(model, index, sequential.settings, folds, norms, settings);
  const seconds = (performance.now() - started) / 1000;
  const count = images.reduce((n, b) => n + (b.dims[0] ?? 0), 0);
  logger.info(
    `RepQ-ViT W${settings.weightBits}A${settings.activationBits}: ${second.activations.length} activation quantizers calibrated in ${sequential.passes} passes over ${count} images, ${norms.filter((n) => n.reparameterised).length} norms reparameterised, ${seconds.toFixed(1)} s`,
  );
  return {
    model: second.model,
    structure: second.structure,
    quantizers: { activations: second.activations, weights: second.weights },
    report: {
      method: 'repq-vit',
      weightBits: settings.weightBits,
      activationBits: settings.activationBits,
      patchEmbedBits: settings.patchEmbedBits,
      softmax: settings.softmax,
      zeroPoint: settings.zeroPoint,
      percentiles: settings.percentiles,
      calibration: { images: count, passes: sequential.passes, seconds },
      activations: second.activations.map((s) => activationReport(s, second.channels, chosen)),
      norms,
      keptFloat: kept,
    },
  };
}

/** The fake-quant model of a RepQ-ViT calibration, with each weight's quantization error. */
export function insertRepQQuantizers(calibration: RepQCalibration): RepQResult {
  const { report, quantizers } = calibration;
  const context = `RepQ-ViT W${report.weightBits}A${report.activationBits} simulated quantization`;
  const model = insertQuantizers(calibration.model, quantizers, context);
  const index = new GraphIndex(calibration.model);
  const names = new NamePrefixes(index);
  const weights = quantizers.weights.map((s) => {
    const { original, quantized } = weightCommands(index, names, s);
    const relativeMse = relativeError(original, quantized);
    return { role: s.role, bits: s.bits, channels: s.params.length, relativeMse };
  });
  return { model, report: { ...report, weights } };
}

function parseSettings(value: unknown): RepQSettings {
  return parseMethodOptions(repqOptionsSchema, value, 'RepQ-ViT');
}

/**
 * Calibration sessions at 'basic' unless asked otherwise: from 'extended' on, onnxruntime folds
 * a chain's final Mul into the next MatMul, which rounds differently from the ops as written.
 */
function sessionOptions(threads?: number, optimization?: SessionOptions['optimization']) {
  return { optimization: optimization ?? 'basic', ...(threads ? { threads } : {}) } as const;
}

/** Activation points grouped by the value they quantize, in graph order. */
function groupPoints(points: readonly ActivationPoint[]): PointGroup[] {
  const groups = new Map<string, PointGroup>();
  for (const p of points) {
    const group = groups.get(p.value);
    if (!group) groups.set(p.value, { value: p.value, roles: [p.role], nodes: [p.node] });
    else {
      group.roles.push(p.role);
      if (!group.nodes.includes(p.node)) group.nodes.push(p.node);
    }
  }
  return [...groups.values()];
}

/** Asymmetric per-output-channel weight grids by the percentile-MSE search. */
function weightSetting(index: GraphIndex, point: WeightPoint, s: RepQSettings): WeightSetting {
  const { values, dims } = readWeight(index, point.role, point.layer);
  const axis = outputChannelAxis(point.layer);
  const bits = s.weightBits;
  const choices = percentileMseAffineChannels(values, dims, axis, bits, s.percentiles);
  return { role: point.role, layer: point.layer, bits, params: choices.map((c) => c.params) };
}

/** A group's quantizer from its tensor; records the percentile chosen, for the report. */
function chooseQuantizer(
  group: PointGroup,
  tensor: CapturedTensor,
  settings: RepQSettings,
  perChannel: boolean,
  chosen: Map<string, number>,
): ActivationQuantizer {
  const { activationBits: a, percentiles } = settings;
  if (perChannel) {
    const choices = percentileMseAffineChannels(tensor.data, tensor.dims, -1, a, percentiles);
    chosen.set(group.value, median(choices.map((c) => c.percentile)));
    return { kind: 'affine-channel', bits: a, params: choices.map((c) => c.params) };
  }
  const softmax = group.roles.some((r) => r.endsWith('.attn.softmax'));
  if (softmax && settings.softmax !== 'uniform') {
    const choice = percentileMseLog(tensor.data, a, settings.softmax, percentiles);
    chosen.set(group.value, choice.percentile);
    return { kind: 'log', quantizer: choice.quantizer };
  }
  const b = group.roles.includes('patch_embed.input') ? settings.patchEmbedBits : a;
  const choice = percentileMseAffine(tensor.data, b, percentiles);
  chosen.set(group.value, choice.percentile);
  return { kind: 'affine', bits: b, ...choice.params };
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((x, y) => x - y);
  return sorted[Math.floor(sorted.length / 2)] ?? NaN;
}

type ChannelSpread = Map<string, NonNullable<RepQActivationReport['channels']>>;

/**
 * RepQ's second pass: every per-channel LayerNorm grid folded into the model and replaced by its
 * per-tensor grid; the weights quantized from the rewritten model (only the folded layers'
 * change; the others come out as in pass 1).
 */
function reparameterise(
  model: ModelProto,
  index: GraphIndex,
  calibrated: readonly ActivationSetting[],
  folds: ReadonlyMap<string, NormFold>,
  norms: RepQNormReport[],
  settings: RepQSettings,
) {
  const names = new NamePrefixes(index);
  const channels: ChannelSpread = new Map();
  const commands: Command[] = [];
  const activations = calibrated.map((setting): ActivationSetting => {
    const q = setting.quantizer;
    const fold = folds.get(setting.value);
    if (!fold || q.kind !== 'affine-channel') return setting;
    const rep = reparameterisation(q.params, settings.zeroPoint === 'rounded');
    commands.push(...foldCommands(index, names, fold, rep));
    norms.find((n) => n.role === fold.norm.role)!.ratio = {
      min: Math.min(...rep.ratio),
      max: Math.max(...rep.ratio),
    };
    const steps = q.params.map((p) => p.scale);
    channels.set(setting.value, {
      count: steps.length,
      scaleMin: Math.min(...steps),
      scaleMax: Math.max(...steps),
    });
    const { scale, zeroPoint } = rep;
    const quantizer: ActivationQuantizer = { kind: 'affine', bits: q.bits, scale, zeroPoint };
    return { ...setting, quantizer };
  });
  const folded = applyCommands(model, commands, { context: 'RepQ-ViT scale reparameterisation' });
  const structure = recognizeViT(folded);
  const foldedIndex = new GraphIndex(folded);
  const points = excludePoints(quantPoints(structure), settings.keepFloat).points.weights;
  const weights = points.map((p) => weightSetting(foldedIndex, p, settings));
  return { model: folded, structure, activations, weights, channels };
}

function activationReport(
  setting: ActivationSetting,
  spread: ChannelSpread,
  chosen: ReadonlyMap<string, number>,
): RepQActivationReport {
  const q = setting.quantizer;
  const channels = spread.get(setting.value);
  const base = {
    roles: setting.roles,
    value: setting.value,
    percentile: chosen.get(setting.value) ?? NaN,
    ...(channels ? { channels } : {}),
  };
  switch (q.kind) {
    case 'log':
      return { ...base, kind: 'log', bits: q.quantizer.bits, scale: q.quantizer.scale };
    case 'affine':
      return { ...base, kind: 'affine', bits: q.bits, scale: q.scale, zeroPoint: q.zeroPoint };
    case 'affine-channel':
      // only folded norms are calibrated per channel, and folding replaced their grids
      throw new InternalError(`${setting.value}: a per-channel grid was left after folding`);
  }
}

function relativeError(original: Float32Array, quantized: Float32Array): number {
  let energy = 0;
  let error = 0;
  for (let i = 0; i < original.length; i++) {
    energy += original[i]! ** 2;
    error += (original[i]! - quantized[i]!) ** 2;
  }
  return energy > 0 ? error / energy : 0;
}
