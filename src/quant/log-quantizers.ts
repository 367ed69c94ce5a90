/**
 * Log-domain quantizers for post-softmax values, whose mass sits near 0 with a few large
 * attention weights: levels spaced by a constant factor fit that far better than a uniform grid.
 *
 *   log2:  q = clamp(round(−log2(x / s)), 0, 2^b − 1),    x̂ = s · 2^(−q)
 *   log√2: q = clamp(round(−2·log2(x / s)), 0, 2^b − 1),  x̂ = s · 2^(−q/2)
 *
 * with the rule of FQ-ViT, RepQ-ViT and AdaLog (reference notes §0.3, §18 item 2) that a value
 * whose code would be 2^b or more — it lies below the smallest level by more than half a step,
 * exact zeros included — becomes 0 instead of the smallest level. Values above s clamp to code 0
 * (x̂ = s). Written with m steps per octave (1 for log2, 2 for log√2):
 * q = round(−m·log2(x / s)), x̂ = s · 2^(−q/m).
 *
 * RepQ-ViT writes the log√2 level as 2^(−⌈q/2⌉) · (√2 if q is odd, else 1) · s, which hardware
 * computes with a shift and one constant multiply ("log√2 calibrated, deployed as log2 with a √2
 * correction"); it is the same number as s · 2^(−q/2).
 *
 * Exact rounding. −m·log2(r) is never exactly k + ½ for a float32 ratio r (that would need r =
 * 2^(−(k+½)/m), which is irrational), so rounding needs no tie rule, but a computed logarithm
 * carries an error of a few ulps, enough to move a value sitting close to a boundary into the
 * neighbouring code, and onnxruntime's Log is not JavaScript's Math.log2. Both implementations
 * here therefore take the logarithm only as a first guess and settle the code by comparing r with
 * the boundaries T_k = 2^(−(k+½)/m) themselves: code > k exactly when r < T_k. For a float32 r,
 * `r < T_k` is the same test as `r < c_k` with c_k the smallest float32 ≥ T_k, so the boundary
 * table is float32 and the comparison is exact in either implementation. The result is the
 * correctly rounded code, identical bit for bit in onnxruntime and here. (In JavaScript, the
 * same exact comparisons are made on the float32 bits of r, which needs no logarithm at all.)
 */
import { makeNode } from '../graph/attributes.js';
import type { Command } from '../graph/commands.js';
import { DataType, floatTensor } from '../onnx/tensor.js';

export type LogBase = 'log2' | 'log-sqrt2';

/** A log-domain quantizer: its base, bit width and largest level s. */
export interface LogQuantizer {
  base: LogBase;
  bits: number;
  /** The largest level s (x̂ = s for every x ≥ s). */
  scale: number;
}

/** Steps per octave m: 1 for log2, 2 for log√2. */
export function stepsPerOctave(base: LogBase): number {
  return base === 'log2' ? 1 : 2;
}

function checkQuantizer(q: LogQuantizer): number {
  if (!Number.isInteger(q.bits) || q.bits < 1 || q.bits > 10) {
    throw new RangeError(`log quantizer bit width must be an integer in [1, 10], got ${q.bits}`);
  }
  if (!(q.scale > 0) || !Number.isFinite(Math.fround(q.scale))) {
    throw new RangeError(`log quantizer scale must be a positive float32, got ${q.scale}`);
  }
  return 2 ** q.bits;
}

/** The smallest float32 that is ≥ x (x positive and finite). */
export function float32AtOrAbove(x: number): number {
  const f = Math.fround(x);
  if (f >= x) return f;
  const view = new DataView(new ArrayBuffer(4));
  view.setFloat32(0, f);
  view.setUint32(0, view.getUint32(0) + 1);
  return view.getFloat32(0);
}

/**
 * The boundaries c_k (k = 0 … 2^b − 1) in units of r = x / s: the smallest float32 ≥ 2^(−(k+½)/m).
 * A ratio r has code > k exactly when r < c_k; r < c_(2^b − 1) means "below the grid", i.e. 0.
 * Example (log√2): c_0 = 2^(−1/4) ≈ 0.8409, c_1 = 2^(−3/4) ≈ 0.5946, c_2 = 2^(−5/4) ≈ 0.4204.
 */
export function logBoundaries(q: LogQuantizer): Float32Array {
  const levels = checkQuantizer(q);
  const m = stepsPerOctave(q.base);
  const out = new Float32Array(levels);
  for (let k = 0; k < levels; k++) out[k] = float32AtOrAbove(2 ** (-(k + 0.5) / m));
  return out;
}

/**
 * The dequantized value of each code: L[q] = float32(s · 2^(−q/m)) for q < 2^b, and L[2^b] = 0
 * for the values below the grid. Example (log√2, s = 1, 4 bits): 1, 0.7071, 0.5, 0.3536, …,
 * L[15] = 2^(−7.5) ≈ 0.005524, L[16] = 0.
 */
export function logLevels(q: LogQuantizer): Float32Array {
  const levels = checkQuantizer(q);
  const m = stepsPerOctave(q.base);
  const out = new Float32Array(levels + 1);
  for (let k = 0; k < levels; k++) out[k] = q.scale * 2 ** (-k / m);
  return out;
}

/** What the code computation needs, precomputed once per quantizer. */
interface CodeTables {
  m: number;
  /** 2^b: the number of codes, and the code of a value below the grid. */
  n: number;
  scale: number;
  boundaries: Float32Array;
  /** Mantissa bits of the smallest float32 ≥ 2^((j + ½)/m), j < m: the boundaries in an octave. */
  octave: Uint32Array;
}

function codeTables(q: LogQuantizer): CodeTables {
  const boundaries = logBoundaries(q);
  const m = stepsPerOctave(q.base);
  const bits = new Uint32Array(
    new Float32Array(m).map((_, j) => float32AtOrAbove(2 ** ((j + 0.5) / m))).buffer,
  );
  const octave = bits.map((b) => b & 0x7fffff);
  return { m, n: boundaries.length, scale: Math.fround(q.scale), boundaries, octave };
}

/**
 * The code of a positive normal float32 r from its bits: with r = 2^e · μ, μ ∈ [1, 2),
 * −m·log2(r) = −m·e − m·log2(μ), and m·log2(μ) rounds to j, the number of octave boundaries
 * 2^((j + ½)/m) that μ reaches. Comparing μ's mantissa bits with the boundaries' is the exact
 * test r ≥ c of the boundary table, so this is the correctly rounded code without a logarithm.
 * Zero, negative, subnormal, infinite and NaN ratios take the general path.
 */
function codeOf(r: number, bits: number, t: CodeTables): number {
  const exponent = bits >>> 23;
  if (exponent === 0 || exponent >= 255) return generalCode(r, t);
  const mantissa = bits & 0x7fffff;
  let j = 0;
  while (j < t.m && mantissa >= t.octave[j]!) j++;
  const raw = -t.m * (exponent - 127) - j;
  return raw < 0 ? 0 : raw >= t.n ? t.n : raw;
}

/** The code by a logarithm guess settled with the boundary table (see the file comment). */
function generalCode(r: number, t: CodeTables): number {
  if (!(r > 0)) return t.n;
  const raw = Math.round(-t.m * Math.log2(r));
  const guess = raw < 0 ? 0 : raw > t.n - 1 ? t.n - 1 : raw;
  const up = r < t.boundaries[guess]! ? 1 : 0;
  const down = guess > 0 && r >= t.boundaries[guess - 1]! ? 1 : 0;
  return guess + up - down;
}

const chunk = 4096;

/** Scratch of one chunk: the float32 ratios and a view of their bits. */
function scratch() {
  const ratios = new Float32Array(chunk);
  return { ratios, bits: new Uint32Array(ratios.buffer) };
}

/** Writes the codes of x[from, from + codes.length) into `codes`, r = x / s in float32. */
function chunkCodes(
  x: Float32Array,
  from: number,
  t: CodeTables,
  codes: Uint16Array,
  { ratios, bits }: ReturnType<typeof scratch>,
) {
  for (let k = 0; k < codes.length; k++) ratios[k] = x[from + k]! / t.scale;
  for (let k = 0; k < codes.length; k++) codes[k] = codeOf(ratios[k]!, bits[k]!, t);
}

/**
 * The code of every value: 0 … 2^b − 1, or 2^b for a value that dequantizes to 0 (x ≤ 0, NaN,
 * or below the smallest level by more than half a step). r = x / s is taken in float32, as the
 * ONNX Div computes it.
 *
 * Worked example (log√2, s = 1, 4 bits): x = 0.3 → −2·log2(0.3) = 3.47 → code 3; x = 0.5 → 2;
 * x = 0.9 → 0.30 → 0; x = 2 → −2.0 → clamped to 0; x = 0.005 → 15.29 → 15;
 * x = 0.004 → 15.93 → 16 ≥ 2^4, so 0 (code 16); x = 0 → code 16.
 */
export function logQuantize(x: Float32Array, q: LogQuantizer): Uint16Array {
  const t = codeTables(q);
  const out = new Uint16Array(x.length);
  const buffers = scratch();
  for (let from = 0; from < x.length; from += chunk) {
    chunkCodes(x, from, t, out.subarray(from, Math.min(x.length, from + chunk)), buffers);
  }
  return out;
}

/** Codes back to float32 values (code 2^b is 0). */
export function logDequantize(codes: Uint16Array, q: LogQuantizer): Float32Array {
  const levels = logLevels(q);
  const out = new Float32Array(codes.length);
  for (let i = 0; i < codes.length; i++) {
    const level = levels[codes[i]!];
    if (level === undefined) throw new RangeError(`log code ${codes[i]} is out of range`);
    out[i] = level;
  }
  return out;
}

/**
 * Quantize then dequantize. Worked example (log√2, s = 1, 4 bits):
 * [0.3, 0.5, 0.9, 2, 0.005, 0.004, 0] → [0.35355339, 0.5, 1, 1, 0.0055242716, 0, 0].
 * (log2, s = 1, 3 bits): [0.3, 0.006, 0.005] → [0.25, 0.0078125, 0].
 */
export function logFakeQuantize(x: Float32Array, q: LogQuantizer): Float32Array {
  return logDequantize(logQuantize(x, q), q);
}

/**
 * Σ(x − x̂)² over `values` for a log quantizer, without allocating the codes (the scale search
 * evaluates several candidates on millions of attention weights).
 */
export function logSquaredError(values: Float32Array, q: LogQuantizer): number {
  const t = codeTables(q);
  const levels = logLevels(q);
  const codes = new Uint16Array(chunk);
  const buffers = scratch();
  let error = 0;
  for (let from = 0; from < values.length; from += chunk) {
    const part = codes.subarray(0, Math.min(chunk, values.length - from));
    chunkCodes(values, from, t, part, buffers);
    for (let k = 0; k < part.length; k++) {
      const d = values[from + k]! - levels[part[k]!]!;
      error += d * d;
    }
  }
  return error;
}

/**
 * The commands adding a log-domain fake quantizer on `value`; new names start with `prefix/`,
 * the result is `<prefix>/output` and nothing is rewired to read it. The chain (opset ≥ 13):
 *
 *   r = Max(x / s, 0)                          (negative inputs go below the grid, to 0)
 *   g = Cast<int32>(Clip(Floor(Log(r)·(−m / ln 2) + ½ − 1/64), 0, 2^b − 1))   the guess
 *   q = g + [r < c_g]
 *   x̂ = Gather(L, q)                          L[2^b] = 0
 *
 * The guess rounds with a bias of 1/64 downwards, far more than the few ulps by which a float32
 * logarithm can miss, so it is the exact code or the one below; one boundary test settles
 * which. Log(0) = −∞ gives the guess 2^b − 1, which the test turns into "below the grid". A NaN
 * input is outside the quantizer's domain (onnxruntime then fails on the Gather index).
 */
export function logFakeQuantCommands(
  value: string,
  prefix: string,
  q: LogQuantizer,
): { commands: Command[]; output: string } {
  const boundaries = logBoundaries(q);
  const n = boundaries.length;
  const m = stepsPerOctave(q.base);
  const p = (name: string) => `${prefix}/${name}`;
  const scalar = (name: string, v: number) => floatTensor(p(name), [], Float32Array.of(v));
  const tensors = [
    scalar('scale', q.scale),
    scalar('zero', 0),
    scalar('factor', -m / Math.LN2),
    scalar('half', 0.5 - 1 / 64),
    scalar('last', n - 1),
    floatTensor(p('boundaries'), [n], boundaries),
    floatTensor(p('levels'), [n + 1], logLevels(q)),
  ];
  const op = (name: string, opType: string, inputs: string[], attributes = {}): Command => ({
    kind: 'addNode',
    node: makeNode({ name: p(name), opType, inputs, outputs: [p(name)], attributes }),
  });
  // int32 indices: Gather takes them, and they move half the bytes of int64
  const toInt32 = { to: DataType.INT32 };
  const commands: Command[] = [
    ...tensors.map((tensor): Command => ({ kind: 'addInitializer', tensor })),
    op('Div', 'Div', [value, p('scale')]),
    op('Max', 'Max', [p('Div'), p('zero')]),
    op('Log', 'Log', [p('Max')]),
    op('Mul', 'Mul', [p('Log'), p('factor')]),
    op('Add', 'Add', [p('Mul'), p('half')]),
    op('Floor', 'Floor', [p('Add')]),
    op('Clip', 'Clip', [p('Floor'), p('zero'), p('last')]),
    op('Guess', 'Cast', [p('Clip')], toInt32),
    op('Boundary', 'Gather', [p('boundaries'), p('Guess')]),
    op('Below', 'Less', [p('Max'), p('Boundary')]),
    op('Step', 'Cast', [p('Below')], toInt32),
    op('Code', 'Add', [p('Guess'), p('Step')]),
    op('output', 'Gather', [p('levels'), p('Code')]),
  ];
  return { commands, output: p('output') };
}
