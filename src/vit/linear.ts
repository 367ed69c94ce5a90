/**
 * Recognising linear layers: y = x·W (+ b) with a constant W, as exporters write them — a
 * MatMul with an [in, out] weight and a separate bias Add, a Gemm with or without transB, or a
 * Conv whose kernel covers whole patches.
 */
import type { NodeProto, TensorProto } from 'onnx-buf';
import { attributeFloat, attributeInt } from '../graph/attributes.js';
import { DataType, tensorDims } from '../onnx/tensor.js';
import type { LinearLayer } from './types.js';
import {
  nodeLabel,
  otherInput,
  soleDataConsumer,
  unsupported,
  type TraceContext,
} from './trace.js';

const floatTypes = new Set<number>([
  DataType.FLOAT,
  DataType.FLOAT16,
  DataType.BFLOAT16,
  DataType.DOUBLE,
]);

function floatConstant(ctx: TraceContext, value: string | undefined): TensorProto | undefined {
  const tensor = value ? ctx.index.constantTensor(value) : undefined;
  return tensor && floatTypes.has(tensor.dataType) ? tensor : undefined;
}

/** Whether a node multiplies its activation by a constant float weight. */
export function isLinearNode(ctx: TraceContext, node: NodeProto): boolean {
  switch (node.opType) {
    case 'MatMul':
    case 'Gemm':
      return !floatConstant(ctx, node.input[0]) && Boolean(floatConstant(ctx, node.input[1]));
    case 'Conv':
      return Boolean(floatConstant(ctx, node.input[1]));
    default:
      return false;
  }
}

/**
 * The linear layer computed by `node`, or undefined when the node is not a MatMul, Gemm or
 * Conv with a constant weight. Throws for a linear form the map cannot describe (a transposed
 * activation, a scaled Gemm, a grouped Conv), naming the node.
 */
export function linearAt(
  ctx: TraceContext,
  node: NodeProto,
  role: string,
): LinearLayer | undefined {
  if (!isLinearNode(ctx, node)) return undefined;
  const weight = node.input[1]!;
  const dims = tensorDims(floatConstant(ctx, weight)!);
  switch (node.opType) {
    case 'MatMul':
      return matMulLayer(ctx, node, role, dims);
    case 'Gemm':
      return gemmLayer(ctx, node, role, dims);
    default:
      return convLayer(ctx, node, role, dims);
  }
}

function base(node: NodeProto, role: string) {
  return {
    role,
    node: node.name,
    input: node.input[0]!,
    output: node.output[0]!,
    weight: node.input[1]!,
  };
}

function matMulLayer(ctx: TraceContext, node: NodeProto, role: string, dims: number[]) {
  if (dims.length !== 2) {
    unsupported(
      `${nodeLabel(node)}: a linear weight must be 2-D, but ${node.input[1]} has dims [${dims.join(', ')}]`,
      node.name,
    );
  }
  const [inFeatures, outFeatures] = dims as [number, number];
  const layer = { ...base(node, role), opType: 'MatMul', weightLayout: 'in-out' } as const;
  return { ...layer, ...separateBias(ctx, node, outFeatures), inFeatures, outFeatures };
}

function gemmLayer(ctx: TraceContext, node: NodeProto, role: string, dims: number[]) {
  if (attributeInt(node, 'transA', 0) !== 0) {
    unsupported(
      `${nodeLabel(node)}: Gemm with transA=1 is not supported as a linear layer (the activation must be A, untransposed)`,
      node.name,
    );
  }
  const alpha = attributeFloat(node, 'alpha', 1);
  const beta = attributeFloat(node, 'beta', 1);
  if (alpha !== 1 || (node.input[2] && beta !== 1)) {
    unsupported(
      `${nodeLabel(node)}: Gemm with alpha=${alpha}, beta=${beta} is not supported as a linear layer (expected 1 and 1)`,
      node.name,
    );
  }
  const transB = attributeInt(node, 'transB', 0) === 1;
  const [rows, cols] = dims as [number, number];
  const [inFeatures, outFeatures] = transB ? [cols, rows] : [rows, cols];
  const layer = {
    ...base(node, role),
    opType: 'Gemm',
    weightLayout: transB ? 'out-in' : 'in-out',
  } as const;
  return { ...layer, ...ownBias(ctx, node), inFeatures, outFeatures };
}

function convLayer(ctx: TraceContext, node: NodeProto, role: string, dims: number[]) {
  if (attributeInt(node, 'group', 1) !== 1) {
    unsupported(
      `${nodeLabel(node)}: grouped Conv (group=${attributeInt(node, 'group', 1)}) is not a linear layer`,
      node.name,
    );
  }
  const [outFeatures, channels, ...kernel] = dims as [number, number, ...number[]];
  // a patch Conv is a MatMul over flattened patches: in = channels × kernel area
  const inFeatures = kernel.reduce((p, k) => p * k, channels);
  const layer = { ...base(node, role), opType: 'Conv', weightLayout: 'conv' } as const;
  return { ...layer, ...ownBias(ctx, node), inFeatures, outFeatures };
}

/** Gemm's and Conv's third input. */
function ownBias(ctx: TraceContext, node: NodeProto) {
  const bias = node.input[2];
  const output = node.output[0]!;
  if (!bias) return { biasedOutput: output };
  if (!floatConstant(ctx, bias)) {
    unsupported(`${nodeLabel(node)}: the bias ${bias} is not a constant`, node.name);
  }
  return { bias, biasedOutput: output };
}

/** The bias of a MatMul: the constant of an Add that is the MatMul's only reader. */
function separateBias(ctx: TraceContext, node: NodeProto, outFeatures: number) {
  const output = node.output[0]!;
  const add = soleDataConsumer(ctx, output);
  const bias = add?.opType === 'Add' ? otherInput(add, output) : undefined;
  const tensor = floatConstant(ctx, bias);
  if (!add || !bias || !tensor) return { biasedOutput: output };
  const dims = tensorDims(tensor);
  const count = dims.reduce((p, d) => p * d, 1);
  if (count !== outFeatures || dims[dims.length - 1] !== outFeatures)
    return { biasedOutput: output };
  return { bias, biasNode: add.name, biasedOutput: add.output[0]! };
}
