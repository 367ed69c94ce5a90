/**
 * NoisyQuant (Liu et al., arXiv:2211.16056, CVPR 2023; reference notes §5): a fixed noise N,
 * one value per input channel drawn once from U(−Δ/2, Δ/2), is added to a linear layer's input
 * before its quantizer and taken away after it, x̂ = Q(x + N) − N. The noise spreads values that
 * a heavy-tailed input crowds onto a few levels over their neighbours, which lowers the error of
 * the layer's output; since W·(Q(x + N) − N) = W·Q(x + N) − W·N, deployment folds −W·N into the
 * bias and keeps plain integer kernels.
 *
 * The noise's amplitude t (N = t · U, U ~ U(−Δ/2, Δ/2)) is chosen by the layer-output search
 * among evenly spaced amplitudes from 0 (no noise, so the layer never gets worse on the
 * calibration images) to `maxAmplitude`. The paper samples N at t = 1; its code also searches a
 * shift and a range for the noise (notes §5(3)), which this form leaves out.
 */
import type { OperandGrid } from '../search/operand-grid.js';
import {
  bestCandidates,
  scoreCandidates,
  type SearchEngineOptions,
  type SearchMetric,
} from '../search/product-search.js';
import type { CapturedTensor } from '../sequential.js';

export interface NoiseSearchOptions extends SearchEngineOptions {
  metric: SearchMetric;
  /** Amplitudes tried, evenly spaced from 0 to `maxAmplitude` (both included). */
  amplitudes: number;
  maxAmplitude: number;
  /** Seed of the noise (a layer's noise is fixed once drawn). */
  seed: number;
}

export interface NoiseChoice {
  grid: OperandGrid;
  /** The amplitude chosen (0: no noise). */
  amplitude: number;
}

/** The step a noise is sized by: the grid's step (the positive step of a post-GELU twin). */
export function noiseStep(grid: OperandGrid): number | undefined {
  if (grid.kind === 'uniform' && grid.scales.length === 1) return grid.scales[0]!;
  if (grid.kind === 'twin' && grid.quantizer.form === 'gelu') return grid.quantizer.high.scale;
  return undefined;
}

/** `width` values of U(−step/2, step/2) from a small seeded generator (an LCG). */
export function uniformNoise(width: number, step: number, seed: number): Float32Array {
  const out = new Float32Array(width);
  let state = (seed * 2654435761) >>> 0;
  for (let i = 0; i < width; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    out[i] = (state / 2 ** 32 - 0.5) * step;
  }
  return out;
}

/**
 * The noise amplitude of a linear layer's input quantizer `base`, chosen by the output distance
 * of x̂·Ŵ to x·W, `weight` quantized with its grid. Returns `base` itself when no noise helps
 * or the quantizer has no single step.
 */
export async function searchNoise(
  x: CapturedTensor,
  w: CapturedTensor,
  base: OperandGrid,
  weight: OperandGrid,
  options: NoiseSearchOptions,
): Promise<NoiseChoice> {
  const step = noiseStep(base);
  if (step === undefined || options.amplitudes < 2) return { grid: base, amplitude: 0 };
  const unit = uniformNoise(x.dims.at(-1)!, step, options.seed);
  const amplitudes = Array.from(
    { length: options.amplitudes },
    (_, i) => (i * options.maxAmplitude) / (options.amplitudes - 1),
  );
  const candidates = amplitudes.map((t): OperandGrid => ({
    kind: 'noisy',
    base,
    noise: unit.map((u) => u * t),
  }));
  const evaluation = { side: 'a', candidates, other: weight, metric: options.metric } as const;
  const scores = await scoreCandidates(x, w, evaluation, options);
  const best = bestCandidates(scores)[0]!;
  const amplitude = amplitudes[best]!;
  return amplitude === 0 ? { grid: base, amplitude } : { grid: candidates[best]!, amplitude };
}
