/**
 * AdaLog's adaptive-base logarithmic quantizer (arXiv:2407.12951, §3.2) for post-Softmax and,
 * shifted, post-GELU activations. The base is a = 2^(q_b / r) with r = 37 fixed and the integer
 * q_b searched (10 … 138, base 2^0.27 … 2^3.73):
 *
 *   x' = x + η                          η = 0 after Softmax, 0.16997 after GELU (its minimum)
 *   c  = clamp(round(−log_a(x' / s)), 0, 2^b − 1) = clamp(round(−log2(x' / s) · r / q_b), ...)
 *   x̂ = s · a^(−c) − η                 a code that would be 2^b or more gives x̂ = −η (x̂' = 0)
 *
 * Hardware form (the paper's deployment): a^(−c) = 2^(−c·q_b/r) is split into a shift by
 * ⌊c·q_b / r⌋ and a table entry T[(c·q_b) mod r] with T[j] = round(2^(−j/r)·D) / D,
 * D = 2^(b+1) − 2, so dequantization is one shift and one small-table multiply. `hardware: true`
 * uses those levels; otherwise the exact powers.
 *
 * Exact codes. Code > k exactly when x'/s < 2^(−(k+½)·q_b/r); against the smallest float32 c_k at
 * or above that boundary the test is exact for a float32 ratio, so both implementations compare
 * with the same float32 table and never trust a logarithm for the final answer. A ratio exactly
 * on a boundary (possible only when (2k+1)·q_b/(2r) is an integer) takes the lower code.
 */
import { makeNode } from '../graph/attributes.js';
import type { Command } from '../graph/commands.js';
import { DataType, floatTensor, makeTensor } from '../onnx/tensor.js';
import { float32AtOrAbove } from './log-quantizers.js';
import { roundHalfEven } from './uniform.js';

/** AdaLog's default r: the base is 2^(q_b / 37). */
export const adaLogDenominator = 37;

/** The shift the paper adds before quantizing a GELU output (≈ −min GELU). */
export const geluShift = 0.16997;

export interface AdaLogQuantizer {
  bits: number;
  /** q_b: the base is 2^(q_b / r). */
  baseNumerator: number;
  /** r; 37 unless given. */
  baseDenominator?: number;
  /** The largest level s (1 after Softmax). */
  scale: number;
  /** η added before quantizing and taken away after (0 unless given). */
  shift?: number;
  /** Levels from the shift-and-table form instead of exact powers. */
  hardware?: boolean;
}

interface Resolved {
  n: number;
  m: number;
  scale: number;
  shift: number;
}

function resolve(q: AdaLogQuantizer): Resolved {
  if (!Number.isInteger(q.bits) || q.bits < 1 || q.bits > 10) {
    throw new RangeError(`AdaLog bit width must be an integer in [1, 10], got ${q.bits}`);
  }
  const r = q.baseDenominator ?? adaLogDenominator;
  if (!Number.isInteger(q.baseNumerator) || q.baseNumerator < 1 || !Number.isInteger(r) || r < 1) {
    throw new RangeError(
      `AdaLog base 2^(q_b/r) needs positive integers, got q_b = ${q.baseNumerator}, r = ${r}`,
    );
  }
  const scale = Math.fround(q.scale);
  if (!(scale > 0) || !Number.isFinite(scale)) {
    throw new RangeError(`AdaLog scale must be a positive float32, got ${q.scale}`);
  }
  return { n: 2 ** q.bits, m: r / q.baseNumerator, scale, shift: Math.fround(q.shift ?? 0) };
}

/** c_k (k < 2^b): the smallest float32 ≥ 2^(−(k+½)·q_b/r), in units of x'/s; decreasing. */
export function adaLogBoundaries(q: AdaLogQuantizer): Float32Array {
  const { n, m } = resolve(q);
  return Float32Array.from({ length: n }, (_, k) => float32AtOrAbove(2 ** (-(k + 0.5) / m)));
}

/**
 * x̂' of each code (before η is taken away): float32(s·L_c) for c < 2^b and 0 for c = 2^b, with
 * L_c = 2^(−c·q_b/r), or in hardware form 2^(−⌊c·q_b/r⌋)·T[(c·q_b) mod r].
 * Example (3 bits, q_b = 37, i.e. base 2): s·[1, ½, ¼, …, 2^−7], 0.
 * Example (hardware, 3 bits, q_b = 20, r = 37, D = 14): c = 1 → T[20] = round(0.6877·14)/14
 * = 10/14 ≈ 0.714 against the exact 0.6877.
 */
export function adaLogLevels(q: AdaLogQuantizer): Float32Array {
  const { n, scale } = resolve(q);
  const r = q.baseDenominator ?? adaLogDenominator;
  const d = 2 ** (q.bits + 1) - 2;
  const out = new Float32Array(n + 1);
  for (let c = 0; c < n; c++) {
    const product = c * q.baseNumerator;
    const level = q.hardware
      ? 2 ** -Math.floor(product / r) * (roundHalfEven(2 ** (-(product % r) / r) * d) / d)
      : 2 ** (-product / r);
    out[c] = scale * level;
  }
  return out;
}

/**
 * The smallest ratio the code computation looks at: below the last boundary (so still "below the
 * grid") but never under 2^−126, which keeps the chain's logarithm away from subnormals. A positive
 * ratio under it is read as it; for bit widths where the grid reaches that far down, the levels
 * there are below float32 resolution anyway.
 */
function lowestRatio(boundaries: Float32Array): number {
  return Math.max(boundaries[boundaries.length - 1]! / 2, 2 ** -126);
}

/** The code of a float32 ratio: how many boundaries lie above it; 2^b for ratio ≤ 0. */
function codeOf(ratio: number, boundaries: Float32Array, lowest: number): number {
  if (!(ratio > 0)) return boundaries.length;
  if (ratio < lowest) ratio = lowest;
  let lo = 0;
  let hi = boundaries.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (ratio < boundaries[mid]!) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/**
 * Codes 0 … 2^b − 1, or 2^b for a value below the grid. Worked example (3 bits, q_b = 37, s = 1,
 * base 2): x = [1, 0.3, 0.006, 0.005, 0] → −log2 = [0, 1.74, 7.38, 7.64, ∞] → [0, 2, 7, 8, 8].
 */
export function adaLogQuantize(x: Float32Array, q: AdaLogQuantizer): Uint16Array {
  const { scale, shift } = resolve(q);
  const boundaries = adaLogBoundaries(q);
  const lowest = lowestRatio(boundaries);
  const out = new Uint16Array(x.length);
  for (let i = 0; i < x.length; i++) {
    out[i] = codeOf(Math.fround(Math.fround(x[i]! + shift) / scale), boundaries, lowest);
  }
  return out;
}

/** Quantize then dequantize: x̂ = float32(level − η). */
export function adaLogFakeQuantize(x: Float32Array, q: AdaLogQuantizer): Float32Array {
  const { shift } = resolve(q);
  const levels = adaLogLevels(q);
  const codes = adaLogQuantize(x, q);
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = levels[codes[i]!]! - shift;
  return out;
}

/** Σ(x − x̂)² in float64 without allocating codes (the base search calls it many times). */
export function adaLogSquaredError(x: Float32Array, q: AdaLogQuantizer): number {
  const { scale, shift } = resolve(q);
  const boundaries = adaLogBoundaries(q);
  const levels = adaLogLevels(q);
  const lowest = lowestRatio(boundaries);
  let error = 0;
  for (let i = 0; i < x.length; i++) {
    const code = codeOf(Math.fround(Math.fround(x[i]! + shift) / scale), boundaries, lowest);
    const d = x[i]! - Math.fround(levels[code]! - shift);
    error += d * d;
  }
  return error;
}

/** Search space and mode of {@link calibrateAdaLog}. */
export interface AdaLogCalibration {
  bits: number;
  /** η; 0 for Softmax outputs, {@link geluShift} for GELU outputs. */
  shift?: number;
  /** A fixed s (the paper fixes s = 1 after Softmax); searched when absent. */
  scale?: number;
  /** Candidate q_b; 10 … 138 unless given. */
  baseNumerators?: readonly number[];
  /** How many s candidates between the 0.9 quantile and the max of x + η (16). */
  scaleCandidates?: number;
  /** How many of the best bases at s = max are crossed with the s candidates (8). */
  topBases?: number;
  hardware?: boolean;
  /** At most this many values are scored (an even stride through the input); 65536. */
  maxValues?: number;
}

/**
 * The quantizer of least Σ(x − x̂)² on captured values. With s fixed, every q_b is scored; with s
 * searched, as the paper's post-GELU search: q_b scored at s = max(x + η), the best `topBases`
 * crossed with s spaced linearly from the 0.9 quantile to the max of the positive x + η.
 */
export function calibrateAdaLog(values: Float32Array, options: AdaLogCalibration): AdaLogQuantizer {
  const x = subsample(values, options.maxValues ?? 65536);
  const shift = options.shift ?? 0;
  const bases = options.baseNumerators ?? Array.from({ length: 129 }, (_, i) => 10 + i);
  if (bases.length === 0) throw new RangeError('AdaLog calibration needs at least one base');
  const make = (baseNumerator: number, scale: number): AdaLogQuantizer => ({
    bits: options.bits,
    baseNumerator,
    scale,
    shift,
    hardware: options.hardware ?? false,
  });
  const scales = options.scale !== undefined ? [options.scale] : scaleCandidates(x, shift, options);
  const top = rankBases(x, bases, (b) => make(b, scales[scales.length - 1]!));
  const kept = options.scale !== undefined ? top.slice(0, 1) : top.slice(0, options.topBases ?? 8);
  let best = make(kept[0]!, scales[scales.length - 1]!);
  let bestError = adaLogSquaredError(x, best);
  for (const b of kept) {
    for (const s of scales) {
      const candidate = make(b, s);
      const error = adaLogSquaredError(x, candidate);
      if (error < bestError) [best, bestError] = [candidate, error];
    }
  }
  return best;
}

/** Bases sorted by error, best first. */
function rankBases(
  x: Float32Array,
  bases: readonly number[],
  make: (b: number) => AdaLogQuantizer,
): number[] {
  const scored = bases.map((b) => ({ b, error: adaLogSquaredError(x, make(b)) }));
  return scored.sort((u, v) => u.error - v.error).map((e) => e.b);
}

/** s candidates: linear from the 0.9 quantile to the max of the positive x + η (max last). */
function scaleCandidates(x: Float32Array, shift: number, options: AdaLogCalibration): number[] {
  const positive = Float32Array.from(x, (v) => v + shift)
    .filter((v) => v > 0)
    .sort();
  if (positive.length === 0) return [1];
  const max = positive[positive.length - 1]!;
  const low = positive[Math.floor(0.9 * (positive.length - 1))]!;
  const count = Math.max(1, options.scaleCandidates ?? 16);
  if (count === 1) return [max];
  return Array.from({ length: count }, (_, i) => low + ((max - low) * i) / (count - 1));
}

function subsample(values: Float32Array, limit: number): Float32Array {
  if (values.length <= limit) return values;
  const stride = values.length / limit;
  return Float32Array.from({ length: limit }, (_, i) => values[Math.floor(i * stride)]!);
}

/**
 * The commands adding an AdaLog fake quantizer on `value`; the result is `<prefix>/output`.
 * The chain (opset ≥ 13):
 *
 *   d = (x + η) / s;   r = Max(d, max(c_(2^b − 1) / 2, 2^−126))
 *   g = Cast<int32>(Clip(Floor(Log(r)·(−r_den / (q_b·ln 2)) + ½ − 1/64), 0, 2^b − 1))
 *   c = Where(d > 0, g + [r < c_g], 2^b)          non-positive inputs fall below the grid
 *   x̂ = Gather(L, c) − η
 *
 * The guess rounds 1/64 low, far more than a float32 logarithm misses by, so it is the exact
 * code or the one below and one boundary test settles it.
 */
export function adaLogFakeQuantCommands(
  value: string,
  prefix: string,
  q: AdaLogQuantizer,
): { commands: Command[]; output: string } {
  const { n, m, scale, shift } = resolve(q);
  const boundaries = adaLogBoundaries(q);
  const p = (name: string) => `${prefix}/${name}`;
  const scalar = (name: string, v: number) => floatTensor(p(name), [], Float32Array.of(v));
  const tensors = [
    scalar('shift', shift),
    scalar('scale', scale),
    scalar('lowest', lowestRatio(boundaries)),
    scalar('factor', -m / Math.LN2),
    scalar('half', 0.5 - 1 / 64),
    scalar('zero', 0),
    scalar('last', n - 1),
    floatTensor(p('boundaries'), [n], boundaries),
    floatTensor(p('levels'), [n + 1], adaLogLevels(q)),
    makeTensor(p('belowGrid'), DataType.INT32, [], Int32Array.of(n)),
  ];
  const op = (name: string, opType: string, inputs: string[], attributes = {}): Command => ({
    kind: 'addNode',
    node: makeNode({ name: p(name), opType, inputs, outputs: [p(name)], attributes }),
  });
  const toInt32 = { to: DataType.INT32 };
  const commands: Command[] = [
    ...tensors.map((tensor): Command => ({ kind: 'addInitializer', tensor })),
    op('Shifted', 'Add', [value, p('shift')]),
    op('Div', 'Div', [p('Shifted'), p('scale')]),
    op('Ratio', 'Max', [p('Div'), p('lowest')]),
    op('Log', 'Log', [p('Ratio')]),
    op('Mul', 'Mul', [p('Log'), p('factor')]),
    op('Add', 'Add', [p('Mul'), p('half')]),
    op('Floor', 'Floor', [p('Add')]),
    op('Clip', 'Clip', [p('Floor'), p('zero'), p('last')]),
    op('Guess', 'Cast', [p('Clip')], toInt32),
    op('Boundary', 'Gather', [p('boundaries'), p('Guess')]),
    op('Below', 'Less', [p('Ratio'), p('Boundary')]),
    op('Step', 'Cast', [p('Below')], toInt32),
    op('Counted', 'Add', [p('Guess'), p('Step')]),
    op('Positive', 'Greater', [p('Div'), p('zero')]),
    op('Code', 'Where', [p('Positive'), p('Counted'), p('belowGrid')]),
    op('Level', 'Gather', [p('levels'), p('Code')]),
    op('output', 'Sub', [p('Level'), p('shift')]),
  ];
  return { commands, output: p('output') };
}
