/**
 * The public contract of PTQ4ViT (ptq4vit.ts): its options, as recipes and the API give them,
 * and what it returns and reports.
 */
import type { ModelProto } from 'onnx-buf';
import { z } from 'zod';
import type { Reporting } from '../../log.js';
import type { SessionOptions } from '../../runtime/session.js';
import type { KeptPoint } from '../quant-points.js';

const bits = z.number().int().min(2).max(8);

export const ptq4vitOptionsSchema = z.strictObject({
  weightBits: bits,
  activationBits: bits,
  /**
   * Distance between a layer's float output and its quantized output: `mse` or `cosine`.
   * (PTQ4ViT's Hessian-guided distance weights the error with the task loss's gradient, which
   * needs backpropagation; these are its gradient-free forms.)
   */
  metric: z.enum(['mse', 'cosine']).default('cosine'),
  /** Alternating weight/activation rounds (PTQ4ViT: 3). */
  rounds: z.number().int().min(1).max(10).default(3),
  /**
   * Candidate steps per search, Δ_init · factor on an even grid (PTQ4ViT: 101; its ablation
   * finds no gain beyond 20).
   */
  candidates: z.number().int().min(2).max(400).default(20),
  /** The smallest and largest factor of the grid (PTQ4ViT: 0.01 and 1.2). */
  factorRange: z
    .tuple([z.number().positive(), z.number().positive()])
    .refine(([lo, hi]) => lo < hi, 'the smallest factor must be below the largest')
    .default([0.01, 1.2]),
  /** Quantizer of the softmax output: twin uniform (PTQ4ViT) or one uniform grid. */
  softmax: z.enum(['twin', 'uniform']).default('twin'),
  /** Quantizer of post-GELU inputs (fc2, a hidden head layer's output). */
  gelu: z.enum(['twin', 'uniform']).default('twin'),
  /** Splits 2^0 … 2^(−(n − 1)) tried for the twin softmax quantizer (PTQ4ViT: 20). */
  softmaxSplits: z.number().int().min(1).max(31).default(20),
  /** One step per attention head for query, key and value (PTQ4ViT) instead of one. */
  perHead: z.boolean().default(true),
  /** Tokens (rows) of each linear layer's input the search uses, evenly spaced (all: 0). */
  searchRows: z.number().int().min(0).default(1024),
  /** Calibration images whose attention tensors the search uses (all: 0). */
  attentionImages: z.number().int().min(0).default(8),
  /**
   * NoisyQuant (arXiv:2211.16056) on top: a fixed per-channel noise added before the input
   * quantizer of post-GELU linear inputs (`post-gelu`) or of every quantized linear input
   * (`linear`) and taken away after it, its amplitude searched on the layer's output.
   */
  noisyQuant: z.enum(['off', 'post-gelu', 'linear']).default('off'),
  /** Noise amplitudes tried, evenly spaced from 0 to `maxNoiseAmplitude` (× U(−Δ/2, Δ/2)). */
  noiseAmplitudes: z.number().int().min(2).max(100).default(16),
  maxNoiseAmplitude: z.number().positive().max(10).default(1.5),
  /** Selectors of points kept in float (see quant-points.ts). */
  keepFloat: z.array(z.string()).default([]),
});

export type Ptq4VitOptions = z.input<typeof ptq4vitOptionsSchema> & Reporting & SessionOptions;
export type Ptq4VitSettings = z.output<typeof ptq4vitOptionsSchema>;

/** How one activation value is quantized. */
export interface Ptq4VitActivationReport {
  roles: string[];
  value: string;
  kind: 'uniform' | 'uniform-per-head' | 'twin-softmax' | 'twin-gelu';
  bits: number;
  /** The step (per tensor), the steps' range (per head), or the twin grids' steps. */
  scale: number | { min: number; max: number } | { low: number; high: number };
  /** NoisyQuant's noise amplitude, in units of U(−Δ/2, Δ/2), when a noise is added. */
  noiseAmplitude?: number;
}

/** One product searched: a linear layer, or an attention matmul. */
export interface Ptq4VitLayerReport {
  /** `blocks.3.mlp.fc1`, `blocks.3.attn.scores`, `blocks.3.attn.context`, … */
  role: string;
  metric: 'mse' | 'cosine';
  /** The metric with the initial (max-based) steps, and with the steps searched. */
  initialScore: number;
  finalScore: number;
  candidatesEvaluated: number;
}

export interface Ptq4VitWeightReport {
  role: string;
  bits: number;
  channels: number;
  /** The searched steps relative to max|w| / (2^(b−1) − ½), over the channels. */
  factor: { min: number; max: number };
}

export interface Ptq4VitReport {
  method: 'ptq4vit';
  weightBits: number;
  activationBits: number;
  metric: Ptq4VitSettings['metric'];
  rounds: number;
  candidates: number;
  factorRange: [number, number];
  softmax: Ptq4VitSettings['softmax'];
  gelu: Ptq4VitSettings['gelu'];
  perHead: boolean;
  noisyQuant: Ptq4VitSettings['noisyQuant'];
  calibration: { images: number; searchRows: number; attentionImages: number; seconds: number };
  layers: Ptq4VitLayerReport[];
  activations: Ptq4VitActivationReport[];
  weights: Ptq4VitWeightReport[];
  keptFloat: KeptPoint[];
}

export interface Ptq4VitResult {
  /** The simulated (fake-quant) model. */
  model: ModelProto;
  report: Ptq4VitReport;
}
