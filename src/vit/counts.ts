/**
 * Parameters and multiply-accumulates of a model. Parameters are the float initializer
 * elements; MACs are counted per image for every MatMul, Gemm and Conv from the shapes the graph
 * computes, so the two attention MatMuls (QKᵀ and softmax·V) are counted like the linear layers
 * and a pruned or token-reduced graph is counted as it is, not as its original design.
 */
import type { ModelProto, NodeProto } from 'onnx-buf';
import { attributeInt } from '../graph/attributes.js';
import { GraphIndex } from '../graph/graph.js';
import { DataType, elementCount, tensorDims } from '../onnx/tensor.js';
import { linearLayers } from './layers.js';
import { imageInput, ShapeMap } from './shapes.js';
import { nodeLabel, unsupported, type TraceContext } from './trace.js';
import type { ViTStructure } from './types.js';

const floatTypes = new Set<number>([
  DataType.FLOAT,
  DataType.FLOAT16,
  DataType.BFLOAT16,
  DataType.DOUBLE,
]);

/** The number of float initializer elements (weights, biases, norms, embeddings). */
export function countParameters(model: ModelProto): number {
  let total = 0;
  for (const tensor of model.graph?.initializer ?? []) {
    if (floatTypes.has(tensor.dataType)) total += elementCount(tensorDims(tensor));
  }
  return total;
}

/**
 * MACs of one MatMul, Gemm or Conv for one image: output elements × reduction length
 * (the contracted dimension; for a Conv, input channels per group × kernel area). Undefined for
 * other ops or where a shape is unknown.
 */
export function nodeMacs(ctx: TraceContext, node: NodeProto): number | undefined {
  const out = ctx.shapes.shape(node.output[0] ?? '');
  const a = ctx.shapes.shape(node.input[0] ?? '');
  const b = ctx.shapes.shape(node.input[1] ?? '');
  if (!out || !a || !b) return undefined;
  const outputs = elementCount(out);
  switch (node.opType) {
    case 'MatMul':
      return outputs * (a[a.length - 1] ?? 0);
    case 'Gemm':
      return outputs * ((attributeInt(node, 'transA', 0) ? a[0] : a[1]) ?? 0);
    case 'Conv':
      return outputs * elementCount(b.slice(1));
    default:
      return undefined;
  }
}

const macOps = new Set(['MatMul', 'Gemm', 'Conv']);

/**
 * MACs per image of every MatMul, Gemm and Conv of any model with one image input, ViT or
 * not (a quantized or pruned export included), for reports that compare models.
 */
export function countMacs(model: ModelProto): number {
  const index = new GraphIndex(model);
  const shapes = new ShapeMap(index, new Map([imageInput(index)]));
  return [...graphMacs({ index, shapes }).values()].reduce((sum, m) => sum + m, 0);
}

/** MACs per image of every MatMul, Gemm and Conv of the graph, by node name. */
export function graphMacs(ctx: TraceContext): Map<string, number> {
  const macs = new Map<string, number>();
  for (const node of ctx.index.nodes) {
    if (!macOps.has(node.opType)) continue;
    const count = nodeMacs(ctx, node);
    if (count === undefined) {
      unsupported(
        `cannot count the MACs of ${nodeLabel(node)}: the shape of its inputs is unknown`,
        node.name,
      );
    }
    macs.set(node.name, count);
  }
  return macs;
}

/** The MAC-counting nodes of the map by role: linear layers and attention MatMuls. */
export function macNodesByRole(structure: Omit<ViTStructure, 'counts'>): Map<string, string> {
  const roles = new Map<string, string>();
  for (const layer of linearLayers(structure)) roles.set(layer.role, layer.node);
  for (const { index, attention } of structure.blocks) {
    roles.set(`blocks.${index}.attn.scores`, attention.scores.node);
    roles.set(`blocks.${index}.attn.context`, attention.context.node);
  }
  return roles;
}
