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
