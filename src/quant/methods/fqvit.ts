/**
 * FQ-ViT (Lin et al., arXiv:2111.13824, IJCAI 2022) as a simulated method, gradient-free as in
 * the paper:
 *
 * - weights symmetric per output channel, min-max; the inputs of every linear layer and the
 *   query, key and value operands asymmetric per tensor, min-max (the observer baseline);
 * - Power-of-Two Factor (PTF) on every tensor entering a LayerNorm (the residual stream): one
 *   zero point and one base step for the whole tensor, each channel's step that base times
 *   2^α_c with α_c ∈ {0, 1, 2, 3} chosen by the channel's squared error on the calibration
 *   images. With s₈ = (max − min) / (2^b − 1) over all channels, the base step is s₈ / 8 and the
 *   zero point round(−min / s₈), so a channel with α_c = 3 spans the whole range and one with
 *   α_c = 0 resolves an eighth of it eight times more finely. In integer arithmetic the factors
 *   are shifts, which is why the paper's LayerNorm stays integer;
 * - Log-Int-Softmax: the attention probabilities on a log2 grid, 2^−q with q ∈ [0, 2^a − 1]
 *   (a = `attentionBits`, 4 in the paper), which makes attention·value a shift.
 *
 * Simulated, not integer: the softmax is computed in float before its log2 grid (the paper
 * evaluates the exponential with I-BERT's integer polynomial), and LayerNorm runs in float on
 * the PTF-quantized input (the paper's integer LayerNorm computes the same normalisation on
 * shifted codes). The report says so.
 */
import type { ModelProto } from 'onnx-buf';
import { z } from 'zod';
import { CalibrationError } from '../../errors.js';
import type { Reporting } from '../../log.js';
import { GraphIndex } from '../../graph/graph.js';
import { capture, holdImages, type CaptureBatch } from '../../runtime/capture.js';
import type { SessionOptions } from '../../runtime/session.js';
import type { NormLayer, ViTStructure } from '../../vit/types.js';
import { calibrate, defaultValues } from '../calibrate.js';
import { excludePoints, quantPoints } from '../quant-points.js';
import { insertQuantizers, type ActivationSetting } from '../quantizer-commands.js';
import { simulateQuantization, type SimulationReport } from '../simulate.js';
import { intRange, roundHalfEven, type UniformParams } from '../uniform.js';
import { parseMethodOptions, splitRunOptions } from './method-options.js';

const bits = z.number().int().min(2).max(8);

export const fqvitOptionsSchema = z.strictObject({
  weightBits: bits,
  activationBits: bits,
  /** Bits of the log2 attention grid (Log-Int-Softmax); the paper uses 4. */
  attentionBits: bits.default(4),
  /** Largest power-of-two factor exponent K: α_c ∈ {0 … K} (the paper: 3). */
  maxShift: z.number().int().min(0).max(6).default(3),
  /** Selectors of points kept in float (see quant-points.ts). */
  keepFloat: z.array(z.string()).default([]),
});

export type FqVitOptions = z.input<typeof fqvitOptionsSchema> & Reporting & SessionOptions;

export interface PtfReport {
  /** The norm reading the tensor. */
  role: string;
  value: string;
  bits: number;
  /** The base step s₈ / 2^K and the shared zero point. */
  baseScale: number;
  zeroPoint: number;
  /** How many channels chose each factor 2^α, α = 0 … K. */
  factors: number[];
}

export interface FqVitReport {
  method: 'fq-vit';
  weightBits: number;
  activationBits: number;
  attentionBits: number;
  calibration: { images: number; seconds: number };
  ptf: PtfReport[];
  softmax: { roles: string[]; bits: number };
  simulation: SimulationReport;
}

export interface FqVitResult {
  /** The simulated (fake-quant) model. */
  model: ModelProto;
  report: FqVitReport;
}

type Batches = AsyncIterable<CaptureBatch> | Iterable<CaptureBatch>;

/** Every LayerNorm of the model with the tensor it reads. */
function norms(structure: ViTStructure): NormLayer[] {
  const all = structure.blocks.flatMap((b) => [b.norm1, b.norm2]);
  if (structure.finalNorm) all.push(structure.finalNorm);
  return all;
}

export async function quantizeFqVit(
  model: ModelProto,
  structure: ViTStructure,
  batches: Batches,
  options: FqVitOptions,
): Promise<FqVitResult> {
  const { run, rest } = splitRunOptions(options);
  const { logger, onProgress, threads, optimization } = run;
  const settings = parseMethodOptions(fqvitOptionsSchema, rest, 'FQ-ViT');
  const started = performance.now();
  const images = await holdImages(batches);
  const count = images.reduce((n, b) => n + (b.dims[0] ?? 0), 0);
  if (count === 0) throw new CalibrationError('FQ-ViT needs calibration images; none were read');

  const normList = norms(structure);
  const normInputs = [...new Set(normList.map((n) => n.input))];
  const values = [...new Set([...defaultValues(structure), ...normInputs])];
  const session = { threads, optimization };
  const calibration = await calibrate(model, structure, images, {
    values,
    ...session,
    onProgress,
  });

  // the observer baseline for weights and linear inputs; the softmax gets its log2 grid below
  const simulation = simulateQuantization(model, structure, calibration, {
    weightBits: settings.weightBits,
    activationBits: settings.activationBits,
    observer: 'minmax',
    weightObserver: 'minmax',
    keepFloat: [...settings.keepFloat, 'blocks.*.attn.softmax'],
    activationForm: 'float',
  });

  const ptfSettings = await powerOfTwoFactors(
    model,
    normList,
    calibration.statistics,
    images,
    settings,
    session,
  );
  const index = new GraphIndex(simulation.model);
  const ptf: ActivationSetting[] = ptfSettings.map(({ setting }) => ({
    ...setting,
    nodes: index.consumersOf(setting.value).map((n) => n.name),
  }));
  const userKept = new Set(
    excludePoints(quantPoints(structure), settings.keepFloat).kept.map((k) => k.role),
  );
  const softmaxRoles: string[] = [];
  const softmax: ActivationSetting[] = [];
  structure.blocks.forEach((block, i) => {
    const role = `blocks.${i}.attn.softmax`;
    if (userKept.has(role)) return;
    const { context } = block.attention;
    softmaxRoles.push(role);
    softmax.push({
      value: context.probabilities,
      roles: [role],
      nodes: [context.node],
      quantizer: {
        kind: 'log',
        quantizer: { base: 'log2', bits: settings.attentionBits, scale: 1 },
      },
    });
  });
  const quantized = insertQuantizers(
    simulation.model,
    { activations: [...ptf, ...softmax], weights: [] },
    'FQ-ViT power-of-two factors and log2 softmax',
  );
  const seconds = (performance.now() - started) / 1000;
  logger.info(
    `FQ-ViT W${settings.weightBits}A${settings.activationBits}: ${ptf.length} PTF tensors, ${softmax.length} log2 softmax grids, ${seconds.toFixed(1)} s`,
  );
  return {
    model: quantized,
    report: {
      method: 'fq-vit',
      weightBits: settings.weightBits,
      activationBits: settings.activationBits,
      attentionBits: settings.attentionBits,
      calibration: { images: count, seconds },
      ptf: ptfSettings.map((p) => p.report),
      softmax: { roles: softmaxRoles, bits: settings.attentionBits },
      simulation: simulation.report,
    },
  };
}

/**
 * PTF for each tensor entering a LayerNorm: the shared zero point and base step from the
 * calibrated range, then each channel's factor by its squared error summed over every
 * calibration image (one more pass of the float model).
 */
async function powerOfTwoFactors(
  model: ModelProto,
  normList: readonly NormLayer[],
  statistics: Awaited<ReturnType<typeof calibrate>>['statistics'],
  images: readonly CaptureBatch[],
  settings: z.output<typeof fqvitOptionsSchema>,
  session: SessionOptions,
) {
  const { qmin, qmax } = intRange(settings.activationBits, false);
  const shifts = settings.maxShift + 1;
  const plans = new Map<
    string,
    { role: string; base: number; zeroPoint: number; errors?: Float64Array; channels: number }
  >();
  for (const norm of normList) {
    if (plans.has(norm.input)) continue;
    const range = statistics.get(norm.input)!.minMax;
    const min = Math.min(range.min, 0);
    const max = Math.max(range.max, 0);
    const coarse = (max - min) / (qmax - qmin) || 1;
    const zeroPoint = Math.min(qmax, Math.max(qmin, qmin - roundHalfEven(min / coarse)));
    plans.set(norm.input, {
      role: norm.role,
      base: coarse / 2 ** settings.maxShift,
      zeroPoint,
      channels: 0,
    });
  }
  const values = [...plans.keys()];
  await capture(
    model,
    values,
    images,
    (tensors) => {
      for (const [value, tensor] of tensors) {
        const plan = plans.get(value)!;
        const data = tensor.data as Float32Array;
        const channels = tensor.dims.at(-1)!;
        plan.channels = channels;
        plan.errors ??= new Float64Array(channels * shifts);
        for (let a = 0; a < shifts; a++) {
          const step = plan.base * 2 ** a;
          const low = (qmin - plan.zeroPoint) * step;
          const high = (qmax - plan.zeroPoint) * step;
          for (let i = 0; i < data.length; i++) {
            const x = data[i]!;
            const q = Math.min(high, Math.max(low, roundHalfEven(x / step) * step));
            const d = q - x;
            plan.errors[(i % channels) * shifts + a]! += d * d;
          }
        }
      }
    },
    session,
  );
  return values.map((value) => {
    const plan = plans.get(value)!;
    const factors = new Array<number>(shifts).fill(0);
    const params: UniformParams[] = [];
    for (let c = 0; c < plan.channels; c++) {
      let best = 0;
      for (let a = 1; a < shifts; a++) {
        if (plan.errors![c * shifts + a]! < plan.errors![c * shifts + best]!) best = a;
      }
      factors[best]!++;
      params.push({ scale: plan.base * 2 ** best, zeroPoint: plan.zeroPoint });
    }
    const setting: ActivationSetting = {
      value,
      roles: [`${plan.role}.input`],
      nodes: [],
      quantizer: { kind: 'affine-channel', bits: settings.activationBits, params },
    };
    const report: PtfReport = {
      role: plan.role,
      value,
      bits: settings.activationBits,
      baseScale: plan.base,
      zeroPoint: plan.zeroPoint,
      factors,
    };
    return { setting, report };
  });
}
