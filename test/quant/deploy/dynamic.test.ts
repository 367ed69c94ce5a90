import { describe, expect, it } from 'vitest';
import { GraphIndex } from '../../../src/graph/graph.js';
import { DataType } from '../../../src/onnx/tensor.js';
import { exportDynamic } from '../../../src/quant/deploy/dynamic.js';
import { countIntegerKernels } from '../../../src/quant/deploy/kernels.js';
import {
  gemmLayer,
  gemmTransB,
  matmulLayer,
  matmulWithBias,
  maxAbsDiff,
  runModel,
  TinyGraph,
  weight,
  weightCodes,
  weightScales,
  fullWeightCodes,
  fullWeightScales,
  bias,
} from './tiny.js';
import { saturationCase } from './saturation.js';

const fc = [matmulLayer(4, 3)];
const x = Float32Array.from({ length: 40 }, (_, i) => Math.sin(i * 1.3) * 2 + 0.5);

/** DynamicQuantizeLinear → MatMulInteger → Cast → Mul(x scale) → Mul(w scales) → Add(b). */
function dynamicReference(
  inputDims: (number | string)[],
  codes = weightCodes,
  scales = weightScales,
) {
  const g = new TinyGraph();
  g.tensor('Wq', DataType.INT8, [4, 3], Int8Array.from(codes));
  g.floats('sw', [3], scales);
  g.floats('b', [3], bias);
  g.opMulti('DynamicQuantizeLinear', ['x'], ['xq', 'sx', 'zx']);
  g.op('MatMulInteger', ['xq', 'Wq', 'zx'], 'acc');
  g.op('Cast', ['acc'], 'accf', { to: DataType.FLOAT });
  g.op('Mul', ['accf', 'sx'], 'xs');
  g.op('Mul', ['xs', 'sw'], 'xw');
  g.op('Add', ['xw', 'b'], 'y');
  return g.model(inputDims);
}

describe('exportDynamic', () => {
  it('turns MatMul + bias Add into one DynamicQuantizeMatMul', async () => {
    const original = matmulWithBias(weight, bias, ['N', 5, 4]);
    const { model, layers } = exportDynamic(original, fc);
    expect(layers.map((l) => l.form)).toEqual(['dynamic']);
    const kernels = await countIntegerKernels(model, fc, original);
    expect(kernels.layers.map((l) => l.kernel)).toEqual(['DynamicQuantizeMatMul']);
    expect(kernels.opCounts['Add']).toBeUndefined();
  });

  it('computes what DynamicQuantizeLinear and MatMulInteger compute with hand-made codes', async () => {
    const original = matmulWithBias(weight, bias, ['N', 5, 4]);
    const { model } = exportDynamic(original, fc);
    const index = new GraphIndex(model);
    expect(Array.from(index.constantFloat32('W_quantized')!)).toEqual(weightCodes);

    const expected = await runModel(dynamicReference(['N', 5, 4]), x, [2, 5, 4], {
      optimization: 'disabled',
    });
    expect(maxAbsDiff(await runModel(model, x, [2, 5, 4]), expected)).toBeLessThan(1e-5);
  });

  it('transposes a Gemm weight stored [out, in] and keeps the graph output name', async () => {
    const transposed = weight[0]!.map((_, c) => weight.map((row) => row[c]!));
    const original = gemmTransB(transposed, bias, ['N', 4]);
    const { model } = exportDynamic(original, [gemmLayer(4, 3)]);
    expect(model.graph!.output.map((o) => o.name)).toEqual(['y']);
    const index = new GraphIndex(model);
    expect(Array.from(index.constantFloat32('W_quantized')!)).toEqual(weightCodes);
    expect(index.constantDims('W_quantized')).toEqual([4, 3]);

    const x2 = x.subarray(0, 20);
    const expected = await runModel(dynamicReference(['N', 4]), x2, [5, 4], {
      optimization: 'disabled',
    });
    expect(maxAbsDiff(await runModel(model, x2, [5, 4]), expected)).toBeLessThan(1e-5);
  });

  it('puts the weights on the full grid when asked, with the hand-made full-grid codes', async () => {
    const original = matmulWithBias(weight, bias, ['N', 5, 4]);
    const { model } = exportDynamic(original, fc, { weightRange: 'full' });
    const index = new GraphIndex(model);
    expect(Array.from(index.constantFloat32('W_quantized')!)).toEqual(fullWeightCodes);

    const reference = dynamicReference(['N', 5, 4], fullWeightCodes, fullWeightScales);
    const expected = await runModel(reference, x, [2, 5, 4], { optimization: 'disabled' });
    expect(maxAbsDiff(await runModel(model, x, [2, 5, 4]), expected)).toBeLessThan(1e-5);
  });

  it('gives the exact product where two u8·s8 products overflow int16 (x86 without VNNI)', async () => {
    const { model, x: input, dims, expected } = saturationCase();
    const { model: exported } = exportDynamic(model, saturationCase.layers);
    expect(maxAbsDiff(await runModel(exported, input, dims), expected)).toBeLessThan(1e-4);
  });

  it('leaves excluded layers float', () => {
    const original = matmulWithBias(weight, bias, ['N', 5, 4]);
    const { model, layers } = exportDynamic(original, fc, { exclude: ['fc'] });
    expect(layers.map((l) => l.form)).toEqual(['float']);
    expect(model.graph!.node.map((n) => n.opType)).toEqual(['MatMul', 'Add']);
  });
});
