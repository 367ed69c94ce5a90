import { describe, expect, it } from 'vitest';
import { DataType } from '../../src/onnx/tensor.js';
import {
  adaLogBoundaries,
  adaLogFakeQuantCommands,
  adaLogFakeQuantize,
  adaLogLevels,
  adaLogQuantize,
  adaLogSquaredError,
  calibrateAdaLog,
  geluShift,
  type AdaLogQuantizer,
} from '../../src/quant/adalog.js';
import { noiseInput } from '../fixtures.js';
import { float32Step } from './helpers.js';
import { buildModel, runModel } from './tiny-graph.js';

/** The AdaLog chain run by onnxruntime. */
async function onnxAdaLog(x: Float32Array, q: AdaLogQuantizer) {
  const { commands, output } = adaLogFakeQuantCommands('x', 'al', q);
  const model = buildModel([x.length], commands, { [output]: DataType.FLOAT }, 13);
  return (await runModel(model, x, [x.length]))[output] as Float32Array;
}

/** Post-softmax-like values: mostly tiny, some large, zeros, ones, values above s. */
function attentionLike(count: number, seed: number): Float32Array {
  const noise = noiseInput(count, seed);
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) out[i] = Math.fround(2 ** (noise[i]! * 12 - 10));
  out.set([0, 0, 1, 2, 1e-30, 0.5, 0.25, -0.1], 0);
  return out;
}

/** GELU outputs of normal-ish inputs: min about −0.17, a long positive tail. */
function geluLike(count: number, seed: number): Float32Array {
  const noise = noiseInput(count, seed);
  return Float32Array.from(noise, (u) => {
    const v = u * 4;
    return Math.fround(0.5 * v * (1 + Math.tanh(0.7978845608 * (v + 0.044715 * v ** 3))));
  });
}

describe('AdaLog quantizer (pure function)', () => {
  it('is log2 when q_b = r: the worked example by hand', () => {
    const q = { bits: 3, baseNumerator: 37, scale: 1 };
    const x = Float32Array.of(1, 0.3, 0.006, 0.005, 0, 4);
    // −log2: 0, 1.74, 7.38, 7.64 (≥ 8 after rounding: below the grid), ∞, −2 (clamped to 0)
    expect(Array.from(adaLogQuantize(x, q))).toEqual([0, 2, 7, 8, 8, 0]);
    expect(Array.from(adaLogFakeQuantize(x, q))).toEqual([1, 0.25, 0.0078125, 0, 0, 1]);
  });

  it('rounds in units of the base 2^(q_b/r) (q_b = 74: base 4)', () => {
    const q = { bits: 2, baseNumerator: 74, scale: 1 };
    // −log4: 0.1 → 1.66 → 2 (1/16); 0.2 → 1.16 → 1 (1/4); 0.02 → 2.82 → 3 (1/64); 0.005 → 3.82
    const x = Float32Array.of(0.1, 0.2, 0.02, 0.005);
    expect(Array.from(adaLogFakeQuantize(x, q))).toEqual([1 / 16, 1 / 4, 1 / 64, 0]);
  });

  it('takes the lower code on an exact boundary (base 4: 2^−3 sits between 1/4 and 1/16)', () => {
    const q = { bits: 3, baseNumerator: 74, scale: 1 };
    // −log4(1/8) = 1.5 exactly: code 1, level 1/4
    expect(Array.from(adaLogQuantize(Float32Array.of(0.125, float32Step(0.125, -1)), q))).toEqual([
      1, 2,
    ]);
  });

  it('builds the hardware levels from a shift and the table round(2^(−j/r)·D)/D', () => {
    const q = { bits: 3, baseNumerator: 20, scale: 1, hardware: true };
    const levels = adaLogLevels(q);
    // D = 14; c = 1: j = 20, 2^(−20/37)·14 = 9.63 → 10/14; c = 2: 40 = 37 + 3, ½·round(13.26)/14
    expect(levels[1]).toBe(Math.fround(10 / 14));
    expect(levels[2]).toBe(Math.fround(0.5 * (13 / 14)));
    expect(levels[8]).toBe(0);
    const exact = adaLogLevels({ ...q, hardware: false });
    expect(exact[1]).toBeCloseTo(2 ** (-20 / 37), 6);
  });

  it('agrees with a float64 logarithm away from the boundaries', () => {
    const q = { bits: 4, baseNumerator: 29, scale: 0.8 };
    const x = attentionLike(5000, 3);
    const codes = adaLogQuantize(x, q);
    x.forEach((v, i) => {
      const r = Math.fround(v / Math.fround(0.8));
      const raw = r > 0 ? Math.round((-Math.log2(r) * 37) / 29) : 16;
      expect(codes[i]).toBe(Math.min(Math.max(raw, 0), 16));
    });
  });

  it('shifts GELU outputs by η before the log and back after: the minimum stays representable', () => {
    const q = { bits: 4, baseNumerator: 37, scale: 4, shift: geluShift };
    const x = Float32Array.of(-geluShift, 4 - geluShift, -0.5);
    const xq = adaLogFakeQuantize(x, q);
    expect(xq[0]).toBe(Math.fround(0 - Math.fround(geluShift)));
    expect(xq[1]).toBeCloseTo(4 - geluShift, 6);
    expect(xq[2]).toBe(xq[0]);
  });

  it('refuses a non-integer base numerator and a non-positive scale', () => {
    expect(() => adaLogBoundaries({ bits: 4, baseNumerator: 3.5, scale: 1 })).toThrow(RangeError);
    expect(() => adaLogLevels({ bits: 4, baseNumerator: 30, scale: 0 })).toThrow(RangeError);
  });
});

describe('AdaLog calibration', () => {
  it('picks the base of least error on softmax values, no worse than log2 and log√2', () => {
    const x = attentionLike(20_000, 7);
    const best = calibrateAdaLog(x, { bits: 4, scale: 1 });
    const error = adaLogSquaredError(x, best);
    for (const b of [37, 74, 19]) {
      expect(error).toBeLessThanOrEqual(adaLogSquaredError(x, { ...best, baseNumerator: b }));
    }
    expect(best.scale).toBe(1);
  });

  it('searches base and scale on GELU values with the shift, beating s = max alone', () => {
    const x = geluLike(20_000, 5);
    const best = calibrateAdaLog(x, { bits: 4, shift: geluShift });
    const maxShifted = Math.max(...x) + geluShift;
    const atMax = calibrateAdaLog(x, { bits: 4, shift: geluShift, scale: maxShifted });
    expect(best.shift).toBe(geluShift);
    expect(adaLogSquaredError(x, best)).toBeLessThanOrEqual(adaLogSquaredError(x, atMax));
  });
});

describe('AdaLog fake-quant subgraph in onnxruntime', () => {
  it('equals the pure function bit for bit on 100k values across bases and bit widths', async () => {
    const x = attentionLike(25_000, 5);
    for (const q of [
      { bits: 4, baseNumerator: 29, scale: 1 },
      { bits: 3, baseNumerator: 74, scale: 0.7 },
      { bits: 6, baseNumerator: 138, scale: 1, hardware: true },
      { bits: 8, baseNumerator: 10, scale: 0.31 },
    ]) {
      expect(Array.from(await onnxAdaLog(x, q))).toEqual(Array.from(adaLogFakeQuantize(x, q)));
    }
  });

  it('equals the pure function on either side of every boundary', async () => {
    for (const q of [
      { bits: 5, baseNumerator: 74, scale: 1 },
      { bits: 5, baseNumerator: 23, scale: 0.45 },
    ]) {
      const values: number[] = [];
      for (const c of adaLogBoundaries(q)) {
        const at = Math.fround(c * q.scale);
        if (at > 2 ** -120) values.push(at, float32Step(at, -1), float32Step(at, 1));
      }
      const x = Float32Array.from(values);
      expect(Array.from(await onnxAdaLog(x, q))).toEqual(Array.from(adaLogFakeQuantize(x, q)));
    }
  });

  it('equals the pure function on GELU outputs with the shift', async () => {
    const x = geluLike(20_000, 9);
    const q = { bits: 4, baseNumerator: 31, scale: 2.3, shift: geluShift, hardware: true };
    expect(Array.from(await onnxAdaLog(x, q))).toEqual(Array.from(adaLogFakeQuantize(x, q)));
  });
});
