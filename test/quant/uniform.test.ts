import { describe, expect, it } from 'vitest';
import { DataType, floatTensor, makeTensor } from '../../src/onnx/tensor.js';
import type { Command } from '../../src/graph/commands.js';
import {
  asymmetricParams,
  dequantize,
  fakeQuantize,
  intRange,
  quantize,
  roundHalfEven,
  symmetricParams,
  type UniformParams,
} from '../../src/quant/uniform.js';
import { noiseInput } from '../fixtures.js';
import { buildModel, nodeCommand, runModel } from './tiny-graph.js';

/** QuantizeLinear → DequantizeLinear of `x` in onnxruntime, returning the codes and values. */
async function onnxQdq(
  x: Float32Array,
  dims: number[],
  params: readonly UniformParams[],
  signed: boolean,
  axis?: number,
) {
  const perAxis = axis !== undefined;
  const scaleDims = perAxis ? [params.length] : [];
  const zeroPoints = params.map((p) => p.zeroPoint);
  const zeroType = signed ? DataType.INT8 : DataType.UINT8;
  const commands: Command[] = [
    {
      kind: 'addInitializer',
      tensor: floatTensor('s', scaleDims, Float32Array.from(params.map((p) => p.scale))),
    },
    {
      kind: 'addInitializer',
      tensor: makeTensor(
        'z',
        zeroType,
        scaleDims,
        signed ? Int8Array.from(zeroPoints) : Uint8Array.from(zeroPoints),
      ),
    },
    nodeCommand('QuantizeLinear', ['x', 's', 'z'], 'q', perAxis ? { axis } : {}),
    nodeCommand('DequantizeLinear', ['q', 's', 'z'], 'y', perAxis ? { axis } : {}),
  ];
  const model = buildModel(dims, commands, { q: zeroType, y: DataType.FLOAT }, 13);
  const out = await runModel(model, x, dims);
  const codes = out['q'] as Int8Array | Uint8Array;
  return { codes: Array.from(codes), values: Array.from(out['y'] as Float32Array) };
}

/** Values k·step for k in [−count, count]: with scale 2·step every odd k is an exact .5 tie. */
function ladder(step: number, count: number): Float32Array {
  return Float32Array.from({ length: 2 * count + 1 }, (_, i) => (i - count) * step);
}

describe('roundHalfEven', () => {
  it('rounds ties to the even neighbour, as ONNX Round and QuantizeLinear do', () => {
    const cases: [number, number][] = [
      [0.5, 0],
      [1.5, 2],
      [2.5, 2],
      [3.5, 4],
      [-0.5, -0],
      [-1.5, -2],
      [-2.5, -2],
      [2.4, 2],
      [2.6, 3],
      [-2.6, -3],
      [126.5, 126],
      [127.5, 128],
    ];
    for (const [x, expected] of cases) expect(roundHalfEven(x)).toBe(expected);
  });
});

describe('uniform parameters', () => {
  it('give the documented worked examples', () => {
    expect(asymmetricParams(-1, 3, intRange(8, false))).toEqual({ scale: 4 / 255, zeroPoint: 64 });
    expect(symmetricParams(-0.5, 1.27, intRange(8, true)).scale).toBeCloseTo(0.01, 12);
    expect(intRange(4, true)).toEqual({ qmin: -8, qmax: 7 });
    expect(intRange(3, false)).toEqual({ qmin: 0, qmax: 7 });
  });

  it('widen a range that excludes zero so that zero stays exact', () => {
    const p = asymmetricParams(2, 6, intRange(8, false));
    expect(p.zeroPoint).toBe(0);
    expect(p.scale).toBeCloseTo(6 / 255, 12);
  });
});

describe('quantize and dequantize', () => {
  it('equal onnxruntime QuantizeLinear/DequantizeLinear bit for bit, uint8 per tensor with ties', async () => {
    const x = ladder(0.25, 600);
    const params = [{ scale: 0.5, zeroPoint: 128 }];
    const range = intRange(8, false);
    const onnx = await onnxQdq(x, [x.length], params, false);
    expect(Array.from(quantize(x, params, range))).toEqual(onnx.codes);
    expect(Array.from(fakeQuantize(x, params, range))).toEqual(onnx.values);
  });

  it('equal onnxruntime bit for bit, int8 per tensor, ties and an awkward scale', async () => {
    const range = intRange(8, true);
    for (const params of [[{ scale: 0.125, zeroPoint: -3 }], [{ scale: 0.0137, zeroPoint: 5 }]]) {
      const x = Float32Array.of(...ladder(0.0625, 200), ...noiseInput(500, 3).map((v) => v * 3));
      const onnx = await onnxQdq(x, [x.length], params, true);
      expect(Array.from(quantize(x, params, range))).toEqual(onnx.codes);
      expect(Array.from(fakeQuantize(x, params, range))).toEqual(onnx.values);
    }
  });

  it('equal onnxruntime bit for bit per channel, on either axis, int8 and uint8', async () => {
    const rows = 4;
    const cols = 96;
    const x = new Float32Array(rows * cols);
    const noise = noiseInput(x.length, 11);
    for (let i = 0; i < x.length; i++) {
      // first half: exact ties for the channel scales below; second half: noise
      const col = i % cols;
      x[i] = col < cols / 2 ? (col - cols / 4 + 0.5) * 0.25 * 2 ** -(i % 3) : noise[i]! * 4;
    }
    const cases: { signed: boolean; axis: number; params: UniformParams[] }[] = [
      {
        signed: true,
        axis: 0,
        params: [0.25, 0.125, 0.0625, 0.031].map((scale, c) => ({ scale, zeroPoint: c - 2 })),
      },
      {
        signed: false,
        axis: 1,
        params: Array.from({ length: cols }, (_, c) => ({
          scale: 2 ** -(c % 4) * 0.25,
          zeroPoint: 100 + c,
        })),
      },
    ];
    for (const { signed, axis, params } of cases) {
      const dims = [rows, cols];
      const range = intRange(8, signed);
      const onnx = await onnxQdq(x, dims, params, signed, axis);
      expect(Array.from(quantize(x, params, range, dims, axis))).toEqual(onnx.codes);
      const codes = quantize(x, params, range, dims, axis);
      expect(Array.from(dequantize(codes, params, dims, axis))).toEqual(onnx.values);
    }
  });
});
