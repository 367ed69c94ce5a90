import { describe, expect, it } from 'vitest';
import { DataType } from '../../src/onnx/tensor.js';
import type { QuantGrid } from '../../src/quant/observers.js';
import { fakeQuantCommands } from '../../src/quant/simulate.js';
import { fakeQuantize, intRange, type UniformParams } from '../../src/quant/uniform.js';
import { noiseInput } from '../fixtures.js';
import { buildModel, runModel } from './tiny-graph.js';

async function onnxFakeQuant(
  x: Float32Array,
  params: UniformParams,
  grid: QuantGrid,
  form: 'qdq' | 'float',
) {
  const { commands, output } = fakeQuantCommands('x', 'fq', params, grid, form);
  const model = buildModel([x.length], commands, { [output]: DataType.FLOAT });
  return unsignedZeros((await runModel(model, x, [x.length]))[output] as Float32Array);
}

/**
 * The values with −0 written as 0: Round keeps the sign of a zero (round(−0.3) = −0) where
 * DequantizeLinear gives +0; the two are the same number for every op that follows.
 */
function unsignedZeros(values: ArrayLike<number>): number[] {
  return Array.from(values, (v) => v + 0);
}

/** Exact ties for `scale` (x / scale = k + 0.5), then noise spread past the clip range. */
function tiesAndNoise(scale: number, spread: number): Float32Array {
  const ties = Array.from({ length: 41 }, (_, i) => (i - 20 + 0.5) * scale);
  return Float32Array.of(...ties, ...noiseInput(400, 5).map((v) => v * spread));
}

describe('fake-quant subgraphs', () => {
  it('run the 4-bit float chain in onnxruntime bit for bit like fakeQuantize', async () => {
    const cases: [UniformParams, QuantGrid][] = [
      [
        { scale: 0.25, zeroPoint: 3 },
        { bits: 4, signed: false, symmetric: false },
      ],
      [
        { scale: 0.0371, zeroPoint: 0 },
        { bits: 4, signed: true, symmetric: true },
      ],
      [
        { scale: 0.125, zeroPoint: -2 },
        { bits: 4, signed: true, symmetric: false },
      ],
    ];
    for (const [params, grid] of cases) {
      const x = tiesAndNoise(params.scale, 12 * params.scale);
      const expected = fakeQuantize(x, [params], intRange(grid.bits, grid.signed));
      expect(await onnxFakeQuant(x, params, grid, 'float')).toEqual(unsignedZeros(expected));
    }
  });

  it('run the float chain at 2, 3, 6 and 8 bits bit for bit like fakeQuantize', async () => {
    for (const bits of [2, 3, 6, 8]) {
      const params = { scale: 0.0173, zeroPoint: 2 ** (bits - 1) - 1 };
      const grid = { bits, signed: false, symmetric: false };
      const x = tiesAndNoise(params.scale, 2 ** bits * params.scale);
      const expected = fakeQuantize(x, [params], intRange(bits, false));
      expect(await onnxFakeQuant(x, params, grid, 'float')).toEqual(unsignedZeros(expected));
    }
  });

  it('give the same values as QuantizeLinear/DequantizeLinear at 8 bits', async () => {
    const params = { scale: 0.0219, zeroPoint: 77 };
    const grid = { bits: 8, signed: false, symmetric: false };
    const x = tiesAndNoise(params.scale, 200 * params.scale);
    const chain = await onnxFakeQuant(x, params, grid, 'float');
    expect(await onnxFakeQuant(x, params, grid, 'qdq')).toEqual(chain);
  });

  it('refuse a QuantizeLinear form below 8 bits, which would saturate to the 8-bit range', () => {
    const grid = { bits: 4, signed: false, symmetric: false };
    expect(() => fakeQuantCommands('x', 'fq', { scale: 1, zeroPoint: 0 }, grid, 'qdq')).toThrow(
      RangeError,
    );
  });
});
