/**
 * Simulated ("fake-quant") quantization of a ViT for any WxAy with 2 ≤ x, y ≤ 8. The result is a
 * float ONNX model that computes what the quantized model would: it measures accuracy, it is
 * not faster.
 *
 * - Weights of every linear layer are quantized per output channel on a symmetric signed grid
 *   and baked into the initializers as their dequantized float values (exact, no runtime cost).
 * - Activations get a quantize-dequantize on the edge into each quantization point's node
 *   (per tensor, asymmetric unsigned by default). At 8 bits this is QuantizeLinear →
 *   DequantizeLinear (uint8/int8 codes). Below 8 bits, QuantizeLinear at opset ≤ 20 has no
 *   narrower type and would saturate to the 8-bit range, so the grid is written in float ops:
 *   Div(scale) → Round → Clip(qmin − zp, qmax − zp) → Mul(scale). That is the chain
 *   Div → Round → Add(zp) → Clip(qmin, qmax) → Sub(zp) → Mul with the zero point folded into the
 *   clip bounds: every intermediate is a small integer held exactly in float32, so the values
 *   are the same bit for bit, with two ops fewer per point. ONNX Round is half to even, as
 *   QuantizeLinear. (onnxruntime 1.31 does run int4/uint4 QuantizeLinear on CPU, but only at
 *   opset 21, and raising a model's opset changes the meaning of other ops; the float chain
 *   works at any opset ≥ 13 and for 3, 5, 6 and 7 bits too.)
 *
 * From the 'extended' optimisation level on, onnxruntime fuses MatMuls fed by DequantizeLinear
 * into integer kernels, which round differently from the float ops: on the MNIST ViT the
 * logits of W8A8 QDQ and float-chain models differ by up to 0.07 at level 'all' and not at all
 * at 'basic'. Where exact fake-quant semantics matter, use `activationForm: 'float'`.
 */
import type { ModelProto } from 'onnx-buf';
import { z } from 'zod';
import { CalibrationError, InputError, UnsupportedModelError } from '../errors.js';
import { noProgress, silentLogger, type ProgressListener, type Reporting } from '../log.js';
import { makeNode } from '../graph/attributes.js';
import { applyCommands, type Command } from '../graph/commands.js';
import { GraphIndex } from '../graph/graph.js';
import { opsetVersion } from '../onnx/model-io.js';
import { DataType, floatTensor, makeTensor, readFloat32, tensorDims } from '../onnx/tensor.js';
import type { LinearLayer, ViTStructure } from '../vit/types.js';
import type { CalibrationResult } from './calibrate.js';
import {
  createObserver,
  gridParams,
  weightParams,
  type Observer,
  type QuantGrid,
} from './observers.js';
import {
  excludePoints,
  parseLayerSelector,
  quantPoints,
  selects,
  type ActivationPoint,
  type KeptPoint,
  type QuantPoints,
  type WeightPoint,
} from './quant-points.js';
import type { ActivationRanges, TensorRange } from './types.js';
import { fakeQuantize, intRange, type UniformParams } from './uniform.js';

const observerKinds = ['minmax', 'percentile', 'mse', 'omse'] as const;
const bits = z.number().int().min(2).max(8);

/** The options of a simulation, as recipes and the API give them. */
export const simulationOptionsSchema = z.strictObject({
  weightBits: bits,
  activationBits: bits,
  /** Observer of the activations (used when calibration statistics are given). */
  observer: z.enum(observerKinds).default('minmax'),
  /** Observer of the weights' per-channel bounds. */
  weightObserver: z.enum(observerKinds).default('minmax'),
  /** Percentile of the `percentile` observers, in percent. */
  percentile: z.number().gt(50).max(100).default(99.99),
  /** Activation codes signed (int) instead of unsigned (uint). */
  signed: z.boolean().default(false),
  /** Activation grids symmetric (zero point 0) instead of fitted to the range. */
  symmetric: z.boolean().default(false),
  /** Selectors of points kept in float (see quant-points.ts). */
  keepFloat: z.array(z.string()).default([]),
  /** `auto`: QuantizeLinear/DequantizeLinear at 8 bits, the float chain below. */
  activationForm: z.enum(['auto', 'qdq', 'float']).default('auto'),
  /**
   * Per-layer settings: the points a selector chooses (same syntax as keepFloat) take these
   * values instead of the global ones; where several match, the later one wins.
   */
  overrides: z
    .array(
      z.strictObject({
        select: z.string(),
        weightBits: bits.optional(),
        activationBits: bits.optional(),
        observer: z.enum(observerKinds).optional(),
        weightObserver: z.enum(observerKinds).optional(),
        percentile: z.number().gt(50).max(100).optional(),
      }),
    )
    .default([]),
});

export type SimulationOptions = z.input<typeof simulationOptionsSchema> & Reporting;
type Settings = z.output<typeof simulationOptionsSchema>;

export interface ActivationQuantReport {
  role: string;
  value: string;
  node: string;
  /** The range observed in calibration (min-max), when statistics were given. */
  observed?: TensorRange;
  /** The clipping range the observer chose. */
  range: TensorRange;
  scale: number;
  zeroPoint: number;
  bits: number;
  signed: boolean;
  form: 'qdq' | 'float';
}

export interface WeightQuantReport {
  role: string;
  node: string;
  weight: string;
  bits: number;
  axis: number;
  channels: number;
  scale: { min: number; max: number; mean: number };
  /** Σ(w − ŵ)² / Σw². */
  relativeMse: number;
  /** 10·log10(Σw² / Σ(w − ŵ)²), in dB; null when the weight is reproduced exactly. */
  sqnrDb: number | null;
  maxAbsError: number;
}

export interface SimulationReport {
  weightBits: number;
  activationBits: number;
  observer: Settings['observer'];
  weightObserver: Settings['weightObserver'];
  percentile: number;
  signed: boolean;
  symmetric: boolean;
  activations: ActivationQuantReport[];
  weights: WeightQuantReport[];
  keptFloat: KeptPoint[];
}

export interface SimulationResult {
  model: ModelProto;
  report: SimulationReport;
}

/**
 * A fake-quant copy of `model`. `calibration` is either the statistics of `calibrate` (the
 * `observer` option then chooses each range for the activation bit width) or ranges already
 * chosen. The input model is not modified.
 */
export function simulateQuantization(
  model: ModelProto,
  structure: ViTStructure,
  calibration: CalibrationResult | ActivationRanges,
  options: SimulationOptions,
): SimulationResult {
  const { logger = silentLogger, onProgress = noProgress, ...rest } = options;
  const settings = parseSettings(rest);
  const opset = opsetVersion(model) ?? 0;
  if (opset < 13) {
    throw new UnsupportedModelError(
      `simulated quantization needs opset ≥ 13 (per-axis QuantizeLinear, Clip with inputs), the model has opset ${opset}`,
    );
  }

  const index = new GraphIndex(model);
  const { points, kept } = excludePoints(quantPoints(structure), settings.keepFloat);
  const settingsOf = pointSettings(settings, points);
  const names = new NameSource(index);
  const activations = activationCommands(index, points.activations, calibration, settingsOf, names);
  const weights = weightPass(index, points.weights, settingsOf, names, onProgress);
  const simulated = applyCommands(model, [...activations.commands, ...weights.commands], {
    removeUnused: weights.detached,
    context: `W${settings.weightBits}A${settings.activationBits} simulated quantization`,
  });

  logger.info(
    `simulated W${settings.weightBits}A${settings.activationBits}: ${activations.reports.length} activation and ${weights.reports.length} weight quantizers, ${kept.length} points kept in float`,
  );
  const report: SimulationReport = {
    weightBits: settings.weightBits,
    activationBits: settings.activationBits,
    observer: settings.observer,
    weightObserver: settings.weightObserver,
    percentile: settings.percentile,
    signed: settings.signed,
    symmetric: settings.symmetric,
    activations: activations.reports,
    weights: weights.reports,
    keptFloat: kept,
  };
  return { model: simulated, report };
}

type SettingsOf = (point: ActivationPoint | WeightPoint) => Settings;

/** Each point's settings: the global ones with the matching overrides applied in order. */
function pointSettings(settings: Settings, points: QuantPoints): SettingsOf {
  const overrides = settings.overrides.map(({ select, ...values }) => ({
    select,
    values,
    selector: parseLayerSelector(select),
  }));
  const all = [...points.activations, ...points.weights];
  const unused = overrides.filter((o) => !all.some((p) => selects(o.selector, p)));
  if (unused.length > 0) {
    throw new InputError(
      `override selector ${unused.map((o) => `"${o.select}"`).join(', ')} matches no quantization point (roles look like ${all
        .slice(0, 4)
        .map((p) => p.role)
        .join(', ')}, …)`,
    );
  }
  return (point) => {
    let out = settings;
    for (const { selector, values } of overrides) {
      if (selects(selector, point)) out = { ...out, ...values };
    }
    return out;
  };
}

/** Fake-quantizes every weight; the per-channel searches take seconds on large models. */
function weightPass(
  index: GraphIndex,
  points: readonly WeightPoint[],
  settingsOf: SettingsOf,
  names: NameSource,
  onProgress: ProgressListener,
) {
  const stage = 'weight quantization';
  const total = points.length;
  onProgress({ status: 'start', stage, total });
  const done = points.map((p, i) => {
    const one = weightCommands(index, p.role, p.layer, settingsOf(p), names);
    onProgress({ status: 'advance', stage, done: i + 1, total });
    return one;
  });
  onProgress({ status: 'end', stage });
  return {
    commands: done.flatMap((w) => w.commands),
    reports: done.map((w) => w.report),
    detached: done.some((w) => w.detached),
  };
}

function parseSettings(value: unknown): Settings {
  const result = simulationOptionsSchema.safeParse(value);
  if (result.success) return result.data;
  const problems = result.error.issues.map(
    (issue) => `${issue.path.length ? issue.path.join('.') : '(root)'}: ${issue.message}`,
  );
  throw new InputError(`invalid simulation options: ${problems.join('; ')}`);
}

/** Fresh node and value names that collide with nothing in the graph or with each other. */
class NameSource {
  private taken = new Set<string>();

  constructor(index: GraphIndex) {
    for (const node of index.nodes) {
      this.taken.add(node.name);
      for (const o of node.output) this.taken.add(o);
    }
    for (const name of index.initializers.keys()) this.taken.add(name);
    for (const input of index.graph.input) this.taken.add(input.name);
  }

  /** A prefix such that `<prefix>/<anything>` is free. */
  prefix(base: string): string {
    let name = base;
    for (let i = 1; [...this.taken].some((t) => t.startsWith(`${name}/`)); i++) {
      name = `${base}_${i}`;
    }
    this.taken.add(`${name}/`);
    return name;
  }

  name(base: string): string {
    let name = base;
    for (let i = 1; this.taken.has(name); i++) name = `${base}_${i}`;
    this.taken.add(name);
    return name;
  }
}

function activationGrid(settings: Settings): QuantGrid {
  return { bits: settings.activationBits, signed: settings.signed, symmetric: settings.symmetric };
}

type ChainReport = Omit<ActivationQuantReport, 'role' | 'node'>;

/** One quantize-dequantize per quantized value, shared by every point that reads it. */
function activationCommands(
  index: GraphIndex,
  points: readonly ActivationPoint[],
  calibration: CalibrationResult | ActivationRanges,
  settingsOf: SettingsOf,
  names: NameSource,
) {
  const commands: Command[] = [];
  const reports: ActivationQuantReport[] = [];
  const chains = new Map<string, { output: string; report: ChainReport }>();
  for (const point of points) {
    let chain = chains.get(point.value);
    if (!chain) {
      // a value read by several points is quantized once, with its first reader's settings
      const settings = settingsOf(point);
      const grid = activationGrid(settings);
      const observer = createObserver(settings.observer, { percentile: settings.percentile });
      const form = chainForm(settings);
      const { range, observed } = rangeOf(point, calibration, observer, grid);
      const params = gridParams(range, grid);
      const prefix = names.prefix(`vitslim/fq/${point.role}`);
      const built = fakeQuantCommands(point.value, prefix, params, grid, form);
      commands.push(...built.commands);
      const { bits, signed } = grid;
      const report = { value: point.value, range, ...params, bits, signed, form };
      chain = { output: built.output, report: observed ? { ...report, observed } : report };
      chains.set(point.value, chain);
    }
    commands.push(...rewire(index, point, chain.output));
    reports.push({ role: point.role, node: point.node, ...chain.report });
  }
  return { commands, reports };
}

function chainForm(settings: Settings): 'qdq' | 'float' {
  if (settings.activationForm === 'auto') return settings.activationBits === 8 ? 'qdq' : 'float';
  if (settings.activationForm === 'qdq' && settings.activationBits !== 8) {
    throw new InputError(
      `activationForm 'qdq' needs 8-bit activations (QuantizeLinear saturates to 8 bits below opset 21), got ${settings.activationBits}`,
    );
  }
  return settings.activationForm;
}

function rangeOf(
  point: ActivationPoint,
  calibration: CalibrationResult | ActivationRanges,
  observer: Observer,
  grid: QuantGrid,
): { range: TensorRange; observed?: TensorRange } {
  if (calibration instanceof Map) {
    const range = (calibration as ActivationRanges).get(point.value);
    if (!range) throw missing(point);
    return { range };
  }
  const stats = (calibration as CalibrationResult).statistics.get(point.value);
  if (!stats) throw missing(point);
  const observed = { min: stats.minMax.min, max: stats.minMax.max };
  try {
    return { range: observer.activationRange(stats, grid), observed };
  } catch (error) {
    if (!(error instanceof CalibrationError)) throw error;
    throw new CalibrationError(`${point.role} (${point.value}): ${error.message}`, point.value);
  }
}

function missing(point: ActivationPoint): CalibrationError {
  return new CalibrationError(
    `no calibration range for ${point.role} (value ${point.value}); calibrate the values of the quantization points`,
    point.value,
  );
}

/** Points the quantization point's node at the quantized value on every slot reading it. */
function rewire(index: GraphIndex, point: ActivationPoint, quantized: string): Command[] {
  const commands: Command[] = [];
  index.node(point.node).input.forEach((input, slot) => {
    if (input === point.value) {
      commands.push({ kind: 'setNodeInput', node: point.node, index: slot, value: quantized });
    }
  });
  if (commands.length === 0) {
    throw new UnsupportedModelError(
      `${point.role}: node ${point.node} does not read ${point.value} as the structure map says`,
      point.node,
    );
  }
  return commands;
}

function scaleTensor(prefix: string, params: UniformParams) {
  return floatTensor(`${prefix}/scale`, [], Float32Array.of(params.scale));
}

/**
 * The commands adding a quantize-dequantize of `value`: QuantizeLinear → DequantizeLinear
 * (`qdq`, 8-bit grids) or Div → Round → Clip → Mul (`float`, any grid). New names start with
 * `prefix/`; the result is `<prefix>/output`. Nothing is rewired to read it.
 */
export function fakeQuantCommands(
  value: string,
  prefix: string,
  params: UniformParams,
  grid: QuantGrid,
  form: 'qdq' | 'float',
): { commands: Command[]; output: string } {
  if (form === 'qdq' && grid.bits !== 8) {
    throw new RangeError(`QuantizeLinear below opset 21 has 8-bit codes only, got ${grid.bits}`);
  }
  return form === 'qdq'
    ? qdqChain(value, prefix, params, grid)
    : floatChain(value, prefix, params, grid);
}

function qdqChain(value: string, prefix: string, params: UniformParams, grid: QuantGrid) {
  const scale = scaleTensor(prefix, params);
  const zeroPoint = grid.signed
    ? makeTensor(`${prefix}/zero_point`, DataType.INT8, [], Int8Array.of(params.zeroPoint))
    : makeTensor(`${prefix}/zero_point`, DataType.UINT8, [], Uint8Array.of(params.zeroPoint));
  const output = `${prefix}/output`;
  const codes = `${prefix}/codes`;
  const parameters = [scale.name, zeroPoint.name];
  const commands: Command[] = [
    { kind: 'addInitializer', tensor: scale },
    { kind: 'addInitializer', tensor: zeroPoint },
    node(`${prefix}/QuantizeLinear`, 'QuantizeLinear', [value, ...parameters], codes),
    node(`${prefix}/DequantizeLinear`, 'DequantizeLinear', [codes, ...parameters], output),
  ];
  return { commands, output };
}

function floatChain(value: string, prefix: string, params: UniformParams, grid: QuantGrid) {
  const scale = scaleTensor(prefix, params);
  const codes = intRange(grid.bits, grid.signed);
  const low = floatTensor(`${prefix}/low`, [], Float32Array.of(codes.qmin - params.zeroPoint));
  const high = floatTensor(`${prefix}/high`, [], Float32Array.of(codes.qmax - params.zeroPoint));
  const output = `${prefix}/output`;
  const commands: Command[] = [
    { kind: 'addInitializer', tensor: scale },
    { kind: 'addInitializer', tensor: low },
    { kind: 'addInitializer', tensor: high },
    node(`${prefix}/Div`, 'Div', [value, scale.name], `${prefix}/scaled`),
    node(`${prefix}/Round`, 'Round', [`${prefix}/scaled`], `${prefix}/rounded`),
    node(`${prefix}/Clip`, 'Clip', [`${prefix}/rounded`, low.name, high.name], `${prefix}/clipped`),
    node(`${prefix}/Mul`, 'Mul', [`${prefix}/clipped`, scale.name], output),
  ];
  return { commands, output };
}

function node(name: string, opType: string, inputs: string[], output: string): Command {
  return { kind: 'addNode', node: makeNode({ name, opType, inputs, outputs: [output] }) };
}

/** The output-channel axis of a weight layout. */
function channelAxis(layer: LinearLayer): number {
  switch (layer.weightLayout) {
    case 'in-out':
      return 1;
    case 'out-in':
    case 'conv':
      return 0;
  }
}

function weightCommands(
  index: GraphIndex,
  role: string,
  layer: LinearLayer,
  settings: Settings,
  names: NameSource,
) {
  const tensor = index.constantTensor(layer.weight);
  if (!tensor || tensor.dataType !== DataType.FLOAT) {
    throw new UnsupportedModelError(
      `${role}: weight ${layer.weight} of node ${layer.node} is not a float32 constant`,
      layer.node,
    );
  }
  const dims = tensorDims(tensor);
  const axis = channelAxis(layer);
  const weight = readFloat32(tensor);
  const bad = weight.findIndex((w) => !Number.isFinite(w));
  if (bad >= 0) {
    throw new InputError(
      `${role}: weight ${layer.weight} of node ${layer.node} holds ${weight[bad]} at index ${bad}; the model is corrupt`,
      layer.weight,
    );
  }
  const observer = createObserver(settings.weightObserver, { percentile: settings.percentile });
  const params = weightParams(weight, dims, axis, settings.weightBits, observer);
  const quantized = fakeQuantize(weight, params, intRange(settings.weightBits, true), dims, axis);
  const report = weightReport(role, layer, weight, quantized, params, settings.weightBits, axis);

  const shared = index.consumersOf(layer.weight).length > 1;
  if (index.initializers.has(layer.weight) && !shared) {
    const replacement = floatTensor(layer.weight, dims, quantized);
    const commands: Command[] = [{ kind: 'replaceInitializer', tensor: replacement }];
    return { commands, report, detached: false };
  }
  const name = names.name(`${layer.weight}/fake_quant`);
  const slot = index.node(layer.node).input.indexOf(layer.weight);
  const commands: Command[] = [
    { kind: 'addInitializer', tensor: floatTensor(name, dims, quantized) },
    { kind: 'setNodeInput', node: layer.node, index: slot, value: name },
  ];
  return { commands, report, detached: true };
}

function weightReport(
  role: string,
  layer: LinearLayer,
  weight: Float32Array,
  quantized: Float32Array,
  params: readonly UniformParams[],
  bitWidth: number,
  axis: number,
): WeightQuantReport {
  let energy = 0;
  let error = 0;
  let maxAbsError = 0;
  for (let i = 0; i < weight.length; i++) {
    const w = weight[i]!;
    const d = w - quantized[i]!;
    energy += w * w;
    error += d * d;
    if (Math.abs(d) > maxAbsError) maxAbsError = Math.abs(d);
  }
  const scales = params.map((p) => p.scale);
  const relativeMse = energy > 0 ? error / energy : 0;
  return {
    role,
    node: layer.node,
    weight: layer.weight,
    bits: bitWidth,
    axis,
    channels: params.length,
    scale: {
      min: Math.min(...scales),
      max: Math.max(...scales),
      mean: scales.reduce((a, b) => a + b, 0) / scales.length,
    },
    relativeMse,
    sqnrDb: relativeMse > 0 ? -10 * Math.log10(relativeMse) : null,
    maxAbsError,
  };
}
