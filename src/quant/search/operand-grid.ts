/**
 * The quantizer of one operand of a product (a linear layer's input or weight, a query, key,
 * value or attention map), in the forms the layer-output scale search evaluates:
 *
 * - `uniform`: symmetric signed codes −2^(b−1) … 2^(b−1) − 1, x̂ = clamp(round(x / Δ)) · Δ, with
 *   one step, or one step per index of `groupAxis` (a weight's output channels, the heads of a
 *   [batch, heads, tokens, dim] tensor);
 * - `twin`: a twin uniform quantizer (twin-uniform.ts), per tensor;
 * - `noisy`: NoisyQuant's (arXiv:2211.16056) fixed noise added before a per-tensor quantizer and
 *   taken away after it, x̂ = Q(x + N) − N, with one noise value per index of the last axis
 *   (the input channels of a linear layer);
 * - `float`: the operand is left as it is.
 *
 * `gridChain` writes any of them, or a stack of n candidates of one form along a new leading
 * axis, as ONNX ops whose parameters broadcast against the operand.
 */
import { makeNode } from '../../graph/attributes.js';
import type { Command } from '../../graph/commands.js';
import { floatTensor } from '../../onnx/tensor.js';
import { intRange } from '../uniform.js';
import { twinFakeQuantCommands, type TwinQuantizer } from '../twin-uniform.js';

export type OperandGrid =
  | { kind: 'float' }
  | { kind: 'uniform'; bits: number; scales: Float32Array; groupAxis?: number }
  | { kind: 'twin'; quantizer: TwinQuantizer }
  | { kind: 'noisy'; base: OperandGrid; noise: Float32Array };

/** The step of a symmetric signed grid reaching `bound`: PTQ4ViT's bound / (2^(b−1) − ½). */
export function symmetricStep(bound: number, bits: number): number {
  const step = bound / (2 ** (bits - 1) - 0.5);
  return step > 0 && Number.isFinite(step) ? step : 1;
}

/**
 * The shape of a parameter of `grid` broadcasting against an operand of `rank` dims: [] per
 * tensor, [1, …, G, …, 1] per group; with `stacked`, a leading candidate axis of that size.
 */
function parameterShape(grid: OperandGrid, rank: number, stacked?: number): number[] {
  const lead = stacked === undefined ? [] : [stacked];
  if (grid.kind !== 'uniform' || grid.groupAxis === undefined) {
    return stacked === undefined ? [] : [stacked, ...Array<number>(rank).fill(1)];
  }
  const shape = Array<number>(rank).fill(1);
  shape[grid.groupAxis] = grid.scales.length;
  return [...lead, ...shape];
}

/**
 * The commands quantizing `value` (an operand of `rank` dims) with `grids`: one grid, or n
 * candidates of the same form stacked along a new leading axis (`stack: true`), the output
 * then having shape [n, ...operand dims]. New names start with `prefix/`.
 */
export function gridChain(
  value: string,
  prefix: string,
  grids: readonly OperandGrid[],
  rank: number,
  stack = false,
): { commands: Command[]; output: string } {
  const first = grids[0];
  if (!first) throw new RangeError('a grid chain needs at least one grid');
  const shape = parameterShape(first, rank, stack ? grids.length : undefined);
  if (!stack && grids.length !== 1) throw new RangeError('several grids need a candidate axis');
  switch (first.kind) {
    case 'float':
      return { commands: [], output: value };
    case 'twin': {
      const quantizers = grids.map((g) => (g.kind === 'twin' ? g.quantizer : mixed()));
      return twinFakeQuantCommands(value, prefix, { shape, quantizers });
    }
    case 'uniform':
      return uniformChain(value, prefix, grids, first.bits, shape);
    case 'noisy':
      return noisyChain(value, prefix, grids, rank, stack);
  }
}

/**
 * Add(x, N) → the base quantizer → Sub(N). Stacked candidates differ in their noise only: they
 * share the first candidate's base, which must be per tensor.
 */
function noisyChain(
  value: string,
  prefix: string,
  grids: readonly OperandGrid[],
  rank: number,
  stack: boolean,
) {
  const noises = grids.map((g) => (g.kind === 'noisy' ? g.noise : mixed()));
  const first = grids[0] as Extract<OperandGrid, { kind: 'noisy' }>;
  const width = first.noise.length;
  if (
    first.base.kind === 'noisy' ||
    (first.base.kind === 'uniform' && first.base.scales.length > 1)
  ) {
    throw new RangeError('the quantizer under a noise must be per tensor');
  }
  const data = new Float32Array(noises.length * width);
  noises.forEach((n, i) => {
    if (n.length !== width) throw new RangeError('noise candidates of different widths');
    data.set(n, i * width);
  });
  const shape = stack ? [noises.length, ...Array<number>(rank - 1).fill(1), width] : [width];
  const p = (name: string) => `${prefix}/${name}`;
  const base = gridChain(p('Add'), p('base'), [first.base], rank);
  const op = (opType: string, inputs: string[]): Command => ({
    kind: 'addNode',
    node: makeNode({ name: p(opType), opType, inputs, outputs: [p(opType)] }),
  });
  const commands: Command[] = [
    { kind: 'addInitializer', tensor: floatTensor(p('noise'), shape, data) },
    op('Add', [value, p('noise')]),
    ...base.commands,
    op('Sub', [base.output, p('noise')]),
  ];
  return { commands, output: p('Sub') };
}

function mixed(): never {
  throw new RangeError('the candidates of one grid chain must all have the same form');
}

function uniformChain(
  value: string,
  prefix: string,
  grids: readonly OperandGrid[],
  bits: number,
  shape: number[],
) {
  const { qmin, qmax } = intRange(bits, true);
  const scales = new Float32Array(shape.reduce((n, d) => n * d, 1));
  let at = 0;
  for (const g of grids) {
    if (g.kind !== 'uniform' || g.bits !== bits) mixed();
    scales.set(g.scales, at);
    at += g.scales.length;
  }
  if (at !== scales.length) throw new RangeError('candidate grids have different group counts');
  const p = (name: string) => `${prefix}/${name}`;
  const op = (opType: string, inputs: string[]): Command => ({
    kind: 'addNode',
    node: makeNode({ name: p(opType), opType, inputs, outputs: [p(opType)] }),
  });
  const tensors = [
    floatTensor(p('scale'), shape, scales),
    floatTensor(p('low'), [], Float32Array.of(qmin)),
    floatTensor(p('high'), [], Float32Array.of(qmax)),
  ];
  const commands: Command[] = [
    ...tensors.map((tensor): Command => ({ kind: 'addInitializer', tensor })),
    op('Div', [value, p('scale')]),
    op('Round', [p('Div')]),
    op('Clip', [p('Round'), p('low'), p('high')]),
    op('Mul', [p('Clip'), p('scale')]),
  ];
  return { commands, output: p('Mul') };
}
