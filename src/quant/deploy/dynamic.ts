/**
 * Recipe `dynamic-int8`: int8 weights per output channel, activations quantized at run time.
 * Each MatMul/Gemm layer becomes
 *
 *   DynamicQuantizeLinear(x) → MatMulInteger(x_q, W_q, x_zp) → Cast → Mul(·, x_scale·w_scale)
 *     → Add(·, bias)
 *
 * which onnxruntime's MatMulIntegerToFloatFusion and DynamicQuantizeMatMulFusion turn into one
 * DynamicQuantizeMatMul. The fusions ask for: the DynamicQuantizeLinear read by that one
 * MatMulInteger only (so a shared input gets one per layer); the scale product computed by a
 * Mul whose inputs are (x_scale, w_scale) in that order; the bias as the *second* input of the
 * Add, a constant with a known shape [N]; the weight, its scale and zero point constants.
 * Per-channel weight scales ([N]) fuse; so the weight keeps one scale per output channel.
 *
 * The patch-embedding Conv stays float: ConvInteger has no fused dynamic kernel worth having on
 * CPU, and it is about 2 % of the ViT-Tiny's multiply-accumulates.
 *
 * On the ViT-Tiny (batch 1, 2 threads): 0.62–0.81× the fp32 latency over repeated interleaved
 * runs, 49 of 50 layers as DynamicQuantizeMatMul, top-1 81.4 % against 83.0 % on the 500
 * validation images. Nearly all of that loss comes from one layer with outlier inputs
 * (blocks.7.mlp.fc2); this recipe needs no calibration and so cannot see it — `exclude` it, or
 * use w8a8, whose calibrated ranges find it (82.8 %). Those numbers are for full-range weights on
 * an AVX-512 VNNI CPU; on an AVX2 CPU full-range weights fell to 77.6 % (w8a8 82.4 %) because
 * pairs of u8·s8 products saturate there, and the default reduced grid gives 80.0 % (w8a8 82.6 %,
 * agreement with fp32 97.4 %): see `WeightRange`.
 */
import type { ModelProto } from 'onnx-buf';
import { GraphIndex } from '../../graph/graph.js';
import { applyCommands } from '../../graph/commands.js';
import { DataType } from '../../onnx/tensor.js';
import type { LinearLayer } from '../../vit/types.js';
import { RewriteBuilder } from './builder.js';
import { deployLayers, type LayerSource } from './layers.js';
import type { DeployLayerRow, DeployResult, WeightRange } from './types.js';
import { quantizeWeightPerChannel, type ChannelQuantizedWeight } from './weights.js';

export interface DynamicOptions {
  /** Roles (or node names) to leave in float. */
  exclude?: readonly string[];
  /** Grid of the int8 weights (default `reduced`: exact on every x86 CPU, see `WeightRange`). */
  weightRange?: WeightRange;
}

/** Exports `model` with every MatMul/Gemm layer in the dynamic int8 form. */
export function exportDynamic(
  model: ModelProto,
  structure?: LayerSource,
  options: DynamicOptions = {},
): DeployResult {
  const index = new GraphIndex(model);
  const builder = new RewriteBuilder(model);
  const exclude = new Set(options.exclude ?? []);
  const layers: DeployLayerRow[] = [];
  for (const layer of deployLayers(model, structure)) {
    if (layer.opType === 'Conv' || exclude.has(layer.role) || exclude.has(layer.node)) {
      const reason = layer.opType === 'Conv' ? 'Conv has no fused dynamic kernel' : 'excluded';
      layers.push(floatRow(index, layer, reason));
      continue;
    }
    layers.push(addDynamicLayer(builder, index, layer, 'dynamic-int8 recipe', options.weightRange));
  }
  const result = applyCommands(model, builder.commands, {
    removeUnused: true,
    context: 'dynamic-int8 export',
  });
  return { model: result, layers };
}

/**
 * Replaces one MatMul/Gemm layer (and its bias Add) by the dynamic chain; the chain's last node
 * writes the layer's original biased output, so consumers and graph outputs keep their names.
 */
export function addDynamicLayer(
  builder: RewriteBuilder,
  index: GraphIndex,
  layer: LinearLayer,
  reason: string,
  weightRange?: WeightRange,
  given?: ChannelQuantizedWeight,
): DeployLayerRow {
  const weight = given ?? quantizeWeightPerChannel(index, layer, weightRange);
  const [k, n] = [layer.inFeatures, layer.outFeatures];
  const codes = weight.axis === 1 ? weight.values : transpose(weight.values, n, k);
  const base = layer.node;
  const w = builder.initializer(`${layer.weight}_quantized`, DataType.INT8, [k, n], codes);
  const ws = builder.floats(`${layer.weight}_scale`, weight.scales, [n]);

  const [xq, xs, xzp] = builder.node(
    `${base}_DynamicQuantizeLinear`,
    'DynamicQuantizeLinear',
    [layer.input],
    3,
  ) as [string, string, string];
  const integerInputs = [xq, w, xzp];
  if (weight.zeroPoints) {
    // per-column zero points of B: MatMulInteger and the fused kernel both take them
    const zp = builder.initializer(
      `${layer.weight}_zero_point`,
      DataType.INT8,
      [n],
      weight.zeroPoints,
    );
    integerInputs.push(zp);
  }
  const [acc] = builder.node(`${base}_MatMulInteger`, 'MatMulInteger', integerInputs);
  const [accFloat] = builder.node(`${base}_Cast`, 'Cast', [acc!], 1, { to: DataType.FLOAT });
  const [scale] = builder.node(`${base}_scale_Mul`, 'Mul', [xs, ws]);
  const bias = layer.bias ? index.constantFloat32(layer.bias) : undefined;
  const final = layer.biasedOutput;
  if (bias) {
    const [y] = builder.node(`${base}_output_Mul`, 'Mul', [accFloat!, scale!]);
    const b = builder.floats(`${layer.bias}_vector`, bias, [n]);
    builder.nodeTo(`${base}_bias_Add`, 'Add', [y!, b], final);
  } else {
    builder.nodeTo(`${base}_output_Mul`, 'Mul', [accFloat!, scale!], final);
  }
  builder.push({ kind: 'removeNode', name: layer.node });
  if (layer.biasNode) builder.push({ kind: 'removeNode', name: layer.biasNode });
  return row(layer, 'dynamic', reason, weightBytes(weight, 4 * k * n));
}

/** [rows, cols] → [cols, rows] of int8 codes. */
function transpose(values: Int8Array, rows: number, cols: number): Int8Array {
  const out = new Int8Array(values.length);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) out[c * rows + r] = values[r * cols + c]!;
  }
  return out;
}

function weightBytes(weight: ChannelQuantizedWeight, before: number) {
  const zeroPoints = weight.zeroPoints?.length ?? 0;
  return { before, after: weight.values.length + 4 * weight.scales.length + zeroPoints };
}

export function row(
  layer: LinearLayer,
  form: DeployLayerRow['form'],
  reason: string,
  weightBytes: DeployLayerRow['weightBytes'],
): DeployLayerRow {
  const { role, node, opType, weight } = layer;
  return { role, node, opType, weight, form, reason, weightBytes };
}

/** The report row of a layer left in float. */
export function floatRow(index: GraphIndex, layer: LinearLayer, reason: string): DeployLayerRow {
  const bytes = 4 * (index.constantFloat32(layer.weight)?.length ?? 0);
  return row(layer, 'float', reason, { before: bytes, after: bytes });
}
