/**
 * Microscaling (OCP MX v1.0) block fake quantization: each block of k = 32 consecutive values
 * along the last axis shares one power-of-two scale (E8M0), and each element is stored in FP8
 * (E4M3, E5M2), FP6 (E3M2), FP4 (E2M1) or INT8:
 *
 *   X  = 2^clamp(floor(log2 max|x_block|) − emax_elem, −127, 127)
 *   x̂ = Q_elem(x / X) · X
 *
 * with emax_elem the exponent of the element format's largest binade (8, 15, 4, 2 for E4M3,
 * E5M2, E3M2, E2M1; 0 for INT8, whose elements are two's complement with an implicit 2^−6, clamped
 * symmetrically to ±127/64). Q_elem rounds to nearest even and saturates, so the block maximum,
 * which lands in [2^emax_elem, 2^(emax_elem + 1)), may clip to the element max (E4M3: 480 → 448),
 * as the specification's conversion does.
 *
 * A block whose maximum is below 2^−126 (all zeros included) is treated as if its maximum were
 * 2^−126 — every element then rounds to 0 or keeps its tiny value's grid point — and an infinite
 * maximum as the largest float32, so X is always a finite float32; NaN is outside the domain.
 */
import { makeNode } from '../graph/attributes.js';
import type { Command } from '../graph/commands.js';
import { floatTensor, int64Tensor } from '../onnx/tensor.js';
import {
  exponentIndexCommands,
  exponentRange,
  floatElementCommands,
  floatFormats,
  floatQuantizeValue,
  floorLog2,
  type FloatFormatName,
} from './float-formats.js';
import { roundHalfEven } from './uniform.js';

export type MxElement = FloatFormatName | 'int8';

/** One MX quantizer: element type and block size (32 in the specification). */
export interface MxQuantizer {
  element: MxElement;
  blockSize?: number;
}

const float32Max = 3.4028234663852886e38;
const smallestNormal = 2 ** -126;

/** emax_elem: floor(log2) of the element's largest value (0 for INT8, whose max is 127/64). */
export function mxElementEmax(element: MxElement): number {
  return element === 'int8' ? 0 : exponentRange(floatFormats[element]).emax;
}

/** The exponent of X for a block maximum, as in the file comment. Example (E4M3): 3.7 → 1 − 8. */
export function mxSharedExponent(blockMax: number, element: MxElement): number {
  const a = Math.min(Math.max(blockMax, smallestNormal), float32Max);
  return Math.min(Math.max(floorLog2(a) - mxElementEmax(element), -127), 127);
}

/** Q_elem of one float32 y: the FP grid, or clamp(roundHalfEven(64·y), −127, 127) / 64. */
export function mxElementValue(y: number, element: MxElement): number {
  if (element !== 'int8') return floatQuantizeValue(y, floatFormats[element]);
  return Math.min(Math.max(roundHalfEven(y * 64), -127), 127) / 64;
}

function blockSizeOf(q: MxQuantizer, lastDim: number): number {
  const k = q.blockSize ?? 32;
  if (!Number.isInteger(k) || k < 1 || lastDim % k !== 0) {
    throw new RangeError(
      `MX block size ${k} must be a positive divisor of the last axis ${lastDim}`,
    );
  }
  return k;
}

/**
 * x̂ for a row-major tensor whose last axis has `lastDim` values. Worked example (E2M1, blocks
 * of 4): [0.3, −1.2, 5, 0.9] → max 5, X = 2^(2 − 2) = 1 → [0.5, −1, 4, 1];
 * [40, 3, −7, 0.1] → X = 2^(5 − 2) = 8 → y = [5, 0.375, −0.875, 0.0125] → [32, 4, −8, 0].
 */
export function mxFakeQuantize(x: Float32Array, lastDim: number, q: MxQuantizer): Float32Array {
  const k = blockSizeOf(q, lastDim);
  if (x.length % lastDim !== 0) {
    throw new RangeError(`MX input of ${x.length} values is not rows of ${lastDim}`);
  }
  const out = new Float32Array(x.length);
  for (let from = 0; from < x.length; from += k) {
    let max = 0;
    for (let i = from; i < from + k; i++) max = Math.max(max, Math.abs(x[i]!));
    const scale = 2 ** mxSharedExponent(max, q.element);
    for (let i = from; i < from + k; i++) {
      out[i] = mxElementValue(Math.fround(x[i]! / scale), q.element) * scale;
    }
  }
  return out;
}

/** Σ(x − x̂)² of an MX quantizer, in float64. */
export function mxSquaredError(x: Float32Array, lastDim: number, q: MxQuantizer): number {
  const xq = mxFakeQuantize(x, lastDim, q);
  let error = 0;
  for (let i = 0; i < x.length; i++) error += (x[i]! - xq[i]!) ** 2;
  return error;
}

/**
 * The commands adding an MX fake quantizer on `value` (its last axis a multiple of the block
 * size); the result is `<prefix>/output`, shaped like the input. The chain:
 *
 *   B = Reshape(x, [−1, k]);  a = Clip(ReduceMax(Abs(B), −1), 2^−126, float32 max)
 *   i = floor(log2 a) + 126                         exact, see exponentIndexCommands
 *   X = Gather(T, i)                                T[i] = 2^clamp(i − 126 − emax_elem, −127, 127)
 *   x̂ = Reshape(Q_elem(B / X) · X, Shape(x))
 *
 * with Q_elem the float-format chain or Clip(Round(64·y), −127, 127) / 64. `opset` decides
 * whether ReduceMax reads its axes from an attribute (< 18) or an input.
 */
export function mxFakeQuantCommands(
  value: string,
  prefix: string,
  q: MxQuantizer,
  opset = 13,
): { commands: Command[]; output: string } {
  const k = q.blockSize ?? 32;
  const emax = mxElementEmax(q.element);
  const p = (name: string) => `${prefix}/${name}`;
  const scalar = (name: string, v: number) => floatTensor(p(name), [], Float32Array.of(v));
  const scales = Float32Array.from({ length: 254 }, (_, i) =>
    Math.fround(2 ** Math.min(Math.max(i - 126 - emax, -127), 127)),
  );
  const tensors = [
    int64Tensor(p('blockShape'), [2], [-1, k]),
    scalar('smallest', smallestNormal),
    scalar('largest', float32Max),
    floatTensor(p('scales'), [scales.length], scales),
  ];
  const op = (name: string, opType: string, inputs: string[], attributes = {}): Command => ({
    kind: 'addNode',
    node: makeNode({ name: p(name), opType, inputs, outputs: [p(name)], attributes }),
  });
  const reduce: Command[] =
    opset >= 18
      ? [
          { kind: 'addInitializer', tensor: int64Tensor(p('axes'), [1], [-1]) },
          op('BlockMax', 'ReduceMax', [p('Abs'), p('axes')], { keepdims: 1 }),
        ]
      : [op('BlockMax', 'ReduceMax', [p('Abs')], { axes: [-1], keepdims: 1 })];
  const element = elementCommands(p('Div'), `${prefix}/element`, q.element);
  const commands: Command[] = [
    ...tensors.map((tensor): Command => ({ kind: 'addInitializer', tensor })),
    op('Blocks', 'Reshape', [value, p('blockShape')]),
    op('Abs', 'Abs', [p('Blocks')]),
    ...reduce,
    op('Magnitude', 'Clip', [p('BlockMax'), p('smallest'), p('largest')]),
    ...exponentIndexCommands(p('Magnitude'), `${prefix}/exponent`, -126, 127),
    op('Scale', 'Gather', [p('scales'), `${prefix}/exponent/Index`]),
    op('Div', 'Div', [p('Blocks'), p('Scale')]),
    ...element.commands,
    op('Mul', 'Mul', [element.output, p('Scale')]),
    op('Shape', 'Shape', [value]),
    op('output', 'Reshape', [p('Mul'), p('Shape')]),
  ];
  return { commands, output: p('output') };
}

/** Q_elem as commands: the float-format chain, or INT8 with its implicit 2^−6. */
function elementCommands(
  value: string,
  prefix: string,
  element: MxElement,
): { commands: Command[]; output: string } {
  if (element !== 'int8') return floatElementCommands(value, prefix, floatFormats[element]);
  const p = (name: string) => `${prefix}/${name}`;
  const scalar = (name: string, v: number) => floatTensor(p(name), [], Float32Array.of(v));
  const op = (name: string, opType: string, inputs: string[]): Command => ({
    kind: 'addNode',
    node: makeNode({ name: p(name), opType, inputs, outputs: [p(name)] }),
  });
  const tensors = [
    scalar('units', 64),
    scalar('step', 1 / 64),
    scalar('lo', -127),
    scalar('hi', 127),
  ];
  return {
    commands: [
      ...tensors.map((tensor): Command => ({ kind: 'addInitializer', tensor })),
      op('Scaled', 'Mul', [value, p('units')]),
      op('Round', 'Round', [p('Scaled')]),
      op('Clip', 'Clip', [p('Round'), p('lo'), p('hi')]),
      op('int8', 'Mul', [p('Clip'), p('step')]),
    ],
    output: p('int8'),
  };
}
