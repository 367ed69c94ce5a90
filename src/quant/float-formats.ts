/**
 * Low-bit floating-point fake quantization (FP8 E4M3 / E5M2, FP6 E3M2, FP4 E2M1) with a scale,
 * as LLM-FP4 (arXiv:2310.16836, §3) simulates it.
 *
 * A format EeMm with exponent bias b has normals 2^(E−b)·(1 + f/2^m) and subnormals
 * 2^(1−b)·f/2^m. For y = x / s (float32) with e = clamp(floor(log2|y|), 1 − b, emax), the step
 * of y's binade is v = 2^(e − m) and
 *
 *   FP(y) = clamp(roundHalfEven(y / v) · v, −max, max),    x̂ = FP(y) · s.
 *
 * The clamp at 1 − b gives the subnormals (one fixed step below the smallest normal); rounding a
 * value up may carry it into the next binade, whose first value is on the grid too. Overflow
 * saturates to ±max ("satfinite"): ±∞ become ±max; NaN stays NaN in the pure function and is
 * outside the domain of the ONNX chain (its exponent index is then undefined).
 *
 * The scale plays the role of LLM-FP4's real-valued exponent bias b̃: s = 2^(b̃_format − b̃) maps
 * max|x| onto the format's max when s = max|x| / max (their initial b̃), and a per-channel scale
 * is their per-channel bias. Every step is a power of two, so y / v and q · v are exact in float32
 * and the only place two implementations could differ is floor(log2|y|); both settle it by
 * comparing |y| with exact powers of two, never by trusting a logarithm.
 */
import { makeNode } from '../graph/attributes.js';
import type { Command } from '../graph/commands.js';
import { DataType, floatTensor, makeTensor } from '../onnx/tensor.js';
import { roundHalfEven } from './uniform.js';

export type FloatFormatName = 'e4m3' | 'e5m2' | 'e3m2' | 'e2m1';

/** The layout of one format: bit widths, exponent bias and largest finite value. */
export interface FloatFormat {
  name: FloatFormatName;
  exponentBits: number;
  mantissaBits: number;
  bias: number;
  /** The largest finite magnitude; results saturate here. */
  max: number;
}

/**
 * The OCP formats: E4M3 keeps only S.1111.111 for NaN (max 448), E5M2 reserves its top exponent
 * for ∞/NaN as IEEE does (max 57344), E3M2 and E2M1 have no special values (max 28 and 6).
 */
export const floatFormats: Readonly<Record<FloatFormatName, FloatFormat>> = {
  e4m3: { name: 'e4m3', exponentBits: 4, mantissaBits: 3, bias: 7, max: 448 },
  e5m2: { name: 'e5m2', exponentBits: 5, mantissaBits: 2, bias: 15, max: 57344 },
  e3m2: { name: 'e3m2', exponentBits: 3, mantissaBits: 2, bias: 3, max: 28 },
  e2m1: { name: 'e2m1', exponentBits: 2, mantissaBits: 1, bias: 1, max: 6 },
};

/** The exponent of the subnormal binade and of the largest binade: [1 − b, floor(log2 max)]. */
export function exponentRange(format: FloatFormat): { emin: number; emax: number } {
  return { emin: 1 - format.bias, emax: Math.floor(Math.log2(format.max)) };
}

/** floor(log2 a) for a positive finite a, exact: a log2 guess corrected against 2^k. */
export function floorLog2(a: number): number {
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e -= 1;
  else if (2 ** (e + 1) <= a) e += 1;
  return e;
}

/**
 * FP(y) of the file comment for one float32 y. Examples (E4M3): 0.3 → 0.3125 (step 2^−5);
 * 1.0625 → 1 (a tie, to even); 1.1875 → 1.25; 500 → 448; 2^−10 → 0 (a tie); 3·2^−10 → 2^−8.
 * (E2M1): 0.25 → 0, 0.75 → 1, 1.25 → 1, 2.5 → 2, 5 → 4, 5.5 → 6, 7 → 6.
 */
export function floatQuantizeValue(y: number, format: FloatFormat): number {
  if (Number.isNaN(y)) return NaN;
  const a = Math.min(Math.abs(y), format.max);
  if (a === 0) return y === 0 ? y : 0;
  const { emin, emax } = exponentRange(format);
  const e = Math.min(Math.max(floorLog2(a), emin), emax);
  const step = 2 ** (e - format.mantissaBits);
  const q = Math.min(roundHalfEven(a / step) * step, format.max);
  return y < 0 ? -q : q;
}

function checkScale(scale: number, what: string): number {
  const s = Math.fround(scale);
  if (!(s > 0) || !Number.isFinite(s)) {
    throw new RangeError(`${what} must be a positive finite float32, got ${scale}`);
  }
  return s;
}

/**
 * x̂ = FP(x / s) · s with one scale for the tensor, every operation in float32 as the ONNX chain
 * computes it. Example (E2M1, s = 0.5): [0.3, 1.4, 9] → y = [0.6, 2.8, 18] → [0.25, 1.5, 3].
 */
export function floatFakeQuantize(x: Float32Array, format: FloatFormat, scale = 1): Float32Array {
  const s = checkScale(scale, 'float format scale');
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) {
    out[i] = floatQuantizeValue(Math.fround(x[i]! / s), format) * s;
  }
  return out;
}

/**
 * x̂ with one scale per index of `axis` of a row-major tensor of `dims` (LLM-FP4's per-channel
 * exponent bias for weights: axis 0 of an ONNX MatMul weight [in, out] is per input channel).
 */
export function floatFakeQuantizeChannels(
  x: Float32Array,
  dims: readonly number[],
  axis: number,
  scales: Float32Array,
  format: FloatFormat,
): Float32Array {
  const channels = dims[axis];
  if (channels === undefined || scales.length !== channels) {
    throw new RangeError(
      `per-channel scales: expected ${channels ?? '?'} scales for axis ${axis} of [${dims}], ` +
        `got ${scales.length}`,
    );
  }
  scales.forEach((s) => checkScale(s, 'float format scale'));
  const inner = dims.slice(axis + 1).reduce((p, d) => p * d, 1);
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const s = scales[Math.floor(i / inner) % channels]!;
    out[i] = floatQuantizeValue(Math.fround(x[i]! / s), format) * s;
  }
  return out;
}

/** The scale that maps `absMax` onto the format's max (LLM-FP4's initial bias); 1 for 0. */
export function floatScaleForMax(absMax: number, format: FloatFormat): number {
  return absMax > 0 && Number.isFinite(absMax) ? Math.fround(absMax / format.max) : 1;
}

/** Σ(x − x̂)² of a per-tensor float fake quantizer, in float64. */
export function floatSquaredError(x: Float32Array, format: FloatFormat, scale: number): number {
  return channelFloatSquaredError(x, format, [checkScale(scale, 'float format scale')]);
}

/**
 * Σ(x − x̂)² in float64 with the scale of x[i] at scales[i mod scales.length] (one scale, or one
 * per channel of rows whose last axis is the channel). It is floatQuantizeValue unrolled for
 * float32 inputs: the binade is read from the exponent bits (exact, no logarithm) and the steps
 * come from a table, since every scale search calls this for each candidate over every value.
 */
export function channelFloatSquaredError(
  x: Float32Array,
  format: FloatFormat,
  scales: ArrayLike<number>,
): number {
  const { emin, emax } = exponentRange(format);
  const steps = Array.from(
    { length: emax - emin + 1 },
    (_, k) => 2 ** (emin + k - format.mantissaBits),
  );
  const bits = new Float32Array(1);
  const word = new Uint32Array(bits.buffer);
  const channels = scales.length;
  let error = 0;
  for (let i = 0; i < x.length; i++) {
    const v = x[i]!;
    const s = scales[i % channels]!;
    const y = Math.fround(v / s);
    const a = Math.min(Math.abs(y), format.max);
    let q = 0;
    if (a > 0) {
      bits[0] = a;
      // a float32 subnormal reads −127, below every format's emin, and is clamped like the rest
      const e = Math.min(Math.max(((word[0]! >>> 23) & 0xff) - 127, emin), emax);
      const step = steps[e - emin]!;
      q = Math.min(roundHalfEven(a / step) * step, format.max);
    }
    const d = v - Math.fround((y < 0 ? -q : q) * s);
    error += d * d;
  }
  return error;
}

/** A named scale tensor for the chain: a scalar, or per-channel with broadcastable dims. */
export interface FloatScaleTensor {
  values: Float32Array;
  /** Dims broadcasting against the input, e.g. [] or [1, C] or [C, 1]. */
  dims: number[];
}

/**
 * The commands quantizing `value` (already divided by its scale) onto the format's grid; the
 * result is `<prefix>/fp`. The chain (opset ≥ 13):
 *
 *   y' = Clip(y, −max, max)                      saturation first: max is a grid value
 *   a  = Max(Abs(y'), 2^emin)                    the subnormal binade shares emin's step
 *   g  = Cast<int32>(Clip(Floor(Log(a) / ln 2 + ½), emin, emax) − emin)   a guess, off by ≤ 1
 *   i  = g − [a < P[g]] + [a ≥ P[g + 1]]         P[k] = 2^(emin + k): the exact exponent index
 *   FP = Round(y' · R[i]) · V[i]                 V[i] = 2^(emin + i − m), R[i] = 1 / V[i]
 *
 * The guess is floor(log2 a + ½), so a logarithm error of a few ulps cannot move it by more than
 * one binade and the two comparisons land on floor(log2 a) exactly.
 */
export function floatElementCommands(
  value: string,
  prefix: string,
  format: FloatFormat,
): { commands: Command[]; output: string } {
  const { emin, emax } = exponentRange(format);
  const n = emax - emin + 1;
  const p = (name: string) => `${prefix}/${name}`;
  const scalar = (name: string, v: number) => floatTensor(p(name), [], Float32Array.of(v));
  const table = (name: string, count: number, f: (k: number) => number) =>
    floatTensor(
      p(name),
      [count],
      Float32Array.from({ length: count }, (_, k) => f(k)),
    );
  const tensors = [
    scalar('max', format.max),
    scalar('negMax', -format.max),
    scalar('smallest', 2 ** emin),
    table('steps', n, (k) => 2 ** (emin + k - format.mantissaBits)),
    table('inverseSteps', n, (k) => 2 ** -(emin + k - format.mantissaBits)),
  ];
  const op = (name: string, opType: string, inputs: string[], attributes = {}): Command => ({
    kind: 'addNode',
    node: makeNode({ name: p(name), opType, inputs, outputs: [p(name)], attributes }),
  });
  const commands: Command[] = [
    ...tensors.map((tensor): Command => ({ kind: 'addInitializer', tensor })),
    op('Saturated', 'Clip', [value, p('negMax'), p('max')]),
    op('Abs', 'Abs', [p('Saturated')]),
    op('Magnitude', 'Max', [p('Abs'), p('smallest')]),
    ...exponentIndexCommands(p('Magnitude'), `${prefix}/exponent`, emin, emax),
    op('Step', 'Gather', [p('steps'), `${prefix}/exponent/Index`]),
    op('InverseStep', 'Gather', [p('inverseSteps'), `${prefix}/exponent/Index`]),
    op('Scaled', 'Mul', [p('Saturated'), p('InverseStep')]),
    op('Round', 'Round', [p('Scaled')]),
    op('fp', 'Mul', [p('Round'), p('Step')]),
  ];
  return { commands, output: p('fp') };
}

/**
 * The commands computing i = floor(log2 a) − emin for `magnitude` a ∈ [2^emin, 2^(emax + 1)),
 * exact; the int32 result is `<prefix>/Index`. A guess from the logarithm,
 * g = clamp(floor(log2 a + ½), emin, emax) − emin, is off by at most one binade, and
 * i = g − [a < P[g]] + [a ≥ P[g + 1]] with P[k] = 2^(emin + k) settles it.
 */
export function exponentIndexCommands(
  magnitude: string,
  prefix: string,
  emin: number,
  emax: number,
): Command[] {
  const p = (name: string) => `${prefix}/${name}`;
  const scalar = (name: string, v: number) => floatTensor(p(name), [], Float32Array.of(v));
  const count = emax - emin + 2;
  const powers = Float32Array.from({ length: count }, (_, k) => 2 ** (emin + k));
  const tensors = [
    scalar('invLn2', 1 / Math.LN2),
    scalar('half', 0.5),
    scalar('emin', emin),
    scalar('emax', emax),
    floatTensor(p('powers'), [count], powers),
    makeTensor(p('one'), DataType.INT32, [], Int32Array.of(1)),
  ];
  const op = (name: string, opType: string, inputs: string[], attributes = {}): Command => ({
    kind: 'addNode',
    node: makeNode({ name: p(name), opType, inputs, outputs: [p(name)], attributes }),
  });
  const toInt32 = { to: DataType.INT32 };
  return [
    ...tensors.map((tensor): Command => ({ kind: 'addInitializer', tensor })),
    op('Log', 'Log', [magnitude]),
    op('Log2', 'Mul', [p('Log'), p('invLn2')]),
    op('Shifted', 'Add', [p('Log2'), p('half')]),
    op('Floor', 'Floor', [p('Shifted')]),
    op('Exponent', 'Clip', [p('Floor'), p('emin'), p('emax')]),
    op('FromEmin', 'Sub', [p('Exponent'), p('emin')]),
    op('Guess', 'Cast', [p('FromEmin')], toInt32),
    op('Low', 'Gather', [p('powers'), p('Guess')]),
    op('GuessUp', 'Add', [p('Guess'), p('one')]),
    op('High', 'Gather', [p('powers'), p('GuessUp')]),
    op('Below', 'Less', [magnitude, p('Low')]),
    op('BelowInt', 'Cast', [p('Below')], toInt32),
    op('Under', 'Less', [magnitude, p('High')]),
    op('Above', 'Not', [p('Under')]),
    op('AboveInt', 'Cast', [p('Above')], toInt32),
    op('Lowered', 'Sub', [p('Guess'), p('BelowInt')]),
    op('Index', 'Add', [p('Lowered'), p('AboveInt')]),
  ];
}

/**
 * The commands adding a float-format fake quantizer on `value`: x̂ = FP(x / s) · s with `scale` a
 * scalar or broadcastable per-channel tensor; the result is `<prefix>/output` and nothing is
 * rewired to read it.
 */
export function floatFakeQuantCommands(
  value: string,
  prefix: string,
  format: FloatFormat,
  scale: FloatScaleTensor = { values: Float32Array.of(1), dims: [] },
): { commands: Command[]; output: string } {
  scale.values.forEach((s) => checkScale(s, 'float format scale'));
  const p = (name: string) => `${prefix}/${name}`;
  const element = floatElementCommands(p('Div'), prefix, format);
  const op = (name: string, opType: string, inputs: string[]): Command => ({
    kind: 'addNode',
    node: makeNode({ name: p(name), opType, inputs, outputs: [p(name)] }),
  });
  const commands: Command[] = [
    { kind: 'addInitializer', tensor: floatTensor(p('scale'), scale.dims, scale.values) },
    op('Div', 'Div', [value, p('scale')]),
    ...element.commands,
    op('output', 'Mul', [element.output, p('scale')]),
  ];
  return { commands, output: p('output') };
}
