import { describe, expect, it } from 'vitest';
import type { Command } from '../../src/graph/commands.js';
import { DataType, floatTensor } from '../../src/onnx/tensor.js';
import type { ActivationQuantizer } from '../../src/quant/quantizer-commands.js';
import {
  calibrateSequentially,
  sliceModel,
  type CapturedTensor,
  type PointGroup,
} from '../../src/quant/sequential.js';
import { fakeQuantize, intRange } from '../../src/quant/uniform.js';
import { noiseInput } from '../fixtures.js';
import { buildModel, nodeCommand, runModel } from './tiny-graph.js';

const dims = [2, 3, 4];
const weights = [1, 2, 3].map((seed) => noiseInput(16, seed + 20));

/** x → MatMul W1 → y1 → MatMul W2 → y2 → MatMul W3 → out, every weight [4, 4]. */
function chainModel() {
  const commands: Command[] = weights.map((w, i) => ({
    kind: 'addInitializer',
    tensor: floatTensor(`W${i + 1}`, [4, 4], w),
  }));
  commands.push(
    nodeCommand('MatMul', ['x', 'W1'], 'y1'),
    nodeCommand('MatMul', ['y1', 'W2'], 'y2'),
    nodeCommand('MatMul', ['y2', 'W3'], 'out'),
  );
  return buildModel(dims, commands, { out: DataType.FLOAT });
}

/** x·W run by onnxruntime: the independent judge of what each MatMul gives. */
async function matmul(x: Float32Array, w: Float32Array): Promise<Float32Array> {
  const model = buildModel(
    dims,
    [
      { kind: 'addInitializer', tensor: floatTensor('W', [4, 4], w) },
      nodeCommand('MatMul', ['x', 'W'], 'y'),
    ],
    { y: DataType.FLOAT },
  );
  return (await runModel(model, x, dims)).y as Float32Array;
}

const grid = { kind: 'affine', bits: 4, scale: 0.05, zeroPoint: 8 } as const;
const fq = (x: Float32Array) => fakeQuantize(x, [grid], intRange(4, false));

const groups: PointGroup[] = [
  { value: 'x', roles: ['a'], nodes: ['MatMul_y1'] },
  { value: 'y1', roles: ['b'], nodes: ['MatMul_y2'] },
  { value: 'y2', roles: ['c'], nodes: ['MatMul_out'] },
];

describe('sequential calibration', () => {
  it('shows each quantizer the tensor the already-quantized model produces', async () => {
    const images = [noiseInput(24, 1), noiseInput(24, 2)].map((data) => ({ data, dims }));
    const seen = new Map<string, CapturedTensor>();
    const choose = (group: PointGroup, tensor: CapturedTensor): ActivationQuantizer => {
      seen.set(group.value, tensor);
      return grid;
    };
    // cut at y1: the second segment starts from y1 computed with x quantized. At 'basic':
    // from 'extended' on, onnxruntime folds the chain's final Mul by the scale into the MatMul
    // (alpha of a FusedMatMul), which rounds differently from the ops as written
    const result = await calibrateSequentially(chainModel(), ['x', 'y1'], groups, images, choose, {
      optimization: 'basic',
    });

    const y1 = await Promise.all(images.map((b) => matmul(fq(b.data), weights[0]!)));
    const y2 = await Promise.all(y1.map((y) => matmul(fq(y), weights[1]!)));
    const joined = (parts: Float32Array[]) => Array.from(parts.flatMap((p) => Array.from(p)));
    expect(Array.from(seen.get('x')!.data)).toEqual(joined(images.map((b) => b.data)));
    expect(Array.from(seen.get('y1')!.data)).toEqual(joined(y1));
    expect(Array.from(seen.get('y2')!.data)).toEqual(joined(y2));
    expect(seen.get('y2')!.dims).toEqual([4, 3, 4]);
    expect(result.settings.map((s) => s.value)).toEqual(['x', 'y1', 'y2']);
    // x and y1 are segment inputs, known without a run: only the boundary y1 and y2 are run
    expect(result.passes).toBe(2);
  });

  it('calibrates quantizers that do not depend on each other in one pass', async () => {
    // y2 and z both read y1 only: one level
    const model = buildModel(
      dims,
      [
        { kind: 'addInitializer', tensor: floatTensor('W1', [4, 4], weights[0]!) },
        { kind: 'addInitializer', tensor: floatTensor('W2', [4, 4], weights[1]!) },
        nodeCommand('MatMul', ['x', 'W1'], 'y1'),
        nodeCommand('Relu', ['y1'], 'r'),
        nodeCommand('Neg', ['y1'], 'n'),
        nodeCommand('MatMul', ['r', 'W2'], 'a'),
        nodeCommand('MatMul', ['n', 'W2'], 'b'),
        nodeCommand('Add', ['a', 'b'], 'out'),
      ],
      { out: DataType.FLOAT },
    );
    const both: PointGroup[] = [
      { value: 'r', roles: ['r'], nodes: ['MatMul_a'] },
      { value: 'n', roles: ['n'], nodes: ['MatMul_b'] },
    ];
    const images = [{ data: noiseInput(24, 3), dims }];
    const result = await calibrateSequentially(model, ['x'], both, images, () => grid);
    expect(result.passes).toBe(1);
  });

  it('slices a model between two values, sharing its nodes without changing them', () => {
    const model = chainModel();
    const before = JSON.stringify(model.graph!.node.map((n) => [n.name, n.input, n.output]));
    const { model: slice, inputs } = sliceModel(model, ['y1'], ['y2']);
    expect(slice.graph!.node.map((n) => n.name)).toEqual(['MatMul_y2']);
    expect(inputs).toEqual(['y1']);
    expect(slice.graph!.input.map((v) => v.name)).toEqual(['y1']);
    expect(slice.graph!.initializer.map((t) => t.name)).toEqual(['W2']);
    // from two known values, only what lies after the nearest one
    const later = sliceModel(model, ['x', 'y2'], ['out']);
    expect(later.model.graph!.node.map((n) => n.name)).toEqual(['MatMul_out']);
    expect(later.inputs).toEqual(['y2']);
    expect(JSON.stringify(model.graph!.node.map((n) => [n.name, n.input, n.output]))).toBe(before);
  });
});
