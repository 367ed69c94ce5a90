/**
 * The public contract of RepQ-ViT (repq.ts): its options, as recipes and the API give them, and
 * what it returns and reports.
 */
import type { ModelProto } from 'onnx-buf';
import { z } from 'zod';
import type { Reporting } from '../../log.js';
import type { SessionOptions } from '../../runtime/session.js';
import type { ViTStructure } from '../../vit/types.js';
import { repqPercentiles } from '../percentile-mse.js';
import type { KeptPoint } from '../quant-points.js';
import type { QuantizerSettings } from '../quantizer-commands.js';
import type { ErqReport } from './erq-types.js';
import type { GptqReport } from './gptq-types.js';

const bits = z.number().int().min(2).max(8);

export const repqOptionsSchema = z.strictObject({
  weightBits: bits,
  activationBits: bits,
  /** Bits of the image entering the patch embedding (RepQ: 8, whatever the activation bits). */
  patchEmbedBits: bits.default(8),
  /** Candidate percentiles of every quantizer's initialisation. */
  percentiles: z
    .array(z.number().gt(0.5).lt(1))
    .min(1)
    .default([...repqPercentiles]),
  /** Quantizer of the softmax output: log√2 (RepQ), log2, or the uniform grid of the others. */
  softmax: z.enum(['log-sqrt2', 'log2', 'uniform']).default('log-sqrt2'),
  /**
   * Zero point of a reparameterised LayerNorm output: the mean of the channels' (RepQ's code) or
   * that mean rounded (default), which makes the per-tensor grid exactly the per-channel one.
   * Measured on the ViT-Tiny (val-500, 32 images): rounded W8A8 81.0 / W6A6 78.0 / W4A4 29.0
   * (seeds 1, 2: 32.0, 33.2), mean 80.2 / 78.4 / 28.0 (30.2, 32.4).
   */
  zeroPoint: z.enum(['mean', 'rounded']).default('rounded'),
  /**
   * Also calibrate the head's input per channel and fold it into the final LayerNorm, as the
   * block norms are (RepQ-ViT folds only those; its head input keeps one per-tensor grid).
   */
  foldFinalNorm: z.boolean().default(false),
  /** Selectors of points kept in float (see quant-points.ts). */
  keepFloat: z.array(z.string()).default([]),
  /**
   * How quantizeRepQ sets the weight values on RepQ-ViT's grids: round to nearest (RepQ-ViT),
   * GPTQ (gptq.ts) or ERQ (erq.ts, which also corrects biases and chooses the grids again).
   */
  weights: z.enum(['rtn', 'gptq', 'erq']).default('rtn'),
});

export type RepQOptions = z.input<typeof repqOptionsSchema> & Reporting & SessionOptions;
export type RepQSettings = z.output<typeof repqOptionsSchema>;

export interface RepQActivationReport {
  roles: string[];
  value: string;
  kind: 'affine' | 'log';
  bits: number;
  scale: number;
  zeroPoint?: number;
  /** The percentile the search chose (the median over channels for a per-channel grid). */
  percentile: number;
  /** Set for a LayerNorm output calibrated per channel: its channels and step spread. */
  channels?: { count: number; scaleMin: number; scaleMax: number };
}

export interface RepQNormReport {
  role: string;
  /** Roles of the linear layers reading the norm. */
  targets: string[];
  reparameterised: boolean;
  /** Why the norm was not reparameterised (its output is then quantized per tensor). */
  reason?: string;
  /** min and max of r = Δ_c / Δ̃. */
  ratio?: { min: number; max: number };
}

export interface RepQWeightReport {
  role: string;
  bits: number;
  channels: number;
  /** Σ(w − ŵ)² / Σw². */
  relativeMse: number;
}

export interface RepQReport {
  method: 'repq-vit';
  weightBits: number;
  activationBits: number;
  patchEmbedBits: number;
  softmax: RepQSettings['softmax'];
  zeroPoint: RepQSettings['zeroPoint'];
  percentiles: number[];
  calibration: { images: number; passes: number; seconds: number };
  activations: RepQActivationReport[];
  norms: RepQNormReport[];
  keptFloat: KeptPoint[];
  /** Set when a weight method (GPTQ, ERQ) rewrote the weights after the calibration. */
  weightMethod?: GptqReport | ErqReport;
}

export interface RepQCalibration {
  /** The reparameterised float model: LayerNorm γ/β and the next layers' weights rewritten. */
  model: ModelProto;
  /** Its structure map. */
  structure: ViTStructure;
  quantizers: QuantizerSettings;
  report: RepQReport;
}

export interface RepQResult {
  /** The simulated (fake-quant) model. */
  model: ModelProto;
  report: RepQReport & { weights: RepQWeightReport[] };
}
