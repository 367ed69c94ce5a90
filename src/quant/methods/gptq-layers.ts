/**
 * What the weight methods run on top of RepQ-ViT (GPTQ, ERQ) share: weights as float64 rows of
 * input channels, the order in which layers are visited, the tensor each layer reads in the
 * simulated model, and the Gram matrices of those tensors from onnxruntime.
 */
import type { ModelProto } from 'onnx-buf';
import type { Command } from '../../graph/commands.js';
import { GraphIndex } from '../../graph/graph.js';
import { InternalError } from '../../errors.js';
import { channelStatistics, type ChannelMoments } from '../../prune/statistics.js';
import type { CaptureBatch } from '../../runtime/capture.js';
import type { SessionOptions } from '../../runtime/session.js';
import type { LinearLayer } from '../../vit/types.js';
import {
  NamePrefixes,
  readWeight,
  replaceConstant,
  type WeightSetting,
} from '../quantizer-commands.js';
import { sliceModel } from '../sequential.js';

/** A layer whose weight a method rewrites, or why it is left to round-to-nearest. */
export type LayerPlan =
  | { kind: 'matrix'; setting: WeightSetting }
  | { kind: 'skipped'; setting: WeightSetting; reason: string };

/**
 * Weight settings by stage, in graph order: the patch embedding, each block, then the layers
 * after the blocks. A method reads every layer of a stage from one pass of the model with all
 * earlier stages already rewritten (GPTQ's sequential order over blocks).
 */
export function planStages(weights: readonly WeightSetting[]): LayerPlan[][] {
  const stages = new Map<number, LayerPlan[]>();
  for (const setting of weights) {
    const block = /^blocks\.(\d+)\./.exec(setting.role);
    const at = setting.role.startsWith('patch_embed') ? -1 : block ? Number(block[1]) : 1e9;
    const list = stages.get(at) ?? [];
    list.push(plan(setting));
    stages.set(at, list);
  }
  return [...stages.entries()].sort((a, b) => a[0] - b[0]).map(([, list]) => list);
}

function plan(setting: WeightSetting): LayerPlan {
  if (setting.layer.weightLayout === 'conv') {
    // TODO: a patch-embedding Conv reads image patches, not rows of its input; its Gram needs the
    // patches unfolded (a Reshape/Transpose of the image for stride = kernel) before it can be
    // rewritten. Until then it keeps RepQ-ViT's round-to-nearest weights.
    return {
      kind: 'skipped',
      setting,
      reason: 'a Conv weight (its input patches are not unfolded)',
    };
  }
  return { kind: 'matrix', setting };
}

/** A weight as float64 rows of input channels: [in, out] whatever its stored layout. */
export function weightRows(index: GraphIndex, setting: WeightSetting): Float64Array {
  const { layer } = setting;
  const { values } = readWeight(index, setting.role, layer);
  const inF = layer.inFeatures;
  const outF = layer.outFeatures;
  if (values.length !== inF * outF) {
    throw new InternalError(
      `${setting.role}: weight ${layer.weight} holds ${values.length} values, the structure says ${inF}×${outF}`,
    );
  }
  if (layer.weightLayout === 'in-out') return Float64Array.from(values);
  const rows = new Float64Array(inF * outF);
  for (let o = 0; o < outF; o++)
    for (let i = 0; i < inF; i++) rows[i * outF + o] = values[o * inF + i]!;
  return rows;
}

/** [in, out] rows back in the layer's stored layout. */
export function storedLayout(layer: LinearLayer, rows: Float32Array): Float32Array {
  if (layer.weightLayout === 'in-out') return rows;
  const inF = layer.inFeatures;
  const outF = layer.outFeatures;
  const out = new Float32Array(inF * outF);
  for (let o = 0; o < outF; o++)
    for (let i = 0; i < inF; i++) out[o * inF + i] = rows[i * outF + o]!;
  return out;
}

/** The commands writing new [in, out] rows as a layer's weight. */
export function writeWeightCommands(
  index: GraphIndex,
  names: NamePrefixes,
  layer: LinearLayer,
  rows: Float32Array,
): Command[] {
  const dims = index.constantTensor(layer.weight)!.dims.map(Number);
  return replaceConstant(index, names, layer.weight, layer.node, dims, storedLayout(layer, rows));
}

/** The value a layer's node reads on its activation slot in `model` (after any quantizer). */
export function readValue(model: GraphIndex, original: GraphIndex, layer: LinearLayer): string {
  const slot = original.node(layer.node).input.indexOf(layer.input);
  const value = model.node(layer.node).input[slot];
  if (slot < 0 || !value) {
    throw new InternalError(`${layer.role}: node ${layer.node} does not read ${layer.input}`);
  }
  return value;
}

/**
 * Σ xxᵀ (with Σ x and the row count) of each value over the calibration images, reduced inside
 * onnxruntime on the part of `model` that computes them.
 */
export async function gramsOf(
  model: ModelProto,
  imageInput: string,
  values: readonly string[],
  images: readonly CaptureBatch[],
  options: SessionOptions,
): Promise<Map<string, ChannelMoments>> {
  const unique = [...new Set(values)];
  const { model: slice } = sliceModel(model, [imageInput], unique);
  const requests = unique.map((value) => ({ value, gram: true }));
  const { moments } = await channelStatistics(slice, requests, images, options);
  return moments;
}
