/**
 * Tiny single-purpose ONNX models built in code for the quantization tests: one float input,
 * a few nodes, any number of outputs. They run in onnxruntime, which is the independent judge
 * of what the ONNX ops compute.
 */
import { create } from '@bufbuild/protobuf';
import {
  GraphProtoSchema,
  ModelProtoSchema,
  OperatorSetIdProtoSchema,
  type ModelProto,
} from 'onnx-buf';
import { makeNode, type AttributeValue } from '../../src/graph/attributes.js';
import { applyCommands, valueInfo, type Command } from '../../src/graph/commands.js';
import { DataType, type TensorData } from '../../src/onnx/tensor.js';
import { createSession, floatInput } from '../../src/runtime/session.js';

/** An empty graph reading float input `x` of `dims`, at `opset`. */
export function emptyModel(dims: number[], opset = 17): ModelProto {
  return create(ModelProtoSchema, {
    irVersion: opset >= 21 ? 10n : 8n,
    opsetImport: [create(OperatorSetIdProtoSchema, { domain: '', version: BigInt(opset) })],
    graph: create(GraphProtoSchema, {
      name: 'tiny',
      input: [valueInfo('x', DataType.FLOAT, dims)],
    }),
  });
}

export function nodeCommand(
  opType: string,
  inputs: string[],
  output: string,
  attributes: Record<string, AttributeValue> = {},
): Command {
  const node = makeNode({
    name: `${opType}_${output}`,
    opType,
    inputs,
    outputs: [output],
    attributes,
  });
  return { kind: 'addNode', node };
}

/** The model with `commands` applied and `outputs` (name → element type) exposed. */
export function buildModel(
  dims: number[],
  commands: readonly Command[],
  outputs: Record<string, number>,
  opset = 17,
): ModelProto {
  const exposed: Command[] = Object.entries(outputs).map(([name, elemType]) => ({
    kind: 'addOutput',
    name,
    elemType,
  }));
  return applyCommands(emptyModel(dims, opset), [...commands, ...exposed]);
}

/** Runs the model on `x` and returns every output's data. */
export async function runModel(
  model: ModelProto,
  x: Float32Array,
  dims: number[],
): Promise<Record<string, TensorData>> {
  const session = await createSession(model, { threads: 1 });
  try {
    const result = await session.run({ x: floatInput(x, dims) });
    const out: Record<string, TensorData> = {};
    for (const [name, tensor] of Object.entries(result)) out[name] = tensor.data as TensorData;
    return out;
  } finally {
    await session.release();
  }
}
