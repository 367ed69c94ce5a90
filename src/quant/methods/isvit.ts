/**
 * I&S-ViT's shift-uniform-log2 softmax quantizer (Zhong et al., arXiv:2311.10126; reference
 * notes §12) on RepQ-ViT's calibration: every softmax output gets SULQ (shift-log.ts), its shift
 * η chosen among the paper's candidates by the squared error on the captured probabilities, and
 * the log range that of the calibration values; everything else is RepQ-ViT's (repq.ts).
 *
 * Gradient-free form: I&S-ViT's three-stage smooth optimisation (block reconstruction training
 * the weights through a straight-through estimator) needs gradients and is not done; what remains
 * is its stage 2 (RepQ-ViT's reparameterisation) and its softmax quantizer. The probabilities
 * are captured on the reparameterised float model.
 */
import type { ModelProto } from 'onnx-buf';
import { z } from 'zod';
import type { Reporting } from '../../log.js';
import { holdImages, type CaptureBatch } from '../../runtime/capture.js';
import type { SessionOptions } from '../../runtime/session.js';
import type { ViTStructure } from '../../vit/types.js';
import {
  calibrateShiftLog,
  shiftLogFakeQuantCommands,
  shiftLogSquaredError,
  type ShiftLogQuantizer,
} from '../shift-log.js';
import { calibrateRepQ, type RepQResult } from './repq.js';
import {
  captureFloat,
  insertWithReplacements,
  replacedWeights,
  settingsWithRole,
} from './replaced-quantizers.js';
import { parseMethodOptions, splitRunOptions } from './method-options.js';

const bits = z.number().int().min(2).max(8);

export const isVitOptionsSchema = z.strictObject({
  weightBits: bits,
  activationBits: bits,
  /** Selectors of points kept in float (see quant-points.ts). */
  keepFloat: z.array(z.string()).default([]),
  /** Weight values on RepQ-ViT's grids (round to nearest, GPTQ, ERQ), as for AdaLog. */
  weights: z.enum(['rtn', 'gptq', 'erq']).default('rtn'),
  /** Probabilities per softmax output scored by the shift search (an even stride). */
  samplesPerTensor: z.number().int().min(1024).default(262144),
});

export type IsVitOptions = z.input<typeof isVitOptionsSchema> & Reporting & SessionOptions;

export interface IsVitSoftmaxReport {
  role: string;
  shift: number;
  logMin: number;
  logMax: number;
  /** Mean squared error of SULQ on the sampled probabilities. */
  mse: number;
}

export interface IsVitReport {
  method: 'isvit';
  softmax: IsVitSoftmaxReport[];
  seconds: number;
}

export interface IsVitResult {
  model: ModelProto;
  report: RepQResult['report'] & { isvit: IsVitReport };
}

type Batches = AsyncIterable<CaptureBatch> | Iterable<CaptureBatch>;

/** RepQ-ViT with SULQ softmax quantizers; the input model is not modified. */
export async function quantizeIsVit(
  model: ModelProto,
  structure: ViTStructure,
  batches: Batches,
  options: IsVitOptions,
): Promise<IsVitResult> {
  const { run, rest } = splitRunOptions(options);
  const s = parseMethodOptions(isVitOptionsSchema, rest, 'I&S-ViT');
  const { logger, threads, optimization } = run;
  const images = await holdImages(batches);
  const { weightBits, activationBits, keepFloat } = s;
  const calibration = await calibrateRepQ(model, structure, images, {
    weightBits,
    activationBits,
    keepFloat,
    ...run,
  });

  const started = performance.now();
  const softmax = settingsWithRole(calibration, '.attn.softmax');
  const samples = new Map<string, Float32Array[]>();
  const perBatch = Math.ceil(s.samplesPerTensor / images.length);
  await captureFloat(
    calibration.model,
    softmax.map((a) => a.value),
    images,
    (value, data) => {
      const take = Math.min(perBatch, data.length);
      const part = Float32Array.from({ length: take }, (_, i) => {
        return data[Math.floor((i * data.length) / take)]!;
      });
      samples.set(value, [...(samples.get(value) ?? []), part]);
    },
    { threads, optimization: optimization ?? 'basic' },
  );
  const chosen = new Map<string, ShiftLogQuantizer>();
  const report: IsVitReport = { method: 'isvit', softmax: [], seconds: 0 };
  for (const setting of softmax) {
    const values = concat(samples.get(setting.value)!);
    const q = calibrateShiftLog(values, activationBits);
    chosen.set(setting.value, q);
    const mse = shiftLogSquaredError(values, q) / values.length;
    const role = setting.roles[0] ?? setting.value;
    report.softmax.push({ role, shift: q.shift, logMin: q.logMin, logMax: q.logMax, mse });
  }
  report.seconds = (performance.now() - started) / 1000;
  logger.info(
    `I&S-ViT W${weightBits}A${activationBits}: ${softmax.length} SULQ softmax quantizers, ${report.seconds.toFixed(1)} s`,
  );

  const replacements = softmax.map((setting) => ({
    setting,
    tag: 'sulq',
    chain: (value: string, prefix: string) =>
      shiftLogFakeQuantCommands(value, prefix, chosen.get(setting.value)!),
  }));
  const weighted = await replacedWeights(calibration, images, s.weights, replacements, run);
  const context = `I&S-ViT W${weightBits}A${activationBits} simulated quantization`;
  const result = insertWithReplacements(weighted, replacements, context);
  return { model: result.model, report: { ...result.report, isvit: report } };
}

function concat(parts: readonly Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((n, a) => n + a.length, 0));
  let at = 0;
  for (const a of parts) {
    out.set(a, at);
    at += a.length;
  }
  return out;
}
