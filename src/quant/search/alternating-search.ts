/**
 * Alternating rounds of the layer-output scale search (PTQ4ViT, arXiv:2111.12293 §4.2): the
 * two operands of a product take turns, each searched with the other held at its current
 * quantizer, for a few rounds (PTQ4ViT: weight first, then activation, three rounds).
 *
 * An operand's candidates come from a family:
 * - `scaled`: its initial grid with every step multiplied by each factor (PTQ4ViT's grid is
 *   Δ_init · (α + i(β − α)/n), α = 0.01, β = 1.2); a grouped uniform grid takes the best factor
 *   of each group (output channel, head) on its own;
 * - `list`: a fixed list of grids (the twin post-softmax quantizer's 2^(−k) splits).
 */
import { InternalError } from '../../errors.js';
import type { CapturedTensor } from '../sequential.js';
import { geluTwin } from '../twin-uniform.js';
import type { OperandGrid } from './operand-grid.js';
import {
  bestCandidates,
  scoreCandidates,
  SearchSessions,
  type SearchEngineOptions,
  type SearchMetric,
} from './product-search.js';

export type CandidateFamily =
  | { kind: 'fixed' }
  | { kind: 'scaled'; factors: readonly number[] }
  | { kind: 'list'; grids: readonly OperandGrid[] };

/** One operand of a product: its values, initial grid and the candidates searched. */
export interface SearchOperand {
  tensor: CapturedTensor;
  initial: OperandGrid;
  family: CandidateFamily;
}

export interface AlternatingOptions extends SearchEngineOptions {
  metric: SearchMetric;
  rounds: number;
  /** The operand searched first in each round. */
  first: 'a' | 'b';
}

export interface AlternatingResult {
  a: OperandGrid;
  b: OperandGrid;
  /** The metric (summed over groups) of the initial grids and of the chosen ones. */
  initialScore: number;
  finalScore: number;
  /** Candidate products evaluated. */
  evaluations: number;
}

/** PTQ4ViT's factor grid: α + i(β − α)/(n − 1), i = 0 … n − 1. */
export function factorGrid(count: number, from: number, to: number): number[] {
  if (count === 1) return [to];
  return Array.from({ length: count }, (_, i) => from + (i * (to - from)) / (count - 1));
}

/** Searches the operands of A·B in alternating rounds. */
export async function alternatingSearch(
  a: SearchOperand,
  b: SearchOperand,
  options: AlternatingOptions,
): Promise<AlternatingResult> {
  const sessions = new SearchSessions(options);
  try {
    return await alternate(a, b, { ...options, sessions });
  } finally {
    await sessions.release();
  }
}

async function alternate(
  a: SearchOperand,
  b: SearchOperand,
  options: AlternatingOptions,
): Promise<AlternatingResult> {
  const current = { a: a.initial, b: b.initial };
  const operands = { a, b };
  const order: ('a' | 'b')[] = options.first === 'a' ? ['a', 'b'] : ['b', 'a'];
  const initialScore = await scorePair(a.tensor, b.tensor, current.a, current.b, options);
  let evaluations = 1;
  let searched = false;
  for (let round = 0; round < options.rounds; round++) {
    for (const side of order) {
      const operand = operands[side];
      // the factors scale the initial steps in every round, as PTQ4ViT's grid does
      const candidates = candidateGrids(operand.initial, operand.family);
      if (candidates.length === 0) continue;
      const other = side === 'a' ? current.b : current.a;
      const groupAxis = groupAxisOf(current[side]);
      const scores = await scoreCandidates(
        a.tensor,
        b.tensor,
        { side, candidates, other, metric: options.metric, ...groupAxis },
        options,
      );
      evaluations += candidates.length;
      current[side] = pick(candidates, bestCandidates(scores));
      searched = true;
    }
  }
  // scored again as a whole: a grouped search's scores are per group
  const finalScore = searched
    ? await scorePair(a.tensor, b.tensor, current.a, current.b, options)
    : initialScore;
  return { ...current, initialScore, finalScore, evaluations: evaluations + 1 };
}

async function scorePair(
  a: CapturedTensor,
  b: CapturedTensor,
  ga: OperandGrid,
  gb: OperandGrid,
  options: AlternatingOptions,
): Promise<number> {
  // the stacked side needs a quantizer: a float operand has no candidate axis
  if (ga.kind === 'float' && gb.kind === 'float') return options.metric === 'mse' ? 0 : -1;
  const side: 'a' | 'b' = ga.kind === 'float' ? 'b' : 'a';
  const [searched, other] = side === 'a' ? [ga, gb] : [gb, ga];
  const evaluation = { side, candidates: [searched], other, metric: options.metric };
  const scores = await scoreCandidates(a, b, evaluation, options);
  return scores[0]![0]!;
}

function groupAxisOf(grid: OperandGrid): { groupAxis?: number } {
  return grid.kind === 'uniform' && grid.groupAxis !== undefined
    ? { groupAxis: grid.groupAxis }
    : {};
}

/** The candidates of a family: the initial steps scaled, or a list. */
function candidateGrids(grid: OperandGrid, family: CandidateFamily): OperandGrid[] {
  switch (family.kind) {
    case 'fixed':
      return [];
    case 'list':
      return [...family.grids];
    case 'scaled':
      return family.factors.map((f) => scaledGrid(grid, f));
  }
}

/** A grid with every step multiplied by `factor`. */
export function scaledGrid(grid: OperandGrid, factor: number): OperandGrid {
  switch (grid.kind) {
    case 'float':
    case 'noisy':
      return grid;
    case 'uniform':
      return { ...grid, scales: grid.scales.map((s) => s * factor) };
    case 'twin':
      if (grid.quantizer.form !== 'gelu') {
        throw new InternalError('only the post-GELU twin quantizer has a step to scale');
      }
      return {
        kind: 'twin',
        quantizer: geluTwin(grid.quantizer.bits, grid.quantizer.high.scale * factor),
      };
  }
}

/** The grid made of each group's best candidate. */
function pick(candidates: readonly OperandGrid[], best: readonly number[]): OperandGrid {
  const first = candidates[best[0]!]!;
  if (best.length === 1 || first.kind !== 'uniform') return first;
  const scales = new Float32Array(best.length);
  best.forEach((i, g) => {
    const c = candidates[i]!;
    if (c.kind !== 'uniform') throw new InternalError('grouped candidates of different forms');
    scales[g] = c.scales[g]!;
  });
  return { ...first, scales };
}
