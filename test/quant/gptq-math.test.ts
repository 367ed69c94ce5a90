import { describe, expect, it } from 'vitest';
import { gptqLayer, type GptqLayerOptions } from '../../src/quant/methods/gptq-math.js';
import { fakeQuantize, intRange, type UniformParams } from '../../src/quant/uniform.js';
import { noiseInput } from '../fixtures.js';

const exact: GptqLayerOptions = { dampening: 0, blockSize: 128, actOrder: false };
const unitGrid = (outF: number): UniformParams[] =>
  Array.from({ length: outF }, () => ({ scale: 1, zeroPoint: 0 }));

/** Σ over rows of ‖x·(W − Ŵ)‖², straight from the rows (no Gram). */
function outputError(
  x: Float64Array,
  rows: number,
  w: ArrayLike<number>,
  q: ArrayLike<number>,
  inF: number,
  outF: number,
) {
  let total = 0;
  for (let r = 0; r < rows; r++) {
    for (let o = 0; o < outF; o++) {
      let y = 0;
      for (let i = 0; i < inF; i++) y += x[r * inF + i]! * (w[i * outF + o]! - q[i * outF + o]!);
      total += y * y;
    }
  }
  return total;
}

function gram(x: Float64Array, rows: number, n: number): Float64Array {
  const h = new Float64Array(n * n);
  for (let r = 0; r < rows; r++) {
    for (let i = 0; i < n; i++)
      for (let j = 0; j < n; j++) h[i * n + j]! += x[r * n + i]! * x[r * n + j]!;
  }
  return h;
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

/**
 * GPTQ written as its defining least-squares problem: channel i is rounded from the value that
 * minimises the proxy loss with channels < i fixed at their rounded values, found by solving
 * H_{>i,>i}·(w − W)_{>i} = −H_{>i,≤i}·(Ŵ − W)_{≤i} afresh for every i.
 */
function leastSquaresReference(
  w: Float64Array,
  h: Float64Array,
  inF: number,
  outF: number,
  p: UniformParams[],
  qmax: number,
) {
  const round = (v: number, g: UniformParams) =>
    (Math.min(qmax, Math.max(0, Math.round(v / g.scale) + g.zeroPoint)) - g.zeroPoint) * g.scale;
  const q = new Float64Array(inF * outF);
  for (let o = 0; o < outF; o++) {
    const current = Array.from({ length: inF }, (_, i) => w[i * outF + o]!);
    for (let i = 0; i < inF; i++) {
      q[i * outF + o] = round(current[i]!, p[o]!);
      const rest = Array.from({ length: inF - i - 1 }, (_, k) => i + 1 + k);
      if (rest.length === 0) break;
      const rhs = rest.map((r) => {
        let s = 0;
        for (let k = 0; k <= i; k++) s -= h[r * inF + k]! * (q[k * outF + o]! - w[k * outF + o]!);
        return s;
      });
      const delta = solve(
        rest.map((r) => rest.map((c) => h[r * inF + c]!)),
        rhs,
      );
      rest.forEach((r, k) => (current[r] = w[r * outF + o]! + delta[k]!));
    }
  }
  return q;
}

/** Rows of x with correlated channels, as activations have. */
function correlatedRows(rows: number, n: number, seed: number): Float64Array {
  const base = noiseInput(rows * n, seed);
  const common = noiseInput(rows, seed + 7);
  return Float64Array.from(base, (v, k) => v + 0.8 * common[Math.floor(k / n)]! * ((k % n) % 3));
}

describe('gptqLayer', () => {
  it('moves the rounding error of the first channel onto the second (2 × 2 by hand)', () => {
    // H⁻¹ = ⅓[[2, −1], [−1, 2]]: w₁ ← 0.4 + 0.4 · ½ = 0.6, rounded to 1
    const h = Float64Array.from([2, 1, 1, 2]);
    const { quantized } = gptqLayer(Float64Array.from([0.4, 0.4]), h, 2, 1, unitGrid(1), 4, exact);
    expect([...quantized]).toEqual([0, 1]);
  });

  it('gives [0, 1, 0] for w = 0.4 on a 3 × 3 tridiagonal H (by hand), loss 0.2 against 0.8', () => {
    // step 0: w₁, w₂ ← [0.4, 0.4] + 0.4·[⅔, −⅓] = [0.667, 0.267]; step 1: w₂ ← 0.4 − 0.5·0.6 = 0.1
    const h = Float64Array.from([1, 0.5, 0, 0.5, 1, 0.5, 0, 0.5, 1]);
    const w = Float64Array.from([0.4, 0.4, 0.4]);
    const { quantized } = gptqLayer(w, h, 3, 1, unitGrid(1), 4, exact);
    expect([...quantized]).toEqual([0, 1, 0]);
    const loss = (e: number[]) =>
      e.reduce((s, ei, i) => s + e.reduce((t, ej, j) => t + ei * h[i * 3 + j]! * ej, 0), 0);
    expect(loss([0.4, -0.6, 0.4])).toBeCloseTo(0.2, 12);
    expect(loss([0.4, 0.4, 0.4])).toBeCloseTo(0.8, 12);
  });

  it('equals the least-squares definition of GPTQ on a random 6 × 4 layer, in blocks of 2 or all at once', () => {
    const inF = 6;
    const outF = 4;
    const x = correlatedRows(40, inF, 3);
    const h = gram(x, 40, inF);
    const w = Float64Array.from(noiseInput(inF * outF, 5));
    const grids = Array.from({ length: outF }, (_, o) => ({
      scale: 0.13 + 0.02 * o,
      zeroPoint: 7,
    }));
    const expected = leastSquaresReference(w, h, inF, outF, grids, 15);
    for (const blockSize of [2, 128]) {
      const { quantized } = gptqLayer(w, h, inF, outF, grids, 4, { ...exact, blockSize });
      for (let k = 0; k < expected.length; k++) expect(quantized[k]).toBeCloseTo(expected[k]!, 6);
    }
  });

  it('leaves a smaller layer-output error than rounding to nearest on the same grid', () => {
    const inF = 48;
    const outF = 16;
    const rows = 300;
    const x = correlatedRows(rows, inF, 11);
    const h = gram(x, rows, inF);
    const w = Float64Array.from(noiseInput(inF * outF, 13), (v) => 0.2 * v);
    const grids = Array.from({ length: outF }, () => ({ scale: 0.4 / 15, zeroPoint: 8 }));
    const rtn = fakeQuantize(Float32Array.from(w), grids, intRange(4, false), [inF, outF], 1);
    const rtnError = outputError(x, rows, w, rtn, inF, outF);
    for (const options of [
      { dampening: 0.01, blockSize: 128, actOrder: false },
      { dampening: 0.01, blockSize: 16, actOrder: true },
    ]) {
      const { quantized } = gptqLayer(w, h, inF, outF, grids, 4, options);
      expect(outputError(x, rows, w, quantized, inF, outF)).toBeLessThan(0.7 * rtnError);
    }
  });

  it('writes values that the fake-quant weight op reproduces exactly', () => {
    const inF = 32;
    const outF = 8;
    const x = correlatedRows(100, inF, 17);
    const w = Float64Array.from(noiseInput(inF * outF, 19));
    const grids = Array.from({ length: outF }, (_, o) => ({
      scale: 0.07 + 0.011 * o,
      zeroPoint: 3 + o,
    }));
    const { quantized } = gptqLayer(w, gram(x, 100, inF), inF, outF, grids, 4, exact);
    const again = fakeQuantize(quantized, grids, intRange(4, false), [inF, outF], 1);
    expect(again).toEqual(quantized);
  });

  it('zeroes a channel that no row drives and counts it', () => {
    const x = correlatedRows(20, 4, 23).map((v, k) => (k % 4 === 2 ? 0 : v));
    const w = Float64Array.from([0.5, 1.5, 2.5, 3.5]);
    const result = gptqLayer(w, gram(x, 20, 4), 4, 1, [{ scale: 1, zeroPoint: 4 }], 4, exact);
    expect(result.deadChannels).toBe(1);
    expect(result.quantized[2]).toBe(0);
  });

  it('refuses a weight whose size does not match the shapes given', () => {
    const h = new Float64Array(4);
    expect(() => gptqLayer(new Float64Array(3), h, 2, 2, unitGrid(2), 4, exact)).toThrow(
      RangeError,
    );
  });
});
