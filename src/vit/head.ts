/**
 * Recognising what follows the last block: the final norm (before or after pooling), the
 * pooling (class token selected by Gather/Slice on the token axis, or the mean of the tokens),
 * an optional hidden layer with its activation, and the classifier that gives the logits.
 */
import type { NodeProto } from 'onnx-buf';
import { attributeInt, attributeInts } from '../graph/attributes.js';
import { linearAt } from './linear.js';
import { activationAfter } from './mlp.js';
import { normAt } from './norm.js';
import {
  layoutOps,
  skipPassThrough,
  soleDataConsumer,
  stoppedAt,
  unsupported,
  type TraceContext,
} from './trace.js';
import type { LinearLayer, ViTStructure } from './types.js';

export type TailTrace = Pick<ViTStructure, 'finalNorm' | 'pooling' | 'preLogits' | 'head'>;

/** The final norm, pooling and head after the last block's output `x`, ending at `output`. */
export function tailAt(ctx: TraceContext, x: string, output: string): TailTrace {
  let value = skipPassThrough(ctx, x);
  let finalNorm = normAt(ctx, value, 'norm');
  if (finalNorm) value = finalNorm.output;
  const pooling = poolingAt(ctx, value);
  value = afterLayout(ctx, pooling.output);
  if (!finalNorm) {
    finalNorm = normAt(ctx, value, 'norm');
    if (finalNorm) value = afterLayout(ctx, finalNorm.output);
  }
  const first = headLinear(ctx, value);
  const tail: TailTrace = {
    ...(finalNorm ? { finalNorm } : {}),
    pooling: { node: pooling.node, kind: pooling.kind },
    head: first,
  };
  if (reaches(ctx, first.biasedOutput, output)) return tail;
  const { activation, next } = activationAfter(ctx, 'the head', first, 'head');
  if (!reaches(ctx, next.biasedOutput, output)) {
    unsupported(
      `the classifier ${next.node} does not give the graph output ${output}; ${stoppedAt(ctx, next.biasedOutput)}`,
      next.node,
    );
  }
  return {
    ...tail,
    preLogits: { linear: { ...first, role: 'pre_logits' }, activation },
    head: next,
  };
}

function afterLayout(ctx: TraceContext, value: string): string {
  let current = skipPassThrough(ctx, value);
  for (let node = soleDataConsumer(ctx, current); node; node = soleDataConsumer(ctx, current)) {
    if (!layoutOps.has(node.opType) || node.input[0] !== current) break;
    current = skipPassThrough(ctx, node.output[0]!);
  }
  return current;
}

/** Whether `value` is `output`, or is copied to it by layout or pass-through nodes. */
function reaches(ctx: TraceContext, value: string, output: string): boolean {
  return value === output || afterLayout(ctx, value) === output;
}

function headLinear(ctx: TraceContext, value: string): LinearLayer {
  const node = soleDataConsumer(ctx, value);
  const head = node && linearAt(ctx, node, 'head');
  if (!head) {
    unsupported(
      `after pooling, expected the classification head (MatMul/Gemm with a constant weight) reading ${value}; ${stoppedAt(ctx, value)}`,
      node?.name ?? value,
    );
  }
  return head;
}

function poolingAt(ctx: TraceContext, value: string) {
  const node = soleDataConsumer(ctx, value);
  const kind = node && poolingKind(ctx, node, value);
  if (!node || !kind) {
    unsupported(
      `after the last block, expected the class token to be selected (Gather or Slice of token 0) or the tokens to be averaged (ReduceMean over the token axis), reading ${value}; ${stoppedAt(ctx, value)}`,
      node?.name ?? value,
    );
  }
  return { node: node.name, kind, output: node.output[0]! };
}

function poolingKind(
  ctx: TraceContext,
  node: NodeProto,
  value: string,
): 'class-token' | 'mean' | undefined {
  if (node.input[0] !== value) return undefined;
  const index = (i: number) => {
    const values = node.input[i] ? ctx.index.constantValues(node.input[i]) : undefined;
    return values && values.length === 1 ? Number(values[0]) : undefined;
  };
  switch (node.opType) {
    case 'Gather':
      return attributeInt(node, 'axis', 0) === 1 && index(1) === 0 ? 'class-token' : undefined;
    case 'Slice':
      return index(3) === 1 && index(1) === 0 && index(2) === 1 ? 'class-token' : undefined;
    case 'ReduceMean': {
      const axes = node.input[1]
        ? ctx.index.constantValues(node.input[1])
        : attributeInts(node, 'axes');
      return axes?.length === 1 && Number(axes[0]) === 1 ? 'mean' : undefined;
    }
    default:
      return undefined;
  }
}
