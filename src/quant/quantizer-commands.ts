/**
 * Quantizers a method has chosen, one per activation value and one per weight, written into a
 * copy of a model as fake-quant ops (simulated quantization). The settings are plain data, so a
 * method can return them next to its rewritten float model and another step (a weight method
 * such as GPTQ, a report, a deployable export) can take them up.
 *
 * - `affine`: clamp(round(x / Δ) + z, 0, 2^b − 1) − z, times Δ, per tensor, as the float chain
 *   Div → Round → Clip(−z, 2^b − 1 − z) → Mul of simulate.ts. z may be fractional (RepQ-ViT's
 *   reparameterised zero point is a mean); the chain computes that too.
 * - `affine-channel`: the same with one (Δ_c, z_c) per index of the last axis, as
 *   Div → Round → Max → Min → Mul with [C] constants (Clip's bounds must be scalars).
 * - `log`: the log2 / log√2 chain of log-quantizers.ts.
 * - weights: one affine grid per output channel, baked into the initializer as dequantized values.
 */
import { makeNode } from '../graph/attributes.js';
import { applyCommands, type Command } from '../graph/commands.js';
import { GraphIndex } from '../graph/graph.js';
import { InputError, UnsupportedModelError } from '../errors.js';
import type { ModelProto } from '../onnx/model-io.js';
import { DataType, floatTensor, readFloat32, tensorDims } from '../onnx/tensor.js';
import type { LinearLayer } from '../vit/types.js';
import { logFakeQuantCommands, type LogQuantizer } from './log-quantizers.js';
import { fakeQuantCommands } from './simulate.js';
import { fakeQuantize, intRange, type UniformParams } from './uniform.js';

export type ActivationQuantizer =
  | { kind: 'affine'; bits: number; scale: number; zeroPoint: number }
  | { kind: 'affine-channel'; bits: number; params: UniformParams[] }
  | { kind: 'log'; quantizer: LogQuantizer };

/** One activation value quantized on its edges into `nodes`. */
export interface ActivationSetting {
  value: string;
  /** Roles of the quantization points sharing the value (e.g. q, k and v reading one norm). */
  roles: string[];
  /** The nodes whose reading of `value` is quantized. */
  nodes: string[];
  quantizer: ActivationQuantizer;
}

/** A weight quantized per output channel on an affine grid of `bits` (unsigned codes). */
export interface WeightSetting {
  role: string;
  layer: LinearLayer;
  bits: number;
  params: UniformParams[];
}

export interface QuantizerSettings {
  activations: ActivationSetting[];
  weights: WeightSetting[];
}

/** Fresh name prefixes that collide with nothing in the graph or with each other. */
export class NamePrefixes {
  private taken: string[] = [];
  private mine = new Set<string>();

  constructor(index: GraphIndex) {
    for (const node of index.nodes) this.taken.push(node.name, ...node.output);
    this.taken.push(...index.initializers.keys(), ...index.graph.input.map((v) => v.name));
  }

  /** A prefix such that `<prefix>/<anything>` is free. */
  prefix(base: string): string {
    let name = base;
    for (let i = 1; this.mine.has(name) || this.taken.some((t) => t.startsWith(`${name}/`)); i++) {
      name = `${base}_${i}`;
    }
    this.mine.add(name);
    return name;
  }
}

/** The commands quantizing one activation value and pointing its readers at the result. */
export function activationCommands(
  index: GraphIndex,
  names: NamePrefixes,
  setting: ActivationSetting,
): Command[] {
  const prefix = names.prefix(`vitslim/fq/${setting.roles[0] ?? setting.value}`);
  const chain = chainCommands(setting.value, prefix, setting.quantizer);
  return [
    ...chain.commands,
    ...setting.nodes.flatMap((n) => rewire(index, n, setting, chain.output)),
  ];
}

function chainCommands(value: string, prefix: string, quantizer: ActivationQuantizer) {
  switch (quantizer.kind) {
    case 'affine': {
      const grid = { bits: quantizer.bits, signed: false, symmetric: false };
      return fakeQuantCommands(value, prefix, quantizer, grid, 'float');
    }
    case 'affine-channel':
      return channelChain(value, prefix, quantizer.bits, quantizer.params);
    case 'log':
      return logFakeQuantCommands(value, prefix, quantizer.quantizer);
  }
}

function channelChain(value: string, prefix: string, bits: number, params: UniformParams[]) {
  const top = intRange(bits, false).qmax;
  const p = (name: string) => `${prefix}/${name}`;
  const vector = (name: string, f: (q: UniformParams) => number) =>
    floatTensor(p(name), [params.length], Float32Array.from(params, f));
  const tensors = [
    vector('scale', (q) => q.scale),
    vector('low', (q) => -q.zeroPoint),
    vector('high', (q) => top - q.zeroPoint),
  ];
  const op = (opType: string, inputs: string[]): Command => ({
    kind: 'addNode',
    node: makeNode({ name: p(opType), opType, inputs, outputs: [p(opType)] }),
  });
  const commands: Command[] = [
    ...tensors.map((tensor): Command => ({ kind: 'addInitializer', tensor })),
    op('Div', [value, p('scale')]),
    op('Round', [p('Div')]),
    op('Max', [p('Round'), p('low')]),
    op('Min', [p('Max'), p('high')]),
    op('Mul', [p('Min'), p('scale')]),
  ];
  return { commands, output: p('Mul') };
}

function rewire(index: GraphIndex, node: string, setting: ActivationSetting, output: string) {
  const commands: Command[] = [];
  index.node(node).input.forEach((input, slot) => {
    if (input === setting.value)
      commands.push({ kind: 'setNodeInput', node, index: slot, value: output });
  });
  if (commands.length === 0) {
    throw new UnsupportedModelError(
      `${setting.roles.join(', ')}: node ${node} does not read ${setting.value} as the structure map says`,
      node,
    );
  }
  return commands;
}

/** The output-channel axis of a weight layout. */
export function outputChannelAxis(layer: LinearLayer): number {
  return layer.weightLayout === 'in-out' ? 1 : 0;
}

/** A linear layer's weight as float32 values and dims; refuses a non-float or non-finite one. */
export function readWeight(index: GraphIndex, role: string, layer: LinearLayer) {
  const tensor = index.constantTensor(layer.weight);
  if (!tensor || tensor.dataType !== DataType.FLOAT) {
    throw new UnsupportedModelError(
      `${role}: weight ${layer.weight} of node ${layer.node} is not a float32 constant`,
      layer.node,
    );
  }
  const values = readFloat32(tensor);
  const bad = values.findIndex((w) => !Number.isFinite(w));
  if (bad >= 0) {
    throw new InputError(
      `${role}: weight ${layer.weight} of node ${layer.node} holds ${values[bad]} at index ${bad}; the model is corrupt`,
      layer.weight,
    );
  }
  return { values, dims: tensorDims(tensor) };
}

/**
 * The commands putting `values` in place of constant `name` for `node` only: the initializer is
 * replaced where nothing else reads it, otherwise a new initializer is added and rewired.
 */
export function replaceConstant(
  index: GraphIndex,
  names: NamePrefixes,
  name: string,
  node: string,
  dims: readonly number[],
  values: Float32Array,
): Command[] {
  const alone = index.consumersOf(name).every((n) => n.name === node);
  if (index.initializers.has(name) && alone && !index.isGraphOutput(name)) {
    return [{ kind: 'replaceInitializer', tensor: floatTensor(name, dims, values) }];
  }
  const fresh = `${names.prefix(`vitslim/${name}`)}/value`;
  const commands: Command[] = [
    { kind: 'addInitializer', tensor: floatTensor(fresh, dims, values) },
  ];
  index.node(node).input.forEach((input, slot) => {
    if (input === name) commands.push({ kind: 'setNodeInput', node, index: slot, value: fresh });
  });
  return commands;
}

/** The commands baking a weight's fake-quantized values, and those values. */
export function weightCommands(index: GraphIndex, names: NamePrefixes, setting: WeightSetting) {
  const { layer } = setting;
  const { values, dims } = readWeight(index, setting.role, layer);
  const axis = outputChannelAxis(layer);
  const codes = intRange(setting.bits, false);
  const quantized = fakeQuantize(values, setting.params, codes, dims, axis);
  const commands = replaceConstant(index, names, layer.weight, layer.node, dims, quantized);
  return { commands, original: values, quantized };
}

/** A fake-quant copy of `model` with every setting applied. The input model is not modified. */
export function insertQuantizers(
  model: ModelProto,
  settings: QuantizerSettings,
  context: string,
): ModelProto {
  const index = new GraphIndex(model);
  const names = new NamePrefixes(index);
  const commands = [
    ...settings.activations.flatMap((s) => activationCommands(index, names, s)),
    ...settings.weights.flatMap((s) => weightCommands(index, names, s).commands),
  ];
  return applyCommands(model, commands, { removeUnused: true, context });
}
