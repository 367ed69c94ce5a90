/**
 * Low-rank factorization of a ViT's linear layers (pruning-methods.md §5): each chosen MatMul
 * or Gemm y = x·W (+ b) becomes two thinner ones, (x·A)·B (+ b), with A [in, k] and B [k, out]
 * from a truncated SVD of W (plain) or of the activation-whitened W (whitened, SVD-LLM
 * arXiv 2403.07378). One budget of parameters is shared by all chosen layers and given out by
 * retained energy; a layer is factored only when k·(in + out) < in·out, since otherwise the two
 * MatMuls cost at least as much as the one they replace. The input model is never modified.
 *
 * The factored graph has two MatMuls where the structure map expects one linear layer, so
 * `recognizeViT` no longer recognises it: the report's parameter and MAC counts come from
 * `countParameters` and `countMacs`, which read any graph, and the result carries no structure
 * map. Evaluation (accuracy, latency) runs any model and needs none.
 */
import type { ModelProto } from 'onnx-buf';
import { makeNode } from '../graph/attributes.js';
import { applyCommands, type Command } from '../graph/commands.js';
import { GraphIndex } from '../graph/graph.js';
import { InputError } from '../errors.js';
import { silentLogger, type Reporting } from '../log.js';
import { floatTensor } from '../onnx/tensor.js';
import type { CaptureBatch } from '../runtime/capture.js';
import type { SessionOptions } from '../runtime/session.js';
import { countMacs, countParameters } from '../vit/counts.js';
import type { LinearLayer, ViTStructure } from '../vit/types.js';
import {
  allocateRanks,
  breakEvenRank,
  plainSpectrum,
  retainedEnergy,
  whitenedSpectrum,
  type LayerSpectrum,
} from './low-rank-math.js';
import { layerInputs, readWeight, targetLayers } from './sparsity-layers.js';
import { channelStatistics } from './statistics.js';
import { NameAllocator } from './tensors.js';

export type LowRankMethod = 'svd' | 'whitened';

export interface FactorizeOptions extends Reporting, SessionOptions {
  /**
   * Fraction of the chosen layers' weight parameters kept, in (0, 1]: the budget shared by all
   * of them. 1 keeps every layer dense.
   */
  rank: number;
  /** `svd` truncates W; `whitened` truncates the whitened W and needs calibration images. */
  method: LowRankMethod;
  /**
   * Layers by role glob (`blocks.*.mlp`, `blocks.**.fc1`, `blocks.3.attn.qkv`) or
   * `node:<regex>`; default every block's attention projections and MLP layers.
   */
  layers?: readonly string[];
  /** Ranks are multiples of this (default 8). */
  roundTo?: number;
  /** Whitened: added to the Gram matrix's diagonal, relative to its mean (default 0.01). */
  damping?: number;
  /** Calibration images (another split than the evaluation images); read once. */
  calibration?: AsyncIterable<CaptureBatch> | Iterable<CaptureBatch>;
}

export interface LowRankLayerReport {
  role: string;
  node: string;
  inFeatures: number;
  outFeatures: number;
  /** The rank of the factors; null for a layer kept dense. */
  rank: number | null;
  /** The largest rank (multiple of roundTo) at which factoring still saves MACs. */
  breakEvenRank: number;
  /** Weight elements, before and after. */
  parameters: [number, number];
  /** Multiply-accumulates per image, before and after. */
  macs: [number, number];
  /**
   * Σ_{i≤k} σᵢ² / Σ σᵢ²: of the weight's energy (svd) or of the layer's output energy on the
   * calibration images (whitened); 1 for a dense layer.
   */
  retainedEnergy: number;
}

export interface LowRankReport {
  method: LowRankMethod;
  /** The requested fraction of parameters. */
  rank: number;
  roundTo: number;
  calibrationImages: number;
  layers: LowRankLayerReport[];
  /** Weight elements of the chosen layers, before and after. */
  layerParameters: [number, number];
  /** The whole model's float parameters and MACs per image, counted on both graphs. */
  parameters: [number, number];
  macs: [number, number];
}

export interface LowRankResult {
  model: ModelProto;
  report: LowRankReport;
}

/** Two factors replacing one layer's weight. */
export interface LayerFactors {
  layer: LinearLayer;
  rank: number;
  /** [in, k] and [k, out], row-major. */
  a: Float32Array;
  b: Float32Array;
}

function checkOptions(o: FactorizeOptions): void {
  if (!(o.rank > 0 && o.rank <= 1)) {
    throw new RangeError(`rank must be a fraction of parameters in (0, 1], got ${o.rank}`);
  }
  if (o.method !== 'svd' && o.method !== 'whitened') {
    throw new RangeError(`method must be svd or whitened, got ${String(o.method)}`);
  }
  const roundTo = o.roundTo ?? 8;
  if (!(Number.isInteger(roundTo) && roundTo >= 1)) {
    throw new RangeError(`roundTo must be an integer ≥ 1, got ${roundTo}`);
  }
  if (o.damping !== undefined && !(o.damping >= 0)) {
    throw new RangeError(`damping must be ≥ 0, got ${o.damping}`);
  }
  if (o.method === 'whitened' && !o.calibration) {
    throw new InputError('low-rank method whitened needs calibration images');
  }
}

/** The mean second moment E[xᵀx] of every layer input, from one calibration pass. */
async function inputGrams(model: ModelProto, layers: LinearLayer[], o: FactorizeOptions) {
  const requests = layerInputs(layers).map((value) => ({ value, gram: true }));
  const { moments, images } = await channelStatistics(model, requests, o.calibration!, o);
  const grams = new Map<string, Float64Array>();
  for (const [value, m] of moments)
    grams.set(
      value,
      m.gram!.map((g) => g / m.count),
    );
  return { grams, images };
}

/** The spectrum of one layer's weight, whitened by its input's Gram matrix when given. */
export function layerSpectrum(
  index: GraphIndex,
  layer: LinearLayer,
  gram?: Float64Array,
  damping = 0.01,
): LayerSpectrum {
  const { data, rows, cols } = readWeight(index, layer);
  // readWeight gives [out, in]; the factors are built for x·W with W [in, out]
  const w = new Float64Array(rows * cols);
  for (let o = 0; o < rows; o++) {
    for (let i = 0; i < cols; i++) w[i * rows + o] = data[o * cols + i]!;
  }
  return gram ? whitenedSpectrum(w, cols, rows, gram, damping) : plainSpectrum(w, cols, rows);
}

/**
 * Replaces each layer by its two factors in a copy of `model`: MatMul(x, A) then a MatMul (or a
 * Gemm with the original attributes, bias and transB layout) with B. Any rank is accepted,
 * beyond break-even too; the bias Add that follows a MatMul is left in place.
 */
export function applyFactorization(
  model: ModelProto,
  factors: readonly LayerFactors[],
): ModelProto {
  const index = new GraphIndex(model);
  const names = new NameAllocator(index);
  const commands = factors.flatMap((f) => factorCommands(index, names, f));
  return applyCommands(model, commands, { removeUnused: true, context: 'low-rank graph' });
}

function factorCommands(index: GraphIndex, names: NameAllocator, f: LayerFactors): Command[] {
  const { layer, rank: k, a, b } = f;
  const node = index.node(layer.node);
  const aName = names.name(`${layer.weight}_lowrank_a`);
  const bName = names.name(`${layer.weight}_lowrank_b`);
  const mid = names.name(`${layer.output}_lowrank`);
  const first = makeNode({
    name: names.name(`${layer.node}_lowrank_a`),
    opType: 'MatMul',
    inputs: [layer.input, aName],
    outputs: [mid],
  });
  const second = makeNode({
    name: names.name(`${layer.node}_lowrank_b`),
    opType: layer.opType === 'Gemm' ? 'Gemm' : 'MatMul',
    inputs: [mid, bName, ...node.input.slice(2)],
    outputs: [...node.output],
  });
  let bTensor = floatTensor(bName, [k, layer.outFeatures], b);
  if (layer.opType === 'Gemm') {
    second.attribute = [...node.attribute];
    if (layer.weightLayout === 'out-in') {
      bTensor = floatTensor(bName, [layer.outFeatures, k], transpose(b, k, layer.outFeatures));
    }
  }
  return [
    { kind: 'addInitializer', tensor: floatTensor(aName, [layer.inFeatures, k], a) },
    { kind: 'addInitializer', tensor: bTensor },
    { kind: 'removeNode', name: node.name },
    { kind: 'addNode', node: first },
    { kind: 'addNode', node: second },
  ];
}

function transpose(data: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(data.length);
  for (let r = 0; r < rows; r++)
    for (let c = 0; c < cols; c++) out[c * rows + r] = data[r * cols + c]!;
  return out;
}

/**
 * Factors the chosen layers of `model` under one parameter budget, `rank` × their weight
 * elements; the report gives every layer's rank, parameters, MACs and retained energy.
 */
export async function factorizeModel(
  model: ModelProto,
  structure: ViTStructure,
  options: FactorizeOptions,
): Promise<LowRankResult> {
  checkOptions(options);
  const logger = options.logger ?? silentLogger;
  const layers = targetLayers(structure, options.layers);
  const roundTo = options.roundTo ?? 8;
  const index = new GraphIndex(model);
  const whitening =
    options.method === 'whitened' ? await inputGrams(model, layers, options) : undefined;

  const stage = 'low-rank factorization';
  options.onProgress?.({ status: 'start', stage, total: layers.length });
  const spectra = layers.map((layer, i) => {
    const gram = whitening?.grams.get(layer.input);
    const spectrum = layerSpectrum(index, layer, gram, options.damping);
    options.onProgress?.({ status: 'advance', stage, done: i + 1, total: layers.length });
    return spectrum;
  });
  options.onProgress?.({ status: 'end', stage });

  const dense = layers.reduce((sum, l) => sum + l.inFeatures * l.outFeatures, 0);
  const ranks = allocateRanks(spectra, options.rank * dense, roundTo);
  const factors = layers.flatMap((layer, i): LayerFactors[] => {
    const rank = ranks[i];
    return rank === undefined ? [] : [{ layer, rank, ...spectra[i]!.factors(rank) }];
  });
  const factored = applyFactorization(model, factors);
  logger.info(`factored ${factors.length} of ${layers.length} layers (${options.method})`);

  const layerReports = layers.map((layer, i) =>
    layerReport(structure, layer, ranks[i], spectra[i]!, roundTo),
  );
  const report: LowRankReport = {
    method: options.method,
    rank: options.rank,
    roundTo,
    calibrationImages: whitening?.images ?? 0,
    layers: layerReports,
    layerParameters: [
      layerReports.reduce((sum, l) => sum + l.parameters[0], 0),
      layerReports.reduce((sum, l) => sum + l.parameters[1], 0),
    ],
    parameters: [countParameters(model), countParameters(factored)],
    macs: [countMacs(model), countMacs(factored)],
  };
  return { model: factored, report };
}

function layerReport(
  structure: ViTStructure,
  layer: LinearLayer,
  rank: number | undefined,
  spectrum: LayerSpectrum,
  roundTo: number,
): LowRankLayerReport {
  const { inFeatures: i, outFeatures: o } = layer;
  const macs = structure.counts.macsByRole?.[layer.role] ?? i * o;
  const rows = macs / (i * o);
  const after = rank === undefined ? i * o : rank * (i + o);
  return {
    role: layer.role,
    node: layer.node,
    inFeatures: i,
    outFeatures: o,
    rank: rank ?? null,
    breakEvenRank: breakEvenRank(i, o, roundTo),
    parameters: [i * o, after],
    macs: [macs, rows * after],
    retainedEnergy: rank === undefined ? 1 : retainedEnergy(spectrum.values, rank),
  };
}
