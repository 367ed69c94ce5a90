import { describe, expect, it } from 'vitest';
import { DataType } from '../../src/onnx/tensor.js';
import {
  mxElementEmax,
  mxFakeQuantCommands,
  mxFakeQuantize,
  mxSharedExponent,
  mxSquaredError,
  type MxQuantizer,
} from '../../src/quant/mx.js';
import { noiseInput } from '../fixtures.js';
import { buildModel, runModel } from './tiny-graph.js';

/** The MX chain run by onnxruntime on `x` of `dims`. */
async function onnxMx(x: Float32Array, q: MxQuantizer, dims: number[], opset = 13) {
  const { commands, output } = mxFakeQuantCommands('x', 'mx', q, opset);
  const model = buildModel(dims, commands, { [output]: DataType.FLOAT }, opset);
  return (await runModel(model, x, dims))[output] as Float32Array;
}

/** Blocks whose magnitudes span 2^−40 … 2^40, with zero blocks and exact powers of two. */
function blockValues(count: number, seed: number): Float32Array {
  const noise = noiseInput(count * 2, seed);
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) {
    const blockScale = Math.round(noise[2 * Math.floor(i / 32)]! * 40);
    out[i] = Math.fround(noise[2 * i + 1]! * 2 ** blockScale);
  }
  out.fill(0, 0, 32);
  out.set([4, -4, 2, 0.5, 1e-40], 32);
  out.set([448, 480, 512, -600, 2 ** -9], 64);
  return out;
}

describe('MX block scaling (pure function)', () => {
  it('takes emax of each element type: 8, 15, 4, 2 and 0 for INT8', () => {
    expect(['e4m3', 'e5m2', 'e3m2', 'e2m1', 'int8'].map((e) => mxElementEmax(e as never))).toEqual([
      8, 15, 4, 2, 0,
    ]);
  });

  it('shares X = 2^(floor(log2 max) − emax), clamped to E8M0 [−127, 127]', () => {
    expect(mxSharedExponent(3.7, 'e4m3')).toBe(1 - 8);
    expect(mxSharedExponent(4, 'e2m1')).toBe(0);
    expect(mxSharedExponent(3.99, 'e2m1')).toBe(-1);
    expect(mxSharedExponent(0, 'e2m1')).toBe(-127);
    expect(mxSharedExponent(Infinity, 'int8')).toBe(127);
  });

  it('computes the worked example by hand (E2M1, blocks of 4)', () => {
    const x = Float32Array.of(0.3, -1.2, 5, 0.9, 40, 3, -7, 0.1);
    // block 1: X = 2^(2 − 2) = 1; block 2: X = 2^(5 − 2) = 8, y = [5, 0.375, −0.875, 0.0125]
    // rounds to [4, 0.5, −1, 0] on {0, 0.5, 1, 1.5, 2, 3, 4, 6}
    const expected = [0.5, -1, 4, 1, 32, 4, -8, 0];
    expect(Array.from(mxFakeQuantize(x, 8, { element: 'e2m1', blockSize: 4 }))).toEqual(expected);
  });

  it('saturates a block maximum above the element max (E4M3: 480·X → 448·X)', () => {
    const x = new Float32Array(32);
    x[0] = 1.9375; // floor(log2) = 0, X = 2^−8, y = 496 → 448
    x[1] = 0.01; // y = 2.56 → 2.5
    const xq = mxFakeQuantize(x, 32, { element: 'e4m3' });
    expect(xq[0]).toBe(448 / 256);
    expect(xq[1]).toBe(2.5 / 256);
  });

  it('quantizes INT8 elements as k/64 with k in [−127, 127]', () => {
    const x = new Float32Array(32);
    x.set([1.5, -1.99, 0.0078125, 0.0234375]); // X = 1: 96/64, −127/64, ½/64 → 0, 1.5/64 → 2/64
    const xq = mxFakeQuantize(x, 32, { element: 'int8' });
    expect(Array.from(xq.subarray(0, 4))).toEqual([1.5, -127 / 64, 0, 2 / 64]);
  });

  it('refuses a last axis that is not a multiple of the block size', () => {
    expect(() => mxFakeQuantize(new Float32Array(48), 48, { element: 'e4m3' })).toThrow(RangeError);
  });

  it('loses less with more element bits (E2M1 > E3M2 > E4M3 > INT8 error on smooth data)', () => {
    const x = noiseInput(4096, 4);
    const errors = (['e2m1', 'e3m2', 'e4m3', 'int8'] as const).map((element) =>
      mxSquaredError(x, 64, { element }),
    );
    for (let i = 1; i < errors.length; i++) expect(errors[i]).toBeLessThan(errors[i - 1]!);
  });
});

describe('MX fake-quant subgraph in onnxruntime', () => {
  it('equals the pure function bit for bit for every element type (opset 13)', async () => {
    const dims = [2, 50, 256];
    const x = blockValues(25_600, 3);
    for (const element of ['e4m3', 'e5m2', 'e3m2', 'e2m1', 'int8'] as const) {
      const got = await onnxMx(x, { element }, dims);
      expect(Array.from(got)).toEqual(Array.from(mxFakeQuantize(x, 256, { element })));
    }
  });

  it('reads ReduceMax axes as an input at opset 18 and keeps blocks of 16', async () => {
    const dims = [10, 64];
    const x = blockValues(640, 8);
    const q = { element: 'e4m3', blockSize: 16 } as const;
    const got = await onnxMx(x, q, dims, 18);
    expect(Array.from(got)).toEqual(Array.from(mxFakeQuantize(x, 64, q)));
  });
});
