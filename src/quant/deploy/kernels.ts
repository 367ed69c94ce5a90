/**
 * Which kernel each linear layer runs as once onnxruntime has optimised the graph. QDQ and
 * dynamic graphs only become fast when onnxruntime's fusions fire, and they fail silently (the
 * float simulation runs instead), so every deployable export is checked by counting: the model
 * is loaded with optimisation level 'all', onnxruntime writes the optimised graph to a temporary
 * file, and the ops reading each layer's weight are looked up there.
 */
import type { ModelProto, NodeProto } from 'onnx-buf';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModel } from '../../onnx/model-io.js';
import { createSession } from '../../runtime/session.js';
import { integerKernels } from '../../vit/quantized.js';
import { deployLayers, type LayerSource } from './layers.js';

export { integerKernels };

/** Float kernels a linear layer can become (onnxruntime fuses MatMul+Add, Conv+activation…). */
export const floatKernels: ReadonlySet<string> = new Set([
  'MatMul',
  'Gemm',
  'Conv',
  'FusedMatMul',
  'FusedGemm',
  'FusedConv',
  'NhwcFusedConv',
]);

export interface LayerKernel {
  role: string;
  node: string;
  weight: string;
  /** Op type of the optimised node reading the layer's weight, or 'unmatched'. */
  kernel: string;
  integer: boolean;
}

export interface KernelCount {
  layers: LayerKernel[];
  /** Layers running as an integer kernel. */
  integer: number;
  /** Layers running as a float kernel or not found. */
  float: number;
  unmatched: number;
  /** integer / layers. */
  fraction: number;
  /** Every op type of the optimised graph with its count. */
  opCounts: Record<string, number>;
}

/**
 * Counts the kernels of `model` (an export) for the linear layers of the original model
 * (`structure`, or a scan of `original` when no structure map is at hand). Layers are matched by
 * weight initializer: exports name a quantized weight `<weight>_<suffix>`, and onnxruntime keeps
 * or extends those names.
 */
export async function countIntegerKernels(
  model: ModelProto,
  structure?: LayerSource,
  original: ModelProto = model,
): Promise<KernelCount> {
  const optimized = await optimizedGraph(model);
  const linear = deployLayers(original, structure);
  const nodes = optimized.graph!.node;
  const byWeight = kernelsByName(
    nodes,
    linear.map((l) => l.weight),
  );
  // layout transformers (NCHWc) rename reordered weights, but keep the bias name
  const byBias = kernelsByName(
    nodes,
    linear.flatMap((l) => (l.bias ? [l.bias] : [])),
  );
  const layers = linear.map((layer) => {
    const kernel =
      byWeight.get(layer.weight) ?? (layer.bias && byBias.get(layer.bias)) ?? 'unmatched';
    const { role, node, weight } = layer;
    return { role, node, weight, kernel, integer: integerKernels.has(kernel) };
  });
  const integer = layers.filter((l) => l.integer).length;
  const unmatched = layers.filter((l) => l.kernel === 'unmatched').length;
  const opCounts: Record<string, number> = {};
  for (const node of optimized.graph!.node)
    opCounts[node.opType] = (opCounts[node.opType] ?? 0) + 1;
  return {
    layers,
    integer,
    float: layers.length - integer,
    unmatched,
    fraction: layers.length ? integer / layers.length : 0,
    opCounts,
  };
}

/** The graph onnxruntime runs: optimised at level 'all' and written out. */
export async function optimizedGraph(model: ModelProto): Promise<ModelProto> {
  const folder = await mkdtemp(join(tmpdir(), 'vitslim-kernels-'));
  const path = join(folder, 'optimized.onnx');
  try {
    const session = await createSession(model, {
      threads: 1,
      optimization: 'all',
      optimizedModelPath: path,
    });
    await session.release();
    return await loadModel(path);
  } finally {
    await rm(folder, { recursive: true, force: true });
  }
}

/**
 * For each original initializer name, the op type of the linear-kind node that reads it (or a
 * value named after it). When names overlap (`w_1` and `w_10`), the longest original name wins.
 */
function kernelsByName(nodes: readonly NodeProto[], names: readonly string[]) {
  const sorted = [...names].sort((a, b) => b.length - a.length);
  const found = new Map<string, string>();
  for (const node of nodes) {
    if (!integerKernels.has(node.opType) && !floatKernels.has(node.opType)) continue;
    for (const input of node.input) {
      const weight = sorted.find((w) => input === w || input.startsWith(`${w}_`));
      if (weight && !found.has(weight)) found.set(weight, node.opType);
    }
  }
  return found;
}
