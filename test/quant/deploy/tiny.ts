/**
 * Tiny models for the deploy tests, built in code: one linear layer (MatMul + bias Add, or Gemm)
 * with weights given as numbers, and reference graphs of plain ONNX integer ops that say what a
 * quantized layer must compute. onnxruntime runs both; it is the independent judge.
 */
import { create } from '@bufbuild/protobuf';
import {
  GraphProtoSchema,
  ModelProtoSchema,
  OperatorSetIdProtoSchema,
  type ModelProto,
  type NodeProto,
  type TensorProto,
} from 'onnx-buf';
import { makeNode, type AttributeValue } from '../../../src/graph/attributes.js';
import { valueInfo } from '../../../src/graph/commands.js';
import { DataType, floatTensor, makeTensor, type TensorData } from '../../../src/onnx/tensor.js';
import { createSession, floatInput, type SessionOptions } from '../../../src/runtime/session.js';
import type { LinearLayer } from '../../../src/vit/types.js';

/** Nodes and initializers of a graph reading float `x` and giving float `y`. */
export class TinyGraph {
  readonly nodes: NodeProto[] = [];
  readonly initializers: TensorProto[] = [];

  op(
    opType: string,
    inputs: string[],
    output: string,
    attributes?: Record<string, AttributeValue>,
  ) {
    this.nodes.push(
      makeNode({ name: `${opType}_${output}`, opType, inputs, outputs: [output], attributes }),
    );
    return output;
  }

  /** A node with several outputs. */
  opMulti(opType: string, inputs: string[], outputs: string[]) {
    this.nodes.push(makeNode({ name: `${opType}_${outputs[0]}`, opType, inputs, outputs }));
  }

  tensor(name: string, dataType: number, dims: number[], data: TensorData): string {
    this.initializers.push(makeTensor(name, dataType, dims, data));
    return name;
  }

  floats(name: string, dims: number[], values: readonly number[]): string {
    this.initializers.push(floatTensor(name, dims, Float32Array.from(values)));
    return name;
  }

  model(inputDims: (number | string)[], opset = 17): ModelProto {
    return create(ModelProtoSchema, {
      irVersion: 8n,
      opsetImport: [create(OperatorSetIdProtoSchema, { domain: '', version: BigInt(opset) })],
      graph: create(GraphProtoSchema, {
        name: 'tiny',
        node: this.nodes,
        initializer: this.initializers,
        input: [valueInfo('x', DataType.FLOAT, inputDims)],
        output: [valueInfo('y')],
      }),
    });
  }
}

/** The layer of `matmulWithBias`, as a structure map would describe it. */
export function matmulLayer(inFeatures: number, outFeatures: number, role = 'fc'): LinearLayer {
  return {
    role,
    node: 'MatMul_xw',
    opType: 'MatMul',
    input: 'x',
    output: 'xw',
    weight: 'W',
    weightLayout: 'in-out',
    bias: 'b',
    biasNode: 'Add_y',
    biasedOutput: 'y',
    inFeatures,
    outFeatures,
  };
}

/** A MatMul without bias reading `input` and `weight` ([4, 3] unless told). */
export function bareMatMulLayer(
  role: string,
  input: string,
  weight: string,
  output: string,
  dims: [number, number] = [4, 3],
): LinearLayer {
  const [inFeatures, outFeatures] = dims;
  const node = `MatMul_${output}`;
  const layout = 'in-out' as const;
  return {
    role,
    node,
    opType: 'MatMul',
    input,
    output,
    weight,
    weightLayout: layout,
    biasedOutput: output,
    inFeatures,
    outFeatures,
  };
}

/** The layer of `gemmTransB`. */
export function gemmLayer(inFeatures: number, outFeatures: number, role = 'head'): LinearLayer {
  return {
    role,
    node: 'Gemm_y',
    opType: 'Gemm',
    input: 'x',
    output: 'y',
    weight: 'W',
    weightLayout: 'out-in',
    bias: 'b',
    biasedOutput: 'y',
    inFeatures,
    outFeatures,
  };
}

/** y = x·W + b as MatMul followed by Add(b, ·), the way torch.onnx writes a Linear on 3-D x. */
export function matmulWithBias(weight: number[][], bias: number[], inputDims: (number | string)[]) {
  const g = new TinyGraph();
  g.floats('W', [weight.length, weight[0]!.length], weight.flat());
  g.floats('b', [bias.length], bias);
  g.op('MatMul', ['x', 'W'], 'xw');
  g.op('Add', ['b', 'xw'], 'y');
  return g.model(inputDims);
}

/** y = x·Wᵀ + b as one Gemm with transB = 1 (W given as [out, in]). */
export function gemmTransB(weight: number[][], bias: number[], inputDims: (number | string)[]) {
  const g = new TinyGraph();
  g.floats('W', [weight.length, weight[0]!.length], weight.flat());
  g.floats('b', [bias.length], bias);
  g.op('Gemm', ['x', 'W', 'b'], 'y', { transB: 1 });
  return g.model(inputDims);
}

/** Runs `model` on one input and returns output `y`. */
export async function runModel(
  model: ModelProto,
  x: Float32Array,
  dims: number[],
  options: SessionOptions = { threads: 1 },
): Promise<Float32Array> {
  const session = await createSession(model, options);
  try {
    const out = await session.run({ x: floatInput(x, dims) });
    return out[session.outputNames[0]!]!.data as Float32Array;
  } finally {
    await session.release();
  }
}

/** Largest absolute difference of two arrays of the same length. */
export function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) throw new RangeError(`lengths ${a.length} and ${b.length} differ`);
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!));
  return worst;
}

// W [4, 3]: column maxima 1.27, 0.635 and 2.54. On the full int8 grid (|q| ≤ 127) the
// per-channel scales are 0.01, 0.005 and 0.02 and every weight is an exact multiple of its scale.
// On the reduced grid (|q| ≤ 64, the default) they are 1.27/64, 0.635/64 and 2.54/64; by hand,
// column 0: −0.3·64/1.27 = −15.12 → −15, 0.05·64/1.27 = 2.52 → 3, 0.6·64/1.27 = 30.24 → 30;
// column 1: 0.5·64/0.635 = 50.39 → 50, −0.2·64/0.635 = −20.16 → −20, 0.1·64/0.635 = 10.08 → 10;
// column 2: 1.0·64/2.54 = 25.20 → 25, 0.02·64/2.54 = 0.504 → 1, −0.5·64/2.54 = −12.60 → −13.
export const weight = [
  [1.27, 0.5, -2.54],
  [-0.3, 0.635, 1.0],
  [0.05, -0.2, 0.02],
  [0.6, 0.1, -0.5],
];
export const weightCodes = [64, 50, -64, -15, 64, 25, 3, -20, 1, 30, 10, -13];
export const weightScales = [1.27 / 64, 0.635 / 64, 2.54 / 64];
export const fullWeightCodes = [127, 100, -127, -30, 127, 50, 5, -40, 1, 60, 20, -25];
export const fullWeightScales = [0.01, 0.005, 0.02];
export const bias = [0.1234, -0.2468, 0.4321];
