/**
 * Recipe `w8a8`: int8 weights (symmetric, per output channel) and uint8 activations, each layer
 * in the form onnxruntime's CPU EP runs as an integer kernel (peer-tools C.5):
 *
 *   qdq               Q(x)→DQ, W int8→DQ(axis = output channel), [bias int32 (scale sx·sw)→DQ]
 *                     → MatMul/Conv/Gemm → Q → DQ          ⇒ QLinearMatMul / QLinearConv / QGemm
 *   qdq-float-output  the same without the output Q       ⇒ MatMulIntegerToFloat / QGemm
 *   dynamic           DynamicQuantizeLinear + MatMulInteger (dynamic.ts) ⇒ DynamicQuantizeMatMul
 *
 * The output Q of `qdq` must be the MatMul's only consumer, so a MatMul followed by a bias Add is
 * quantized at the MatMul output and the Add stays float after the DQ; Conv and Gemm take the
 * bias into the unit as int32. A value read by several quantized layers gets one shared Q→DQ.
 * Which form each layer takes is a policy; the default, `fastest`, is the rule measured below.
 */
import type { ModelProto } from 'onnx-buf';
import { makeNode } from '../../graph/attributes.js';
import { applyCommands } from '../../graph/commands.js';
import { GraphIndex } from '../../graph/graph.js';
import { opsetVersion } from '../../onnx/model-io.js';
import { assertNever } from '../../errors.js';
import { DataType } from '../../onnx/tensor.js';
import type { LinearLayer } from '../../vit/types.js';
import type { UniformParams } from '../uniform.js';
import { roundHalfEven } from '../uniform.js';
import type { ActivationRanges } from '../types.js';
import {
  activationDataType,
  activationParams,
  RewriteBuilder,
  weightDequantize,
  zeroPointData,
} from './builder.js';
import { addDynamicLayer, floatRow, row } from './dynamic.js';
import { deployLayers, type LayerSource } from './layers.js';
import type { ActivationType, DeployLayerRow, DeployResult, LayerForm } from './types.js';
import { quantizeWeightPerChannel } from './weights.js';

/**
 * Which forms the layers take, unless `formOf` says otherwise for a layer:
 * - `fastest` (default): the form measured fastest on onnxruntime's CPU EP without losing
 *   accuracy (see `fastestForm`).
 * - `static`: every layer static, with calibrated activation scales only — MatMul without an
 *   output Q (MatMulIntegerToFloat), Gemm → QGemm, Conv → QLinearConv.
 * - `full-qdq`: a Q after every layer output that is not a graph output (QLinearMatMul), the
 *   layout of integer-only runtimes; it loses the most accuracy (see below).
 */
export type QdqPolicy = 'fastest' | 'static' | 'full-qdq';

export interface QdqOptions {
  policy?: QdqPolicy;
  /** Element type of quantized activations (default uint8, see `defaultActivationType`). */
  activationType?: ActivationType;
  /** Form of individual layers; undefined falls back to the policy. */
  formOf?: (layer: LinearLayer) => LayerForm | undefined;
  /** Roles (or node names) to leave in float. */
  exclude?: readonly string[];
}

/**
 * uint8 asymmetric activations (U8S8). Measured once with onnxruntime-node 1.31 on this
 * project's 2-core AMD EPYC (AVX-512 VNNI), ViT-Tiny block 5 layers, batch 1, 2 threads, median
 * of 1950 interleaved runs, time relative to the float layer:
 *
 *   layer (in→out)   QLinearMatMul u8 / s8   MatMulIntegerToFloat u8 / s8   DynamicQuantizeMatMul
 *   qkv  (192→576)   0.53 / 0.53             0.48 / 0.48                    0.41
 *   proj (192→192)   0.53 / 0.53             0.49 / 0.48                    0.44
 *   fc1  (192→768)   0.49 / 0.49             0.44 / 0.43                    0.37
 *   fc2  (768→192)   0.39 / 0.38             0.38 / 0.37                    0.35
 *   patch Conv       QLinearConv u8 0.52 (int8 does not fuse: Conv stays float)
 *   head Gemm        QGemm 0.73–0.80, DynamicQuantizeMatMul 0.76 (both ~0.03 ms)
 *
 * int8 is no faster for MatMul and leaves the Conv unfused, so uint8 it is.
 */
export const defaultActivationType: ActivationType = 'uint8';

/**
 * The per-layer rule of the `fastest` policy, from the table above and from top-1 on the 500
 * ImageNet validation images (fp32 82.0 % with this project's decoding; min-max ranges of 16
 * calibration images; whole-model latency interleaved, batch 1, 2 threads):
 * - MatMul and Gemm → dynamic: the fastest on every ViT-Tiny shape and the most accurate
 *   (81.4 %: each image's own range never clips). Static without output Q: 80.8 % and 0.72–0.79×
 *   fp32 against 0.56–0.69× for dynamic; a Q after every MatMul (QLinearMatMul): 74.0 %, almost
 *   all of it from the Q on the fc2 output (that Q alone: 75.0 %; on fc1 alone: 79.2 %; on qkv
 *   or proj: ≤ 0.2 point).
 * - Conv (patch embedding) → float: QLinearConv is 0.52× the float Conv, but the Conv is about
 *   1 % of the model's time, and quantizing the normalised pixels and the patch embeddings cost
 *   0.8 point (81.4 → 80.6 %). `formOf` can still ask for 'qdq' (better ranges may keep it).
 * Measured with min-max ranges; observers that clip outliers may make static forms competitive.
 *
 * TODO: with fully static input shapes, onnxruntime's MatMulAddFusion rewrites a MatMul and its
 * bias Add into Reshape→Gemm→Reshape before the QDQ selectors run, so a `qdq-float-output`
 * MatMul with a bias Add stays float there (dynamic and `qdq` forms are not affected). ViT
 * exports have a symbolic batch, which avoids it; what must hold before this mark goes: a
 * static-shape ViT exported with the `static` policy counts ≥ 90 % integer kernels.
 */
export function fastestForm(layer: LinearLayer): LayerForm {
  return layer.opType === 'Conv' ? 'float' : 'dynamic';
}

function policyForm(layer: LinearLayer, policy: QdqPolicy): LayerForm {
  switch (policy) {
    case 'fastest':
      return fastestForm(layer);
    case 'static':
      return layer.opType === 'Conv' ? 'qdq' : 'qdq-float-output';
    case 'full-qdq':
      return 'qdq';
    default:
      return assertNever(policy, 'QDQ policy');
  }
}

/** Values whose calibrated ranges `exportQdq` needs with the same options. */
export function qdqCalibrationValues(
  model: ModelProto,
  structure?: LayerSource,
  options: QdqOptions = {},
): string[] {
  const index = new GraphIndex(model);
  const values = new Set<string>();
  for (const layer of deployLayers(model, structure)) {
    const form = layerForm(layer, index, options);
    if (form === 'qdq' || form === 'qdq-float-output') values.add(layer.input);
    if (form === 'qdq') values.add(layer.output);
  }
  return [...values];
}

/** Exports `model` in the w8a8 layout; `ranges` must cover `qdqCalibrationValues`. */
export function exportQdq(
  model: ModelProto,
  structure: LayerSource | undefined,
  ranges: ActivationRanges,
  options: QdqOptions = {},
): DeployResult {
  const index = new GraphIndex(model);
  const context: QdqContext = {
    index,
    builder: new RewriteBuilder(model),
    ranges,
    type: options.activationType ?? defaultActivationType,
    sharedInputs: new Map(),
  };
  const layers = deployLayers(model, structure).map((layer) => {
    const form = layerForm(layer, index, options);
    switch (form) {
      case 'qdq':
      case 'qdq-float-output':
        return addQdqLayer(context, layer, form, options);
      case 'dynamic':
        return addDynamicLayer(context.builder, index, layer, reason(layer, options));
      default:
        return floatRow(index, layer, reason(layer, options));
    }
  });
  const result = applyCommands(model, context.builder.commands, {
    removeUnused: true,
    context: 'w8a8 QDQ export',
  });
  return { model: result, layers };
}

interface QdqContext {
  index: GraphIndex;
  builder: RewriteBuilder;
  ranges: ActivationRanges;
  type: ActivationType;
  /** Quantized value → output of its shared DequantizeLinear. */
  sharedInputs: Map<string, string>;
}

function layerForm(layer: LinearLayer, index: GraphIndex, options: QdqOptions): LayerForm {
  const excluded = options.exclude?.some((e) => e === layer.role || e === layer.node);
  if (excluded) return 'float';
  const form = options.formOf?.(layer) ?? policyForm(layer, options.policy ?? 'fastest');
  if (form === 'nbits') return 'float';
  if (layer.opType === 'Conv' && form !== 'float') {
    // ConvInteger has no fused dynamic kernel, and a Conv without output Q does not fuse
    return (opsetVersion(index.model) ?? 0) >= 13 ? 'qdq' : 'float';
  }
  // per-axis DequantizeLinear needs opset 13; the dynamic form works from opset 10
  if (form !== 'dynamic' && form !== 'float' && (opsetVersion(index.model) ?? 0) < 13) {
    return 'dynamic';
  }
  // a quantized graph output would change what the model returns: keep it float
  if (form === 'qdq' && index.isGraphOutput(layer.output)) return 'qdq-float-output';
  return form;
}

function reason(layer: LinearLayer, options: QdqOptions): string {
  if (options.exclude?.some((e) => e === layer.role || e === layer.node)) return 'excluded';
  if (options.formOf?.(layer)) return 'formOf option';
  return `${options.policy ?? 'fastest'} policy`;
}

function addQdqLayer(
  context: QdqContext,
  layer: LinearLayer,
  form: 'qdq' | 'qdq-float-output',
  options: QdqOptions,
): DeployLayerRow {
  const { builder, index } = context;
  const xParams = activationParams(context.ranges, layer.input, context.type);
  const xDq = sharedQdq(context, layer.input, xParams);

  const weight = quantizeWeightPerChannel(index, layer);
  const wDq = weightDequantize(builder, layer.weight, weight, true);
  builder.push(
    { kind: 'setNodeInput', node: layer.node, index: 0, value: xDq },
    { kind: 'setNodeInput', node: layer.node, index: 1, value: wDq },
  );
  if (layer.bias && layer.opType !== 'MatMul') {
    const biasDq = int32Bias(context, layer, xParams.scale, weight.scales);
    builder.push({ kind: 'setNodeInput', node: layer.node, index: 2, value: biasDq });
  }
  if (form === 'qdq') outputQdq(context, layer);
  const [before, n] = [4 * weight.values.length, layer.outFeatures];
  return row(layer, form, reason(layer, options), { before, after: weight.values.length + 5 * n });
}

/** Q→DQ of an activation value, shared by every quantized layer that reads it. */
function sharedQdq(context: QdqContext, value: string, params: UniformParams): string {
  const existing = context.sharedInputs.get(value);
  if (existing) return existing;
  const { builder, type } = context;
  const scale = builder.floats(`${value}_scale`, Float32Array.of(params.scale));
  const zp = builder.initializer(
    `${value}_zero_point`,
    activationDataType(type),
    [],
    zeroPointData(params.zeroPoint, type),
  );
  const [q] = builder.node(`${value}_QuantizeLinear`, 'QuantizeLinear', [value, scale, zp]);
  const [dq] = builder.node(`${value}_DequantizeLinear`, 'DequantizeLinear', [q!, scale, zp]);
  context.sharedInputs.set(value, dq!);
  return dq!;
}

/** Q→DQ right after the layer's node; every other reader of the output reads the DQ. */
function outputQdq(context: QdqContext, layer: LinearLayer): void {
  const { builder, type } = context;
  const value = layer.output;
  const params = activationParams(context.ranges, value, type);
  const scale = builder.floats(`${value}_scale`, Float32Array.of(params.scale));
  const zp = builder.initializer(
    `${value}_zero_point`,
    activationDataType(type),
    [],
    zeroPointData(params.zeroPoint, type),
  );
  const qName = builder.name(`${value}_QuantizeLinear`);
  const q = builder.name(`${qName}_output`);
  builder.add(
    makeNode({ name: qName, opType: 'QuantizeLinear', inputs: [value, scale, zp], outputs: [q] }),
  );
  const [dq] = builder.node(`${value}_DequantizeLinear`, 'DequantizeLinear', [q, scale, zp]);
  builder.push({ kind: 'replaceUses', from: value, to: dq!, exceptNodes: [qName] });
}

/**
 * The bias as int32 codes with scale sx·sw_c per output channel (zero point 0), the layout
 * QLinearConv and QGemm take: q_c = roundHalfEven(b_c / (sx·sw_c)), clamped to int32.
 */
function int32Bias(
  context: QdqContext,
  layer: LinearLayer,
  inputScale: number,
  weightScales: Float32Array,
): string {
  const { builder, index } = context;
  const bias = index.constantFloat32(layer.bias!)!;
  const scales = new Float32Array(bias.length);
  const codes = new Int32Array(bias.length);
  for (let c = 0; c < bias.length; c++) {
    scales[c] = Math.fround(inputScale * weightScales[c]!);
    const q = roundHalfEven(bias[c]! / scales[c]!);
    codes[c] = Math.max(-(2 ** 31), Math.min(2 ** 31 - 1, q));
  }
  const b = builder.initializer(`${layer.bias}_quantized`, DataType.INT32, [bias.length], codes);
  const s = builder.floats(`${layer.bias}_scale`, scales, [bias.length]);
  const [dq] = builder.node(`${layer.bias}_DequantizeLinear`, 'DequantizeLinear', [b, s], 1, {
    axis: 0,
  });
  return dq!;
}
