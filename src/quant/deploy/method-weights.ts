/**
 * The methods whose result integer kernels can run, made ready for the w8a8 export: RepQ-ViT's
 * reparameterised model (each post-LayerNorm per-channel grid folded into the LayerNorm's γ, β
 * and the next layer's weight and bias, so that one per-tensor grid serves the whole tensor) and
 * the weights RepQ-ViT, GPTQ or ERQ set on their per-output-channel grids.
 *
 * The weight grids are asymmetric with `bits` unsigned codes; stored as int8 codes shifted by
 * 2^(bits−1) with per-channel zero points (weights.ts), they dequantize to exactly the values the
 * simulated model carries. On the `reduced` weight range (the default, see `WeightRange`) the
 * methods run on 7-bit grids, whose stored codes lie in [−64, 63], so that onnxruntime's u8×s8
 * kernel cannot saturate on CPUs without VNNI; `full` gives them 8 bits.
 *
 * What integer kernels cannot run stays as the w8a8 export has it: activations are quantized per
 * tensor by the export's own forms (at run time for MatMul/Gemm), so RepQ-ViT's calibrated
 * activation grids and its log√2 softmax quantizer are not part of the deployed model; softmax,
 * LayerNorm and GELU stay float, and so does the patch-embedding Conv.
 */
import type { ModelProto } from 'onnx-buf';
import { GraphIndex } from '../../graph/graph.js';
import type { Reporting } from '../../log.js';
import type { CaptureBatch } from '../../runtime/capture.js';
import { recognizeViT } from '../../vit/index.js';
import type { LinearLayer, ViTStructure } from '../../vit/types.js';
import { erqWeights } from '../methods/erq.js';
import { gptqWeights } from '../methods/gptq.js';
import { calibrateRepQ, type RepQCalibration } from '../methods/repq.js';
import { defaultWeightRange, type WeightRange } from './types.js';
import { quantizeWeightOnGrids, type ChannelQuantizedWeight } from './weights.js';

/** How the weights are set on RepQ-ViT's grids. */
export type DeployWeightMethod = 'rtn' | 'gptq' | 'erq';

export interface RepQDeployOptions extends Reporting {
  weights?: DeployWeightMethod;
  weightRange?: WeightRange;
  threads?: number;
}

/** Bits of the method's weight grids whose int8 storage fits `range`. */
export function methodWeightBits(range: WeightRange = defaultWeightRange): number {
  return range === 'full' ? 8 : 7;
}

/**
 * RepQ-ViT calibrated at 8-bit activations on `images`, with the weight values of
 * `options.weights`. Its model is the reparameterised float model; `structure` is recognised
 * again from it, since the weight methods may rename what they rewrite.
 */
export async function repqForDeployment(
  model: ModelProto,
  structure: ViTStructure,
  images: readonly CaptureBatch[],
  options: RepQDeployOptions = {},
): Promise<RepQCalibration> {
  const { weights = 'rtn', weightRange, ...run } = options;
  const bits = { weightBits: methodWeightBits(weightRange), activationBits: 8 };
  const calibration = await calibrateRepQ(model, structure, images, { ...bits, ...run });
  const weighted =
    weights === 'gptq'
      ? await gptqWeights(calibration, images, run)
      : weights === 'erq'
        ? await erqWeights(calibration, images, run)
        : calibration;
  return { ...weighted, structure: recognizeViT(weighted.model) };
}

/**
 * The int8 weights of a calibration's MatMul/Gemm layers on its grids, for `exportQdq`'s
 * `weightOf`; undefined for a Conv (QLinearConv takes only zero weight zero points, and the
 * export keeps the patch embedding float anyway) and for a layer without a setting.
 */
export function methodWeights(
  calibration: RepQCalibration,
): (layer: LinearLayer) => ChannelQuantizedWeight | undefined {
  const index = new GraphIndex(calibration.model);
  const settings = new Map(calibration.quantizers.weights.map((s) => [s.layer.node, s]));
  return (layer) => {
    const setting = settings.get(layer.node);
    if (!setting || layer.opType === 'Conv') return undefined;
    return quantizeWeightOnGrids(index, layer, setting.params, setting.bits);
  };
}
