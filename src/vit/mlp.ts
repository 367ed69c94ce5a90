/**
 * Recognising the MLP of a block (fc1, activation, fc2, residual Add) and, in general, an
 * activation between two linear layers: every node between them must read only the first
 * layer's output, constants, or each other — so GELU written as Div/Erf/Add/Mul/Mul is found
 * whole, and a path that leaves the activation (a residual Add, a norm) is refused.
 */
import type { NodeProto } from 'onnx-buf';
import { residualAdd } from './attention.js';
import { isLinearNode, linearAt } from './linear.js';
import {
  dataConsumers,
  nodeLabel,
  soleDataConsumer,
  stoppedAt,
  unsupported,
  type TraceContext,
} from './trace.js';
import type { ActivationMap, LinearLayer, MlpMap, NormLayer } from './types.js';

/** Most nodes an activation subgraph may have (GELU-tanh has eight). */
const activationLimit = 16;

export interface MlpTrace {
  mlp: MlpMap;
  residual: { node: string; output: string };
}

/** The MLP of block `block`, reading `norm`'s output; `x` is the input of the norm. */
export function mlpAt(ctx: TraceContext, block: number, x: string, norm: NormLayer): MlpTrace {
  const at = `block ${block}`;
  const reader = soleDataConsumer(ctx, norm.output);
  const fc1 = reader && linearAt(ctx, reader, `blocks.${block}.mlp.fc1`);
  if (!fc1) {
    unsupported(
      `${at}: expected ${norm.role} (${norm.output}) to feed the MLP's first linear layer (MatMul/Gemm with a constant weight); ${stoppedAt(ctx, norm.output)}`,
      reader?.name ?? norm.output,
    );
  }
  const { activation, next: fc2 } = activationAfter(ctx, at, fc1, `blocks.${block}.mlp.fc2`);
  const residual = residualAdd(ctx, x, fc2.biasedOutput);
  if (!residual) {
    unsupported(
      `${at}: the MLP's second linear layer ${fc2.node} does not feed a residual Add with ${x}; ${stoppedAt(ctx, fc2.biasedOutput)}`,
      fc2.node,
    );
  }
  return { mlp: { fc1, activation, fc2 }, residual };
}

/**
 * The activation after `first` and the linear layer it feeds (given role `nextRole`). Throws
 * naming the node where the path left the activation or where no linear layer followed.
 */
export function activationAfter(
  ctx: TraceContext,
  at: string,
  first: LinearLayer,
  nextRole: string,
): { activation: ActivationMap; next: LinearLayer } {
  const start = first.biasedOutput;
  const nodes: NodeProto[] = [];
  const linears = new Set<NodeProto>();
  const queue = [start];
  while (queue.length && nodes.length <= activationLimit) {
    for (const node of dataConsumers(ctx, queue.shift()!)) {
      if (nodes.includes(node) || linears.has(node)) continue;
      if (isLinearNode(ctx, node)) {
        linears.add(node);
      } else {
        queue.push(...node.output);
        nodes.push(node);
      }
    }
  }
  const next = linears.size === 1 ? linearAt(ctx, [...linears][0]!, nextRole) : undefined;
  const stray = strayNode(ctx, start, nodes, next);
  if (!next || stray || nodes.length > activationLimit) {
    const where = stray ? `the path leaves it at node ${nodeLabel(stray)}` : stoppedAt(ctx, start);
    unsupported(
      `${at}: expected ${first.node} to feed an activation and then one linear layer (MatMul/Gemm with a constant weight); ${where}`,
      stray?.name ?? first.node,
    );
  }
  return { activation: activationMap(ctx, start, nodes, next.input), next };
}

/** A node of the candidate activation that reads a value from outside it, if any. */
function strayNode(ctx: TraceContext, start: string, nodes: NodeProto[], next?: LinearLayer) {
  const inside = new Set([start, ...nodes.flatMap((n) => n.output)]);
  const stray = nodes.find((node) =>
    node.input.some((v) => v && !inside.has(v) && !ctx.index.isConstant(v)),
  );
  if (stray) return stray;
  if (next && !inside.has(next.input)) return ctx.index.node(next.node);
  return undefined;
}

function activationMap(
  ctx: TraceContext,
  input: string,
  nodes: NodeProto[],
  output: string,
): ActivationMap {
  const order = new Map(ctx.index.nodes.map((node, i) => [node, i]));
  const sorted = [...nodes].sort((a, b) => (order.get(a) ?? 0) - (order.get(b) ?? 0));
  return { kind: activationKind(sorted), nodes: sorted.map((n) => n.name), input, output };
}

function activationKind(nodes: NodeProto[]): ActivationMap['kind'] {
  const ops = new Set(nodes.map((n) => n.opType));
  if (ops.has('Gelu') || ops.has('FastGelu')) return 'gelu';
  if (ops.has('Erf')) return 'gelu-erf';
  if (ops.has('Tanh') && ops.has('Mul') && ops.size > 1) return 'gelu-tanh';
  if (ops.size === 1 && ops.has('Relu')) return 'relu';
  return 'other';
}
