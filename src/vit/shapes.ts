/**
 * Static shapes of a graph's values for one image (batch 1), found by propagating the input
 * shape through the ops a ViT export uses. Exporters compute reshape targets at run time with
 * Shape/Gather/Concat chains (`[B, N, 3, heads, C / heads]`), so the small integer tensors of
 * those chains are evaluated too: the number of heads is read from what the graph computes,
 * never from node names. Values whose shape cannot be derived stay unknown; callers say so.
 */
import type { NodeProto, ValueInfoProto } from 'onnx-buf';
import { attributeInt, attributeInts, attributeTensor } from '../graph/attributes.js';
import type { GraphIndex } from '../graph/graph.js';
import { toSafeNumber } from '../onnx/tensor.js';
import {
  binary,
  broadcast,
  concat,
  constantFacts,
  constantOfShape,
  conv,
  flatten,
  gather,
  gemm,
  matMul,
  pool,
  reduce,
  reshape,
  sliceShape,
  slice,
  split,
  squeeze,
  transpose,
  vector,
  where,
} from './shape-ops.js';
import { unsupported } from './trace.js';

/** What is known of one value: its shape and, for small tensors, its values. */
export interface ValueFacts {
  shape?: number[];
  values?: number[];
  /** Whether the values are integers (ONNX integer division truncates). */
  integer?: boolean;
}

// prettier-ignore
const unaryOps = [
  'Identity', 'Cast', 'Relu', 'Gelu', 'Erf', 'Tanh', 'Sigmoid', 'Sqrt', 'Reciprocal', 'Neg',
  'Exp', 'Log', 'Abs', 'Softmax', 'LayerNormalization', 'Dropout', 'Clip', 'Not',
  'QuickGelu', 'HardSigmoid', 'HardSwish', 'Round', 'Floor', 'Ceil',
];

/** Ops whose output has the shape of their first input but other values. */
const shapeOnlyOps = ['QuantizeLinear', 'DequantizeLinear', 'DynamicQuantizeLinear'];

const binaryOps = ['Add', 'Sub', 'Mul', 'Div', 'Pow', 'Equal', 'Less', 'Greater', 'Max', 'Min'];

/** Shapes of every value of the graph with the batch dimension of the input set to 1. */
export class ShapeMap {
  private readonly facts = new Map<string, ValueFacts>();

  constructor(
    private readonly index: GraphIndex,
    inputShapes: ReadonlyMap<string, number[]>,
  ) {
    for (const [name, tensor] of index.initializers) this.facts.set(name, constantFacts(tensor));
    for (const [name, shape] of inputShapes) this.facts.set(name, { shape });
    for (const node of index.topologicalOrder()) this.propagate(node);
  }

  get(value: string): ValueFacts {
    return this.facts.get(value) ?? {};
  }

  shape(value: string): number[] | undefined {
    return this.facts.get(value)?.shape;
  }

  private propagate(node: NodeProto): void {
    let out: ValueFacts[];
    try {
      out = this.infer(node);
    } catch {
      // a shape this code cannot follow leaves the outputs unknown; recognition reports it
      out = [];
    }
    node.output.forEach((name, i) => {
      const facts = out[i];
      if (name && facts) this.facts.set(name, facts);
    });
  }

  private infer(node: NodeProto): ValueFacts[] {
    if (node.domain !== '' && node.domain !== 'ai.onnx') return [];
    const rule = rules[node.opType];
    if (!rule) return [];
    const inputs = node.input.map((v) => (v ? this.get(v) : {}));
    const facts = rule(node, inputs);
    return Array.isArray(facts) ? facts : [facts];
  }
}

const valuesOf = (facts: ValueFacts[]) => facts.map((f) => f.values);

/** How one op type maps the facts of its inputs to those of its outputs. */
type Rule = (node: NodeProto, inputs: ValueFacts[]) => ValueFacts | ValueFacts[];

const same: Rule = (_, [a = {}]) => ({ shape: a.shape, values: a.values, integer: a.integer });
const sameShape: Rule = (_, [a = {}]) => ({ shape: a.shape });
const arithmetic: Rule = (node, [a = {}, b = {}]) => binary(node.opType, a, b);
const globalPool: Rule = (_, [a = {}]) => ({ shape: a.shape?.map((d, i) => (i < 2 ? d : 1)) });

const rules: Record<string, Rule> = {
  ...Object.fromEntries(unaryOps.map((op) => [op, same])),
  ...Object.fromEntries(shapeOnlyOps.map((op) => [op, sameShape])),
  ...Object.fromEntries(binaryOps.map((op) => [op, arithmetic])),
  Constant: (node) => constantFacts(attributeTensor(node, 'value')),
  Shape: (node, [a = {}]) => (a.shape ? vector(sliceShape(node, a.shape)) : {}),
  ConstantOfShape: (node, [a = {}]) => constantOfShape(node, a),
  Where: (_, [c = {}, a = {}, b = {}]) => where(c, a, b),
  Gather: (node, [data = {}, indices = {}]) => gather(node, data, indices),
  Unsqueeze: (node, [a = {}, axes = {}]) => squeeze(node, a, axes),
  Squeeze: (node, [a = {}, axes = {}]) => squeeze(node, a, axes),
  Concat: (node, parts) => concat(node, parts),
  Slice: (_, [a = {}, ...bounds]) => slice(a, valuesOf(bounds)),
  Reshape: (_, [a = {}, target = {}]) => ({
    shape: reshape(a.shape, target.values),
    values: a.values,
  }),
  Flatten: (node, [a = {}]) => ({ shape: flatten(a.shape, attributeInt(node, 'axis', 1)) }),
  Transpose: (node, [a = {}]) => ({ shape: transpose(a.shape, attributeInts(node, 'perm')) }),
  Expand: (_, [a = {}, target = {}]) => ({ shape: broadcast(a.shape, target.values) }),
  ReduceMean: (node, [a = {}, axes = {}]) => ({ shape: reduce(node, a.shape, axes.values) }),
  ReduceSum: (node, [a = {}, axes = {}]) => ({ shape: reduce(node, a.shape, axes.values) }),
  MatMul: (_, [a = {}, b = {}]) => ({ shape: matMul(a.shape, b.shape) }),
  Gemm: (node, [a = {}, b = {}]) => ({ shape: gemm(node, a.shape, b.shape) }),
  Conv: (node, [x = {}, w = {}]) => ({ shape: conv(node, x.shape, w.shape) }),
  GlobalAveragePool: globalPool,
  GlobalMaxPool: globalPool,
  AveragePool: (node, [a = {}]) => ({ shape: pool(node, a.shape) }),
  MaxPool: (node, [a = {}]) => ({ shape: pool(node, a.shape) }),
  Split: (node, [a = {}, sizes = {}]) => split(node, a.shape, sizes.values),
};

/** The image input and its shape for one image: [1, channels, height, width]. */
export function imageInput(index: GraphIndex): [string, number[]] {
  const value = index.inputs[0];
  if (!value) unsupported('the graph has no input');
  const shape = staticShape(value);
  const [, channels, height, width] = shape ?? [];
  if (shape?.length !== 4 || !channels || !height || !width) {
    const found = shape ? `[${shape.map((d) => d || '?').join(', ')}]` : 'no shape';
    unsupported(
      `the input ${value.name} must be an image batch [N, channels, height, width] with static channels, height and width; found ${found}`,
      value.name,
    );
  }
  return [value.name, [1, channels, height, width]];
}

/** Dimensions of a graph input, 0 where a dimension is symbolic. */
function staticShape(value: ValueInfoProto): number[] | undefined {
  const type = value.type?.value;
  if (type?.case !== 'tensorType' || !type.value.shape) return undefined;
  return type.value.shape.dim.map((d) =>
    d.value.case === 'dimValue' ? toSafeNumber(d.value.value, value.name) : 0,
  );
}
