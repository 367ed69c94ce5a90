/** Shared vocabulary of the deployable exports. */
import type { ModelProto } from 'onnx-buf';

/**
 * How one linear layer runs in an exported model:
 * - `qdq`: DQ on input and weight, Q→DQ on the output; onnxruntime fuses it into QLinearMatMul,
 *   QLinearConv or QGemm.
 * - `qdq-float-output`: DQ on input and weight, float output (QGemm or MatMulIntegerToFloat).
 * - `dynamic`: DynamicQuantizeLinear + MatMulInteger (+ bias), fused into DynamicQuantizeMatMul.
 * - `nbits`: com.microsoft MatMulNBits (block-quantized weight, float activations).
 * - `float`: left as it was.
 */
export type LayerForm = 'qdq' | 'qdq-float-output' | 'dynamic' | 'nbits' | 'float';

/** One row of an export report: what became of a linear layer, and why. */
export interface DeployLayerRow {
  role: string;
  node: string;
  opType: 'MatMul' | 'Gemm' | 'Conv';
  weight: string;
  form: LayerForm;
  /** Why this form was chosen (a rule, an option, or a reason the layer stayed float). */
  reason: string;
  /** Bytes of the layer's weight before and after the export. */
  weightBytes: { before: number; after: number };
}

/** What every export returns: a new model (the input is never modified) and its layers. */
export interface DeployResult {
  model: ModelProto;
  layers: DeployLayerRow[];
}

/** Element type of quantized activations: uint8 asymmetric (U8S8) or int8 asymmetric (S8S8). */
export type ActivationType = 'uint8' | 'int8';

/**
 * Grid of the int8 per-channel weights that onnxruntime multiplies with uint8 activations:
 * - `reduced` (default): codes in [−64, 64], scale max|W_c| / 64. onnxruntime's u8×s8 kernel
 *   on x86 CPUs without VNNI (AVX2, plain AVX-512) adds two u8·s8 products in a saturating
 *   int16 (`vpmaddubsw`); 2 · 255 · 64 = 32640 always fits, 2 · 255 · 127 = 64770 does not. The
 *   same model then gives the same results on every CPU, at one bit less of weight precision.
 * - `full`: codes in [−127, 127], scale max|W_c| / 127; a little more precise on CPUs whose
 *   kernel sums in 32 bits (x86 with AVX-512 VNNI or AVX-VNNI, ARM), and wrong on the others
 *   wherever a pair of products saturates — which CPU will run a model is rarely known when it
 *   is exported.
 */
export type WeightRange = 'reduced' | 'full';

/** The weight grid every export uses unless told otherwise (see `WeightRange`). */
export const defaultWeightRange: WeightRange = 'reduced';
