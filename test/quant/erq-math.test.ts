import { describe, expect, it } from 'vitest';
import {
  aqerCorrection,
  augmentedGrams,
  relativeOutputError,
  wqerQuantize,
  type LayerGrams,
} from '../../src/quant/methods/erq-math.js';
import { fakeQuantize, intRange } from '../../src/quant/uniform.js';
import { noiseInput } from '../fixtures.js';

/** Rows of x with correlated channels, as activations have. */
function correlatedRows(rows: number, n: number, seed: number): Float64Array {
  const base = noiseInput(rows * n, seed);
  const common = noiseInput(rows, seed + 7);
  return Float64Array.from(base, (v, k) => v + 0.8 * common[Math.floor(k / n)]! * ((k % n) % 3));
}

/** The test's own activation quantizer: a 3-bit-like grid of step 0.3. */
const coarse = (x: Float64Array) => x.map((v) => Math.round(v / 0.3) * 0.3);

/** Grams of [X̃, X] straight from the rows. */
function grams(xq: Float64Array, x: Float64Array, rows: number, n: number): LayerGrams {
  const product = (a: Float64Array, b: Float64Array) => {
    const out = new Float64Array(n * n);
    for (let r = 0; r < rows; r++) {
      for (let i = 0; i < n; i++)
        for (let j = 0; j < n; j++) out[i * n + j]! += a[r * n + i]! * b[r * n + j]!;
    }
    return out;
  };
  const sum = (a: Float64Array) => {
    const out = new Float64Array(n);
    for (let r = 0; r < rows; r++) for (let i = 0; i < n; i++) out[i]! += a[r * n + i]!;
    return out;
  };
  return {
    count: rows,
    quantized: product(xq, xq),
    cross: product(xq, x),
    float: product(x, x),
    quantizedSum: sum(xq),
    floatSum: sum(x),
  };
}

/** ‖x̃·Ŵ + b̂ − (x·W + b)‖² over the rows, directly. */
function outputError(
  xq: Float64Array,
  x: Float64Array,
  rows: number,
  inF: number,
  outF: number,
  w: ArrayLike<number>,
  b: ArrayLike<number>,
  wq: ArrayLike<number>,
  bq: ArrayLike<number>,
) {
  let total = 0;
  for (let r = 0; r < rows; r++) {
    for (let o = 0; o < outF; o++) {
      let y = b[o]! - bq[o]!;
      for (let i = 0; i < inF; i++)
        y += x[r * inF + i]! * w[i * outF + o]! - xq[r * inF + i]! * wq[i * outF + o]!;
      total += y * y;
    }
  }
  return total;
}

/** Solves a·x = b by Gaussian elimination with partial pivoting (the test's own solver). */
function solve(a: number[][], b: number[]): number[] {
  const n = b.length;
  const m = a.map((row, i) => [...row, b[i]!]);
  for (let c = 0; c < n; c++) {
    let p = c;
    for (let r = c + 1; r < n; r++) if (Math.abs(m[r]![c]!) > Math.abs(m[p]![c]!)) p = r;
    [m[c], m[p]] = [m[p]!, m[c]!];
    for (let r = c + 1; r < n; r++) {
      const f = m[r]![c]! / m[c]![c]!;
      for (let k = c; k <= n; k++) m[r]![k]! -= f * m[c]![k]!;
    }
  }
  const x = new Array<number>(n).fill(0);
  for (let r = n - 1; r >= 0; r--) {
    let s = m[r]![n]!;
    for (let k = r + 1; k < n; k++) s -= m[r]![k]! * x[k]!;
    x[r] = s / m[r]![r]!;
  }
  return x;
}

describe('aqerCorrection', () => {
  const rows = 60;
  const inF = 5;
  const outF = 3;
  const x = correlatedRows(rows, inF, 3);
  const xq = coarse(x);
  const w = Float64Array.from(noiseInput(inF * outF, 5));
  const b = Float64Array.from([0.3, -0.2, 0.1]);

  it('is the ridge fit of the float outputs from the quantized inputs, penalising the change', () => {
    // per output o: min ‖[x̃, 1]·θ − ([x, 1]·θ₀)‖² + λ‖θ − θ₀‖², normal equations solved here
    const lambda = 0.5;
    const { weight, bias } = aqerCorrection(w, b, grams(xq, x, rows, inF), inF, outF, lambda);
    const n = inF + 1;
    const aug = (m: Float64Array, r: number, i: number) => (i < inF ? m[r * inF + i]! : 1);
    for (let o = 0; o < outF; o++) {
      const theta0 = [...Array.from({ length: inF }, (_, i) => w[i * outF + o]!), b[o]!];
      const target = Array.from({ length: rows }, (_, r) =>
        theta0.reduce((s, t, i) => s + aug(x, r, i) * t, 0),
      );
      const a = Array.from({ length: n }, (_, i) =>
        Array.from({ length: n }, (_, j) => {
          let s = i === j ? lambda : 0;
          for (let r = 0; r < rows; r++) s += aug(xq, r, i) * aug(xq, r, j);
          return s;
        }),
      );
      const rhs = Array.from({ length: n }, (_, i) => {
        let s = lambda * theta0[i]!;
        for (let r = 0; r < rows; r++) s += aug(xq, r, i) * target[r]!;
        return s;
      });
      const expected = solve(a, rhs);
      for (let i = 0; i < inF; i++) expect(weight[i * outF + o]).toBeCloseTo(expected[i]!, 9);
      expect(bias![o]).toBeCloseTo(expected[inF]!, 9);
    }
  });

  it('lowers the layer-output error on the calibration rows (δ = 0 is a candidate), and its Gram form agrees', () => {
    const before = outputError(xq, x, rows, inF, outF, w, b, w, b);
    const g = grams(xq, x, rows, inF);
    const { weight, bias } = aqerCorrection(w, b, g, inF, outF, 1e-3);
    const after = outputError(xq, x, rows, inF, outF, w, b, weight, bias!);
    // the rounding noise of x̃ is mostly unpredictable from x̃: a fit removes only part of it
    expect(after).toBeLessThan(0.98 * before);
    // the same error from the Grams, relative to ‖x·W + b‖²
    const energy = outputError(xq, x, rows, inF, outF, w, b, new Float64Array(w.length), [0, 0, 0]);
    const theta = (m: ArrayLike<number>, v: ArrayLike<number>) => {
      const out = new Float64Array((inF + 1) * outF);
      out.set(Array.from(m));
      out.set(Array.from(v), inF * outF);
      return out;
    };
    const relative = relativeOutputError(
      theta(weight, bias!),
      theta(w, b),
      augmentedGrams(g, inF, true),
      outF,
    );
    expect(relative).toBeCloseTo(after / energy, 9);
  });

  it('corrects the weight alone for a layer without bias', () => {
    const { weight, bias } = aqerCorrection(w, undefined, grams(xq, x, rows, inF), inF, outF, 0);
    expect(bias).toBeUndefined();
    const before = outputError(xq, x, rows, inF, outF, w, [0, 0, 0], w, [0, 0, 0]);
    const after = outputError(xq, x, rows, inF, outF, w, [0, 0, 0], weight, [0, 0, 0]);
    expect(after).toBeLessThan(before);
  });
});

describe('wqerQuantize', () => {
  const unit = [{ scale: 1, zeroPoint: 0 }];

  it('compensates the first half on the second (2 channels by hand): [0.4, 0.4] → [0, 1]', () => {
    // w₁ ← 0.4 − G₁₀·(0 − 0.4) / G₁₁ = 0.76 with G = [[1, 0.9], [0.9, 1]], λ = 0
    const g = Float64Array.from([1, 0.9, 0.9, 1]);
    const q = wqerQuantize(Float64Array.from([0.4, 0.4]), g, 2, 1, unit, 4, {
      lambda: 0,
      refineSteps: 100,
    });
    expect([...q]).toEqual([0, 1]);
  });

  it('flips the rounding that lowers the proxy most, once (3 channels by hand)', () => {
    // half [0, 1] rounds to [0, 0], e = [−0.4, −0.4], proxy 0.608; flipping channel 0 (or 1)
    // changes it by 2·(−0.76) + 1 = −0.52; then flipping 1 would add 2·0.14 + 1
    const g = Float64Array.from([1, 0.9, 0, 0.9, 1, 0, 0, 0, 1]);
    const w = Float64Array.from([0.4, 0.4, 0]);
    const refined = wqerQuantize(w, g, 3, 1, unit, 4, { lambda: 0, refineSteps: 100 });
    expect([...refined]).toEqual([1, 0, 0]);
    const plain = wqerQuantize(w, g, 3, 1, unit, 4, { lambda: 0, refineSteps: 0 });
    expect([...plain]).toEqual([0, 0, 0]);
  });

  it('leaves a smaller output error than rounding to nearest, on values fake-quant keeps', () => {
    const rows = 300;
    const inF = 40;
    const outF = 12;
    const x = correlatedRows(rows, inF, 11);
    const xq = coarse(x);
    const w = Float64Array.from(noiseInput(inF * outF, 13), (v) => 0.2 * v);
    const grids = Array.from({ length: outF }, (_, o) => ({
      scale: 0.4 / 15,
      zeroPoint: 7 + (o % 3),
    }));
    const codes = intRange(4, false);
    const rtn = fakeQuantize(Float32Array.from(w), grids, codes, [inF, outF], 1);
    const zero = new Float64Array(outF);
    const q = wqerQuantize(w, grams(xq, x, rows, inF).quantized, inF, outF, grids, 4, {
      lambda: 1,
      refineSteps: 100,
    });
    const error = (wq: ArrayLike<number>) =>
      outputError(xq, xq, rows, inF, outF, w, zero, wq, zero);
    expect(error(q)).toBeLessThan(0.7 * error(rtn));
    expect(fakeQuantize(q, grids, codes, [inF, outF], 1)).toEqual(q);
  });
});
