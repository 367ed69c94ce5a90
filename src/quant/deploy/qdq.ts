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
import type {
  ActivationType,
  DeployLayerRow,
  DeployResult,
  LayerForm,
  WeightRange,
} from './types.js';
import { quantizeWeightPerChannel, type ChannelQuantizedWeight } from './weights.js';

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
  /**
   * `fastest` policy: a MatMul/Gemm whose calibrated input range is at least this many times
   * as wide as the median of its kind (`mlp.fc2` of every block, …) stays float (default 8).
   */
  outlierRatio?: number;
  /** Grid of the int8 weights (default `reduced`: exact on every x86 CPU, see `WeightRange`). */
  weightRange?: WeightRange;
  /**
   * int8 codes a method already chose for a layer (RepQ-ViT, GPTQ, ERQ: see method-weights.ts);
   * undefined quantizes the layer's float weight on `weightRange`.
   */
  weightOf?: (layer: LinearLayer) => ChannelQuantizedWeight | undefined;
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
 * The per-layer rule of the `fastest` policy. Top-1 on the 500 ImageNet validation images
 * (fp32 83.0 %), min-max ranges of 16 calibration images, whole-model latency as interleaved
 * medians at batch 1 and 2 threads (ranges over repeated runs on a shared machine):
 *
 *   all layers                                top-1    agreement   latency vs fp32
 *   dynamic, Conv float (dynamic-int8)        81.4 %   91.2 %      0.62–0.81×
 *   + blocks.7.mlp.fc2 float (this rule)      82.8 %   98.0 %      0.63–0.80×
 *   + Conv as QLinearConv                     81.4 %   95.4 %      0.66–0.89×
 *   static: no output Q, QLinearConv, QGemm  80.6 %   89.6 %      0.69–0.90×
 *   full QDQ: QLinearMatMul everywhere        76.4 %   83.8 %      0.80–0.93×
 *
 * - MatMul and Gemm → dynamic: the fastest kernel on every ViT-Tiny shape (table above), and the
 *   most accurate: each image's own range never clips. The Q after the MatMul that QLinearMatMul
 *   needs costs the most; with an earlier decoding (fp32 82.0 %) a Q on every fc2 output alone
 *   cost 7 points, on every fc1 output 2, on qkv or proj outputs ≤ 0.2.
 * - Conv (patch embedding) → float: QLinearConv is 0.52× the float Conv, but the Conv is about
 *   1 % of the model's time, and quantizing the normalised pixels and the patch embeddings cost
 *   1.4 points. `formOf` can still ask for 'qdq' (better ranges may keep it).
 * - Outlier inputs → float. One layer causes nearly all of the all-dynamic loss: the input of
 *   blocks.7.mlp.fc2 reaches 215 where the other fc2 inputs stay below 15 (massive activations),
 *   so one per-tensor grid cannot resolve its ordinary values; any other fc2 in float changes
 *   top-1 by at most 0.6 point. The calibrated ranges decide: a layer whose input range is
 *   `outlierRatio` (8) times the median of its kind stays float, about 1 % of the time each.
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
    const form = layerForm(layer, index, options, new Map());
    if (form !== 'float' && form !== 'nbits' && outlierChecked(layer, options)) {
      values.add(layer.input);
    }
    if (form === 'qdq' || form === 'qdq-float-output') values.add(layer.input);
    if (form === 'qdq') values.add(layer.output);
  }
  return [...values];
}

/** Whether the `fastest` policy checks this layer's input range for outliers. */
function outlierChecked(layer: LinearLayer, options: QdqOptions): boolean {
  const excluded = options.exclude?.some((e) => e === layer.role || e === layer.node);
  return (options.policy ?? 'fastest') === 'fastest' && !excluded && !options.formOf?.(layer);
}

/** Role without its block index: `blocks.7.mlp.fc2` → `mlp.fc2`. */
function roleKind(role: string): string {
  return role.replace(/^blocks\.\d+\./, '');
}

/**
 * Layers whose input range is at least `ratio` times as wide as the median width of their
 * kind's inputs, with that factor.
 */
function outlierLayers(
  layers: readonly LinearLayer[],
  ranges: ActivationRanges,
  ratio: number,
): Map<string, string> {
  const widths = new Map<string, number[]>();
  const widthOf = (layer: LinearLayer) => {
    const range = ranges.get(layer.input);
    return range ? range.max - range.min : undefined;
  };
  for (const layer of layers) {
    const width = widthOf(layer);
    if (width === undefined) continue;
    const kind = roleKind(layer.role);
    widths.set(kind, [...(widths.get(kind) ?? []), width]);
  }
  const outliers = new Map<string, string>();
  for (const layer of layers) {
    const kind = roleKind(layer.role);
    const sorted = [...(widths.get(kind) ?? [])].sort((a, b) => a - b);
    const median = sorted[Math.floor(sorted.length / 2)];
    const width = widthOf(layer);
    if (width === undefined || !median || width < ratio * median) continue;
    const factor = (width / median).toFixed(1);
    outliers.set(
      layer.role,
      `input range ${width.toPrecision(4)} is ${factor}× the median of ${kind}`,
    );
  }
  return outliers;
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
  const linear = deployLayers(model, structure);
  const checked = linear.filter((l) => l.opType !== 'Conv' && outlierChecked(l, options));
  // the check needs every such layer's input range: activationParams names a missing one
  for (const layer of checked) activationParams(ranges, layer.input, context.type);
  const outliers = outlierLayers(checked, ranges, options.outlierRatio ?? 8);
  const layers = linear.map((layer) => {
    const form = layerForm(layer, index, options, outliers);
    switch (form) {
      case 'qdq':
      case 'qdq-float-output':
        return addQdqLayer(context, layer, form, options);
      case 'dynamic':
        return addDynamicLayer(
          context.builder,
          index,
          layer,
          reason(layer, options),
          options.weightRange,
          options.weightOf?.(layer),
        );
      default:
        return floatRow(index, layer, reason(layer, options, outliers));
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

function layerForm(
  layer: LinearLayer,
  index: GraphIndex,
  options: QdqOptions,
  outliers: ReadonlyMap<string, string>,
): LayerForm {
  const excluded = options.exclude?.some((e) => e === layer.role || e === layer.node);
  if (excluded || outliers.has(layer.role)) return 'float';
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

function reason(
  layer: LinearLayer,
  options: QdqOptions,
  outliers: ReadonlyMap<string, string> = new Map(),
): string {
  if (options.exclude?.some((e) => e === layer.role || e === layer.node)) return 'excluded';
  const outlier = outliers.get(layer.role);
  if (outlier) return `fastest policy: ${outlier}, kept float`;
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

  const weight =
    options.weightOf?.(layer) ?? quantizeWeightPerChannel(index, layer, options.weightRange);
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
