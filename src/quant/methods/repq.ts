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
 * `insertRepQQuantizers` writes them as a simulated (fake-quant) model; `quantizeRepQ` does both.
 */
import type { ModelProto } from 'onnx-buf';
import { z } from 'zod';
import { InputError, UnsupportedModelError } from '../../errors.js';
import { applyCommands } from '../../graph/commands.js';
import { GraphIndex } from '../../graph/graph.js';
import { noProgress, silentLogger, type Reporting } from '../../log.js';
import { opsetVersion } from '../../onnx/model-io.js';
import type { CaptureBatch } from '../../runtime/capture.js';
import type { SessionOptions } from '../../runtime/session.js';
import { recognizeViT } from '../../vit/index.js';
import type { BlockMap, LinearLayer, ViTStructure } from '../../vit/types.js';
import {
  percentileMseAffine,
  percentileMseAffineChannels,
  percentileMseLog,
  repqPercentiles,
} from '../percentile-mse.js';
import {
  excludePoints,
  quantPoints,
  type ActivationPoint,
  type KeptPoint,
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
  type QuantizerSettings,
  type WeightSetting,
} from '../quantizer-commands.js';
import { calibrateSequentially, type CapturedTensor, type PointGroup } from '../sequential.js';
import { foldCommands, foldProblem, reparameterisation, type NormFold } from './repq-reparam.js';

const bits = z.number().int().min(2).max(8);

export const repqOptionsSchema = z.strictObject({
  weightBits: bits,
  activationBits: bits,
  /** Bits of the image entering the patch embedding (RepQ: 8, whatever the activation bits). */
  patchEmbedBits: bits.default(8),
  /** Candidate percentiles of every quantizer's initialisation. */
  percentiles: z
    .array(z.number().gt(0.5).lt(1))
    .min(1)
    .default([...repqPercentiles]),
  /** Quantizer of the softmax output: log√2 (RepQ), log2, or the uniform grid of the others. */
  softmax: z.enum(['log-sqrt2', 'log2', 'uniform']).default('log-sqrt2'),
  /**
   * Zero point of a reparameterised LayerNorm output: the mean of the channels' (RepQ's code) or
   * that mean rounded, which makes the per-tensor grid exactly the per-channel one.
   */
  zeroPoint: z.enum(['mean', 'rounded']).default('mean'),
  /** Selectors of points kept in float (see quant-points.ts). */
  keepFloat: z.array(z.string()).default([]),
});

export type RepQOptions = z.input<typeof repqOptionsSchema> & Reporting & SessionOptions;
type Settings = z.output<typeof repqOptionsSchema>;

export interface RepQActivationReport {
  roles: string[];
  value: string;
  kind: 'affine' | 'log';
  bits: number;
  scale: number;
  zeroPoint?: number;
  /** The percentile the search chose. */
  percentile: number;
  /** Set for a LayerNorm output calibrated per channel: its channels and step spread. */
  channels?: { count: number; scaleMin: number; scaleMax: number };
}

export interface RepQNormReport {
  role: string;
  /** Roles of the linear layers reading the norm. */
  targets: string[];
  reparameterised: boolean;
  /** Why the norm was not reparameterised (its output is then quantized per tensor). */
  reason?: string;
  /** min and max of r = Δ_c / Δ̃. */
  ratio?: { min: number; max: number };
}

export interface RepQWeightReport {
  role: string;
  bits: number;
  channels: number;
  /** Σ(w − ŵ)² / Σw². */
  relativeMse: number;
}

export interface RepQReport {
  method: 'repq-vit';
  weightBits: number;
  activationBits: number;
  patchEmbedBits: number;
  softmax: Settings['softmax'];
  zeroPoint: Settings['zeroPoint'];
  percentiles: number[];
  calibration: { images: number; passes: number; seconds: number };
  activations: RepQActivationReport[];
  norms: RepQNormReport[];
  keptFloat: KeptPoint[];
}

export interface RepQCalibration {
  /** The reparameterised float model: LayerNorm γ/β and the next layers' weights rewritten. */
  model: ModelProto;
  /** Its structure map. */
  structure: ViTStructure;
  quantizers: QuantizerSettings;
  report: RepQReport;
}

export interface RepQResult {
  /** The simulated (fake-quant) model. */
  model: ModelProto;
  report: RepQReport & { weights: RepQWeightReport[] };
}

/** RepQ-ViT end to end: calibration, reparameterisation, fake-quant model. */
export async function quantizeRepQ(
  model: ModelProto,
  structure: ViTStructure,
  batches: AsyncIterable<CaptureBatch> | Iterable<CaptureBatch>,
  options: RepQOptions,
): Promise<RepQResult> {
  return insertRepQQuantizers(await calibrateRepQ(model, structure, batches, options));
}

/**
 * Calibrates RepQ-ViT's quantizers on `batches` and reparameterises the post-LayerNorm ones.
 * The input model is not modified.
 */
export async function calibrateRepQ(
  model: ModelProto,
  structure: ViTStructure,
  batches: AsyncIterable<CaptureBatch> | Iterable<CaptureBatch>,
  options: RepQOptions,
): Promise<RepQCalibration> {
  const {
    logger = silentLogger,
    onProgress = noProgress,
    threads,
    optimization,
    ...rest
  } = options;
  const settings = parseSettings(rest);
  checkOpset(model);
  const started = performance.now();
  const images = await holdImages(batches);
  const index = new GraphIndex(model);
  const { points, kept } = excludePoints(quantPoints(structure), settings.keepFloat);
  const groups = groupPoints(points.activations);
  const { folds, norms } = planFolds(index, structure, groups);

  // pass 1: weights from the original values, activations sequentially in graph order
  const firstWeights = points.weights.map((p) => weightSetting(index, p, settings));
  const weighted = insertQuantizers(
    model,
    { activations: [], weights: firstWeights },
    'RepQ-ViT weights',
  );
  const percentiles = new Map<string, number>();
  const choose = (group: PointGroup, tensor: CapturedTensor) =>
    chooseQuantizer(group, tensor, settings, folds.has(group.value), percentiles);
  const boundaries = [structure.input, ...structure.blocks.map((b) => b.input)];
  boundaries.push(structure.blocks[structure.blocks.length - 1]!.output);
  const sequential = await calibrateSequentially(weighted, boundaries, groups, images, choose, {
    onProgress,
    stage: 'RepQ-ViT calibration',
    optimization: optimization ?? 'basic',
    ...(threads ? { threads } : {}),
  });

  // scale reparameterisation, then the weights of the rewritten layers quantized again
  const names = new NamePrefixes(index);
  const reparameterised = sequential.settings.map((s) =>
    reparameterise(s, folds.get(s.value), settings, index, names, norms),
  );
  const folded = applyCommands(
    model,
    reparameterised.flatMap((r) => r.commands),
    {
      context: 'RepQ-ViT scale reparameterisation',
    },
  );
  const foldedStructure = recognizeViT(folded);
  const foldedIndex = new GraphIndex(folded);
  const weights = excludePoints(quantPoints(foldedStructure), settings.keepFloat).points.weights;
  const activations = reparameterised.map((r) => r.setting);
  const seconds = (performance.now() - started) / 1000;
  logger.info(
    `RepQ-ViT W${settings.weightBits}A${settings.activationBits}: calibrated ${activations.length} activation quantizers in ${sequential.passes} passes over ${countImages(images)} images, ${norms.filter((n) => n.reparameterised).length} norms reparameterised, ${seconds.toFixed(1)} s`,
  );
  const report: RepQReport = {
    method: 'repq-vit',
    weightBits: settings.weightBits,
    activationBits: settings.activationBits,
    patchEmbedBits: settings.patchEmbedBits,
    softmax: settings.softmax,
    zeroPoint: settings.zeroPoint,
    percentiles: settings.percentiles,
    calibration: { images: countImages(images), passes: sequential.passes, seconds },
    activations: reparameterised.map((r) => activationReport(r.setting, r.channels, percentiles)),
    norms,
    keptFloat: kept,
  };
  return {
    model: folded,
    structure: foldedStructure,
    quantizers: {
      activations,
      weights: weights.map((p) => weightSetting(foldedIndex, p, settings)),
    },
    report,
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
    return {
      role: s.role,
      bits: s.bits,
      channels: s.params.length,
      relativeMse: relativeError(original, quantized),
    };
  });
  return { model, report: { ...report, weights } };
}

function parseSettings(value: unknown): Settings {
  const result = repqOptionsSchema.safeParse(value);
  if (result.success) return result.data;
  const problems = result.error.issues.map(
    (issue) => `${issue.path.length ? issue.path.join('.') : '(root)'}: ${issue.message}`,
  );
  throw new InputError(`invalid RepQ-ViT options: ${problems.join('; ')}`);
}

function checkOpset(model: ModelProto): void {
  const opset = opsetVersion(model) ?? 0;
  if (opset < 13) {
    throw new UnsupportedModelError(
      `RepQ-ViT's simulated quantization needs opset ≥ 13 (Clip with inputs, Round), the model has opset ${opset}`,
    );
  }
}

/** The calibration batches copied out (datasets reuse their buffers between batches). */
async function holdImages(batches: AsyncIterable<CaptureBatch> | Iterable<CaptureBatch>) {
  const held: CaptureBatch[] = [];
  for await (const b of batches) held.push({ data: b.data.slice(), dims: [...b.dims] });
  return held;
}

function countImages(images: readonly CaptureBatch[]): number {
  return images.reduce((n, b) => n + (b.dims[0] ?? 0), 0);
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

/** The LayerNorms to fold (norm1 into qkv or q/k/v, norm2 into fc1) whose output is quantized. */
function planFolds(index: GraphIndex, structure: ViTStructure, groups: readonly PointGroup[]) {
  const quantized = new Set(groups.map((g) => g.value));
  const folds = new Map<string, NormFold>();
  const norms: RepQNormReport[] = [];
  for (const block of structure.blocks) {
    for (const fold of blockFolds(block)) {
      if (!quantized.has(fold.norm.output)) continue;
      const reason = foldProblem(index, fold);
      const targets = fold.targets.map((t) => t.role);
      norms.push({
        role: fold.norm.role,
        targets,
        reparameterised: !reason,
        ...(reason ? { reason } : {}),
      });
      if (!reason) folds.set(fold.norm.output, fold);
    }
  }
  return { folds, norms };
}

function blockFolds(block: BlockMap): NormFold[] {
  const attn = block.attention;
  const readers = attn.qkv ? [attn.qkv] : [attn.q, attn.k, attn.v].filter((l) => l !== undefined);
  return [
    { norm: block.norm1, targets: readers as LinearLayer[] },
    { norm: block.norm2, targets: [block.mlp.fc1] },
  ];
}

/** Asymmetric per-output-channel weight grids by the percentile-MSE search. */
function weightSetting(index: GraphIndex, point: WeightPoint, settings: Settings): WeightSetting {
  const { values, dims } = readWeight(index, point.role, point.layer);
  const axis = outputChannelAxis(point.layer);
  const choices = percentileMseAffineChannels(
    values,
    dims,
    axis,
    settings.weightBits,
    settings.percentiles,
  );
  return {
    role: point.role,
    layer: point.layer,
    bits: settings.weightBits,
    params: choices.map((c) => c.params),
  };
}

function chooseQuantizer(
  group: PointGroup,
  tensor: CapturedTensor,
  settings: Settings,
  perChannel: boolean,
  percentiles: Map<string, number>,
): ActivationQuantizer {
  const { activationBits: a, percentiles: candidates } = settings;
  if (perChannel) {
    const choices = percentileMseAffineChannels(tensor.data, tensor.dims, -1, a, candidates);
    percentiles.set(group.value, median(choices.map((c) => c.percentile)));
    return { kind: 'affine-channel', bits: a, params: choices.map((c) => c.params) };
  }
  const softmax = group.roles.some((r) => r.endsWith('.attn.softmax'));
  if (softmax && settings.softmax !== 'uniform') {
    const choice = percentileMseLog(tensor.data, a, settings.softmax, candidates);
    percentiles.set(group.value, choice.percentile);
    return { kind: 'log', quantizer: choice.quantizer };
  }
  const b = group.roles.includes('patch_embed.input') ? settings.patchEmbedBits : a;
  const choice = percentileMseAffine(tensor.data, b, candidates);
  percentiles.set(group.value, choice.percentile);
  return { kind: 'affine', bits: b, ...choice.params };
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((x, y) => x - y);
  return sorted[Math.floor(sorted.length / 2)] ?? NaN;
}

/** A calibrated setting after reparameterisation: per-channel grids become per-tensor ones. */
function reparameterise(
  setting: ActivationSetting,
  fold: NormFold | undefined,
  settings: Settings,
  index: GraphIndex,
  names: NamePrefixes,
  norms: RepQNormReport[],
) {
  const q = setting.quantizer;
  if (!fold || q.kind !== 'affine-channel') return { setting, commands: [] };
  const rep = reparameterisation(q.params, settings.zeroPoint === 'rounded');
  const report = norms.find((n) => n.role === fold.norm.role)!;
  report.ratio = { min: Math.min(...rep.ratio), max: Math.max(...rep.ratio) };
  const quantizer = {
    kind: 'affine' as const,
    bits: q.bits,
    scale: rep.scale,
    zeroPoint: rep.zeroPoint,
  };
  const steps = q.params.map((p) => p.scale);
  return {
    setting: { ...setting, quantizer },
    commands: foldCommands(index, names, fold, rep),
    channels: { count: steps.length, scaleMin: Math.min(...steps), scaleMax: Math.max(...steps) },
  };
}

function activationReport(
  setting: ActivationSetting,
  channels: RepQActivationReport['channels'] | undefined,
  percentiles: ReadonlyMap<string, number>,
): RepQActivationReport {
  const q = setting.quantizer;
  const percentile = percentiles.get(setting.value) ?? NaN;
  const base = {
    roles: setting.roles,
    value: setting.value,
    percentile,
    ...(channels ? { channels } : {}),
  };
  switch (q.kind) {
    case 'log':
      return { ...base, kind: 'log', bits: q.quantizer.bits, scale: q.quantizer.scale };
    case 'affine':
      return { ...base, kind: 'affine', bits: q.bits, scale: q.scale, zeroPoint: q.zeroPoint };
    case 'affine-channel':
      // a norm that could not be folded was calibrated per tensor, so this is never reached
      return { ...base, kind: 'affine', bits: q.bits, scale: NaN };
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
