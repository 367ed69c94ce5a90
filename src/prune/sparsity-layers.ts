/**
 * The linear layers that sparsity and low-rank factorization act on, chosen by role, and their
 * weights as one float64 matrix of rows = outputs, columns = inputs (the layout in which a row
 * is one output's weights, as SparseGPT sweeps them), whatever the layout in the graph.
 */
import type { GraphIndex } from '../graph/graph.js';
import type { Command } from '../graph/commands.js';
import { InputError } from '../errors.js';
import { parseLayerSelector } from '../quant/quant-points.js';
import { unsupported } from '../vit/trace.js';
import type { LinearLayer, ViTStructure } from '../vit/types.js';
import { readConstant, writeConstant } from './tensors.js';

/** A weight as rows = outputs × columns = inputs, row-major. */
export interface WeightMatrix {
  data: Float64Array;
  rows: number;
  cols: number;
}

/** Every block's attention projections (qkv or q/k/v, proj) and MLP layers, in graph order. */
export function blockLayers(structure: ViTStructure): LinearLayer[] {
  const layers: LinearLayer[] = [];
  for (const { attention: a, mlp } of structure.blocks) {
    for (const layer of [a.qkv, a.q, a.k, a.v]) if (layer) layers.push(layer);
    layers.push(a.proj, mlp.fc1, mlp.fc2);
  }
  return layers;
}

function allLayers(structure: ViTStructure): LinearLayer[] {
  const layers = [structure.patchEmbed.linear, ...blockLayers(structure)];
  if (structure.preLogits) layers.push(structure.preLogits.linear);
  return [...layers, structure.head];
}

/**
 * The layers chosen by `selectors` (role globs such as `blocks.*.mlp`, `blocks.**.fc1`, `head`,
 * or `node:<regex>`), in graph order; every block layer when `selectors` is undefined. A
 * selector that matches no layer is an InputError, and so is a Conv (a patch embedding): only
 * MatMul and Gemm weights are 2-D matrices.
 */
export function targetLayers(
  structure: ViTStructure,
  selectors: readonly string[] | undefined,
): LinearLayer[] {
  if (selectors === undefined) return blockLayers(structure);
  const parsed = selectors.map(parseLayerSelector);
  const layers = allLayers(structure);
  const chosen = layers.filter((layer) =>
    parsed.some((s) => s.pattern.test(s.kind === 'role' ? layer.role : layer.node)),
  );
  const idle = parsed.filter(
    (s) => !layers.some((l) => s.pattern.test(s.kind === 'role' ? l.role : l.node)),
  );
  if (idle.length > 0) {
    const roles = layers.map((l) => l.role);
    throw new InputError(
      `layer selector ${idle.map((s) => `"${s.text}"`).join(', ')} matches no linear layer; the layers are ${roles[0]}, ${roles[1]}, … ${roles[roles.length - 1]}`,
    );
  }
  const conv = chosen.find((l) => l.opType === 'Conv');
  if (conv) {
    unsupported(
      `${conv.role} (${conv.node}) is a Conv: only MatMul and Gemm layers can be sparsified or factored`,
      conv.node,
    );
  }
  return chosen;
}

/** The weight of `layer` as rows = outputs × columns = inputs, in float64. */
export function readWeight(index: GraphIndex, layer: LinearLayer): WeightMatrix {
  const { data } = readConstant(index, layer.weight);
  const rows = layer.outFeatures;
  const cols = layer.inFeatures;
  const out = new Float64Array(rows * cols);
  if (layer.weightLayout === 'out-in') {
    for (let i = 0; i < out.length; i++) out[i] = data[i]!;
  } else {
    // [in, out] in the graph: element (i, o) moves to (o, i)
    for (let i = 0; i < cols; i++) {
      for (let o = 0; o < rows; o++) out[o * cols + i] = data[i * rows + o]!;
    }
  }
  return { data: out, rows, cols };
}

/** The command that writes `weight` (rows = outputs) back into `layer`'s own layout. */
export function writeWeight(
  index: GraphIndex,
  layer: LinearLayer,
  weight: WeightMatrix,
): Command[] {
  const readers = index.consumersOf(layer.weight).filter((n) => n.name !== layer.node);
  if (readers.length > 0) {
    unsupported(
      `${layer.weight} is also read by ${readers.map((n) => n.name).join(', ')}; a shared weight cannot be changed for ${layer.role} alone`,
      layer.weight,
    );
  }
  const { data, rows, cols } = weight;
  const out = new Float32Array(rows * cols);
  if (layer.weightLayout === 'out-in') {
    for (let i = 0; i < out.length; i++) out[i] = data[i]!;
  } else {
    for (let o = 0; o < rows; o++) {
      for (let i = 0; i < cols; i++) out[i * rows + o] = data[o * cols + i]!;
    }
  }
  const dims = layer.weightLayout === 'out-in' ? [rows, cols] : [cols, rows];
  return writeConstant(index, layer.weight, { data: out, dims });
}

/** Values read by every chosen layer (q, k and v share one), each once. */
export function layerInputs(layers: readonly LinearLayer[]): string[] {
  return [...new Set(layers.map((l) => l.input))];
}
