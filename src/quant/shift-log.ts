/**
 * I&S-ViT's shift-uniform-log2 quantizer (SULQ, arXiv:2311.10126, §4.1) for post-Softmax values:
 * a shift η moves the input off 0, the logarithm is quantized uniformly, and the dequantized
 * exponent is rounded to an integer so that the level is a power of two (a shift in hardware):
 *
 *   y  = log2(x + η),   Δ = (y_max − y_min) / (2^b − 1)
 *   c  = clamp(round((y − y_min) / Δ), 0, 2^b − 1)
 *   x̂ = 2^roundHalfEven(y_min + c·Δ) − η
 *
 * with y_min, y_max the log range seen in calibration and η chosen by tensor MSE from
 * {0.001, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.1, 0.2, 0.5, 1}. (The published code sizes its
 * steps with 2^b − 1 at initialisation but with 2^b in the forward pass, allowing one more
 * level; this module keeps the consistent 2^b − 1 form.)
 *
 * Exact codes. Code > k exactly when t = float32(x + η) ≥ 2^(y_min + (k+½)·Δ); the smallest
 * float32 at or above that boundary makes the test exact for a float32 t, so both
 * implementations compare with one float32 table, and a value exactly on a boundary takes the
 * higher code. Inputs with x + η ≤ 0 take code 0; NaN is outside the domain.
 */
import { makeNode } from '../graph/attributes.js';
import type { Command } from '../graph/commands.js';
import { DataType, floatTensor } from '../onnx/tensor.js';
import { float32AtOrAbove } from './log-quantizers.js';
import { roundHalfEven } from './uniform.js';

/** I&S-ViT's candidate shifts η. */
export const shiftLogCandidates: readonly number[] = [
  0.001, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.1, 0.2, 0.5, 1,
];

export interface ShiftLogQuantizer {
  bits: number;
  /** η > 0. */
  shift: number;
  /** y_min and y_max: the range of log2(x + η) the uniform grid spans. */
  logMin: number;
  logMax: number;
}

function check(q: ShiftLogQuantizer): { n: number; step: number; shift: number } {
  if (!Number.isInteger(q.bits) || q.bits < 1 || q.bits > 10) {
    throw new RangeError(`shift-log bit width must be an integer in [1, 10], got ${q.bits}`);
  }
  if (!(q.shift > 0) || !Number.isFinite(q.shift)) {
    throw new RangeError(`shift-log shift η must be positive and finite, got ${q.shift}`);
  }
  if (!(q.logMin >= -100 && q.logMax > q.logMin && q.logMax <= 100)) {
    throw new RangeError(
      `shift-log range must satisfy −100 ≤ y_min < y_max ≤ 100, got [${q.logMin}, ${q.logMax}]`,
    );
  }
  const n = 2 ** q.bits;
  return { n, step: (q.logMax - q.logMin) / (n - 1), shift: Math.fround(q.shift) };
}

/**
 * The boundaries in t = x + η, ascending: c_k = smallest float32 ≥ 2^(y_min + (k+½)·Δ) for
 * k < 2^b − 1, and c_(2^b − 1) = +∞. Example (2 bits, y ∈ [−3, 0], Δ = 1): 2^−2.5, 2^−1.5, 2^−0.5.
 */
export function shiftLogBoundaries(q: ShiftLogQuantizer): Float32Array {
  const { n, step } = check(q);
  const out = new Float32Array(n);
  for (let k = 0; k < n - 1; k++) out[k] = float32AtOrAbove(2 ** (q.logMin + (k + 0.5) * step));
  out[n - 1] = Infinity;
  return out;
}

/**
 * x̂ of each code: float32(2^roundHalfEven(y_min + c·Δ) − η). Example (2 bits, y ∈ [−3, 0],
 * η = 0.01, Δ = 1): 2^−3, 2^−2, 2^−1, 1, each less 0.01.
 * Example (2 bits, y ∈ [−4, 0], Δ = 4/3): exponents −4, −2.67 → −3, −1.33 → −1, 0.
 */
export function shiftLogLevels(q: ShiftLogQuantizer): Float32Array {
  const { n, step, shift } = check(q);
  return Float32Array.from(
    { length: n },
    (_, c) => 2 ** roundHalfEven(q.logMin + c * step) - shift,
  );
}

/** The code of t: how many boundaries are at or below it (0 for t ≤ 0). */
function codeOf(t: number, boundaries: Float32Array): number {
  let lo = 0;
  let hi = boundaries.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (t >= boundaries[mid]!) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/**
 * Codes 0 … 2^b − 1. Worked example (2 bits, y ∈ [−3, 0], η = 0.01): x = [0, 0.1, 0.3, 0.99]
 * → log2(x + η) = [−6.64, −3.18, −1.69, 0] → y + 3 = [−3.64, −0.18, 1.31, 3] → [0, 0, 1, 3].
 */
export function shiftLogQuantize(x: Float32Array, q: ShiftLogQuantizer): Uint16Array {
  const { shift } = check(q);
  const boundaries = shiftLogBoundaries(q);
  const out = new Uint16Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = codeOf(Math.fround(x[i]! + shift), boundaries);
  return out;
}

/** Quantize then dequantize. The example above gives [0.115, 0.115, 0.24, 0.99]. */
export function shiftLogFakeQuantize(x: Float32Array, q: ShiftLogQuantizer): Float32Array {
  const levels = shiftLogLevels(q);
  const codes = shiftLogQuantize(x, q);
  return Float32Array.from(codes, (c) => levels[c]!);
}

/** Σ(x − x̂)² in float64. */
export function shiftLogSquaredError(x: Float32Array, q: ShiftLogQuantizer): number {
  const xq = shiftLogFakeQuantize(x, q);
  let error = 0;
  for (let i = 0; i < x.length; i++) error += (x[i]! - xq[i]!) ** 2;
  return error;
}

/**
 * The SULQ quantizer of least Σ(x − x̂)² over the candidate shifts, each with the log range
 * [log2(min x + η), log2(max x + η)] of the captured values; shifts that leave min x + η ≤ 0 are
 * skipped.
 */
export function calibrateShiftLog(
  values: Float32Array,
  bits: number,
  shifts: readonly number[] = shiftLogCandidates,
): ShiftLogQuantizer {
  let min = Infinity;
  let max = -Infinity;
  for (const v of values) {
    if (v < min) min = v;
    if (v > max) max = v;
  }
  let best: ShiftLogQuantizer | undefined;
  let bestError = Infinity;
  for (const shift of shifts) {
    if (!(min + shift > 0)) continue;
    const logMin = Math.log2(min + shift);
    const logMax = Math.max(Math.log2(max + shift), logMin + 2 ** -10);
    const candidate = { bits, shift, logMin, logMax };
    const error = shiftLogSquaredError(values, candidate);
    if (error < bestError) [best, bestError] = [candidate, error];
  }
  if (best === undefined) {
    throw new RangeError(
      `shift-log calibration: no shift in [${shifts}] makes min x + η positive (min x = ${min})`,
    );
  }
  return best;
}

/**
 * The commands adding a SULQ fake quantizer on `value`; the result is `<prefix>/output`.
 * The chain (opset ≥ 13):
 *
 *   t = Max(x + η, max(c_0 / 2, 2^−126))         anything below c_0 has code 0
 *   g = Cast<int32>(Clip(Floor((Log(t)/ln 2 − y_min)/Δ + ½ − 1/64), 0, 2^b − 1))
 *   c = g + [t ≥ c_g]
 *   x̂ = Gather(L, c)
 *
 * The guess rounds 1/64 of a step low, far more than a float32 logarithm misses by, so it is the
 * code or the one below it, and the boundary test settles which (c_(2^b − 1) = +∞ stops the top).
 */
export function shiftLogFakeQuantCommands(
  value: string,
  prefix: string,
  q: ShiftLogQuantizer,
): { commands: Command[]; output: string } {
  const { n, step, shift } = check(q);
  const boundaries = shiftLogBoundaries(q);
  const p = (name: string) => `${prefix}/${name}`;
  const scalar = (name: string, v: number) => floatTensor(p(name), [], Float32Array.of(v));
  const tensors = [
    scalar('shift', shift),
    scalar('lowest', Math.max(boundaries[0]! / 2, 2 ** -126)),
    scalar('invLn2', 1 / Math.LN2),
    scalar('logMin', q.logMin),
    scalar('invStep', 1 / step),
    scalar('half', 0.5 - 1 / 64),
    scalar('zero', 0),
    scalar('last', n - 1),
    floatTensor(p('boundaries'), [n], boundaries),
    floatTensor(p('levels'), [n], shiftLogLevels(q)),
  ];
  const op = (name: string, opType: string, inputs: string[], attributes = {}): Command => ({
    kind: 'addNode',
    node: makeNode({ name: p(name), opType, inputs, outputs: [p(name)], attributes }),
  });
  const toInt32 = { to: DataType.INT32 };
  const commands: Command[] = [
    ...tensors.map((tensor): Command => ({ kind: 'addInitializer', tensor })),
    op('Shifted', 'Add', [value, p('shift')]),
    op('Clamped', 'Max', [p('Shifted'), p('lowest')]),
    op('Log', 'Log', [p('Clamped')]),
    op('Log2', 'Mul', [p('Log'), p('invLn2')]),
    op('FromMin', 'Sub', [p('Log2'), p('logMin')]),
    op('Steps', 'Mul', [p('FromMin'), p('invStep')]),
    op('Add', 'Add', [p('Steps'), p('half')]),
    op('Floor', 'Floor', [p('Add')]),
    op('Clip', 'Clip', [p('Floor'), p('zero'), p('last')]),
    op('Guess', 'Cast', [p('Clip')], toInt32),
    op('Boundary', 'Gather', [p('boundaries'), p('Guess')]),
    op('Under', 'Less', [p('Clamped'), p('Boundary')]),
    op('Reached', 'Not', [p('Under')]),
    op('Step', 'Cast', [p('Reached')], toInt32),
    op('Code', 'Add', [p('Guess'), p('Step')]),
    op('output', 'Gather', [p('levels'), p('Code')]),
  ];
  return { commands, output: p('output') };
}
