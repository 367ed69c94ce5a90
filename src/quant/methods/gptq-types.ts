/**
 * The public contract of the weight methods that run on a RepQ-ViT calibration (gptq.ts,
 * erq.ts): their options and what they report.
 */
import { z } from 'zod';
import type { Reporting } from '../../log.js';
import type { SessionOptions } from '../../runtime/session.js';
import type { Replacement } from './replacement-chains.js';

export const gptqOptionsSchema = z.strictObject({
  /** λ = dampening · mean(diag H) added to the Gram's diagonal (GPTQ: 1 %). */
  dampening: z.number().min(0).max(1).default(0.01),
  /** Input channels per lazy update block (GPTQ: 128; the result does not depend on it). */
  blockSize: z.number().int().min(1).default(128),
  /** Quantize input channels by decreasing H_ii (GPTQ's act-order). */
  actOrder: z.boolean().default(false),
});

/**
 * Activation quantizers of another method (AdaLog's, I&S-ViT's) standing in for RepQ-ViT's:
 * the weight methods then correct for the inputs the final model really reads.
 */
export interface ReplacedActivations {
  replacements?: readonly Replacement[];
}

export type GptqOptions = z.input<typeof gptqOptionsSchema> &
  Reporting &
  SessionOptions &
  ReplacedActivations;
export type GptqSettings = z.output<typeof gptqOptionsSchema>;

/** One layer's proxy losses tr((W − Ŵ)ᵀ H (W − Ŵ)) relative to tr(Wᵀ H W). */
export interface WeightLayerReport {
  role: string;
  inFeatures: number;
  outFeatures: number;
  /** Round-to-nearest on the same grid, for comparison. */
  roundingLoss: number;
  /** The method's result. */
  loss: number;
}

export interface SkippedLayerReport {
  role: string;
  reason: string;
}

export interface GptqReport {
  method: 'gptq';
  dampening: number;
  blockSize: number;
  actOrder: boolean;
  /** onnxruntime passes over the calibration images (one per stage). */
  passes: number;
  seconds: number;
  layers: WeightLayerReport[];
  /** Layers left with RepQ-ViT's round-to-nearest weights, and why. */
  skipped: SkippedLayerReport[];
}
