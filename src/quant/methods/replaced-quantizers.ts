/**
 * A RepQ-ViT calibration with some of its activation quantizers replaced by quantizers of
 * another family (AdaLog's, I&S-ViT's): the kept quantizers and the weights are written by
 * `insertRepQQuantizers`, then each replaced value gets its own fake-quant chain on the edges
 * into the nodes that RepQ-ViT quantized. The weights may be GPTQ's or ERQ's, solved for the
 * inputs as the replacing chains quantize them. The calibration's model is not modified.
 */
import type { ModelProto } from 'onnx-buf';
import { capture, type CaptureBatch } from '../../runtime/capture.js';
import type { Reporting } from '../../log.js';
import type { SessionOptions } from '../../runtime/session.js';
import type { ActivationSetting } from '../quantizer-commands.js';
import { addChains, keptActivations, type Replacement } from './replacement-chains.js';
import { erqWeights } from './erq.js';
import { gptqWeights } from './gptq.js';
import { insertRepQQuantizers, type RepQCalibration, type RepQResult } from './repq.js';
import type { RepQSettings } from './repq-types.js';

export type { ChainBuilder, Replacement } from './replacement-chains.js';

/** The fake-quant model of `calibration` with `replacements` in place of RepQ-ViT's chains. */
export function insertWithReplacements(
  calibration: RepQCalibration,
  replacements: readonly Replacement[],
  context: string,
): RepQResult {
  const activations = keptActivations(calibration.quantizers.activations, replacements);
  const base = insertRepQQuantizers({
    ...calibration,
    quantizers: { ...calibration.quantizers, activations },
  });
  const model = addChains(base.model, replacements, context);
  const kept = new Set(activations.map((a) => a.value));
  const report = {
    ...base.report,
    activations: base.report.activations.filter((a) => kept.has(a.value)),
  };
  return { model, report };
}

/**
 * The calibration with the weight values of `weights` (as is for 'rtn'), GPTQ's Hessians and
 * ERQ's statistics taken on the inputs as the replacements quantize them.
 */
export async function replacedWeights(
  calibration: RepQCalibration,
  images: readonly CaptureBatch[],
  weights: RepQSettings['weights'],
  replacements: readonly Replacement[],
  run: Reporting & SessionOptions,
): Promise<RepQCalibration> {
  switch (weights) {
    case 'rtn':
      return calibration;
    case 'gptq':
      return gptqWeights(calibration, images, { ...run, replacements });
    case 'erq':
      return erqWeights(calibration, images, { ...run, replacements });
  }
}

/** The settings whose roles end with `suffix` (e.g. `.attn.softmax`, `.mlp.fc2.input`). */
export function settingsWithRole(
  calibration: RepQCalibration,
  suffix: string,
): ActivationSetting[] {
  return calibration.quantizers.activations.filter((s) => s.roles.some((r) => r.endsWith(suffix)));
}

/**
 * Runs the calibration images through `model` (float) and hands each batch's tensors of
 * `values` to `keep`, which copies what it needs: the tensors are reused after the call.
 */
export async function captureFloat(
  model: ModelProto,
  values: readonly string[],
  images: readonly CaptureBatch[],
  keep: (value: string, data: Float32Array, dims: readonly number[], batch: number) => void,
  session: SessionOptions,
): Promise<void> {
  await capture(
    model,
    [...new Set(values)],
    images,
    (tensors, batch) => {
      for (const [value, tensor] of tensors) {
        keep(value, tensor.data as Float32Array, tensor.dims.map(Number), batch);
      }
    },
    session,
  );
}
