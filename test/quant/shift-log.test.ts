import { describe, expect, it } from 'vitest';
import { DataType } from '../../src/onnx/tensor.js';
import {
  calibrateShiftLog,
  shiftLogBoundaries,
  shiftLogCandidates,
  shiftLogFakeQuantCommands,
  shiftLogFakeQuantize,
  shiftLogLevels,
  shiftLogQuantize,
  shiftLogSquaredError,
  type ShiftLogQuantizer,
} from '../../src/quant/shift-log.js';
import { noiseInput } from '../fixtures.js';
import { float32Step } from './helpers.js';
import { buildModel, runModel } from './tiny-graph.js';

/** The SULQ chain run by onnxruntime. */
async function onnxShiftLog(x: Float32Array, q: ShiftLogQuantizer) {
  const { commands, output } = shiftLogFakeQuantCommands('x', 'sl', q);
  const model = buildModel([x.length], commands, { [output]: DataType.FLOAT }, 13);
  return (await runModel(model, x, [x.length]))[output] as Float32Array;
}

/** Post-softmax-like values in [0, 1]: mostly tiny, some large, zeros and ones. */
function attentionLike(count: number, seed: number): Float32Array {
  const noise = noiseInput(count, seed);
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) out[i] = Math.fround(2 ** (noise[i]! * 6 - 6));
  out.set([0, 0, 1, 1e-30, 0.5, 0.25], 0);
  return out;
}

const twoBits: ShiftLogQuantizer = { bits: 2, shift: 0.01, logMin: -3, logMax: 0 };

describe('shift-uniform-log2 quantizer (pure function)', () => {
  it('computes the worked example by hand', () => {
    const x = Float32Array.of(0, 0.1, 0.3, 0.99);
    // log2(x + 0.01) + 3 = −3.64, −0.18, 1.31, 3 → codes 0, 0, 1, 3
    expect(Array.from(shiftLogQuantize(x, twoBits))).toEqual([0, 0, 1, 3]);
    const expected = [0.125 - 0.01, 0.125 - 0.01, 0.25 - 0.01, 1 - 0.01].map(Math.fround);
    expect(Array.from(shiftLogFakeQuantize(x, twoBits))).toEqual(expected);
  });

  it('rounds each dequantized exponent to an integer: levels are powers of two less η', () => {
    const q = { bits: 2, shift: 0.5, logMin: -4, logMax: 0 };
    // Δ = 4/3: exponents −4, −2.67, −1.33, 0 → −4, −3, −1, 0
    const expected = [2 ** -4, 2 ** -3, 2 ** -1, 1].map((v) => Math.fround(v - 0.5));
    expect(Array.from(shiftLogLevels(q))).toEqual(expected);
  });

  it('puts the boundaries at 2^(y_min + (k+½)Δ), the top one at infinity', () => {
    const b = shiftLogBoundaries(twoBits);
    expect(b[3]).toBe(Infinity);
    [-2.5, -1.5, -0.5].forEach((exponent, k) => {
      // the first float32 at or above the boundary: it is reached, the float32 below is not
      expect(b[k]).toBeGreaterThanOrEqual(2 ** exponent);
      expect(float32Step(b[k]!, -1)).toBeLessThan(2 ** exponent);
    });
  });

  it('agrees with a float64 logarithm away from the boundaries', () => {
    const q = { bits: 4, shift: 0.02, logMin: -5.6, logMax: 0.03 };
    const x = attentionLike(5000, 2);
    const codes = shiftLogQuantize(x, q);
    const step = (q.logMax - q.logMin) / 15;
    x.forEach((v, i) => {
      const y = Math.log2(Math.fround(v + Math.fround(0.02)));
      expect(codes[i]).toBe(Math.min(Math.max(Math.round((y - q.logMin) / step), 0), 15));
    });
  });

  it('refuses an empty log range and a non-positive shift', () => {
    expect(() => shiftLogLevels({ ...twoBits, logMax: -3 })).toThrow(RangeError);
    expect(() => shiftLogLevels({ ...twoBits, shift: 0 })).toThrow(RangeError);
  });
});

describe('shift-log calibration', () => {
  it('picks the shift of least error from I&S-ViT’s set, spanning the captured log range', () => {
    const x = attentionLike(20_000, 3);
    const best = calibrateShiftLog(x, 4);
    expect(shiftLogCandidates).toContain(best.shift);
    expect(best.logMax).toBeCloseTo(Math.log2(1 + best.shift), 12);
    expect(best.logMin).toBeCloseTo(Math.log2(best.shift), 12);
    for (const shift of shiftLogCandidates) {
      const other = { bits: 4, shift, logMin: Math.log2(shift), logMax: Math.log2(1 + shift) };
      expect(shiftLogSquaredError(x, best)).toBeLessThanOrEqual(shiftLogSquaredError(x, other));
    }
  });
});

describe('shift-log fake-quant subgraph in onnxruntime', () => {
  it('equals the pure function bit for bit on 100k values across shifts and bit widths', async () => {
    const x = attentionLike(25_000, 5);
    for (const q of [
      { bits: 4, shift: 0.01, logMin: Math.log2(0.01), logMax: Math.log2(1.01) },
      { bits: 3, shift: 0.2, logMin: -2.32, logMax: 0.26 },
      { bits: 6, shift: 0.001, logMin: -9.97, logMax: 0.001 },
      { bits: 8, shift: 0.05, logMin: -4.3, logMax: 0.07 },
    ]) {
      expect(Array.from(await onnxShiftLog(x, q))).toEqual(Array.from(shiftLogFakeQuantize(x, q)));
    }
  });

  it('equals the pure function on either side of every boundary and on negatives', async () => {
    const q = { bits: 5, shift: 0.03, logMin: -5, logMax: 0.05 };
    const values: number[] = [-1, -0.03, -0.02];
    for (const c of shiftLogBoundaries(q)) {
      if (!Number.isFinite(c)) continue;
      const at = Math.fround(c - Math.fround(q.shift));
      values.push(at, float32Step(at, -1), float32Step(at, 1));
    }
    const x = Float32Array.from(values);
    expect(Array.from(await onnxShiftLog(x, q))).toEqual(Array.from(shiftLogFakeQuantize(x, q)));
  });
});
