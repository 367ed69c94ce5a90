/**
 * GPTQ (Frantar et al., arXiv:2210.17323; reference notes §10) on the grid MatMulNBits stores:
 * 4-bit codes in blocks of `blockSize` input channels, one scale (and zero point) per output
 * channel and block. This is GPTQ with groups: a block's grid is chosen when the sweep reaches
 * its first channel, from the weights as the errors of the earlier channels left them (the
 * reference code's groups without `static_groups`), with the clipping search of the
 * round-to-nearest export. Input channels are then quantized one after another and each error
 * is pushed onto the channels not quantized yet through the Cholesky factor of H⁻¹:
 *
 *   ŵ_i = Q_block(w_i),  e_i = (w_i − ŵ_i) / U_ii,  w_j ← w_j − U_ij · e_i  for every j > i,
 *
 * with H = Σ xxᵀ over the calibration rows of the layer's float input (the int4-weights recipe
 * keeps activations float), taken stage by stage (patch embedding, each block, the head) on
 * the model whose earlier stages already carry their GPTQ weights. The per-output-channel GPTQ
 * of gptq-math.ts is the special case of one block spanning K; its grids map onto MatMulNBits
 * exactly by repeating each channel's scale and zero point over the blocks.
 */
import type { ModelProto } from 'onnx-buf';
import { applyCommands, type Command } from '../../graph/commands.js';
import { GraphIndex } from '../../graph/graph.js';
import { noProgress, type Reporting } from '../../log.js';
import { cholesky, spdInverse } from '../../prune/linalg.js';
import type { CaptureBatch } from '../../runtime/capture.js';
import type { LinearLayer, ViTStructure } from '../../vit/types.js';
import { NamePrefixes } from '../quantizer-commands.js';
import { proxyLoss } from '../methods/gptq-math.js';
import { gramsOf, writeWeightCommands } from '../methods/gptq-layers.js';
import { deployLayers } from './layers.js';
import {
  blockParams,
  code4,
  layerWeight,
  packBlocks,
  quantizeWeightBlocks,
  type BlockQuantizedWeight,
} from './weights.js';

export interface GptqBlockOptions {
  /** Input channels per block (MatMulNBits `block_size`). */
  blockSize: number;
  /** Symmetric blocks (zero point 8) or asymmetric (default, as the int4-weights export). */
  symmetric?: boolean;
  /** Search a clipped range per block (default true, as the int4-weights export). */
  clipSearch?: boolean;
  /** λ = dampening · mean(diag H) added to H's diagonal (GPTQ: 0.01). */
  dampening?: number;
}

export interface GptqBlockLayerResult {
  weight: BlockQuantizedWeight;
  /** Ŵ as [in, out] float32, the values the packed codes decode to. */
  dequantized: Float32Array;
}

/**
 * GPTQ-quantizes W ([inF, outF] row-major, rows are input channels; not modified) for the Gram
 * H ([inF, inF]; not modified) into MatMulNBits blocks.
 */
export function gptqBlockLayer(
  weight: Float64Array,
  hessian: Float64Array,
  inF: number,
  outF: number,
  options: GptqBlockOptions,
): GptqBlockLayerResult {
  const { blockSize } = options;
  const symmetric = options.symmetric ?? false;
  const search = options.clipSearch ?? true;
  const h = Float64Array.from(hessian);
  const w = Float64Array.from(weight);
  dropDeadChannels(h, w, inF, outF);
  const l = inverseFactor(h, inF, options.dampening ?? 0.01);

  const kBlocks = Math.ceil(inF / blockSize);
  const codes = new Uint8Array(outF * inF);
  const scales = new Float32Array(outF * kBlocks);
  const zeroPoints = new Uint8Array(outF * kBlocks);
  const dequantized = new Float32Array(inF * outF);
  const column = new Float64Array(blockSize);
  const errors = new Float64Array(outF);
  for (let b = 0; b < kBlocks; b++) {
    const start = b * blockSize;
    const width = Math.min(blockSize, inF - start);
    // each output channel's grid for this block, from the weights as updated so far
    for (let o = 0; o < outF; o++) {
      for (let i = 0; i < width; i++) column[i] = w[(start + i) * outF + o]!;
      const p = blockParams(column, width, symmetric, search);
      scales[o * kBlocks + b] = p.scale;
      zeroPoints[o * kBlocks + b] = p.zeroPoint;
    }
    for (let i = start; i < start + width; i++) {
      const d = l[i * inF + i]!;
      for (let o = 0; o < outF; o++) {
        const slot = o * kBlocks + b;
        const q = code4(w[i * outF + o]!, scales[slot]!, zeroPoints[slot]!);
        const v = Math.fround((q - zeroPoints[slot]!) * scales[slot]!);
        codes[o * inF + i] = q;
        dequantized[i * outF + o] = v;
        errors[o] = (w[i * outF + o]! - v) / d;
      }
      // U_ij = L_ji: the error of channel i onto every later channel
      for (let j = i + 1; j < inF; j++) {
        const f = l[j * inF + i]!;
        if (f === 0) continue;
        const row = j * outF;
        for (let o = 0; o < outF; o++) w[row + o] = w[row + o]! - f * errors[o]!;
      }
    }
  }
  const packed = packBlocks(
    codes,
    scales,
    symmetric ? undefined : zeroPoints,
    outF,
    inF,
    blockSize,
  );
  return { weight: packed, dequantized };
}

/**
 * A channel no calibration row drove (H_ii = 0) never reaches the output on these rows: its
 * weights are set to 0 and H_ii to 1 so that H stays invertible (as GPTQ does).
 */
function dropDeadChannels(h: Float64Array, w: Float64Array, inF: number, outF: number): void {
  for (let i = 0; i < inF; i++) {
    if (h[i * inF + i]! !== 0) continue;
    h[i * inF + i] = 1;
    w.fill(0, i * outF, (i + 1) * outF);
  }
}

/**
 * The lower Cholesky factor L of (H + λI)⁻¹ (U = Lᵀ). When the calibration rows are degenerate
 * the damping is raised tenfold at a time, up to eight times, as the least change that solves.
 */
function inverseFactor(h: Float64Array, n: number, dampening: number): Float64Array {
  let trace = 0;
  for (let i = 0; i < n; i++) trace += h[i * n + i]!;
  for (let attempt = 0; attempt < 8; attempt++) {
    const damping = ((dampening || 1e-4) * 10 ** attempt * trace) / n;
    const shifted = Float64Array.from(h);
    for (let i = 0; i < n; i++) shifted[i * n + i] = shifted[i * n + i]! + damping;
    const inverse = spdInverse(shifted, n);
    const l = inverse && cholesky(inverse, n);
    if (l) return l;
  }
  throw new RangeError(`GPTQ: H (${n}×${n}) is not positive definite even when dampened`);
}

/** One layer's proxy losses tr(ΔᵀHΔ) / tr(WᵀHW): rounding to nearest, and GPTQ. */
export interface GptqBlockLayerReport {
  role: string;
  roundingLoss: number;
  loss: number;
}

export interface GptqBlocksResult {
  /** The float model with every GPTQ layer's weight replaced by its dequantized values. */
  model: ModelProto;
  /** The packed blocks, by the layer's node name. */
  blocks: Map<string, BlockQuantizedWeight>;
  layers: GptqBlockLayerReport[];
  passes: number;
  seconds: number;
}

export interface GptqBlocksRun extends GptqBlockOptions, Reporting {
  /** Roles (or node names) left alone (the int4 export keeps them float). */
  exclude?: readonly string[];
  threads?: number;
}

/**
 * GPTQ on every MatMul/Gemm layer of `model` in MatMulNBits blocks, stage by stage on
 * `images` (the calibration images). The input model is not modified.
 */
export async function gptqBlocks(
  model: ModelProto,
  structure: ViTStructure,
  images: readonly CaptureBatch[],
  options: GptqBlocksRun,
): Promise<GptqBlocksResult> {
  const started = performance.now();
  const onProgress = options.onProgress ?? noProgress;
  const session = {
    optimization: 'basic' as const,
    ...(options.threads ? { threads: options.threads } : {}),
  };
  const exclude = new Set(options.exclude ?? []);
  const layers = deployLayers(model, structure).filter(
    (l) => l.opType !== 'Conv' && !exclude.has(l.role) && !exclude.has(l.node),
  );
  const stages = byStage(layers);
  const blocks = new Map<string, BlockQuantizedWeight>();
  const reports: GptqBlockLayerReport[] = [];
  const stage = 'GPTQ int4 weights';
  let current = model;
  onProgress({ status: 'start', stage, total: stages.length });
  for (const [s, list] of stages.entries()) {
    const grams = await gramsOf(
      current,
      structure.input,
      list.map((l) => l.input),
      images,
      session,
    );
    const index = new GraphIndex(current);
    const names = new NamePrefixes(index);
    const commands: Command[] = [];
    for (const layer of list) {
      const h = grams.get(layer.input)!.gram!;
      const w = weightRows(index, layer);
      const { inFeatures: inF, outFeatures: outF } = layer;
      const result = gptqBlockLayer(w, h, inF, outF, options);
      blocks.set(layer.node, result.weight);
      reports.push(layerReport(layer, w, h, result.dequantized, options));
      commands.push(...writeWeightCommands(index, names, layer, result.dequantized));
    }
    current = applyCommands(current, commands, { context: 'GPTQ int4 weights' });
    onProgress({ status: 'advance', stage, done: s + 1, total: stages.length });
  }
  onProgress({ status: 'end', stage });
  const seconds = (performance.now() - started) / 1000;
  options.logger?.info(
    `GPTQ int4: ${reports.length} layers in ${stages.length} passes, ${seconds.toFixed(1)} s`,
  );
  return { model: current, blocks, layers: reports, passes: stages.length, seconds };
}

/** Layers grouped by stage in graph order: each block, then the layers after the blocks. */
function byStage(layers: readonly LinearLayer[]): LinearLayer[][] {
  const stages = new Map<number, LinearLayer[]>();
  for (const layer of layers) {
    const block = /^blocks\.(\d+)\./.exec(layer.role);
    const at = layer.role.startsWith('patch_embed') ? -1 : block ? Number(block[1]) : 1e9;
    stages.set(at, [...(stages.get(at) ?? []), layer]);
  }
  return [...stages.entries()].sort((a, b) => a[0] - b[0]).map(([, list]) => list);
}

/** A layer's weight as float64 rows of input channels ([in, out]) whatever its layout. */
function weightRows(index: GraphIndex, layer: LinearLayer): Float64Array {
  const { values } = layerWeight(index, layer);
  if (layer.weightLayout === 'in-out') return Float64Array.from(values);
  const [inF, outF] = [layer.inFeatures, layer.outFeatures];
  const rows = new Float64Array(inF * outF);
  for (let o = 0; o < outF; o++)
    for (let i = 0; i < inF; i++) rows[i * outF + o] = values[o * inF + i]!;
  return rows;
}

function layerReport(
  layer: LinearLayer,
  w: Float64Array,
  h: Float64Array,
  dequantized: Float32Array,
  options: GptqBlockOptions,
): GptqBlockLayerReport {
  const { inFeatures: inF, outFeatures: outF } = layer;
  const rtn = quantizeWeightBlocks(
    (n, k) => w[k * outF + n]!,
    outF,
    inF,
    options.blockSize,
    options.symmetric ?? false,
    options.clipSearch ?? true,
  );
  const rounded = dequantizeBlocks(rtn, options.blockSize);
  const energy = proxyLoss(w, new Float64Array(w.length), h, inF, outF) || 1;
  return {
    role: layer.role,
    roundingLoss: proxyLoss(w, rounded, h, inF, outF) / energy,
    loss: proxyLoss(w, dequantized, h, inF, outF) / energy,
  };
}

/** The values packed blocks decode to, as [K, N] rows of input channels. */
export function dequantizeBlocks(q: BlockQuantizedWeight, blockSize: number): Float32Array {
  const out = new Float32Array(q.k * q.n);
  for (let n = 0; n < q.n; n++) {
    for (let k = 0; k < q.k; k++) {
      const slot = n * q.kBlocks + Math.floor(k / blockSize);
      const byte = q.packed[slot * (blockSize / 2) + ((k % blockSize) >> 1)]!;
      const code = k & 1 ? byte >> 4 : byte & 0x0f;
      const zeroPoint = q.zeroPoints ? q.zeroPoints[slot]! : 8;
      out[k * q.n + n] = Math.fround((code - zeroPoint) * q.scales[slot]!);
    }
  }
  return out;
}
