/**
 * Activation quantizers of another family (AdaLog's, I&S-ViT's) standing in for some of a
 * RepQ-ViT calibration's: each replaced value gets its own fake-quant chain, and the nodes that
 * RepQ-ViT quantized read the chain's output instead. Kept apart from replaced-quantizers.ts so
 * that the weight methods (GPTQ, ERQ), which must see the same quantized inputs as the final
 * model, can build their probes with these chains without importing RepQ-ViT itself.
 */
import type { ModelProto } from 'onnx-buf';
import { applyCommands, type Command } from '../../graph/commands.js';
import { GraphIndex } from '../../graph/graph.js';
import { UnsupportedModelError } from '../../errors.js';
import {
  insertQuantizers,
  NamePrefixes,
  type ActivationSetting,
  type QuantizerSettings,
} from '../quantizer-commands.js';

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

/** The activation settings that no replacement takes over. */
export function keptActivations(
  activations: readonly ActivationSetting[],
  replacements: readonly Replacement[],
): ActivationSetting[] {
  const replaced = new Set(replacements.map((r) => r.setting.value));
  return activations.filter((s) => !replaced.has(s.value));
}

/** A copy of `model` in which every replacement's chain feeds the nodes it quantizes. */
export function addChains(
  model: ModelProto,
  replacements: readonly Replacement[],
  context: string,
): ModelProto {
  if (replacements.length === 0) return model;
  const index = new GraphIndex(model);
  const names = new NamePrefixes(index);
  const commands: Command[] = [];
  for (const { setting, tag, chain } of replacements) {
    const built = chainFor(names, setting, tag, chain);
    commands.push(...built.commands);
    for (const node of setting.nodes) commands.push(...rewire(index, node, setting, built.output));
  }
  return applyCommands(model, commands, { removeUnused: true, context });
}

/**
 * The fake-quant model of `quantizers` on `model` with the replacements' chains in place of
 * the settings they replace (what GPTQ's Hessian passes read).
 */
export function simulateWithReplacements(
  model: ModelProto,
  quantizers: QuantizerSettings,
  replacements: readonly Replacement[],
  context: string,
): ModelProto {
  const activations = keptActivations(quantizers.activations, replacements);
  const base = insertQuantizers(model, { ...quantizers, activations }, context);
  return addChains(base, replacements, context);
}

/** A replacement's chain under a fresh name prefix. */
export function chainFor(
  names: NamePrefixes,
  setting: ActivationSetting,
  tag: string,
  chain: ChainBuilder,
) {
  const prefix = names.prefix(`vitslim/${tag}/${setting.roles[0] ?? setting.value}`);
  return chain(setting.value, prefix);
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
