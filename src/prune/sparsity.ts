/**
 * Unstructured and N:M sparsity of a ViT's linear weights, as storage compression
 * (pruning-methods.md §3): weights are set to zero by magnitude, by Wanda or by SparseGPT, and
 * the graph is otherwise unchanged. onnxruntime's CPU kernels multiply the zeros like any other
 * value (sparse initializers are densified at load), so a sparse model is not faster; what
 * sparsity buys is a smaller compressed file, measured here as gzip of the serialized model
 * before and after. The input model is never modified.
 */
import { gzipSync } from 'node:zlib';
import type { ModelProto } from 'onnx-buf';
import { applyCommands } from '../graph/commands.js';
import { GraphIndex } from '../graph/graph.js';
import { InputError } from '../errors.js';
import { silentLogger, type Reporting } from '../log.js';
import { serializeModel } from '../onnx/model-io.js';
import type { CaptureBatch } from '../runtime/capture.js';
import type { SessionOptions } from '../runtime/session.js';
import type { LinearLayer, ViTStructure } from '../vit/types.js';
import { sparseGpt } from './sparsegpt.js';
import {
  applyMask,
  magnitudeScores,
  maskOf,
  wandaScores,
  type SparsityPattern,
} from './sparsity-masks.js';
import {
  layerInputs,
  readWeight,
  targetLayers,
  writeWeight,
  type WeightMatrix,
} from './sparsity-layers.js';
import { channelStatistics, type ChannelMoments } from './statistics.js';

export type SparsityMethod = 'magnitude' | 'wanda' | 'sparsegpt';

export interface SparsifyOptions extends Reporting, SessionOptions {
  /** Fraction of each layer's weights set to zero, in [0, 1); implied by an N:M pattern. */
  sparsity?: number;
  /** `2:4` and `N:M` keep n weights in every m consecutive inputs of each output. */
  pattern: 'unstructured' | '2:4' | 'N:M';
  /** For `N:M`: weights kept per group, and the group size. */
  n?: number;
  m?: number;
  /**
   * `magnitude` zeroes the smallest |w| of each layer; `wanda` the smallest |w|·‖x‖ of each
   * output; `sparsegpt` chooses by saliency and updates the kept weights. The last two need
   * calibration images.
   */
  method: SparsityMethod;
  /** Layers by role glob or `node:<regex>`; default every block's attention and MLP layers. */
  layers?: readonly string[];
  /** SparseGPT: columns swept per block (default 128) and relative damping (default 0.01). */
  blockSize?: number;
  damping?: number;
  /** Calibration images (another split than the evaluation images); read once. */
  calibration?: AsyncIterable<CaptureBatch> | Iterable<CaptureBatch>;
}

export interface SparsityLayerReport {
  role: string;
  node: string;
  inFeatures: number;
  outFeatures: number;
  /** Fraction of the weight's elements that are zero afterwards. */
  zeros: number;
  /**
   * E‖x·(W − Ŵ)‖² / E‖x·W‖² over the calibration inputs: the layer's relative output error
   * (null without calibration images).
   */
  outputError: number | null;
}

export interface SparsityReport {
  method: SparsityMethod;
  /** `unstructured` or `n:m`. */
  pattern: string;
  /** Requested fraction of zeros. */
  sparsity: number;
  calibrationImages: number;
  layers: SparsityLayerReport[];
  /** Fraction of zeros over all chosen layers' weights. */
  zeros: number;
  /** Serialized model bytes, raw and gzip-compressed (level 9), before and after. */
  size: { bytes: [number, number]; gzipBytes: [number, number]; gzipRatio: number };
  /** What sparsity does to onnxruntime's speed, said plainly. */
  speed: string;
}

export interface SparsityResult {
  model: ModelProto;
  report: SparsityReport;
}

const speedNote =
  'no speed-up: onnxruntime multiplies the zeros like any other weight (sparse initializers are ' +
  'densified at load); sparsity here buys compressed size, or a model ready for a sparse runtime';

/** The pattern the options describe, checked. */
export function patternOf(o: SparsifyOptions): SparsityPattern {
  if (o.pattern === 'unstructured') {
    if (o.sparsity === undefined || !(o.sparsity >= 0 && o.sparsity < 1)) {
      throw new RangeError(`sparsity must be a fraction in [0, 1), got ${o.sparsity}`);
    }
    return { kind: 'unstructured', sparsity: o.sparsity };
  }
  if (o.pattern !== '2:4' && o.pattern !== 'N:M') {
    throw new RangeError(`pattern must be unstructured, 2:4 or N:M, got ${String(o.pattern)}`);
  }
  const [n, m] = o.pattern === '2:4' ? [2, 4] : [o.n, o.m];
  if (!(Number.isInteger(m) && m! >= 2 && Number.isInteger(n) && n! >= 1 && n! < m!)) {
    throw new RangeError(`an N:M pattern needs integers 1 ≤ n < m, got n=${n}, m=${m}`);
  }
  if (o.sparsity !== undefined && Math.abs(o.sparsity - (1 - n! / m!)) > 1e-9) {
    throw new RangeError(`sparsity ${o.sparsity} contradicts ${n}:${m}, which keeps ${n} in ${m}`);
  }
  return { kind: 'n-m', n: n!, m: m! };
}

function checkOptions(o: SparsifyOptions): SparsityPattern {
  const pattern = patternOf(o);
  if (!['magnitude', 'wanda', 'sparsegpt'].includes(o.method)) {
    throw new RangeError(`method must be magnitude, wanda or sparsegpt, got ${String(o.method)}`);
  }
  if (o.method !== 'magnitude' && !o.calibration) {
    throw new InputError(`sparsity method ${o.method} needs calibration images`);
  }
  return pattern;
}

/** The pruned (and, by SparseGPT, updated) weight of one layer. */
function sparsifyLayer(
  weight: WeightMatrix,
  moments: ChannelMoments | undefined,
  pattern: SparsityPattern,
  o: SparsifyOptions,
): WeightMatrix {
  const { rows, cols } = weight;
  switch (o.method) {
    case 'magnitude':
      return applyMask(weight, maskOf(magnitudeScores(weight), rows, cols, pattern, 'layer'));
    case 'wanda': {
      const scores = wandaScores(weight, moments!.norm());
      return applyMask(weight, maskOf(scores, rows, cols, pattern, 'row'));
    }
    case 'sparsegpt': {
      const gram = moments!.gram!.map((g) => g / moments!.count);
      const options = { blockSize: o.blockSize, damping: o.damping };
      return sparseGpt(weight, gram, pattern, options).weight;
    }
  }
}

/**
 * E‖x·(W − Ŵ)‖² / E‖x·W‖² from the Gram matrix G = Σ xᵀx: Σ_r Δ_r·G·Δ_rᵀ over the rows
 * (outputs), divided by the same sum for W.
 */
export function relativeOutputError(
  before: WeightMatrix,
  after: WeightMatrix,
  gram: Float64Array,
): number {
  const { rows, cols } = before;
  const quadratic = (v: Float64Array) => {
    let sum = 0;
    for (let i = 0; i < cols; i++) {
      let gv = 0;
      for (let j = 0; j < cols; j++) gv += gram[i * cols + j]! * v[j]!;
      sum += v[i]! * gv;
    }
    return sum;
  };
  let error = 0;
  let energy = 0;
  const delta = new Float64Array(cols);
  for (let r = 0; r < rows; r++) {
    const w = before.data.subarray(r * cols, (r + 1) * cols);
    for (let j = 0; j < cols; j++) delta[j] = w[j]! - after.data[r * cols + j]!;
    error += quadratic(delta);
    energy += quadratic(w);
  }
  return energy > 0 ? error / energy : 0;
}

function zeroFraction(data: Float64Array): number {
  let zeros = 0;
  for (let i = 0; i < data.length; i++) if (data[i] === 0) zeros++;
  return data.length ? zeros / data.length : 0;
}

/** The statistics of every layer input: norms for Wanda, Gram matrices for the rest. */
async function inputMoments(model: ModelProto, layers: LinearLayer[], o: SparsifyOptions) {
  if (!o.calibration) return { moments: new Map<string, ChannelMoments>(), images: 0 };
  const requests = layerInputs(layers).map((value) => ({ value, gram: true }));
  return channelStatistics(model, requests, o.calibration, o);
}

/**
 * Sets weights of the chosen layers to zero by `method` in `pattern`; with calibration images
 * the report gives each layer's relative output error, and always the gzip sizes.
 */
export async function sparsifyModel(
  model: ModelProto,
  structure: ViTStructure,
  options: SparsifyOptions,
): Promise<SparsityResult> {
  const pattern = checkOptions(options);
  const logger = options.logger ?? silentLogger;
  const layers = targetLayers(structure, options.layers);
  const index = new GraphIndex(model);
  const { moments, images } = await inputMoments(model, layers, options);

  const stage = `${options.method} sparsity`;
  options.onProgress?.({ status: 'start', stage, total: layers.length });
  const reports: SparsityLayerReport[] = [];
  const commands = layers.flatMap((layer, i) => {
    const weight = readWeight(index, layer);
    const m = moments.get(layer.input);
    const sparse = sparsifyLayer(weight, m, pattern, options);
    reports.push({
      role: layer.role,
      node: layer.node,
      inFeatures: layer.inFeatures,
      outFeatures: layer.outFeatures,
      zeros: zeroFraction(sparse.data),
      outputError: m?.gram ? relativeOutputError(weight, sparse, m.gram) : null,
    });
    options.onProgress?.({ status: 'advance', stage, done: i + 1, total: layers.length });
    return writeWeight(index, layer, sparse);
  });
  options.onProgress?.({ status: 'end', stage });
  const sparse = applyCommands(model, commands, { context: 'sparse graph' });
  logger.info(`${options.method}: ${layers.length} layers sparsified (${images} images)`);
  return { model: sparse, report: reportOf(model, sparse, reports, pattern, options, images) };
}

function reportOf(
  model: ModelProto,
  sparse: ModelProto,
  layers: SparsityLayerReport[],
  pattern: SparsityPattern,
  o: SparsifyOptions,
  images: number,
): SparsityReport {
  const weights = layers.reduce((s, l) => s + l.inFeatures * l.outFeatures, 0);
  const zeros = layers.reduce((s, l) => s + l.zeros * l.inFeatures * l.outFeatures, 0);
  const bytes = [serializeModel(model), serializeModel(sparse)] as const;
  const gzip = bytes.map((b) => gzipSync(b, { level: 9 }).length) as [number, number];
  return {
    method: o.method,
    pattern: pattern.kind === 'n-m' ? `${pattern.n}:${pattern.m}` : 'unstructured',
    sparsity: pattern.kind === 'n-m' ? 1 - pattern.n / pattern.m : pattern.sparsity,
    calibrationImages: images,
    layers,
    zeros: weights ? zeros / weights : 0,
    size: {
      bytes: [bytes[0].length, bytes[1].length],
      gzipBytes: gzip,
      gzipRatio: gzip[1] / gzip[0],
    },
    speed: speedNote,
  };
}
