import { describe, expect, it } from 'vitest';
import { logSquaredError } from '../../src/quant/log-quantizers.js';
import {
  affineParams,
  affineSquaredError,
  percentileMseAffine,
  percentileMseAffineChannels,
  percentileMseLog,
  quantiles,
} from '../../src/quant/percentile-mse.js';
import { fakeQuantize, intRange, type UniformParams } from '../../src/quant/uniform.js';
import { noiseInput } from '../fixtures.js';

/** Quantiles the slow, obvious way: sort everything, interpolate linearly (numpy's default). */
function sortedQuantile(values: Float32Array, p: number): number {
  const sorted = Float64Array.from(values).sort();
  const pos = p * (sorted.length - 1);
  const lo = Math.floor(pos);
  return sorted[lo]! + (pos - lo) * (sorted[Math.ceil(pos)]! - sorted[lo]!);
}

/** Squared error of the affine grid, through uniform.ts's fakeQuantize. */
function affineError(values: Float32Array, params: UniformParams, bits: number): number {
  const xq = fakeQuantize(values, [params], intRange(bits, false));
  let e = 0;
  values.forEach((v, i) => (e += (v - xq[i]!) ** 2));
  return e;
}

/** Heavy-tailed values with many exact duplicates, as activations with outliers look. */
function heavyTailed(count: number, seed: number): Float32Array {
  const noise = noiseInput(count, seed);
  return Float32Array.from(noise, (v, i) =>
    i % 7 === 0 ? 0 : i % 1001 === 0 ? v * 60 : Math.fround(v * Math.abs(v) * 3),
  );
}

describe('quantiles', () => {
  it('interpolates between order statistics: the worked example', () => {
    expect(Array.from(quantiles(Float32Array.of(4, 1, 3, 2, 5), [0.5, 0.9]))).toEqual([3, 4.6]);
  });

  it('equals full sorting at RepQ’s percentiles, the median and the extremes', () => {
    const values = heavyTailed(200_003, 4);
    const ps = [0.999, 0.9999, 0.99999, 0.001, 0.0001, 0.00001, 0.5, 0, 1];
    const got = quantiles(values, ps);
    ps.forEach((p, i) => expect(got[i]).toBe(sortedQuantile(values, p)));
  });

  it('leaves its input as it was', () => {
    const values = heavyTailed(5000, 2);
    const copy = values.slice();
    quantiles(values, [0.999, 0.001]);
    expect(Array.from(values)).toEqual(Array.from(copy));
  });
});

describe('RepQ affine grid', () => {
  it('computes the worked examples: no widening to 0, zero point not clamped', () => {
    const a = affineParams(-1, 3, 4);
    expect(a.scale).toBeCloseTo(4 / 15, 15);
    expect(a.zeroPoint).toBe(4);
    // −5 / (2/15) = −37.5, a tie, rounded to the even −38
    const b = affineParams(5, 7, 4);
    expect(b.scale).toBeCloseTo(2 / 15, 15);
    expect(b.zeroPoint).toBe(-38);
  });

  it('spends all codes on a range away from 0', () => {
    const values = Float32Array.of(5, 5.5, 6, 6.5, 7);
    const params = affineParams(5, 7, 4);
    const xq = fakeQuantize(values, [params], intRange(4, false));
    // 5 sits at −37.5 steps: a tie rounded to −38, half a step off; float32 adds a few ulps
    const halfStep = params.scale / 2 + 1e-6;
    xq.forEach((v, i) => expect(Math.abs(v - values[i]!)).toBeLessThanOrEqual(halfStep));
  });

  it('widens a zero-width range to include 0, and gives an all-zero one a step of 1', () => {
    const constant = affineParams(0.6, 0.6, 4);
    expect(constant.scale).toBeCloseTo(0.04, 15);
    expect(constant.zeroPoint).toBe(0);
    expect(affineParams(0, 0, 4)).toEqual({ scale: 1, zeroPoint: 0 });
  });
});

describe('percentile-MSE search', () => {
  it('measures the squared error of exactly what fakeQuantize gives, ties included', () => {
    const params = { scale: 0.25, zeroPoint: -3 };
    const ties = Float32Array.from({ length: 40 }, (_, i) => (i - 20 + 0.5) * 0.25);
    const values = Float32Array.of(...ties, ...heavyTailed(5000, 3));
    expect(affineSquaredError(values, params, 4)).toBe(affineError(values, params, 4));
  });

  it('picks the candidate range with the least squared error (checked by brute force)', () => {
    const values = heavyTailed(50_000, 7);
    for (const bits of [4, 6]) {
      const choice = percentileMseAffine(values, bits);
      const errors = [0.999, 0.9999, 0.99999].map((p) =>
        affineError(
          values,
          affineParams(sortedQuantile(values, 1 - p), sortedQuantile(values, p), bits),
          bits,
        ),
      );
      const best = errors.indexOf(Math.min(...errors));
      expect(choice.percentile).toBe([0.999, 0.9999, 0.99999][best]);
      expect(affineError(values, choice.params, bits)).toBeCloseTo(errors[best]!, 6);
    }
  });

  it('searches each output channel of an [in, out] weight on its own', () => {
    const inputs = 64;
    const outputs = 5;
    const weight = heavyTailed(inputs * outputs, 12);
    const choices = percentileMseAffineChannels(weight, [inputs, outputs], 1, 4);
    expect(choices.length).toBe(outputs);
    for (let o = 0; o < outputs; o++) {
      const column = Float32Array.from({ length: inputs }, (_, i) => weight[i * outputs + o]!);
      expect(choices[o]).toEqual(percentileMseAffine(column, 4));
    }
  });

  it('chooses the log√2 scale among the quantiles by squared error', () => {
    const noise = noiseInput(30_000, 8);
    const attention = Float32Array.from(noise, (v) => Math.fround(2 ** (v * 10 - 9)));
    const choice = percentileMseLog(attention, 4, 'log-sqrt2');
    const errors = [0.999, 0.9999, 0.99999].map((p) =>
      logSquaredError(attention, {
        base: 'log-sqrt2',
        bits: 4,
        scale: Math.fround(sortedQuantile(attention, p)),
      }),
    );
    expect(choice.percentile).toBe([0.999, 0.9999, 0.99999][errors.indexOf(Math.min(...errors))]);
    expect(choice.quantizer.scale).toBe(Math.fround(sortedQuantile(attention, choice.percentile)));
  });
});
