import { describe, expect, it } from 'vitest';
import { CalibrationError } from '../../../src/errors.js';
import { GraphIndex } from '../../../src/graph/graph.js';
import { serializeModel } from '../../../src/onnx/model-io.js';
import { DataType } from '../../../src/onnx/tensor.js';
import { countIntegerKernels } from '../../../src/quant/deploy/kernels.js';
import { exportQdq, qdqCalibrationValues } from '../../../src/quant/deploy/qdq.js';
import {
  gemmLayer,
  gemmTransB,
  bareMatMulLayer,
  matmulLayer,
  matmulWithBias,
  maxAbsDiff,
  runModel,
  TinyGraph,
  weight,
  weightCodes,
  weightScales,
  fullWeightCodes,
  bias,
} from './tiny.js';
import { saturationCase } from './saturation.js';

// x calibrated to [−1, 3]: uint8 scale 4/255, zero point round(1 / (4/255)) = round(63.75) = 64.
// MatMul output calibrated to [−6, 6]: scale 12/255, zero point round(127.5) = 128 (half to even).
const xScale = 4 / 255;
const xZeroPoint = 64;
const yScale = 12 / 255;
const yZeroPoint = 128;
const ranges = new Map([
  ['x', { min: -1, max: 3 }],
  ['xw', { min: -6, max: 6 }],
]);
// a symbolic batch, as ViT exports have (see the TODO on static shapes in qdq.ts)
const inputDims = ['N', 5, 4];
const dims = [2, 5, 4];
const fc = [matmulLayer(4, 3)];
const head = [gemmLayer(4, 3)];
const x = Float32Array.from({ length: 40 }, (_, i) => -1 + ((i * 7) % 40) / 10);

/** QuantizeLinear(x) → MatMulInteger → Cast → Mul(sx·sw), written with plain ONNX ops. */
function integerMatMulReference(g: TinyGraph): string {
  g.floats('sx', [], [xScale]);
  g.tensor('zx', DataType.UINT8, [], Uint8Array.of(xZeroPoint));
  g.tensor('Wq', DataType.INT8, [4, 3], Int8Array.from(weightCodes));
  g.floats(
    'sxsw',
    [3],
    weightScales.map((s) => Math.fround(Math.fround(xScale) * s)),
  );
  g.op('QuantizeLinear', ['x', 'sx', 'zx'], 'xq');
  g.op('MatMulInteger', ['xq', 'Wq', 'zx'], 'acc');
  g.op('Cast', ['acc'], 'accf', { to: DataType.FLOAT });
  return g.op('Mul', ['accf', 'sxsw'], 'xw');
}

describe('exportQdq on one MatMul with bias', () => {
  it('stores the hand-computed activation and per-channel weight parameters', () => {
    const { model } = exportQdq(matmulWithBias(weight, bias, inputDims), fc, ranges, {
      policy: 'full-qdq',
    });
    const index = new GraphIndex(model);
    expect(index.constantFloat32('x_scale')![0]).toBe(Math.fround(xScale));
    expect(Array.from(index.constantFloat32('x_zero_point')!)).toEqual([xZeroPoint]);
    expect(index.constantFloat32('xw_scale')![0]).toBe(Math.fround(yScale));
    expect(Array.from(index.constantFloat32('xw_zero_point')!)).toEqual([yZeroPoint]);
    expect(Array.from(index.constantFloat32('W_quantized')!)).toEqual(weightCodes);
    const scales = Array.from(index.constantFloat32('W_scale')!);
    expect(scales).toEqual(weightScales.map(Math.fround));
  });

  it('full QDQ runs as QLinearMatMul and matches QuantizeLinear/MatMulInteger to one output step', async () => {
    const original = matmulWithBias(weight, bias, inputDims);
    const { model } = exportQdq(original, fc, ranges, { policy: 'full-qdq' });
    const kernels = await countIntegerKernels(model, fc, original);
    expect(kernels.layers.map((l) => l.kernel)).toEqual(['QLinearMatMul']);

    const g = new TinyGraph();
    const xw = integerMatMulReference(g);
    g.floats('sy', [], [yScale]);
    g.tensor('zy', DataType.UINT8, [], Uint8Array.of(yZeroPoint));
    g.floats('b', [3], bias);
    g.op('QuantizeLinear', [xw, 'sy', 'zy'], 'yq');
    g.op('DequantizeLinear', ['yq', 'sy', 'zy'], 'yd');
    g.op('Add', ['b', 'yd'], 'y');
    const expected = await runModel(g.model(inputDims), x, dims, { optimization: 'disabled' });

    const actual = await runModel(model, x, dims);
    // the fused kernel requantizes in fixed point: a value on a rounding edge may move one step
    expect(maxAbsDiff(actual, expected)).toBeLessThanOrEqual(yScale * 1.001);
  });

  it('the static policy runs as MatMulIntegerToFloat and matches the integer reference', async () => {
    const original = matmulWithBias(weight, bias, inputDims);
    const { model } = exportQdq(original, fc, ranges, { policy: 'static' });
    const kernels = await countIntegerKernels(model, fc, original);
    expect(kernels.layers.map((l) => l.kernel)).toEqual(['MatMulIntegerToFloat']);

    const g = new TinyGraph();
    const xw = integerMatMulReference(g);
    g.floats('b', [3], bias);
    g.op('Add', ['b', xw], 'y');
    const expected = await runModel(g.model(inputDims), x, dims, { optimization: 'disabled' });
    expect(maxAbsDiff(await runModel(model, x, dims), expected)).toBeLessThan(1e-5);
  });

  it('puts the weights on the full grid when asked, with the hand-made full-grid codes', () => {
    const original = matmulWithBias(weight, bias, inputDims);
    const { model } = exportQdq(original, fc, ranges, { policy: 'static', weightRange: 'full' });
    const index = new GraphIndex(model);
    expect(Array.from(index.constantFloat32('W_quantized')!)).toEqual(fullWeightCodes);
    const scales = Array.from(index.constantFloat32('W_scale')!);
    expect(scales).toEqual([0.01, 0.005, 0.02].map(Math.fround));
  });

  it('the static policy gives the exact product where two u8·s8 products overflow int16', async () => {
    const { model, x: input, dims, expected } = saturationCase();
    const { model: exported } = exportQdq(model, saturationCase.layers, saturationCase.ranges, {
      policy: 'static',
    });
    const kernels = await countIntegerKernels(exported, saturationCase.layers, model);
    expect(kernels.layers.map((l) => l.kernel)).toEqual(['MatMulIntegerToFloat']);
    expect(maxAbsDiff(await runModel(exported, input, dims), expected)).toBeLessThan(1e-4);
  });

  it('asks only for the ranges its policy quantizes with', () => {
    const model = matmulWithBias(weight, bias, inputDims);
    expect(qdqCalibrationValues(model, fc, { policy: 'full-qdq' })).toEqual(['x', 'xw']);
    expect(qdqCalibrationValues(model, fc, { policy: 'static' })).toEqual(['x']);
    // the fastest policy reads the input ranges to find layers with outlier inputs
    expect(qdqCalibrationValues(model, fc)).toEqual(['x']);
  });

  it('refuses a quantized value without a calibrated range, naming the value', () => {
    const model = matmulWithBias(weight, bias, inputDims);
    const call = () => exportQdq(model, fc, new Map(), { policy: 'static' });
    expect(call).toThrow(CalibrationError);
    expect(call).toThrow(/no calibrated range for x/);
  });

  it('leaves the input model untouched', () => {
    const model = matmulWithBias(weight, bias, inputDims);
    const before = serializeModel(model);
    exportQdq(model, fc, ranges, { policy: 'full-qdq' });
    expect(serializeModel(model)).toEqual(before);
  });
});

describe('exportQdq on other layouts', () => {
  it('puts a Gemm bias into the integer unit as int32 with scale sx·sw (QGemm)', async () => {
    const transposed = weight[0]!.map((_, c) => weight.map((row) => row[c]!));
    const original = gemmTransB(transposed, bias, [5, 4]);
    const { model } = exportQdq(original, head, ranges, { policy: 'static' });
    const kernels = await countIntegerKernels(model, head, original);
    expect(kernels.layers.map((l) => l.kernel)).toEqual(['QGemm']);

    const index = new GraphIndex(model);
    const biasCodes = Array.from(index.constantFloat32('b_quantized')!);
    // hand: b / (sx · sw) with sx = 4/255 and sw = max|W_c| / 64, i.e. b · 255 · 64 / (4 · max):
    // 0.1234 · 16320 / 5.08 = 396.4 → 396; −0.2468 · 16320 / 2.54 = −1585.7 → −1586;
    // 0.4321 · 16320 / 10.16 = 694.1 → 694
    expect(biasCodes).toEqual([396, -1586, 694]);

    const g = new TinyGraph();
    const xw = integerMatMulReference(g);
    const [s0, s1, s2] = weightScales as [number, number, number];
    g.floats('bq', [3], [396 * xScale * s0, -1586 * xScale * s1, 694 * xScale * s2]);
    g.op('Add', [xw, 'bq'], 'y');
    const x2 = x.subarray(0, 20);
    const expected = await runModel(g.model([5, 4]), x2, [5, 4], { optimization: 'disabled' });
    expect(maxAbsDiff(await runModel(model, x2, [5, 4]), expected)).toBeLessThan(1e-5);
  });

  it('the fastest policy keeps float a layer whose input range is 8× its kind’s median', () => {
    const g = new TinyGraph();
    const layers = ['a', 'b', 'c'].map((input, i) => {
      g.op('Identity', ['x'], input);
      g.floats(`W${i}`, [4, 3], weight.flat());
      g.op('MatMul', [input, `W${i}`], `y${i}`);
      return bareMatMulLayer(`blocks.${i}.mlp.fc2`, input, `W${i}`, `y${i}`);
    });
    g.op('Sum', ['y0', 'y1', 'y2'], 'y');
    const widths = new Map([
      ['a', { min: -1, max: 1 }],
      ['b', { min: -1, max: 1.5 }],
      ['c', { min: -1, max: 30 }], // 31 wide: 12.4× the median width 2.5
    ]);
    const { layers: rows } = exportQdq(g.model(inputDims), layers, widths);
    expect(rows.map((r) => r.form)).toEqual(['dynamic', 'dynamic', 'float']);
    expect(rows[2]!.reason).toMatch(/12\.4× the median of mlp\.fc2/);
  });

  it('shares one Q/DQ pair between two layers reading the same value', () => {
    const g = new TinyGraph();
    g.floats('W1', [4, 3], weight.flat());
    g.floats(
      'W2',
      [4, 3],
      weight.flat().map((w) => -w),
    );
    g.op('MatMul', ['x', 'W1'], 'a');
    g.op('MatMul', ['x', 'W2'], 'b');
    g.op('Add', ['a', 'b'], 'y');
    const both = new Map([...ranges, ['a', { min: -6, max: 6 }], ['b', { min: -6, max: 6 }]]);
    const layers = ['a', 'b'].map((out, i) => bareMatMulLayer(out, 'x', `W${i + 1}`, out));
    const { model } = exportQdq(g.model(inputDims), layers, both, { policy: 'full-qdq' });
    const quantizers = model.graph!.node.filter((n) => n.opType === 'QuantizeLinear');
    expect(quantizers.filter((n) => n.input[0] === 'x')).toHaveLength(1);
    expect(quantizers).toHaveLength(3);
  });
});
