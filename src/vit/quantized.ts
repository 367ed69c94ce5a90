/**
 * Quantized graphs, told apart from float ones so that a failed recognition can say why: a
 * quantized export is no longer a ViT of plain MatMuls, and vitslim reads the float model.
 */
import type { ModelProto, NodeProto } from 'onnx-buf';

/** Kernels that compute a linear layer in integer arithmetic (or from packed integer weights). */
export const integerKernels: ReadonlySet<string> = new Set([
  'QLinearMatMul',
  'QLinearConv',
  'QGemm',
  'MatMulIntegerToFloat',
  'DynamicQuantizeMatMul',
  'MatMulInteger',
  'ConvInteger',
  'MatMulNBits',
]);

/** Op types only a quantized graph holds: the integer kernels and quantize/dequantize steps. */
const quantizedOps: ReadonlySet<string> = new Set([
  ...integerKernels,
  'QuantizeLinear',
  'DequantizeLinear',
  'DynamicQuantizeLinear',
  'QLinearAdd',
  'QLinearMul',
  'QLinearSoftmax',
  'QAttention',
  'MatMulBnb4',
]);

/**
 * A quantized node of `model`: the one named `preferred` (where tracing stopped) when it is
 * quantized, else the first in graph order; undefined for a float graph.
 */
export function quantizedNode(model: ModelProto, preferred?: string): NodeProto | undefined {
  const nodes = model.graph?.node ?? [];
  const quantized = (node: NodeProto) => quantizedOps.has(node.opType);
  return nodes.find((n) => n.name === preferred && quantized(n)) ?? nodes.find(quantized);
}
