import { beforeAll, describe, expect, it } from 'vitest';
import type { ModelProto } from 'onnx-buf';
import { GraphIndex } from '../../../src/graph/graph.js';
import { loadModel, serializeModel } from '../../../src/onnx/model-io.js';
import { DataType } from '../../../src/onnx/tensor.js';
import { countIntegerKernels } from '../../../src/quant/deploy/kernels.js';
import { methodWeights, repqForDeployment } from '../../../src/quant/deploy/method-weights.js';
import { exportQdq, qdqCalibrationValues } from '../../../src/quant/deploy/qdq.js';
import { quantizeWeightOnGrids } from '../../../src/quant/deploy/weights.js';
import { insertRepQQuantizers, type RepQCalibration } from '../../../src/quant/methods/repq.js';
import type { CaptureBatch } from '../../../src/runtime/capture.js';
import { createSession, floatInput } from '../../../src/runtime/session.js';
import { recognizeViT } from '../../../src/vit/index.js';
import { vitMnist, vitTiny } from '../../fixtures.js';
import { calibrationImages, minMaxRanges, mnistDigits, top1, validationImages } from './helpers.js';
import {
  bias,
  matmulLayer,
  matmulWithBias,
  maxAbsDiff,
  runModel,
  TinyGraph,
  weight,
} from './tiny.js';

// 7-bit grids (unsigned codes 0..127) for the three columns of `weight`, with binary scales so
// that every division is exact; stored as int8 they shift by 64. By hand:
// column 0, Δ = 1/32, z = 60: 1.27·32 = 40.64 → 41, −0.3·32 = −9.6 → −10, 0.05·32 = 1.6 → 2,
//   0.6·32 = 19.2 → 19; stored q + z − 64 = 37, −14, −2, 15; zero point −4.
// column 1, Δ = 1/128, z = 70: 0.5·128 = 64 and 0.635·128 = 81.28 → 81 both exceed 127 − 70 and
//   clamp to the top code 127 (stored 63); −0.2·128 = −25.6 → −26, stored −20; 12.8 → 13 → 19;
//   zero point 6.
// column 2, Δ = 1/16, z = 64: −40.64 → −41, 16, 0.32 → 0, −8; zero point 0.
const grids = [
  { scale: 1 / 32, zeroPoint: 60 },
  { scale: 1 / 128, zeroPoint: 70 },
  { scale: 1 / 16, zeroPoint: 64 },
];
const storedCodes = [37, 63, -41, -14, 63, 16, -2, -20, 0, 15, 19, -8];
const storedZeroPoints = [-4, 6, 0];
const fc = [matmulLayer(4, 3)];
const inputDims = ['N', 5, 4];
const dims = [2, 5, 4];
const x = Float32Array.from({ length: 40 }, (_, i) => Math.sin(i * 1.3) * 2 + 0.5);

function tinyWeightOf() {
  const index = new GraphIndex(matmulWithBias(weight, bias, inputDims));
  return () => quantizeWeightOnGrids(index, fc[0]!, grids, 7);
}

/** DynamicQuantizeLinear → MatMulInteger with per-column B zero points → scales → bias. */
function dynamicReference() {
  const g = new TinyGraph();
  g.tensor('Wq', DataType.INT8, [4, 3], Int8Array.from(storedCodes));
  g.tensor('zw', DataType.INT8, [3], Int8Array.from(storedZeroPoints));
  g.floats(
    'sw',
    [3],
    grids.map((p) => p.scale),
  );
  g.floats('b', [3], bias);
  g.opMulti('DynamicQuantizeLinear', ['x'], ['xq', 'sx', 'zx']);
  g.op('MatMulInteger', ['xq', 'Wq', 'zx', 'zw'], 'acc');
  g.op('Cast', ['acc'], 'accf', { to: DataType.FLOAT });
  g.op('Mul', ['accf', 'sx'], 'xs');
  g.op('Mul', ['xs', 'sw'], 'xw');
  g.op('Add', ['xw', 'b'], 'y');
  return g.model(inputDims);
}

describe('quantizeWeightOnGrids', () => {
  it('stores a 7-bit grid as int8 codes in [−64, 63] with shifted zero points, by hand', () => {
    const w = tinyWeightOf()();
    expect(Array.from(w.values)).toEqual(storedCodes);
    expect(Array.from(w.zeroPoints!)).toEqual(storedZeroPoints);
    expect(Array.from(w.scales)).toEqual(grids.map((p) => p.scale));
  });

  it('refuses a zero point int8 cannot hold, naming the weight', () => {
    const index = new GraphIndex(matmulWithBias(weight, bias, inputDims));
    const bad = [...grids.slice(0, 2), { scale: 1, zeroPoint: 300 }];
    expect(() => quantizeWeightOnGrids(index, fc[0]!, bad, 7)).toThrow(/W: channel 2/);
  });
});

describe('exportQdq with a method’s weights', () => {
  it('runs them as DynamicQuantizeMatMul with per-column zero points, as MatMulInteger does', async () => {
    const original = matmulWithBias(weight, bias, inputDims);
    const ranges = new Map([['x', { min: -2, max: 3 }]]);
    const { model } = exportQdq(original, fc, ranges, { weightOf: tinyWeightOf() });
    const kernels = await countIntegerKernels(model, fc, original);
    expect(kernels.layers.map((l) => l.kernel)).toEqual(['DynamicQuantizeMatMul']);
    const got = await runModel(model, x, dims);
    const expected = await runModel(dynamicReference(), x, dims);
    expect(maxAbsDiff(got, expected)).toBeLessThan(1e-5);
  });

  it('runs them as MatMulIntegerToFloat in the static policy, equal to Q/DQ in float', async () => {
    const original = matmulWithBias(weight, bias, inputDims);
    const ranges = new Map([['x', { min: -2, max: 3 }]]);
    const options = { policy: 'static' as const, weightOf: tinyWeightOf() };
    const { model } = exportQdq(original, fc, ranges, options);
    const kernels = await countIntegerKernels(model, fc, original);
    expect(kernels.layers.map((l) => l.kernel)).toEqual(['MatMulIntegerToFloat']);

    // x on uint8 [−2, 3]: scale 5/255, zero point round(2·255/5) = 102; the weight's DQ by hand
    const g = new TinyGraph();
    g.floats('sx', [], [5 / 255]);
    g.tensor('zx', DataType.UINT8, [], Uint8Array.of(102));
    const dequantized = storedCodes.map(
      (q, i) => (q - storedZeroPoints[i % 3]!) * grids[i % 3]!.scale,
    );
    g.floats('W', [4, 3], dequantized);
    g.floats('b', [3], bias);
    g.op('QuantizeLinear', ['x', 'sx', 'zx'], 'xq');
    g.op('DequantizeLinear', ['xq', 'sx', 'zx'], 'xd');
    g.op('MatMul', ['xd', 'W'], 'xw');
    g.op('Add', ['xw', 'b'], 'y');
    const got = await runModel(model, x, dims);
    const expected = await runModel(g.model(inputDims), x, dims);
    expect(maxAbsDiff(got, expected)).toBeLessThan(1e-4);
  });
});

async function logits(model: ModelProto, inputs: readonly Float32Array[], sampleDims: number[]) {
  const session = await createSession(serializeModel(model), { threads: 1 });
  try {
    const out: Float32Array[] = [];
    for (const data of inputs) {
      const result = await session.run({
        [session.inputNames[0]!]: floatInput(data, [1, ...sampleDims]),
      });
      out.push(Float32Array.from(result[session.outputNames[0]!]!.data as Float32Array));
    }
    return out;
  } finally {
    await session.release();
  }
}

function relativeDiff(a: readonly Float32Array[], b: readonly Float32Array[]): number {
  let worst = 0;
  a.forEach((row, i) => {
    const scale = Math.max(...Array.from(row, Math.abs));
    worst = Math.max(worst, maxAbsDiff(row, b[i]!) / scale);
  });
  return worst;
}

/** The w8a8 export of a RepQ-ViT deployment calibration, ranges from `calibration` inputs. */
async function exportRepQ(
  repq: RepQCalibration,
  inputs: readonly Float32Array[],
  sampleDims: number[],
) {
  const options = { weightOf: methodWeights(repq) };
  const values = qdqCalibrationValues(repq.model, repq.structure, options);
  const ranges = await minMaxRanges(repq.model, values, inputs, sampleDims);
  return exportQdq(repq.model, repq.structure, ranges, options).model;
}

/** Every initializer of `simulated` that is a layer weight, by the layer's node. */
function bakedWeights(simulated: ModelProto, repq: RepQCalibration) {
  const index = new GraphIndex(simulated);
  return repq.quantizers.weights
    .filter((s) => s.layer.opType !== 'Conv')
    .map((s) => {
      const values = index.constantFloat32(index.node(s.layer.node).input[1]!)!;
      const { inFeatures: k, outFeatures: n } = s.layer;
      // the exports store [in, out]; a Gemm with transB keeps [out, in]
      if (s.layer.weightLayout === 'in-out') return { layer: s.layer, values };
      return {
        layer: s.layer,
        values: Float32Array.from(values, (_, i) => values[(i % n) * k + Math.floor(i / n)]!),
      };
    });
}

/** The weight a deployable export stores, decoded by hand: (q − z)·Δ per output channel. */
function decodedWeight(exported: ModelProto, name: string, outFeatures: number): Float32Array {
  const index = new GraphIndex(exported);
  const codes = index.constantFloat32(`${name}_quantized`)!;
  const scales = index.constantFloat32(`${name}_scale`)!;
  const zeros = index.constantFloat32(`${name}_zero_point`) ?? new Float32Array(outFeatures);
  return Float32Array.from(codes, (q, i) =>
    Math.fround((q - zeros[i % outFeatures]!) * scales[i % outFeatures]!),
  );
}

describe('RepQ-ViT, GPTQ and ERQ deployed as w8a8 on the MNIST ViT', () => {
  let model: ModelProto;
  let calibration: CaptureBatch[];
  let calibInputs: Float32Array[];
  let digits: Float32Array[];
  const sampleDims = [1, 28, 28];

  beforeAll(async () => {
    model = await loadModel(vitMnist);
    calibInputs = (await mnistDigits(1032)).slice(1000).map((d) => d.data);
    calibration = [
      {
        data: Float32Array.from(calibInputs.flatMap((d) => Array.from(d))),
        dims: [32, ...sampleDims],
      },
    ];
    digits = (await mnistDigits(16)).map((d) => d.data);
  });

  it('reparameterises without changing the float outputs (onnxruntime on both models)', async () => {
    const repq = await repqForDeployment(model, recognizeViT(model), calibration);
    expect(repq.report.norms.filter((n) => n.reparameterised).length).toBeGreaterThan(0);
    const before = await logits(model, digits, sampleDims);
    const after = await logits(repq.model, digits, sampleDims);
    expect(relativeDiff(after, before)).toBeLessThan(1e-4);
  });

  for (const weights of ['rtn', 'gptq', 'erq'] as const) {
    it(`exports ${weights} weights that decode to the simulated model's, all layers integer`, async () => {
      const repq = await repqForDeployment(model, recognizeViT(model), calibration, { weights });
      const exported = await exportRepQ(repq, calibInputs.slice(0, 8), sampleDims);
      const kernels = await countIntegerKernels(exported, repq.structure, repq.model);
      expect(kernels.integer).toBe(kernels.layers.length);

      const simulated = insertRepQQuantizers(repq).model;
      for (const { layer, values } of bakedWeights(simulated, repq)) {
        const decoded = decodedWeight(exported, layer.weight, layer.outFeatures);
        expect(maxAbsDiff(decoded, values), layer.role).toBe(0);
      }
      const classes = await top1(exported, digits, sampleDims);
      const reference = await top1(model, digits, sampleDims);
      expect(classes.filter((c, i) => c === reference[i]).length).toBeGreaterThanOrEqual(15);
    });
  }
});

describe.each([
  ['17', vitTiny.opset17],
  ['13 (decomposed LayerNorm)', vitTiny.opset13],
])('RepQ-ViT deployed as w8a8 on the ViT-Tiny, opset %s', (_, path) => {
  it('keeps the float outputs through the reparameterisation and runs ≥ 48 integer kernels', async () => {
    const model = await loadModel(path);
    const images = await calibrationImages(4);
    const batch = {
      data: Float32Array.from(images.flatMap((d) => Array.from(d))),
      dims: [4, 3, 224, 224],
    };
    const repq = await repqForDeployment(model, recognizeViT(model), [batch]);
    expect(repq.report.norms.filter((n) => n.reparameterised)).toHaveLength(24);

    const inputs = (await validationImages(2, 97)).map((v) => v.data);
    const before = await logits(model, inputs, [3, 224, 224]);
    const after = await logits(repq.model, inputs, [3, 224, 224]);
    expect(relativeDiff(after, before)).toBeLessThan(1e-3);

    const exported = await exportRepQ(repq, images, [3, 224, 224]);
    const kernels = await countIntegerKernels(exported, repq.structure, repq.model);
    expect(kernels.integer).toBeGreaterThanOrEqual(48);
    expect(kernels.opCounts['DynamicQuantizeMatMul']).toBeGreaterThanOrEqual(47);
  });
});
