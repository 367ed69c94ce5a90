/**
 * Reading and making node attributes. ONNX stores each attribute in the field of its type;
 * these helpers read the one the `type` names, with int64 narrowed through a checked helper.
 */
import { create } from '@bufbuild/protobuf';
import {
  AttributeProtoSchema,
  AttributeProto_AttributeType as AttributeType,
  NodeProtoSchema,
  type AttributeProto,
  type NodeProto,
  type TensorProto,
} from 'onnx-buf';
import { toSafeNumber } from '../onnx/tensor.js';

export type AttributeValue = number | string | number[] | TensorProto;

export function getAttribute(node: NodeProto, name: string): AttributeProto | undefined {
  return node.attribute.find((a) => a.name === name);
}

export function attributeInt(node: NodeProto, name: string, fallback: number): number {
  const a = getAttribute(node, name);
  return a ? toSafeNumber(a.i, `${node.name}.${name}`) : fallback;
}

export function attributeFloat(node: NodeProto, name: string, fallback: number): number {
  const a = getAttribute(node, name);
  return a ? a.f : fallback;
}

export function attributeInts(node: NodeProto, name: string): number[] | undefined {
  const a = getAttribute(node, name);
  return a ? a.ints.map((v) => toSafeNumber(v, `${node.name}.${name}`)) : undefined;
}

export function attributeString(node: NodeProto, name: string): string | undefined {
  const a = getAttribute(node, name);
  return a ? new TextDecoder().decode(a.s) : undefined;
}

export function attributeTensor(node: NodeProto, name: string): TensorProto | undefined {
  return getAttribute(node, name)?.t;
}

/** An attribute of the type its value implies; integers are written as INT unless `float`. */
export function makeAttribute(name: string, value: AttributeValue, float = false): AttributeProto {
  if (typeof value === 'string') {
    return create(AttributeProtoSchema, {
      name,
      type: AttributeType.STRING,
      s: new TextEncoder().encode(value) as Uint8Array<ArrayBuffer>,
    });
  }
  if (typeof value === 'number') {
    return float || !Number.isInteger(value)
      ? create(AttributeProtoSchema, { name, type: AttributeType.FLOAT, f: value })
      : create(AttributeProtoSchema, { name, type: AttributeType.INT, i: BigInt(value) });
  }
  if (Array.isArray(value)) {
    return float
      ? create(AttributeProtoSchema, { name, type: AttributeType.FLOATS, floats: value })
      : create(AttributeProtoSchema, {
          name,
          type: AttributeType.INTS,
          ints: value.map((v) => BigInt(v)),
        });
  }
  return create(AttributeProtoSchema, { name, type: AttributeType.TENSOR, t: value });
}

export interface NodeSpec {
  name: string;
  opType: string;
  inputs: string[];
  outputs: string[];
  domain?: string;
  attributes?: Record<string, AttributeValue>;
  /** Attribute names whose numeric values must be stored as FLOAT even when integral. */
  floatAttributes?: string[];
}

/** Builds a NodeProto from a readable spec. */
export function makeNode(spec: NodeSpec): NodeProto {
  const floats = new Set(spec.floatAttributes ?? []);
  return create(NodeProtoSchema, {
    name: spec.name,
    opType: spec.opType,
    domain: spec.domain ?? '',
    input: spec.inputs,
    output: spec.outputs,
    attribute: Object.entries(spec.attributes ?? {}).map(([k, v]) =>
      makeAttribute(k, v, floats.has(k)),
    ),
  });
}
