/**
 * Twin uniform quantization (PTQ4ViT, Yuan et al., arXiv:2111.12293, §4.1): two uniform grids
 * of b − 1 bits each, one bit choosing the grid. Post-softmax and post-GELU values are badly
 * served by one grid: attention weights put most of their mass near 0 with a few large values,
 * and GELU outputs lie in [−0.17, 0) on one side and stretch far on the other.
 *
 * One rule covers both forms: a value below the threshold t takes the low grid, the others the
 * high grid,
 *
 *   x̂ = clamp(roundHalfEven(x / Δ_lo), lo_min, lo_max) · Δ_lo    if x < t
 *   x̂ = clamp(roundHalfEven(x / Δ_hi), hi_min, hi_max) · Δ_hi    otherwise
 *
 * with x / Δ and the product taken in float32, as the ONNX Div and Mul compute them.
 *
 * - Post-softmax (values in [0, 1]): both grids unsigned with codes 0 … 2^(b−1) − 1. The high
 *   grid is fixed, Δ_hi = 1 / (2^(b−1) − 1), so its top level is exactly 1; the low grid is the
 *   high one divided by 2^k (k = 0 … 19 searched), Δ_lo = Δ_hi · 2^(−k): the ratio of the two
 *   steps is a power of two, so hardware aligns the two grids with a shift. A value takes the
 *   low grid when its low code does not exceed the top code, t = (2^(b−1) − ½) · Δ_lo.
 *   PTQ4ViT's code sums two clamped branches and so adds an offset to each range (reference
 *   notes §1(2)); this is the paper's form with disjoint ranges.
 * - Post-GELU: the low grid holds the negative values, codes −2^(b−1) … 0 with the fixed step
 *   0.16997124 / 2^(b−1) (|min GELU| ≈ 0.17, as PTQ4ViT's code fixes it); the high grid the
 *   others, codes 0 … 2^(b−1) − 1 with the searched step Δ_hi; t = 0. Both grids share the
 *   level 0, so the 2^b codes of a signed b-bit integer hold them.
 *
 * Worked example (post-softmax, 4 bits, k = 2): Δ_hi = 1/7, Δ_lo = 1/28, t = 7.5/28 = 0.2679.
 * x = 0.05 → 1.4 → code 1 → 0.0357; x = 0.25 → 7 → 0.25; x = 0.3 ≥ t → 2.1 → 2 → 0.2857;
 * x = 0.95 → 6.65 → 7 → 1. Post-GELU, 4 bits, Δ_hi = 0.5: Δ_lo = 0.02124641; x = −0.17 →
 * −8.001 → −8 → −0.16997; x = −0.01 → −0.47 → 0 → 0; x = 1.26 → 2.52 → 3 → 1.5; x = 9 → 18 →
 * 7 → 3.5.
 */
import { makeNode } from '../graph/attributes.js';
import type { Command } from '../graph/commands.js';
import { floatTensor } from '../onnx/tensor.js';
import { roundHalfEven } from './uniform.js';

/** One uniform grid of a twin quantizer: step and code range. */
export interface TwinGrid {
  scale: number;
  qmin: number;
  qmax: number;
}

/** A twin uniform quantizer: x < threshold takes `low`, the other values `high`. */
export interface TwinQuantizer {
  form: 'softmax' | 'gelu';
  bits: number;
  threshold: number;
  low: TwinGrid;
  high: TwinGrid;
}

/** |min GELU(x)| = 0.16997…, the fixed reach of the post-GELU negative grid (PTQ4ViT's code). */
export const geluNegativeReach = 0.16997124254703522;

function checkBits(bits: number): number {
  if (!Number.isInteger(bits) || bits < 2 || bits > 16) {
    throw new RangeError(`twin quantizer bit width must be an integer in [2, 16], got ${bits}`);
  }
  return 2 ** (bits - 1);
}

/**
 * The post-softmax twin quantizer of `bits` whose low grid is the high one divided by 2^split.
 * Example: softmaxTwin(4, 2) has Δ_hi = 1/7, Δ_lo = 1/28, threshold 7.5/28.
 */
export function softmaxTwin(bits: number, split: number): TwinQuantizer {
  const half = checkBits(bits);
  if (!Number.isInteger(split) || split < 0 || split > 30) {
    throw new RangeError(`softmax twin split must be an integer in [0, 30], got ${split}`);
  }
  const top = half - 1;
  const high = { scale: Math.fround(1 / top), qmin: 0, qmax: top };
  const low = { scale: Math.fround(high.scale * 2 ** -split), qmin: 0, qmax: top };
  const threshold = Math.fround((top + 0.5) * low.scale);
  return { form: 'softmax', bits, threshold, low, high };
}

/**
 * The post-GELU twin quantizer of `bits` with positive step `scale`.
 * Example: geluTwin(4, 0.5): negative step 0.16997/8, codes −8 … 0; positive codes 0 … 7.
 */
export function geluTwin(bits: number, scale: number): TwinQuantizer {
  const half = checkBits(bits);
  if (!(scale > 0) || !Number.isFinite(Math.fround(scale))) {
    throw new RangeError(`post-GELU twin step must be a positive float32, got ${scale}`);
  }
  const low = { scale: Math.fround(geluNegativeReach / half), qmin: -half, qmax: 0 };
  const high = { scale: Math.fround(scale), qmin: 0, qmax: half - 1 };
  return { form: 'gelu', bits, threshold: 0, low, high };
}

/** One value through one grid; code 0 gives +0 (adding 0 turns −0 into +0), as Clip does. */
function gridValue(x: number, g: TwinGrid): number {
  const q = roundHalfEven(Math.fround(x / g.scale)) + 0;
  return Math.fround((q < g.qmin ? g.qmin : q > g.qmax ? g.qmax : q) * g.scale);
}

/**
 * Quantize then dequantize every value through the twin quantizer (see the file comment).
 * NaN stays NaN. Example: softmaxTwin(4, 2) maps [0.05, 0.25, 0.3, 0.95] to
 * [0.035714287, 0.25, 0.2857143, 1].
 */
export function twinFakeQuantize(x: Float32Array, q: TwinQuantizer): Float32Array {
  const threshold = Math.fround(q.threshold);
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const v = x[i]!;
    out[i] = gridValue(v, v < threshold ? q.low : q.high);
  }
  return out;
}

/** Σ(x − x̂)² for a twin quantizer, without allocating x̂. */
export function twinSquaredError(x: Float32Array, q: TwinQuantizer): number {
  const threshold = Math.fround(q.threshold);
  let error = 0;
  for (let i = 0; i < x.length; i++) {
    const v = x[i]!;
    const d = v - gridValue(v, v < threshold ? q.low : q.high);
    error += d * d;
  }
  return error;
}

/** The parameter tensors of twin chains: one value each, or one per candidate along `shape`. */
export interface TwinChainParameters {
  /** Shape of every parameter tensor: [] for one quantizer, e.g. [n, 1, 1] for n candidates. */
  shape: number[];
  quantizers: readonly TwinQuantizer[];
}

/**
 * The commands adding a twin fake quantizer on `value` (opset ≥ 13); new names start with
 * `prefix/`, the result is `<prefix>/output`, and nothing is rewired to read it:
 *
 *   lo = Clip(Round(x / Δ_lo), lo_min, lo_max) · Δ_lo     (Clip takes its bounds as inputs)
 *   hi = Clip(Round(x / Δ_hi), hi_min, hi_max) · Δ_hi
 *   x̂ = Where(x < t, lo, hi)
 *
 * Every intermediate code is a small integer held exactly in float32 and Round is half to even,
 * so the result is twinFakeQuantize's bit for bit. With several quantizers (the scale search
 * evaluates candidates together), the steps and thresholds are tensors of `shape` that
 * broadcast against x, and the code bounds, shared by all candidates of one form and bit width,
 * stay scalars as Clip needs them.
 */
export function twinFakeQuantCommands(
  value: string,
  prefix: string,
  parameters: TwinQuantizer | TwinChainParameters,
): { commands: Command[]; output: string } {
  const { shape, quantizers } =
    'quantizers' in parameters ? parameters : { shape: [], quantizers: [parameters] };
  const first = checkShared(quantizers);
  const p = (name: string) => `${prefix}/${name}`;
  const vector = (name: string, f: (q: TwinQuantizer) => number) =>
    floatTensor(p(name), shape, Float32Array.from(quantizers, f));
  const scalar = (name: string, v: number) => floatTensor(p(name), [], Float32Array.of(v));
  const tensors = [
    vector('threshold', (q) => q.threshold),
    vector('low_scale', (q) => q.low.scale),
    vector('high_scale', (q) => q.high.scale),
    scalar('low_min', first.low.qmin),
    scalar('low_max', first.low.qmax),
    scalar('high_min', first.high.qmin),
    scalar('high_max', first.high.qmax),
  ];
  const op = (name: string, opType: string, inputs: string[]): Command => ({
    kind: 'addNode',
    node: makeNode({ name: p(name), opType, inputs, outputs: [p(name)] }),
  });
  const grid = (side: 'low' | 'high'): Command[] => [
    op(`${side}_div`, 'Div', [value, p(`${side}_scale`)]),
    op(`${side}_round`, 'Round', [p(`${side}_div`)]),
    op(`${side}_clip`, 'Clip', [p(`${side}_round`), p(`${side}_min`), p(`${side}_max`)]),
    op(`${side}_mul`, 'Mul', [p(`${side}_clip`), p(`${side}_scale`)]),
  ];
  const commands: Command[] = [
    ...tensors.map((tensor): Command => ({ kind: 'addInitializer', tensor })),
    ...grid('low'),
    ...grid('high'),
    op('below', 'Less', [value, p('threshold')]),
    op('output', 'Where', [p('below'), p('low_mul'), p('high_mul')]),
  ];
  return { commands, output: p('output') };
}

/** The first quantizer, after checking that all share the code bounds (Clip takes scalars). */
function checkShared(quantizers: readonly TwinQuantizer[]): TwinQuantizer {
  const first = quantizers[0];
  if (!first) throw new RangeError('a twin chain needs at least one quantizer');
  const same = (a: TwinGrid, b: TwinGrid) => a.qmin === b.qmin && a.qmax === b.qmax;
  for (const q of quantizers) {
    if (!same(q.low, first.low) || !same(q.high, first.high)) {
      throw new RangeError('twin chain candidates must share their code ranges');
    }
  }
  return first;
}
