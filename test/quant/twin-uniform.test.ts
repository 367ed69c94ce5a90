import { describe, expect, it } from 'vitest';
import { DataType } from '../../src/onnx/tensor.js';
import {
  geluTwin,
  softmaxTwin,
  twinFakeQuantCommands,
  twinFakeQuantize,
  twinSquaredError,
  type TwinQuantizer,
} from '../../src/quant/twin-uniform.js';
import { noiseInput } from '../fixtures.js';
import { buildModel, runModel } from './tiny-graph.js';

/** The float32 bit patterns, so that −0 and 0 (and NaNs) are told apart. */
function bits(x: Float32Array): number[] {
  return Array.from(new Uint32Array(x.slice().buffer));
}

/** The float32 `direction` steps from `x`, through its bit pattern (x ≠ 0). */
function float32Step(x: number, direction: number): number {
  const view = new DataView(new ArrayBuffer(4));
  view.setFloat32(0, x);
  view.setInt32(0, view.getInt32(0) + (x > 0 ? direction : -direction));
  return view.getFloat32(0);
}

async function onnxTwin(x: Float32Array, q: TwinQuantizer, dims = [x.length], opset = 13) {
  const { commands, output } = twinFakeQuantCommands('x', 'tq', q);
  const model = buildModel(dims, commands, { [output]: DataType.FLOAT }, opset);
  return (await runModel(model, x, dims))[output] as Float32Array;
}

/** Softmax-like values: mostly small, some large, exact zeros and ones. */
function attentionLike(count: number, seed: number): Float32Array {
  const noise = noiseInput(count, seed);
  const out = Float32Array.from(noise, (v) => 2 ** (v * 8 - 8));
  out.set([0, 1, 0.5, 1e-9], 0);
  return out;
}

/** GELU-like values: a negative dip down to −0.17 and a long positive tail. */
function geluLike(count: number, seed: number): Float32Array {
  const noise = noiseInput(count, seed);
  return Float32Array.from(noise, (v, i) => (i % 3 === 0 ? -0.17 * Math.abs(v) : 6 * v * v));
}

/** Each grid's thresholds and the float32 values on either side of every rounding boundary. */
function boundaryValues(q: TwinQuantizer): Float32Array {
  const values: number[] = [q.threshold];
  for (const g of [q.low, q.high]) {
    for (let c = g.qmin; c <= g.qmax; c++) {
      const at = Math.fround((c + 0.5) * g.scale);
      if (at !== 0) values.push(at, float32Step(at, -1), float32Step(at, 1));
    }
  }
  values.push(float32Step(q.threshold || 1e-30, -1), float32Step(q.threshold || 1e-30, 1));
  return Float32Array.from(values);
}

describe('post-softmax twin quantizer (pure function)', () => {
  it('computes the worked example by hand: 4 bits, low grid 1/28, high grid 1/7', () => {
    const q = softmaxTwin(4, 2);
    expect(q.high.scale).toBe(Math.fround(1 / 7));
    expect(q.low.scale).toBe(Math.fround(1 / 28));
    // 0.05·28 = 1.4 → 1; 0.25·28 = 7; 0.3 is past 7.5/28 = 0.268: 0.3·7 = 2.1 → 2; 0.95·7 → 7
    const got = twinFakeQuantize(Float32Array.of(0.05, 0.25, 0.3, 0.95, 0), q);
    const expected = [1 / 28, 7 / 28, 2 / 7, 1, 0];
    expected.forEach((v, i) => expect(got[i]).toBeCloseTo(v, 7));
  });

  it('never errs by more than half a step of the grid a value falls in', () => {
    for (const split of [0, 3, 7]) {
      const q = softmaxTwin(6, split);
      const x = attentionLike(5000, split + 1);
      const xq = twinFakeQuantize(x, q);
      x.forEach((v, i) => {
        const step = v < q.threshold ? q.low.scale : q.high.scale;
        expect(Math.abs(v - xq[i]!)).toBeLessThanOrEqual(step / 2 + 1e-7);
      });
    }
  });

  it('has 2^(b−1) levels per grid: at most 2^b distinct outputs', () => {
    const q = softmaxTwin(4, 3);
    const x = Float32Array.from({ length: 4001 }, (_, i) => i / 4000);
    expect(new Set(twinFakeQuantize(x, q)).size).toBeLessThanOrEqual(16);
  });

  it('measures the squared error of exactly what it quantizes to', () => {
    const q = softmaxTwin(5, 4);
    const x = attentionLike(3000, 8);
    const xq = twinFakeQuantize(x, q);
    let expected = 0;
    x.forEach((v, i) => (expected += (v - xq[i]!) ** 2));
    expect(twinSquaredError(x, q)).toBeCloseTo(expected, 12);
  });

  it('refuses a split or bit width out of range', () => {
    expect(() => softmaxTwin(4, -1)).toThrow(RangeError);
    expect(() => softmaxTwin(1, 2)).toThrow(RangeError);
    expect(() => geluTwin(4, 0)).toThrow(RangeError);
  });
});

describe('post-GELU twin quantizer (pure function)', () => {
  it('computes the worked example by hand: 4 bits, positive step 0.5', () => {
    const q = geluTwin(4, 0.5);
    const negative = Math.fround(0.16997124254703522 / 8);
    const got = twinFakeQuantize(Float32Array.of(-0.17, -0.01, 1.26, 9, -3), q);
    // −0.17/0.021246 = −8.0013 → −8; −0.47 → 0 (+0, as onnxruntime's Clip gives it);
    // 2.52 → 3; 18 → 7; −141 → −8
    expect(bits(got)).toEqual(bits(Float32Array.of(-8 * negative, 0, 1.5, 3.5, -8 * negative)));
  });

  it('keeps the negative step fixed whatever the positive step', () => {
    expect(geluTwin(6, 0.1).low).toEqual(geluTwin(6, 3).low);
    expect(geluTwin(6, 0.1).low.qmin).toBe(-32);
    expect(geluTwin(6, 0.1).high.qmax).toBe(31);
  });
});

describe('twin fake-quant subgraph in onnxruntime', () => {
  it('equals the pure function bit for bit on softmax-like and GELU-like values', async () => {
    const cases: [Float32Array, TwinQuantizer][] = [
      [attentionLike(20_000, 5), softmaxTwin(4, 0)],
      [attentionLike(20_000, 6), softmaxTwin(4, 5)],
      [attentionLike(20_000, 7), softmaxTwin(8, 12)],
      [geluLike(20_000, 8), geluTwin(4, 0.37)],
      [geluLike(20_000, 9), geluTwin(8, 0.0123)],
    ];
    for (const [x, q] of cases) {
      expect(bits(await onnxTwin(x, q))).toEqual(bits(twinFakeQuantize(x, q)));
    }
  });

  it('equals the pure function on the float32 values on either side of every boundary', async () => {
    for (const q of [softmaxTwin(5, 3), geluTwin(5, 0.21), geluTwin(3, 1)]) {
      const x = boundaryValues(q);
      expect(bits(await onnxTwin(x, q, [x.length], 17))).toEqual(bits(twinFakeQuantize(x, q)));
    }
  });

  it('keeps NaN, infinities and the shape of a [batch, heads, tokens, tokens] tensor', async () => {
    const dims = [2, 3, 4, 5];
    const x = attentionLike(120, 11);
    x.set([NaN, Infinity, -Infinity], 7);
    const q = softmaxTwin(4, 4);
    const out = await onnxTwin(x, q, dims);
    expect(out.length).toBe(120);
    expect(out[7]).toBeNaN();
    expect(out[8]).toBe(1);
    expect(bits(out)).toEqual(bits(twinFakeQuantize(x, q)));
  });

  it('evaluates candidates along a new axis, each as the pure function does', async () => {
    const x = geluLike(600, 12);
    const steps = [0.05, 0.2, 0.9];
    const quantizers = steps.map((s) => geluTwin(4, s));
    const { commands, output } = twinFakeQuantCommands('x', 'tq', { shape: [3, 1], quantizers });
    const model = buildModel([1, 600], commands, { [output]: DataType.FLOAT }, 13);
    const out = (await runModel(model, x, [1, 600]))[output] as Float32Array;
    expect(out.length).toBe(3 * 600);
    quantizers.forEach((q, c) => {
      expect(bits(out.subarray(c * 600, (c + 1) * 600))).toEqual(bits(twinFakeQuantize(x, q)));
    });
  });

  it('refuses candidates of different code ranges in one chain', () => {
    const quantizers = [geluTwin(4, 0.1), geluTwin(5, 0.1)];
    expect(() => twinFakeQuantCommands('x', 'tq', { shape: [2, 1], quantizers })).toThrow(
      RangeError,
    );
  });
});
