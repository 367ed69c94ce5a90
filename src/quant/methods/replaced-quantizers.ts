/**
 * A RepQ-ViT calibration with some of its activation quantizers replaced by quantizers of
 * another family (AdaLog's, I&S-ViT's): the kept quantizers and the weights are written by
 * `insertRepQQuantizers`, then each replaced value gets its own fake-quant chain on the edges
 * into the nodes that RepQ-ViT quantized. The calibration's model is not modified.
 */
import type { ModelProto } from 'onnx-buf';
import { applyCommands, type Command } from '../../graph/commands.js';
import { GraphIndex } from '../../graph/graph.js';
import { UnsupportedModelError } from '../../errors.js';
import { capture, type CaptureBatch } from '../../runtime/capture.js';
import type { SessionOptions } from '../../runtime/session.js';
import { NamePrefixes, type ActivationSetting } from '../quantizer-commands.js';
import { insertRepQQuantizers, type RepQCalibration, type RepQResult } from './repq.js';

/** The commands of one fake-quant chain reading `value`; the result is `output`. */
export type ChainBuilder = (
  value: string,
  prefix: string,
) => { commands: Command[]; output: string };

/** A replaced activation: RepQ-ViT's setting (value, roles, reading nodes) and the new chain. */
export interface Replacement {
  setting: ActivationSetting;
  /** The name under which the chain's nodes are added, e.g. `adalog`. */
  tag: string;
  chain: ChainBuilder;
}

/** The fake-quant model of `calibration` with `replacements` in place of RepQ-ViT's chains. */
export function insertWithReplacements(
  calibration: RepQCalibration,
  replacements: readonly Replacement[],
  context: string,
): RepQResult {
  const replaced = new Set(replacements.map((r) => r.setting.value));
  const activations = calibration.quantizers.activations.filter((s) => !replaced.has(s.value));
  const base = insertRepQQuantizers({
    ...calibration,
    quantizers: { ...calibration.quantizers, activations },
  });
  const index = new GraphIndex(base.model);
  const names = new NamePrefixes(index);
  const commands: Command[] = [];
  for (const { setting, tag, chain } of replacements) {
    const prefix = names.prefix(`vitslim/${tag}/${setting.roles[0] ?? setting.value}`);
    const built = chain(setting.value, prefix);
    commands.push(...built.commands);
    for (const node of setting.nodes) commands.push(...rewire(index, node, setting, built.output));
  }
  const model = applyCommands(base.model, commands, { removeUnused: true, context });
  const report = {
    ...base.report,
    activations: base.report.activations.filter((a) => !replaced.has(a.value)),
  };
  return { model, report };
}

function rewire(index: GraphIndex, node: string, setting: ActivationSetting, output: string) {
  const commands: Command[] = [];
  index.node(node).input.forEach((input, slot) => {
    if (input === setting.value) {
      commands.push({ kind: 'setNodeInput', node, index: slot, value: output });
    }
  });
  if (commands.length === 0) {
    throw new UnsupportedModelError(
      `${setting.roles.join(', ')}: node ${node} does not read ${setting.value}`,
      node,
    );
  }
  return commands;
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
