import { describe, expect, it } from 'vitest';
import { symmetricStep, type OperandGrid } from '../../src/quant/search/operand-grid.js';
import {
  bestCandidates,
  productDims,
  scoreCandidates,
  SearchSessions,
} from '../../src/quant/search/product-search.js';
import { softmaxTwin, twinFakeQuantize } from '../../src/quant/twin-uniform.js';
import { fakeQuantize, intRange } from '../../src/quant/uniform.js';
import { noiseInput } from '../fixtures.js';

interface Tensor {
  data: Float32Array;
  dims: number[];
}

function tensor(dims: number[], seed: number, scale = 1): Tensor {
  const count = dims.reduce((n, d) => n * d, 1);
  return { data: noiseInput(count, seed).map((v) => v * scale), dims };
}

/** An independent reference: fake quantization by uniform.ts, products in float64 loops. */
function quantized(t: Tensor, grid: OperandGrid): Float32Array {
  if (grid.kind === 'float') return t.data;
  if (grid.kind === 'twin') return twinFakeQuantize(t.data, grid.quantizer);
  if (grid.kind === 'noisy') {
    // Q(x + N) − N with N along the last axis, in float32 as the ONNX Add and Sub
    const width = grid.noise.length;
    const shifted = t.data.map((v, i) => v + grid.noise[i % width]!);
    const q = quantized({ data: shifted, dims: t.dims }, grid.base);
    return q.map((v, i) => v - grid.noise[i % width]!);
  }
  const params = Array.from(grid.scales, (scale) => ({ scale, zeroPoint: 0 }));
  const range = intRange(grid.bits, true);
  return grid.groupAxis === undefined
    ? fakeQuantize(t.data, params, range)
    : fakeQuantize(t.data, params, range, t.dims, grid.groupAxis);
}

/** Batched A·B for [..., M, K] × [..., K, N] with equal batch dims, in float64. */
function product(a: Float32Array, aDims: number[], b: Float32Array, bDims: number[]) {
  const [m, k, n] = [aDims.at(-2)!, aDims.at(-1)!, bDims.at(-1)!];
  const batches = a.length / (m * k);
  const out = new Float64Array(batches * m * n);
  for (let t = 0; t < batches; t++) {
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let p = 0; p < k; p++) s += a[t * m * k + i * k + p]! * b[t * k * n + p * n + j]!;
        out[t * m * n + i * n + j] = s;
      }
    }
  }
  return out;
}

/** Per-group MSE (group = index of `axis` of dims) of two outputs. */
function groupedMse(y: Float64Array, yq: Float64Array, dims: number[], axis?: number) {
  if (axis === undefined) return [y.reduce((s, v, i) => s + (v - yq[i]!) ** 2, 0)];
  let stride = 1;
  for (let d = axis + 1; d < dims.length; d++) stride *= dims[d]!;
  const out = new Array<number>(dims[axis]!).fill(0);
  y.forEach((v, i) => (out[Math.floor(i / stride) % dims[axis]!]! += (v - yq[i]!) ** 2));
  return out;
}

function uniform(bits: number, scales: number[], groupAxis?: number): OperandGrid {
  return {
    kind: 'uniform',
    bits,
    scales: Float32Array.from(scales),
    ...(groupAxis === undefined ? {} : { groupAxis }),
  };
}

describe('layer-output scale search engine', () => {
  it('scores per-channel weight candidates by each output channel’s squared error', async () => {
    const x = tensor([40, 12], 1, 2);
    const w = tensor([12, 6], 2, 0.5);
    const xGrid = uniform(4, [symmetricStep(2, 4)]);
    const base = 0.5 / 7.5;
    const alphas = [0.3, 0.6, 0.9, 1.0];
    const candidates = alphas.map((s) => uniform(4, Array<number>(6).fill(base * s), 1));
    const scores = await scoreCandidates(x, w, {
      side: 'b',
      candidates,
      other: xGrid,
      metric: 'mse',
      groupAxis: 1,
    });
    const target = product(x.data, x.dims, w.data, w.dims);
    const xq = quantized(x, xGrid);
    candidates.forEach((c, i) => {
      const yq = product(xq, x.dims, quantized(w, c), w.dims);
      const expected = groupedMse(target, yq, [40, 6], 1);
      expected.forEach((e, g) => expect(scores[g]![i]).toBeCloseTo(e, 3));
    });
    expect(scores.length).toBe(6);
  });

  it('scores per-tensor activation candidates in chunks as in one piece', async () => {
    const x = tensor([30, 8], 3, 3);
    const w = tensor([8, 5], 4);
    const candidates = [0.05, 0.1, 0.2, 0.4, 0.8].map((s) => uniform(3, [s]));
    const other = uniform(
      6,
      Array.from({ length: 5 }, (_, o) => 0.03 + 0.001 * o),
      1,
    );
    const evaluation = { side: 'a', candidates, other, metric: 'mse' } as const;
    const whole = await scoreCandidates(x, w, evaluation);
    const chunked = await scoreCandidates(x, w, evaluation, { budget: 150 * 2 });
    expect(Array.from(chunked[0]!)).toEqual(Array.from(whole[0]!));
    const target = product(x.data, x.dims, w.data, w.dims);
    const wq = quantized(w, other);
    candidates.forEach((c, i) => {
      const [expected] = groupedMse(target, product(quantized(x, c), x.dims, wq, w.dims), [30, 5]);
      expect(whole[0]![i]).toBeCloseTo(expected!, 3);
    });
  });

  it('scores per-head candidates of a query against a quantized key, by cosine', async () => {
    const q = tensor([2, 3, 5, 4], 5, 2);
    const k = tensor([2, 3, 4, 5], 6, 2);
    const candidates = [0.02, 0.1, 0.5].map((s) => uniform(4, [s, 2 * s, 3 * s], 1));
    const other = uniform(4, [0.2]);
    const scores = await scoreCandidates(q, k, {
      side: 'a',
      candidates,
      other,
      metric: 'cosine',
      groupAxis: 1,
    });
    const target = product(q.data, q.dims, k.data, k.dims);
    const kq = quantized(k, other);
    candidates.forEach((c, i) => {
      const yq = product(quantized(q, c), q.dims, kq, k.dims);
      for (let h = 0; h < 3; h++) {
        let [dot, a, b] = [0, 0, 0];
        for (let t = 0; t < 2; t++) {
          for (let e = 0; e < 25; e++) {
            const at = (t * 3 + h) * 25 + e;
            dot += target[at]! * yq[at]!;
            a += target[at]! ** 2;
            b += yq[at]! ** 2;
          }
        }
        expect(scores[h]![i]).toBeCloseTo(-dot / Math.sqrt(a * b), 5);
      }
    });
  });

  it('scores twin candidates of an attention map and picks the least distorting split', async () => {
    const noise = tensor([1, 2, 6, 6], 7);
    const p = { ...noise, data: noise.data.map((v) => 2 ** (6 * v - 7)) };
    const v = tensor([1, 2, 6, 4], 8);
    const candidates = [0, 2, 4, 6].map((s): OperandGrid => ({
      kind: 'twin',
      quantizer: softmaxTwin(4, s),
    }));
    const scores = await scoreCandidates(p, v, {
      side: 'a',
      candidates,
      other: { kind: 'float' },
      metric: 'mse',
    });
    const target = product(p.data, p.dims, v.data, v.dims);
    const expected = candidates.map(
      (c) => groupedMse(target, product(quantized(p, c), p.dims, v.data, v.dims), [72])[0]!,
    );
    expected.forEach((e, i) => expect(scores[0]![i]).toBeCloseTo(e, 4));
    const best = expected.indexOf(Math.min(...expected));
    expect(bestCandidates(scores)).toEqual([best]);
  });

  it('broadcasts batch dims and refuses operands that do not multiply', () => {
    expect(productDims([7, 3], [3, 4])).toEqual([7, 4]);
    expect(productDims([2, 3, 5, 4], [2, 3, 4, 5])).toEqual([2, 3, 5, 5]);
    expect(() => productDims([7, 3], [4, 4])).toThrow(RangeError);
  });
});

describe('search sessions shared between evaluations', () => {
  it('give the scores of separate sessions, grouped or not, whatever the order', async () => {
    const w = tensor([8, 4], 9, 0.5);
    const x = tensor([20, 8], 10, 2);
    const other = uniform(4, [0.3]);
    const grouped = [0.02, 0.05].map((s) => uniform(4, [s, s, 2 * s, 2 * s], 1));
    const evaluations = [
      { side: 'b', candidates: grouped, other, metric: 'mse', groupAxis: 1 },
      { side: 'b', candidates: grouped.slice(0, 1), other, metric: 'mse' },
      { side: 'b', candidates: grouped, other, metric: 'cosine', groupAxis: 1 },
    ] as const;
    const sessions = new SearchSessions();
    try {
      for (const e of evaluations) {
        const shared = await scoreCandidates(x, w, e, { sessions });
        const alone = await scoreCandidates(x, w, e);
        expect(shared.map((s) => Array.from(s))).toEqual(alone.map((s) => Array.from(s)));
      }
    } finally {
      await sessions.release();
    }
  });
});
