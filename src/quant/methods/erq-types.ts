/** The public contract of ERQ on a RepQ-ViT calibration (erq.ts): options and report. */
import { z } from 'zod';
import type { Reporting } from '../../log.js';
import type { SessionOptions } from '../../runtime/session.js';
import type { ReplacedActivations, SkippedLayerReport } from './gptq-types.js';

/** ERQ's candidate percentiles of the weight grids re-initialised after Aqer (notes §13 (2)). */
export const erqWeightPercentiles: readonly number[] = [
  0.97, 0.98, 0.99, 0.995, 0.9995, 0.9997, 0.9999, 0.99995, 0.99999, 1,
];

export const erqOptionsSchema = z.strictObject({
  /**
   * Ridge λ of both closed forms on Gram matrices summed over every calibration token (ERQ:
   * 0.1 · coe; its example run on 32 images uses coe = 10 000).
   */
  lambda: z.number().min(0).default(1000),
  /** λ for a layer reading one row per image (the head; ERQ: 0.1). */
  headLambda: z.number().min(0).default(0.1),
  /** Most greedy flips per output channel and half in the rounding refinement (ERQ: 100). */
  refineSteps: z.number().int().min(0).default(100),
  /** Run Aqer (the weight correction for activation quantization error). */
  aqer: z.boolean().default(true),
  /** Run Wqer; without it the corrected weights are rounded to nearest. */
  wqer: z.boolean().default(true),
  /** Candidate percentiles of the weight grids chosen again after Aqer. */
  percentiles: z
    .array(z.number().gt(0.5).max(1))
    .min(1)
    .default([...erqWeightPercentiles]),
});

export type ErqOptions = z.input<typeof erqOptionsSchema> &
  Reporting &
  SessionOptions &
  ReplacedActivations;
export type ErqSettings = z.output<typeof erqOptionsSchema>;

/**
 * One layer's output error ‖X̃Ŵ + b̂ − (XW + b)‖² over the calibration rows, relative to
 * ‖XW + b‖²: with RepQ-ViT's round-to-nearest weights, and with ERQ's.
 */
export interface ErqLayerReport {
  role: string;
  inFeatures: number;
  outFeatures: number;
  roundingError: number;
  error: number;
}

export interface ErqReport extends ErqSettings {
  method: 'erq';
  /** onnxruntime passes over the calibration images (ERQ's statistics are taken in parallel). */
  passes: number;
  seconds: number;
  layers: ErqLayerReport[];
  skipped: SkippedLayerReport[];
}
