/**
 * The layer-output scale search (PTQ4ViT, arXiv:2111.12293 §4.2; reference notes §1(3), §20):
 * a quantizer is judged by what it does to the output of the product it feeds, not by its own
 * rounding error. For a product Y = A·B (a linear layer x·W, the attention scores q·kᵀ, the
 * context P·v), the candidates of one operand's quantizer are scored by the distance between
 * Y and Â·B̂, the other operand quantized with its current quantizer.
 *
 * The products are the heavy part (a ViT-Tiny fc1 on 2,048 tokens is 0.3 GMAC per candidate),
 * so they run in onnxruntime: one small graph per evaluation stacks the candidates along a new
 * leading axis, computes every candidate's output in one batched MatMul and reduces each to its
 * score, so that only n numbers (n × groups for a grouped search) come back to JavaScript. The
 * candidates are cut into chunks that keep the stacked output within a memory budget.
 * (Measured on a shared 2-core machine, 20 candidates of a 2,048 × 192 by 192 × 768 product,
 * scores included: about 2 s in onnxruntime with 2 threads; ml-matrix's mmul takes about 3.8 s
 * for one candidate's product alone.)
 *
 * Metrics (PTQ4ViT's own is a "Hessian-guided" one, the output error weighted by the gradient
 * of the task loss, which needs backpropagation that onnxruntime inference does not give; its
 * gradient-free forms are these two, as PTQ4ViT's base configuration uses):
 * - `mse`: Σ(Y − Ŷ)²;
 * - `cosine`: −cos(Y, Ŷ) = −Σ Y·Ŷ / √(ΣY² · ΣŶ²).
 * With a `groupAxis`, every index of that axis of the output (a weight's output channel, an
 * attention head) is scored apart: it depends only on the same index of the searched operand,
 * so each group can take its own candidate.
 */
import { create } from '@bufbuild/protobuf';
import {
  GraphProtoSchema,
  ModelProtoSchema,
  OperatorSetIdProtoSchema,
  type ModelProto,
} from 'onnx-buf';
import { makeNode } from '../../graph/attributes.js';
import { applyCommands, valueInfo, type Command } from '../../graph/commands.js';
import { DataType, int64Tensor, readFloat32, tensorDims } from '../../onnx/tensor.js';
import { createSession, floatInput, type ort, type SessionOptions } from '../../runtime/session.js';
import type { CapturedTensor } from '../sequential.js';
import { gridChain, type OperandGrid } from './operand-grid.js';

export type SearchMetric = 'mse' | 'cosine';

/** One evaluation: candidates of one operand's quantizer, the other operand's held fixed. */
export interface CandidateEvaluation {
  /** The searched operand: A (left) or B (right) of Y = A·B. */
  side: 'a' | 'b';
  candidates: readonly OperandGrid[];
  /** The quantizer of the other operand. */
  other: OperandGrid;
  metric: SearchMetric;
  /** An axis of both the searched operand and Y whose indices are scored apart. */
  groupAxis?: number;
}

export interface SearchEngineOptions extends SessionOptions {
  /** Most floats of the stacked candidate outputs computed at once (default 2^24). */
  budget?: number;
  /** Sessions kept between evaluations of the same graph form (the caller releases them). */
  sessions?: SearchSessions;
}

/**
 * onnxruntime sessions of evaluation graphs, by graph form. The quantizer parameters are graph
 * inputs, so the evaluations of one product's rounds and chunks share a session: creating one
 * costs more than a small layer's whole evaluation.
 */
export class SearchSessions {
  private readonly sessions = new Map<string, Promise<ort.InferenceSession>>();

  constructor(private readonly options: SessionOptions = {}) {}

  get(key: string, build: () => ModelProto): Promise<ort.InferenceSession> {
    let session = this.sessions.get(key);
    if (!session) {
      session = createSession(build(), this.options, 'scale search graph');
      this.sessions.set(key, session);
    }
    return session;
  }

  async release(): Promise<void> {
    const all = [...this.sessions.values()];
    this.sessions.clear();
    for (const s of all) await (await s).release();
  }
}

/**
 * The score of every candidate (lower is better), one Float64Array per group (one for an
 * ungrouped evaluation), indexed by candidate.
 */
export async function scoreCandidates(
  a: CapturedTensor,
  b: CapturedTensor,
  evaluation: CandidateEvaluation,
  options: SearchEngineOptions = {},
): Promise<Float64Array[]> {
  const outDims = productDims(a.dims, b.dims);
  const groups = evaluation.groupAxis === undefined ? 1 : outDims[evaluation.groupAxis]!;
  const size = outDims.reduce((n, d) => n * d, 1);
  const chunk = Math.max(1, Math.floor((options.budget ?? 2 ** 24) / size));
  const scores = Array.from({ length: groups }, () => new Float64Array(0));
  const all = evaluation.candidates;
  const parts: Float64Array[][] = [];
  for (let from = 0; from < all.length; from += chunk) {
    const part = { ...evaluation, candidates: all.slice(from, from + chunk) };
    parts.push(await scoreChunk(a, b, part, outDims, options));
  }
  for (let g = 0; g < groups; g++) {
    scores[g] = Float64Array.from(parts.flatMap((p) => Array.from(p[g]!)));
  }
  return scores;
}

/** For each group, the index of its best candidate. */
export function bestCandidates(scores: readonly Float64Array[]): number[] {
  return scores.map((s) => {
    let best = 0;
    for (let i = 1; i < s.length; i++) if (s[i]! < s[best]!) best = i;
    return best;
  });
}

/** Dims of A·B with numpy broadcasting of the batch dims. */
export function productDims(a: readonly number[], b: readonly number[]): number[] {
  if (a.length < 2 || b.length < 2 || a.at(-1) !== b.at(-2)) {
    throw new RangeError(`cannot multiply [${a.join(', ')}] by [${b.join(', ')}]`);
  }
  const rank = Math.max(a.length, b.length);
  const batch: number[] = [];
  for (let i = 2; i < rank; i++) {
    const x = a[a.length - 1 - i] ?? 1;
    const y = b[b.length - 1 - i] ?? 1;
    if (x !== y && x !== 1 && y !== 1) {
      throw new RangeError(`batch dims of [${a.join(', ')}] and [${b.join(', ')}] differ`);
    }
    batch.unshift(Math.max(x, y));
  }
  return [...batch, a.at(-2)!, b.at(-1)!];
}

async function scoreChunk(
  a: CapturedTensor,
  b: CapturedTensor,
  evaluation: CandidateEvaluation,
  outDims: readonly number[],
  options: SearchEngineOptions,
): Promise<Float64Array[]> {
  const graph = evaluationGraph(a.dims, b.dims, evaluation, outDims.length);
  const own = options.sessions ? undefined : new SearchSessions(options);
  const sessions = options.sessions ?? own!;
  try {
    const session = await sessions.get(graph.key, graph.build);
    const result = await session.run({
      a: floatInput(a.data, a.dims),
      b: floatInput(b.data, b.dims),
      ...graph.feeds,
    });
    const read = (name: string) => result[name]!.data as Float32Array;
    const n = evaluation.candidates.length;
    const groups = evaluation.groupAxis === undefined ? 1 : outDims[evaluation.groupAxis]!;
    const out = Array.from({ length: groups }, () => new Float64Array(n));
    const score = evaluation.metric === 'mse' ? mseScore(read('error')) : cosineScore(read);
    for (let i = 0; i < n; i++)
      for (let g = 0; g < groups; g++) out[g]![i] = score(i * groups + g, g);
    return out;
  } finally {
    await own?.release();
  }
}

function mseScore(error: Float32Array) {
  return (k: number) => error[k]!;
}

function cosineScore(read: (name: string) => Float32Array) {
  const dot = read('dot');
  const quantized = read('quantized_energy');
  const target = read('target_energy');
  return (k: number, g: number) => {
    const norm = Math.sqrt(quantized[k]! * target[g]!);
    return norm > 0 ? -dot[k]! / norm : 0;
  };
}

/**
 * The graph of one evaluation: inputs a and b and the quantizers' parameters, outputs the
 * reductions of the candidates' products over every axis but the candidate axis (and the group
 * axis). `key` names the graph's form: evaluations differing only in parameter values share it.
 */
function evaluationGraph(
  aDims: readonly number[],
  bDims: readonly number[],
  evaluation: CandidateEvaluation,
  outRank: number,
) {
  const { side, candidates, other, metric, groupAxis } = evaluation;
  const searchedRank = side === 'a' ? aDims.length : bDims.length;
  const otherRank = side === 'a' ? bDims.length : aDims.length;
  const stacked = gridChain(side, `search/${side}`, candidates, searchedRank, true);
  const otherSide = side === 'a' ? 'b' : 'a';
  const fixed = gridChain(otherSide, `search/${otherSide}`, [other], otherRank);
  const [qa, qb] = side === 'a' ? [stacked.output, fixed.output] : [fixed.output, stacked.output];

  // the quantizers' parameter tensors become inputs fed at run time
  const feeds: Record<string, ort.Tensor> = {};
  const inputs: Command[] = [];
  for (const command of [...stacked.commands, ...fixed.commands]) {
    if (command.kind !== 'addInitializer') inputs.push(command);
    else
      feeds[command.tensor.name] = floatInput(
        readFloat32(command.tensor),
        tensorDims(command.tensor),
      );
  }
  const commands = [...inputs, ...reductionCommands(qa, qb, metric, outRank, groupAxis)];
  const form = commands.map((c) =>
    c.kind === 'addNode' ? `${c.node.opType}(${c.node.input.join()})` : c.kind,
  );
  const parameterRanks = Object.entries(feeds).map(([name, t]) => `${name}:${t.dims.length}`);
  // the reductions' axes follow the group axis, which the node list alone does not show
  const key = JSON.stringify([aDims, bDims, form, parameterRanks, metric, groupAxis ?? null]);
  const build = () => {
    const declared = Object.keys(feeds).map((name) => valueInfo(name, DataType.FLOAT));
    const outputs = metric === 'mse' ? ['error'] : ['dot', 'quantized_energy', 'target_energy'];
    const exposed = outputs.map((name): Command => ({ kind: 'addOutput', name }));
    return applyCommands(emptyGraph(aDims, bDims, declared), [...commands, ...exposed], {
      context: 'scale search graph',
    });
  };
  return { key, feeds, build };
}

/** The target and quantized products and their reductions to scores. */
function reductionCommands(
  qa: string,
  qb: string,
  metric: SearchMetric,
  outRank: number,
  groupAxis?: number,
): Command[] {
  // the stacked output has a leading candidate axis that the target lacks
  const kept = groupAxis === undefined ? [] : [groupAxis];
  const targetAxes = range(outRank).filter((i) => !kept.includes(i));
  const stackedAxes = targetAxes.map((i) => i + 1);
  const op = (opType: string, inputs: string[], output: string, attributes = {}): Command => ({
    kind: 'addNode',
    node: makeNode({ name: output, opType, inputs, outputs: [output], attributes }),
  });
  const reduceSquare = (input: string, output: string, axes: number[]) =>
    op('ReduceSumSquare', [input], output, { axes, keepdims: 0 });
  const products = [op('MatMul', ['a', 'b'], 'target'), op('MatMul', [qa, qb], 'quantized')];
  if (metric === 'mse') {
    return [
      ...products,
      op('Sub', ['quantized', 'target'], 'difference'),
      reduceSquare('difference', 'error', stackedAxes),
    ];
  }
  return [
    ...products,
    {
      kind: 'addInitializer',
      tensor: int64Tensor('dot_axes', [stackedAxes.length], stackedAxes),
    },
    op('Mul', ['quantized', 'target'], 'product'),
    op('ReduceSum', ['product', 'dot_axes'], 'dot', { keepdims: 0 }),
    reduceSquare('quantized', 'quantized_energy', stackedAxes),
    reduceSquare('target', 'target_energy', targetAxes),
  ];
}

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}

function emptyGraph(
  aDims: readonly number[],
  bDims: readonly number[],
  parameters: ReturnType<typeof valueInfo>[],
) {
  return create(ModelProtoSchema, {
    irVersion: 8n,
    opsetImport: [create(OperatorSetIdProtoSchema, { domain: '', version: 17n })],
    producerName: 'vitslim',
    graph: create(GraphProtoSchema, {
      name: 'scale search',
      input: [
        valueInfo('a', DataType.FLOAT, [...aDims]),
        valueInfo('b', DataType.FLOAT, [...bDims]),
        ...parameters,
      ],
    }),
  });
}
