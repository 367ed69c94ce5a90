import { describe, expect, it } from 'vitest';
import { DataType } from '../../src/onnx/tensor.js';
import {
  floatFakeQuantCommands,
  floatFakeQuantize,
  floatFakeQuantizeChannels,
  floatFormats,
  floatQuantizeValue,
  floatScaleForMax,
  floatSquaredError,
  channelFloatSquaredError,
  type FloatFormat,
  type FloatScaleTensor,
} from '../../src/quant/float-formats.js';
import { noiseInput } from '../fixtures.js';
import { buildModel, runModel } from './tiny-graph.js';

const { e4m3, e5m2, e3m2, e2m1 } = floatFormats;

/** The float fake-quant chain run by onnxruntime. */
async function onnxFloat(
  x: Float32Array,
  f: FloatFormat,
  scale?: FloatScaleTensor,
  dims = [x.length],
) {
  const { commands, output } = floatFakeQuantCommands('x', 'fq', f, scale);
  const model = buildModel(dims, commands, { [output]: DataType.FLOAT }, 13);
  return (await runModel(model, x, dims))[output] as Float32Array;
}

/**
 * Every non-negative value of a format, enumerated from its bit fields (an independent source):
 * subnormals f·2^(1−b−m), normals 2^(E−b)·(1 + f/2^m), up to max.
 */
function enumerateGrid(f: FloatFormat): number[] {
  const out: number[] = [];
  const fractions = 2 ** f.mantissaBits;
  for (let exponent = 0; exponent < 2 ** f.exponentBits; exponent++) {
    for (let m = 0; m < fractions; m++) {
      const v =
        exponent === 0
          ? (m / fractions) * 2 ** (1 - f.bias)
          : (1 + m / fractions) * 2 ** (exponent - f.bias);
      if (v <= f.max) out.push(v);
    }
  }
  return out;
}

/** Nearest grid value by brute force, ties to the one with an even last mantissa bit. */
function nearestOnGrid(y: number, grid: number[]): number {
  const a = Math.min(Math.abs(y), grid[grid.length - 1]!);
  let best = 0;
  for (let k = 0; k < grid.length; k++) {
    const d = Math.abs(grid[k]! - a) - Math.abs(grid[best]! - a);
    if (d < 0 || (d === 0 && k % 2 === 0)) best = k;
  }
  return y < 0 || Object.is(y, -0) ? -grid[best]! : grid[best]!;
}

/** Values over many binades with exact ties, grid points and their float32 neighbours. */
function spanningValues(count: number, f: FloatFormat, seed: number): Float32Array {
  const noise = noiseInput(count, seed);
  const lo = Math.log2(2 ** (1 - f.bias - f.mantissaBits)) - 3;
  const hi = Math.log2(f.max) + 2;
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) {
    const sign = i % 2 === 0 ? 1 : -1;
    out[i] = sign * 2 ** (lo + ((noise[i]! + 1) / 2) * (hi - lo));
  }
  const grid = enumerateGrid(f);
  const specials: number[] = [0, -0, Infinity, -Infinity, f.max, 1e30];
  for (let k = 0; k + 1 < grid.length; k++) {
    const mid = (grid[k]! + grid[k + 1]!) / 2;
    specials.push(grid[k]!, mid, -mid, Math.fround(mid * (1 + 2 ** -20)));
  }
  out.set(specials.slice(0, count), 0);
  return out;
}

describe('floating-point formats (pure function)', () => {
  it('rounds E4M3 by hand: 0.3, ties to even, saturation at 448, subnormals of 2^−9', () => {
    const cases: [number, number][] = [
      [0.3, 0.3125], // binade 2^−2, step 2^−5: 9.6 → 10
      [1.0625, 1], // step 1/8: 8.5 → 8 (even)
      [1.1875, 1.25], // 9.5 → 10 (even)
      [448, 448],
      [460, 448],
      [500, 448],
      [Infinity, 448],
      [-500, -448],
      [2 ** -9, 2 ** -9], // smallest subnormal
      [2 ** -10, 0], // half of it: a tie, to 0
      [3 * 2 ** -10, 2 ** -8], // 1.5 subnormal steps → 2
      [2 ** -6 - 2 ** -10, 2 ** -6], // 7.5 subnormal steps → 8 = the smallest normal
    ];
    for (const [x, expected] of cases) expect(floatQuantizeValue(x, e4m3)).toBe(expected);
    expect(floatQuantizeValue(NaN, e4m3)).toBeNaN();
  });

  it('puts E2M1 on {0, 0.5, 1, 1.5, 2, 3, 4, 6} with ties to even', () => {
    const x = [0.2, 0.25, 0.3, 0.75, 1.25, 1.75, 2.5, 3.5, 5, 5.5, 7, -2.9];
    const expected = [0, 0, 0.5, 1, 1, 2, 2, 4, 4, 6, 6, -3];
    expect(x.map((v) => floatQuantizeValue(v, e2m1))).toEqual(expected);
    expect(enumerateGrid(e2m1)).toEqual([0, 0.5, 1, 1.5, 2, 3, 4, 6]);
  });

  it('knows the ranges of E5M2 (57344, 2^−16) and E3M2 (28, 1/16)', () => {
    expect(floatQuantizeValue(60000, e5m2)).toBe(57344);
    expect(floatQuantizeValue(2 ** -16, e5m2)).toBe(2 ** -16);
    expect(floatQuantizeValue(2 ** -17, e5m2)).toBe(0);
    expect(floatQuantizeValue(30, e3m2)).toBe(28);
    expect(floatQuantizeValue(0.09, e3m2)).toBe(0.0625);
    expect(floatQuantizeValue(26, e3m2)).toBe(24); // step 4 above 16: 6.5 → 6
  });

  it('agrees with the nearest value of the grid enumerated from the bit fields', () => {
    for (const f of [e4m3, e5m2, e3m2, e2m1]) {
      const grid = enumerateGrid(f);
      const x = spanningValues(3000, f, 7);
      for (const v of x) {
        if (Number.isFinite(v)) expect(floatQuantizeValue(v, f)).toBe(nearestOnGrid(v, grid));
      }
    }
  });

  it('scales: s maps max|x| to the format max, per tensor and per channel', () => {
    expect(Array.from(floatFakeQuantize(Float32Array.of(0.3, 1.4, 9), e2m1, 0.5))).toEqual([
      0.25, 1.5, 3,
    ]);
    const s = floatScaleForMax(12, e2m1);
    expect(s).toBe(2);
    expect(floatFakeQuantize(Float32Array.of(12, -11), e2m1, s)).toEqual(Float32Array.of(12, -12));
    // rows [0.3, 1.4] with s = 0.5 and [3, 5] with s = 1
    const w = floatFakeQuantizeChannels(
      Float32Array.of(0.3, 1.4, 3, 5),
      [2, 2],
      0,
      Float32Array.of(0.5, 1),
      e2m1,
    );
    expect(Array.from(w)).toEqual([0.25, 1.5, 3, 4]);
  });

  it('measures the squared error of what it quantizes to, in every format', () => {
    for (const format of Object.values(floatFormats)) {
      const spanning = spanningValues(500, format, 3).filter(
        (v) => Number.isFinite(v) && Math.abs(v) < 1e4,
      );
      // zeros, float32 subnormals, values past the format's max, both signs
      const x = Float32Array.from([...spanning, 0, -0, 1e-40, -1e-40, 3e4, -3e4, 1e-30]);
      const xq = floatFakeQuantize(x, format, 0.7);
      let expected = 0;
      x.forEach((v, i) => (expected += (v - xq[i]!) ** 2));
      expect(floatSquaredError(x, format, 0.7) / expected).toBeCloseTo(1, 12);
    }
    expect(() => floatFakeQuantize(Float32Array.of(1), e4m3, 0)).toThrow(RangeError);
  });

  it('measures the squared error with one scale per channel of the last axis', () => {
    const x = Float32Array.from(noiseInput(600, 5), (u) => u ** 3 * 40);
    const scales = Float32Array.of(0.05, 0.7, 3);
    const xq = floatFakeQuantizeChannels(x, [200, 3], 1, scales, e2m1);
    let expected = 0;
    x.forEach((v, i) => (expected += (v - xq[i]!) ** 2));
    expect(channelFloatSquaredError(x, e2m1, scales) / expected).toBeCloseTo(1, 12);
  });
});

describe('floating-point fake-quant subgraph in onnxruntime', () => {
  it('equals the pure function bit for bit on 100k values of every format', async () => {
    for (const f of [e4m3, e5m2, e3m2, e2m1]) {
      const x = spanningValues(25_000, f, 11);
      expect(Array.from(await onnxFloat(x, f))).toEqual(Array.from(floatFakeQuantize(x, f)));
    }
  });

  it('equals the pure function with a per-tensor scale that is not a power of two', async () => {
    const x = spanningValues(20_000, e4m3, 5).map((v) => v * 0.013);
    const s = 0.00731;
    const got = await onnxFloat(x, e4m3, { values: Float32Array.of(s), dims: [] });
    expect(Array.from(got)).toEqual(Array.from(floatFakeQuantize(x, e4m3, s)));
  });

  it('equals the per-channel pure function with a [C, 1] scale', async () => {
    const dims = [4, 300];
    const x = spanningValues(1200, e2m1, 9).map((v) => (Number.isFinite(v) ? v : 3));
    const scales = Float32Array.of(0.5, 1, 0.37, 3.1);
    const got = await onnxFloat(x, e2m1, { values: scales, dims: [4, 1] }, dims);
    expect(Array.from(got)).toEqual(
      Array.from(floatFakeQuantizeChannels(x, dims, 0, scales, e2m1)),
    );
  });
});
