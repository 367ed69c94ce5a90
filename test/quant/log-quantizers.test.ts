import { describe, expect, it } from 'vitest';
import { DataType } from '../../src/onnx/tensor.js';
import {
  float32AtOrAbove,
  logBoundaries,
  logFakeQuantCommands,
  logFakeQuantize,
  logLevels,
  logQuantize,
  logSquaredError,
  type LogQuantizer,
} from '../../src/quant/log-quantizers.js';
import { noiseInput } from '../fixtures.js';
import { float32Step } from './helpers.js';
import { buildModel, runModel } from './tiny-graph.js';

const sqrt2In4Bits: LogQuantizer = { base: 'log-sqrt2', bits: 4, scale: 1 };
const log2In3Bits: LogQuantizer = { base: 'log2', bits: 3, scale: 1 };

/** The fake-quant chain run by onnxruntime on `x` with the given shape. */
async function onnxLogFakeQuant(x: Float32Array, q: LogQuantizer, dims = [x.length]) {
  const { commands, output } = logFakeQuantCommands('x', 'lq', q);
  const model = buildModel(dims, commands, { [output]: DataType.FLOAT }, 13);
  return (await runModel(model, x, dims))[output] as Float32Array;
}

/**
 * An independent code: −m·log2(r) in float64, rounded and clamped, 2^b for "below the grid". Away
 * from a boundary by more than float64's error this is the exact code.
 */
function float64Code(x: number, q: LogQuantizer): number {
  const m = q.base === 'log2' ? 1 : 2;
  const r = Math.fround(x / Math.fround(q.scale));
  if (r <= 0) return 2 ** q.bits;
  const raw = Math.round(-m * Math.log2(r));
  return raw >= 2 ** q.bits ? 2 ** q.bits : Math.max(0, raw);
}

/** Post-softmax-like values: mostly tiny, some large, exact zeros and ones, values above s. */
function attentionLike(count: number, seed: number): Float32Array {
  const noise = noiseInput(count, seed);
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) out[i] = Math.fround(2 ** (noise[i]! * 12 - 10));
  out.set([0, 0, 1, 2, 1e-30, 0.5, 0.25], 0);
  return out;
}

describe('log√2 quantizer (pure function)', () => {
  it('computes the worked example by hand: levels s·2^(−q/2), zero below the grid', () => {
    const x = Float32Array.of(0.3, 0.5, 0.9, 2, 0.005, 0.004, 0);
    // −2·log2: 3.47 → 3, 2 → 2, 0.30 → 0, −2 → 0, 15.29 → 15, 15.93 → 16 (≥ 2^4: zero), 0 → zero
    expect(Array.from(logQuantize(x, sqrt2In4Bits))).toEqual([3, 2, 0, 0, 15, 16, 16]);
    const expected = [0.35355339, 0.5, 1, 1, 0.0055242717, 0, 0];
    const got = logFakeQuantize(x, sqrt2In4Bits);
    // float32 levels: within float32 resolution of the hand values
    expected.forEach((v, i) => expect(got[i]).toBeCloseTo(v, 7));
  });

  it('scales its levels with s: s = 0.5 halves every level', () => {
    const x = Float32Array.of(0.15, 0.25, 0.45);
    const half = logFakeQuantize(x, { ...sqrt2In4Bits, scale: 0.5 });
    const unit = logFakeQuantize(
      Float32Array.from(x, (v) => v * 2),
      sqrt2In4Bits,
    );
    expect(Array.from(half)).toEqual(Array.from(unit, (v) => v / 2));
  });

  it('uses one level per half octave: 2^(−q/2) equals RepQ-ViT’s 2^(−⌈q/2⌉)·√2^(q odd)', () => {
    const levels = logLevels({ base: 'log-sqrt2', bits: 3, scale: 1 });
    for (let q = 0; q < 8; q++) {
      const shifted = 2 ** -Math.ceil(q / 2) * (q % 2 === 1 ? Math.SQRT2 : 1);
      expect(levels[q]).toBe(Math.fround(shifted));
    }
    expect(levels[8]).toBe(0);
  });

  it('puts each boundary where −2·log2(r) crosses k + ½, exactly at float32 resolution', () => {
    const q = { base: 'log-sqrt2', bits: 6, scale: 1 } as const;
    const boundaries = logBoundaries(q);
    for (let k = 0; k < boundaries.length; k++) {
      const c = boundaries[k]!;
      const below = float32Step(c, -1);
      // c is the first float32 at or above 2^(−(k+½)/2): c rounds to k, the float32 below to k+1
      expect(c).toBeGreaterThanOrEqual(2 ** (-(k + 0.5) / 2));
      expect(below).toBeLessThan(2 ** (-(k + 0.5) / 2));
      expect(Array.from(logQuantize(Float32Array.of(c, below), q))).toEqual([k, k + 1]);
    }
  });

  it('agrees with a float64 logarithm on values away from the boundaries', () => {
    const q = { base: 'log-sqrt2', bits: 4, scale: 0.37 } as const;
    const x = attentionLike(5000, 3);
    const codes = logQuantize(x, q);
    x.forEach((v, i) => expect(codes[i]).toBe(float64Code(v, q)));
  });
});

describe('log2 quantizer (pure function)', () => {
  it('computes the worked example by hand: levels s·2^(−q)', () => {
    // −log2: 0.3 → 1.74 → 2; 0.006 → 7.38 → 7; 0.005 → 7.64 → 8 ≥ 2^3: zero
    const x = Float32Array.of(0.3, 0.006, 0.005, 1, 0.7);
    expect(Array.from(logQuantize(x, log2In3Bits))).toEqual([2, 7, 8, 0, 1]);
    expect(Array.from(logFakeQuantize(x, log2In3Bits))).toEqual([0.25, 0.0078125, 0, 1, 0.5]);
  });

  it('measures the squared error of exactly what it quantizes to', () => {
    const x = attentionLike(2000, 9);
    const q = { base: 'log2', bits: 4, scale: 0.8 } as const;
    const xq = logFakeQuantize(x, q);
    let expected = 0;
    x.forEach((v, i) => (expected += (v - xq[i]!) ** 2));
    expect(logSquaredError(x, q)).toBeCloseTo(expected, 12);
  });

  it('refuses a scale that is not a positive float32 and a bit width out of range', () => {
    expect(() => logBoundaries({ ...log2In3Bits, scale: 0 })).toThrow(RangeError);
    expect(() => logLevels({ ...log2In3Bits, bits: 0 })).toThrow(RangeError);
  });

  it('takes the smallest float32 at or above a number', () => {
    expect(float32AtOrAbove(0.5)).toBe(0.5);
    const third = float32AtOrAbove(1 / 3);
    expect(third).toBeGreaterThanOrEqual(1 / 3);
    expect(float32Step(third, -1)).toBeLessThan(1 / 3);
  });
});

describe('log-domain fake-quant subgraph in onnxruntime', () => {
  it('equals the pure function bit for bit on attention-like values (log√2 and log2)', async () => {
    const x = attentionLike(20_000, 5);
    for (const q of [
      { base: 'log-sqrt2', bits: 4, scale: 0.4375 },
      { base: 'log-sqrt2', bits: 8, scale: 0.91 },
      { base: 'log2', bits: 3, scale: 1 },
      { base: 'log2', bits: 6, scale: 0.013 },
    ] as const) {
      expect(Array.from(await onnxLogFakeQuant(x, q))).toEqual(Array.from(logFakeQuantize(x, q)));
    }
  });

  it('equals the pure function on the float32 values on either side of every boundary', async () => {
    for (const q of [
      { base: 'log-sqrt2', bits: 6, scale: 1 },
      { base: 'log-sqrt2', bits: 5, scale: 0.3 },
      { base: 'log2', bits: 5, scale: 1 },
    ] as const) {
      const values: number[] = [];
      for (const c of logBoundaries(q)) {
        const at = Math.fround(c * q.scale);
        values.push(at, float32Step(at, -1), float32Step(at, 1), float32Step(at, -2));
      }
      const x = Float32Array.from(values);
      expect(Array.from(await onnxLogFakeQuant(x, q))).toEqual(Array.from(logFakeQuantize(x, q)));
    }
  });

  it('equals the pure function on subnormal, huge and infinite values', async () => {
    const x = Float32Array.of(1e-39, 3.4e-39, 5e-39, 1e-45, 1e-38, 3e38, Infinity, 0.7);
    for (const q of [
      { base: 'log-sqrt2', bits: 8, scale: 1 },
      { base: 'log2', bits: 8, scale: 2 ** -20 },
    ] as const) {
      expect(Array.from(await onnxLogFakeQuant(x, q))).toEqual(Array.from(logFakeQuantize(x, q)));
    }
  });

  it('keeps the shape of a [batch, heads, tokens, tokens] tensor and maps negatives to 0', async () => {
    const dims = [2, 3, 4, 5];
    const x = attentionLike(120, 11);
    x[7] = -0.25;
    const q = { base: 'log-sqrt2', bits: 4, scale: 1 } as const;
    const out = await onnxLogFakeQuant(x, q, dims);
    expect(out.length).toBe(120);
    expect(out[7]).toBe(0);
    expect(Array.from(out)).toEqual(Array.from(logFakeQuantize(x, q)));
  });
});
