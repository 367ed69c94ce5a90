/**
 * PTQ4ViT (Yuan et al., arXiv:2111.12293, ECCV 2022; reference notes §1), gradient-free:
 *
 * 1. Every linear layer's weight is quantized per output channel on a symmetric signed grid
 *    (PTQ4ViT itself uses one step per weight, three for qkv; per channel is finer at no cost
 *    in the simulated model); its input per tensor, symmetric, except the patch embedding's
 *    (the image stays float, as in PTQ4ViT's configuration).
 * 2. The softmax output takes the twin uniform post-softmax quantizer and post-GELU inputs the
 *    twin post-GELU one (twin-uniform.ts); query, key and value one symmetric step per head.
 * 3. Every step is chosen by the layer-output search (search/): for each product (linear layer,
 *    query·key, attention·value) the candidates Δ_init · (α + i(β − α)/(n − 1)) are scored by the
 *    distance between the float output and the output with both operands quantized, the two
 *    operands alternating for a few rounds, weights first. Calibration is parallel, as
 *    PTQ4ViT's: each product is searched on the float model's tensors.
 *
 * The distance is MSE or cosine. PTQ4ViT's paper uses a Hessian-guided distance, the output
 * error weighted by the gradient of the task loss with respect to the output: that needs
 * backpropagation, which onnxruntime inference does not provide (and with every layer float
 * during the gradient pass, that gradient is nearly zero in PTQ4ViT's own code, notes §1(4)).
 * MSE and cosine are the gradient-free forms its base configuration uses.
 */
import type { ModelProto } from 'onnx-buf';
import { UnsupportedModelError } from '../../errors.js';
import { applyCommands, type Command } from '../../graph/commands.js';
import { GraphIndex } from '../../graph/graph.js';
import { holdImages, type CaptureBatch } from '../../runtime/capture.js';
import type { SessionOptions } from '../../runtime/session.js';
import type { ViTStructure } from '../../vit/types.js';
import {
  excludePoints,
  quantPoints,
  type ActivationPoint,
  type KeptPoint,
} from '../quant-points.js';
import { NamePrefixes, weightCommands, type WeightSetting } from '../quantizer-commands.js';
import {
  alternatingSearch,
  type CandidateFamily,
  type SearchOperand,
} from '../search/alternating-search.js';
import { gridChain, type OperandGrid } from '../search/operand-grid.js';
import type { CapturedTensor } from '../sequential.js';
import { searchNoise } from './noisyquant.js';
import {
  fixed,
  float,
  groupSteps,
  headOperand,
  linearInput,
  scaled,
  softmaxOperand,
} from './ptq4vit-grids.js';
import {
  captureOperands,
  listProducts,
  weightInOut,
  type AttentionProduct,
  type LinearProduct,
} from './ptq4vit-products.js';
import {
  ptq4vitOptionsSchema,
  type Ptq4VitActivationReport,
  type Ptq4VitLayerReport,
  type Ptq4VitOptions,
  type Ptq4VitResult,
  type Ptq4VitSettings,
  type Ptq4VitWeightReport,
} from './ptq4vit-types.js';
import { parseMethodOptions, requireOpset13, splitRunOptions } from './method-options.js';

export * from './ptq4vit-types.js';

type Batches = AsyncIterable<CaptureBatch> | Iterable<CaptureBatch>;

/** An activation value's chosen grid and the points (edges) it quantizes. */
interface ActivationChoice {
  value: string;
  points: ActivationPoint[];
  grid: OperandGrid;
  rank: number;
  noiseAmplitude?: number;
}

/** A weight's chosen per-channel steps (over its output channels) and initial steps. */
interface WeightChoice {
  product: LinearProduct;
  steps: Float32Array;
  initial: Float32Array;
}

/**
 * PTQ4ViT end to end: the search on `batches` (held in memory; the method uses 32 images) and
 * the fake-quant model. The input model is not modified.
 */
export async function quantizePtq4Vit(
  model: ModelProto,
  structure: ViTStructure,
  batches: Batches,
  options: Ptq4VitOptions,
): Promise<Ptq4VitResult> {
  const { run, rest } = splitRunOptions(options);
  const { logger, onProgress, threads, optimization } = run;
  const settings = parseSettings(rest);
  requireOpset13(model, 'PTQ4ViT');
  const started = performance.now();
  const images = await holdImages(batches, 8);
  const index = new GraphIndex(model);
  const { points, kept } = excludePoints(quantPoints(structure), settings.keepFloat);
  const products = listProducts(structure, points);
  const session = { ...(threads ? { threads } : {}), ...(optimization ? { optimization } : {}) };
  const operands = await captureOperands(
    model,
    products,
    images,
    { rows: settings.searchRows, images: settings.attentionImages },
    session,
  );

  const stage = 'PTQ4ViT search';
  onProgress({ status: 'start', stage, total: products.length });
  const activations = new Map<string, ActivationChoice>();
  const weights: WeightChoice[] = [];
  const layers: Ptq4VitLayerReport[] = [];
  for (const [i, product] of products.entries()) {
    const search =
      product.kind === 'linear'
        ? searchLinear(index, product, operands, activations, weights, settings, session)
        : searchAttention(product, operands, activations, settings, session);
    layers.push(await search);
    onProgress({ status: 'advance', stage, done: i + 1, total: products.length });
  }
  onProgress({ status: 'end', stage });

  const simulated = insertChoices(model, [...activations.values()], weights, settings);
  const seconds = (performance.now() - started) / 1000;
  const count = images.reduce((n, b) => n + (b.dims[0] ?? 0), 0);
  logger.info(
    `PTQ4ViT W${settings.weightBits}A${settings.activationBits}: ${products.length} products searched (${settings.metric}, ${settings.rounds} rounds) on ${count} images, ${seconds.toFixed(1)} s`,
  );
  return {
    model: simulated,
    report: {
      method: 'ptq4vit',
      weightBits: settings.weightBits,
      activationBits: settings.activationBits,
      metric: settings.metric,
      rounds: settings.rounds,
      candidates: settings.candidates,
      factorRange: settings.factorRange,
      softmax: settings.softmax,
      gelu: settings.gelu,
      perHead: settings.perHead,
      noisyQuant: settings.noisyQuant,
      calibration: {
        images: count,
        searchRows: settings.searchRows,
        attentionImages: settings.attentionImages,
        seconds,
      },
      layers,
      activations: [...activations.values()].map(activationReport),
      weights: weights.map((w) => weightReport(w, settings.weightBits)),
      keptFloat: [...kept, ...imageKept(structure, kept)],
    },
  };
}

/** The image input of the patch embedding, which PTQ4ViT leaves float. */
function imageKept(structure: ViTStructure, kept: readonly KeptPoint[]): KeptPoint[] {
  const role = `${structure.patchEmbed.linear.role}.input`;
  return kept.some((k) => k.role === role) ? [] : [{ role, selector: 'ptq4vit: image float' }];
}

function parseSettings(value: unknown): Ptq4VitSettings {
  return parseMethodOptions(ptq4vitOptionsSchema, value, 'PTQ4ViT');
}

/** An operand whose value already has a grid keeps it; otherwise it is searched. */
function operandFor(
  value: string,
  tensor: CapturedTensor,
  activations: ReadonlyMap<string, ActivationChoice>,
  make: () => { initial: OperandGrid; family: CandidateFamily },
): SearchOperand {
  const chosen = activations.get(value);
  if (chosen) return { tensor, initial: chosen.grid, family: { kind: 'fixed' } };
  return { tensor, ...make() };
}

async function searchLinear(
  index: GraphIndex,
  product: LinearProduct,
  operands: ReadonlyMap<string, CapturedTensor>,
  activations: Map<string, ActivationChoice>,
  weights: WeightChoice[],
  settings: Ptq4VitSettings,
  session: SessionOptions,
): Promise<Ptq4VitLayerReport> {
  const x = operands.get(product.layer.input)!;
  const w = weightInOut(index, product.role, product.layer);
  const a = operandFor(product.layer.input, x, activations, () =>
    linearInput(product, x, settings),
  );
  const initialSteps = groupSteps(w, 1, settings.weightBits);
  const b: SearchOperand = product.weight
    ? {
        tensor: w,
        initial: { kind: 'uniform', bits: settings.weightBits, scales: initialSteps, groupAxis: 1 },
        family: scaled(settings),
      }
    : { tensor: w, initial: float, family: fixed };
  const result = await alternatingSearch(a, b, { ...searchOptions(settings, session), first: 'b' });
  if (result.a.kind !== 'float' && !activations.has(product.layer.input)) {
    const noisy = await addNoise(product, x, w, result, settings, session);
    const choice = { value: product.layer.input, points: product.input, rank: 2, ...noisy };
    activations.set(product.layer.input, choice);
  }
  if (product.weight && result.b.kind === 'uniform') {
    weights.push({ product, steps: result.b.scales, initial: initialSteps });
  }
  return layerReport(product.role, settings, result);
}

/** NoisyQuant's noise on a linear layer's input quantizer, where the settings ask for it. */
async function addNoise(
  product: LinearProduct,
  x: CapturedTensor,
  w: CapturedTensor,
  result: { a: OperandGrid; b: OperandGrid },
  settings: Ptq4VitSettings,
  session: SessionOptions,
): Promise<{ grid: OperandGrid; noiseAmplitude?: number }> {
  const wanted =
    settings.noisyQuant === 'linear' || (settings.noisyQuant === 'post-gelu' && product.postGelu);
  if (!wanted) return { grid: result.a };
  const { grid, amplitude } = await searchNoise(x, w, result.a, result.b, {
    metric: settings.metric,
    amplitudes: settings.noiseAmplitudes,
    maxAmplitude: settings.maxNoiseAmplitude,
    seed: hashRole(product.role),
    ...session,
  });
  return { grid, noiseAmplitude: amplitude };
}

/** A seed from a role name, so each layer draws its own noise and the same one every run. */
function hashRole(role: string): number {
  let h = 2166136261;
  for (let i = 0; i < role.length; i++) h = Math.imul(h ^ role.charCodeAt(i), 16777619) >>> 0;
  return h;
}

function searchOptions(settings: Ptq4VitSettings, session: SessionOptions) {
  return { metric: settings.metric, rounds: settings.rounds, ...session };
}

function layerReport(
  role: string,
  settings: Ptq4VitSettings,
  result: { initialScore: number; finalScore: number; evaluations: number },
): Ptq4VitLayerReport {
  return {
    role,
    metric: settings.metric,
    initialScore: result.initialScore,
    finalScore: result.finalScore,
    candidatesEvaluated: result.evaluations,
  };
}

async function searchAttention(
  product: AttentionProduct,
  operands: ReadonlyMap<string, CapturedTensor>,
  activations: Map<string, ActivationChoice>,
  settings: Ptq4VitSettings,
  session: SessionOptions,
): Promise<Ptq4VitLayerReport> {
  const side = (operand: AttentionProduct['left'], softmax: boolean): SearchOperand => {
    const t = operands.get(operand.value)!;
    if (operand.points.length === 0) return { tensor: t, initial: float, family: fixed };
    return operandFor(operand.value, t, activations, () =>
      softmax ? softmaxOperand(t, settings) : headOperand(t, product.heads, settings),
    );
  };
  const a = side(product.left, product.softmax);
  const b = side(product.right, false);
  const result = await alternatingSearch(a, b, { ...searchOptions(settings, session), first: 'a' });
  for (const [operand, grid, t] of [
    [product.left, result.a, a.tensor],
    [product.right, result.b, b.tensor],
  ] as const) {
    if (grid.kind === 'float' || activations.has(operand.value)) continue;
    const rank = t.dims.length;
    activations.set(operand.value, { value: operand.value, points: operand.points, grid, rank });
  }
  return layerReport(product.role, settings, result);
}

/** The fake-quant model: weights baked per channel and every activation chain, in one rewrite. */
function insertChoices(
  model: ModelProto,
  activations: readonly ActivationChoice[],
  weights: readonly WeightChoice[],
  settings: Ptq4VitSettings,
): ModelProto {
  const context = `PTQ4ViT W${settings.weightBits}A${settings.activationBits} simulated quantization`;
  const index = new GraphIndex(model);
  const names = new NamePrefixes(index);
  // a symmetric signed grid is the unsigned grid of the same width with zero point 2^(b−1)
  const zeroPoint = 2 ** (settings.weightBits - 1);
  const weightSettings = weights.map(({ product, steps }): WeightSetting => ({
    role: product.weight!.role,
    layer: product.layer,
    bits: settings.weightBits,
    params: Array.from(steps, (scale) => ({ scale, zeroPoint })),
  }));
  const commands: Command[] = [
    ...activations.flatMap((choice) => {
      const prefix = names.prefix(`vitslim/fq/${choice.points[0]!.role}`);
      const chain = gridChain(choice.value, prefix, [choice.grid], choice.rank);
      return [...chain.commands, ...rewire(index, choice, chain.output)];
    }),
    ...weightSettings.flatMap((w) => weightCommands(index, names, w).commands),
  ];
  return applyCommands(model, commands, { removeUnused: true, context });
}

function rewire(index: GraphIndex, choice: ActivationChoice, output: string): Command[] {
  const commands: Command[] = [];
  for (const point of choice.points) {
    index.node(point.node).input.forEach((input, slot) => {
      if (input === choice.value) {
        commands.push({ kind: 'setNodeInput', node: point.node, index: slot, value: output });
      }
    });
  }
  return commands;
}

function activationReport(choice: ActivationChoice): Ptq4VitActivationReport {
  const base = { roles: choice.points.map((p) => p.role), value: choice.value };
  const noise =
    choice.noiseAmplitude === undefined ? {} : { noiseAmplitude: choice.noiseAmplitude };
  return { ...base, ...gridReport(choice.value, choice.grid), ...noise };
}

function gridReport(
  value: string,
  grid: OperandGrid,
): Pick<Ptq4VitActivationReport, 'kind' | 'bits' | 'scale'> {
  switch (grid.kind) {
    case 'float':
      throw new UnsupportedModelError(`${value}: a float activation has no quantizer`);
    case 'noisy':
      return gridReport(value, grid.base);
    case 'twin': {
      const q = grid.quantizer;
      const kind = q.form === 'softmax' ? 'twin-softmax' : 'twin-gelu';
      return { kind, bits: q.bits, scale: { low: q.low.scale, high: q.high.scale } };
    }
    case 'uniform': {
      const steps = Array.from(grid.scales);
      if (grid.groupAxis === undefined)
        return { kind: 'uniform', bits: grid.bits, scale: steps[0]! };
      const scale = { min: Math.min(...steps), max: Math.max(...steps) };
      return { kind: 'uniform-per-head', bits: grid.bits, scale };
    }
  }
}

function weightReport(choice: WeightChoice, bits: number): Ptq4VitWeightReport {
  const factors = Array.from(choice.steps, (s, o) => s / choice.initial[o]!);
  return {
    role: choice.product.weight!.role,
    bits,
    channels: choice.steps.length,
    factor: { min: Math.min(...factors), max: Math.max(...factors) },
  };
}
