/**
 * Recognising layer normalisation over the last axis: the `LayerNormalization` op (opset ≥ 17)
 * or the form older opsets decompose it into,
 * `(x − mean(x)) / sqrt(mean((x − mean(x))²) + ε) · γ + β`, written as
 * ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add. ε is read from the Add's constant.
 */
import type { NodeProto } from 'onnx-buf';
import { attributeFloat, attributeInt, attributeInts } from '../graph/attributes.js';
import type { NormLayer } from './types.js';
import { constantScalar, consumerOfType, otherInput, type TraceContext } from './trace.js';

/** ONNX's default epsilon of LayerNormalization. */
const defaultEpsilon = 1e-5;

/** The layer norm reading `value`, in either form, or undefined when none does. */
export function normAt(ctx: TraceContext, value: string, role: string): NormLayer | undefined {
  return layerNormOpAt(ctx, value, role) ?? decomposedNormAt(ctx, value, role);
}

/** Whether `axis` is the last axis of `value` (for a norm over the features). */
function isLastAxis(ctx: TraceContext, value: string, axis: number): boolean {
  if (axis === -1) return true;
  const rank = ctx.shapes.shape(value)?.length;
  return rank !== undefined && axis === rank - 1;
}

function layerNormOpAt(ctx: TraceContext, value: string, role: string): NormLayer | undefined {
  const node = ctx.index
    .consumersOf(value)
    .find((n) => n.opType === 'LayerNormalization' && n.input[0] === value);
  if (!node) return undefined;
  const [, scale, bias] = node.input;
  if (!scale || !bias || !ctx.index.isConstant(scale) || !ctx.index.isConstant(bias)) {
    return undefined;
  }
  if (!isLastAxis(ctx, value, attributeInt(node, 'axis', -1))) return undefined;
  return {
    role,
    form: 'LayerNormalization',
    nodes: [node.name],
    input: value,
    output: node.output[0]!,
    scale,
    bias,
    // ONNX float attributes are float32: report the value the runtime adds
    epsilon: Math.fround(attributeFloat(node, 'epsilon', defaultEpsilon)),
  };
}

/** Whether a ReduceMean averages `input` over its last axis, keeping the dimension. */
function isFeatureMean(ctx: TraceContext, node: NodeProto, input: string): boolean {
  if (node.opType !== 'ReduceMean' || node.input[0] !== input) return false;
  const axes = node.input[1]
    ? ctx.index.constantValues(node.input[1])
    : attributeInts(node, 'axes');
  if (!axes || axes.length !== 1 || attributeInt(node, 'keepdims', 1) !== 1) return false;
  return isLastAxis(ctx, input, Number(axes[0]));
}

/** The nodes of the decomposed form, in graph order, or undefined where the pattern breaks. */
function decomposedNodes(ctx: TraceContext, x: string) {
  const mean = ctx.index.consumersOf(x).find((n) => isFeatureMean(ctx, n, x));
  const sub = mean && consumerOfType(ctx, mean.output[0]!, ['Sub']);
  if (!mean || !sub || sub.input[0] !== x) return undefined;
  const centred = sub.output[0]!;
  const pow = consumerOfType(ctx, centred, ['Pow']);
  const div = consumerOfType(ctx, centred, ['Div']);
  if (!pow || !div || div.input[0] !== centred || constantScalar(ctx, pow.input[1]) !== 2) {
    return undefined;
  }
  const variance = consumerOfType(ctx, pow.output[0]!, ['ReduceMean']);
  if (!variance || !isFeatureMean(ctx, variance, pow.output[0]!)) return undefined;
  const addEps = consumerOfType(ctx, variance.output[0]!, ['Add']);
  const sqrt = addEps && consumerOfType(ctx, addEps.output[0]!, ['Sqrt']);
  if (!addEps || !sqrt || div.input[1] !== sqrt.output[0]) return undefined;
  const mul = consumerOfType(ctx, div.output[0]!, ['Mul']);
  const add = mul && consumerOfType(ctx, mul.output[0]!, ['Add']);
  if (!mul || !add) return undefined;
  return { mean, sub, pow, variance, addEps, sqrt, div, mul, add };
}

function decomposedNormAt(ctx: TraceContext, x: string, role: string): NormLayer | undefined {
  const n = decomposedNodes(ctx, x);
  if (!n) return undefined;
  const epsilon = constantScalar(ctx, otherInput(n.addEps, n.variance.output[0]!));
  const scale = otherInput(n.mul, n.div.output[0]!);
  const bias = otherInput(n.add, n.mul.output[0]!);
  if (epsilon === undefined || !scale || !bias) return undefined;
  if (!ctx.index.isConstant(scale) || !ctx.index.isConstant(bias)) return undefined;
  const nodes = [n.mean, n.sub, n.pow, n.variance, n.addEps, n.sqrt, n.div, n.mul, n.add];
  return {
    role,
    form: 'decomposed',
    nodes: nodes.map((node) => node.name),
    input: x,
    output: n.add.output[0]!,
    scale,
    bias,
    epsilon,
  };
}
