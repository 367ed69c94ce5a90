/**
 * ERQ (Zhong et al., arXiv:2407.06794; reference notes §13) on a RepQ-ViT calibration: Aqer
 * corrects each linear layer's weight and bias for the error of its input quantizer, the weight
 * grids are chosen again on the corrected weights, and Wqer quantizes them (erq-math.ts).
 *
 * The statistics are taken as ERQ's code takes them, in parallel: one pass of the reparameterised
 * float model gives, for every layer, its float input X and that input through the layer's own
 * activation quantizer, X̃ = Q_a(X); a probe concatenates [X̃, X] so that one Gram reduced in
 * onnxruntime holds X̃ᵀX̃, X̃ᵀX and XᵀX. The activation quantizers stay as RepQ-ViT calibrated
 * them, or as another method replaced them (`options.replacements`: AdaLog's GELU quantizer
 * before fc2), so that Aqer corrects for the error of the grid the final model uses.
 *
 * Left out of the published method: the TPAMI version's two-part weight quantizer for qkv and fc1
 * (outlier input columns on a grid of their own), which a plain per-channel weight op cannot
 * express; and the patch embedding, which ERQ leaves out of Aqer and which keeps RepQ-ViT's
 * round-to-nearest weights here (see gptq-layers.ts).
 */
import { makeNode } from '../../graph/attributes.js';
import { applyCommands, type Command } from '../../graph/commands.js';
import { GraphIndex } from '../../graph/graph.js';
import { readFloat32 } from '../../onnx/tensor.js';
import type { ChannelMoments } from '../../prune/statistics.js';
import { holdImages, type CaptureBatch } from '../../runtime/capture.js';
import type { LinearLayer } from '../../vit/types.js';
import { percentileMseAffineChannels } from '../percentile-mse.js';
import {
  activationCommands,
  NamePrefixes,
  replaceConstant,
  type ActivationSetting,
  type WeightSetting,
} from '../quantizer-commands.js';
import {
  aqerCorrection,
  augmentedGrams,
  relativeOutputError,
  wqerQuantize,
  type LayerGrams,
} from './erq-math.js';
import {
  erqOptionsSchema,
  type ErqLayerReport,
  type ErqOptions,
  type ErqReport,
  type ErqSettings,
} from './erq-types.js';
import { gramsOf, planStages, weightRows, writeWeightCommands } from './gptq-layers.js';
import { roundRows, usable } from './gptq.js';
import type { SkippedLayerReport } from './gptq-types.js';
import { chainFor, type Replacement } from './replacement-chains.js';
import type { RepQCalibration } from './repq-types.js';
import { parseMethodOptions, splitRunOptions } from './method-options.js';

export * from './erq-types.js';

type Batches = AsyncIterable<CaptureBatch> | Iterable<CaptureBatch>;

/**
 * The calibration with ERQ's weights, biases and weight grids; `report.weightMethod` says what
 * was done. The calibration passed in is not modified.
 */
export async function erqWeights(
  calibration: RepQCalibration,
  images: Batches,
  options: ErqOptions = {},
): Promise<RepQCalibration> {
  const { run, rest: withReplacements } = splitRunOptions(options);
  const { logger, onProgress, threads, optimization } = run;
  const { replacements = [], ...rest } = withReplacements;
  const settings = parseErqSettings(rest);
  const session = { optimization: optimization ?? 'basic', ...(threads ? { threads } : {}) };
  const started = performance.now();
  const held = await holdImages(images);
  const imageCount = held.reduce((n, b) => n + (b.dims[0] ?? 0), 0);
  const index = new GraphIndex(calibration.model);
  const skipped: SkippedLayerReport[] = [];
  const layers = planStages(calibration.quantizers.weights).flatMap((plans) =>
    usable(plans, index, skipped),
  );
  const stage = 'ERQ weights';
  onProgress({ status: 'start', stage, total: layers.length });

  const { model: probe, values } = probeModel(calibration, layers, replacements);
  const moments = await gramsOf(probe, calibration.structure.input, values, held, session);
  const names = new NamePrefixes(index);
  const commands: Command[] = [];
  const reports: ErqLayerReport[] = [];
  const weights = new Map<string, WeightSetting>();
  layers.forEach((setting, k) => {
    const grams = splitGrams(moments.get(values[k]!)!, setting.layer.inFeatures);
    const lambda = grams.count === imageCount ? settings.headLambda : settings.lambda;
    const result = erqLayer(index, setting, grams, { ...settings, lambda });
    commands.push(...writeWeightCommands(index, names, setting.layer, result.rows));
    if (result.bias) commands.push(...writeBiasCommands(index, names, setting.layer, result.bias));
    weights.set(setting.role, result.setting);
    reports.push(result.report);
    onProgress({ status: 'advance', stage, done: k + 1, total: layers.length });
  });
  const model = applyCommands(calibration.model, commands, { context: 'ERQ weights' });
  onProgress({ status: 'end', stage });

  const seconds = (performance.now() - started) / 1000;
  logger.info(
    `ERQ: ${reports.length} layers, ${skipped.length} left to rounding, ${seconds.toFixed(1)} s`,
  );
  const report: ErqReport = {
    method: 'erq',
    ...settings,
    passes: 1,
    seconds,
    layers: reports,
    skipped,
  };
  const quantizers = {
    activations: calibration.quantizers.activations,
    weights: calibration.quantizers.weights.map((w) => weights.get(w.role) ?? w),
  };
  return {
    ...calibration,
    model,
    quantizers,
    report: { ...calibration.report, weightMethod: report },
  };
}

export function parseErqSettings(value: unknown): ErqSettings {
  return parseMethodOptions(erqOptionsSchema, value, 'ERQ');
}

/**
 * The float model with, for each layer's input x, a tap [Q_a(x), x] (the layer's quantizer on an
 * Identity of x, so that the float data flow is untouched); `values` are the taps, by layer.
 * Where a replacement's chain quantizes x, the Identity reads that chain's output.
 */
function probeModel(
  calibration: RepQCalibration,
  layers: readonly WeightSetting[],
  replacements: readonly Replacement[],
) {
  const index = new GraphIndex(calibration.model);
  const names = new NamePrefixes(index);
  const commands: Command[] = [];
  const taps = new Map<string, { tap: string; identity: string; layer: LinearLayer }>();
  for (const { layer } of layers) {
    if (taps.has(layer.input)) continue;
    const prefix = names.prefix(`vitslim/erq/${layer.role}`);
    const identity = `${prefix}/Identity`;
    const tap = `${prefix}/Concat`;
    commands.push(
      {
        kind: 'addNode',
        node: makeNode({
          name: identity,
          opType: 'Identity',
          inputs: [layer.input],
          outputs: [identity],
        }),
      },
      {
        kind: 'addNode',
        node: makeNode({
          name: tap,
          opType: 'Concat',
          inputs: [identity, layer.input],
          outputs: [tap],
          attributes: { axis: -1 },
        }),
      },
    );
    taps.set(layer.input, { tap, identity, layer });
  }
  const tapped = applyCommands(calibration.model, commands, { context: 'ERQ statistics taps' });

  // each tap's Identity then reads the input through the layer's own quantizer
  const tappedIndex = new GraphIndex(tapped);
  const tappedNames = new NamePrefixes(tappedIndex);
  const quantize: Command[] = [];
  for (const { identity, layer } of taps.values()) {
    const replacement = replacements.find(
      (r) => r.setting.value === layer.input && r.setting.nodes.includes(layer.node),
    );
    if (replacement) {
      const { setting, tag, chain } = replacement;
      const built = chainFor(tappedNames, setting, tag, chain);
      const rewire: Command = {
        kind: 'setNodeInput',
        node: identity,
        index: 0,
        value: built.output,
      };
      quantize.push(...built.commands, rewire);
      continue;
    }
    const quantizer = findQuantizer(calibration.quantizers.activations, layer);
    if (!quantizer) continue;
    const setting: ActivationSetting = { ...quantizer, nodes: [identity] };
    quantize.push(...activationCommands(tappedIndex, tappedNames, setting));
  }
  const model = applyCommands(tapped, quantize, { context: 'ERQ statistics probe' });
  return { model, values: layers.map(({ layer }) => taps.get(layer.input)!.tap) };
}

/** The activation quantizer on a layer's input edge, if its input is quantized. */
function findQuantizer(activations: readonly ActivationSetting[], layer: LinearLayer) {
  return activations.find((a) => a.value === layer.input && a.nodes.includes(layer.node));
}

/** The blocks of the Gram of [X̃, X]. */
function splitGrams(moments: ChannelMoments, inF: number): LayerGrams {
  const n = 2 * inF;
  const gram = moments.gram!;
  const block = (row: number, col: number) => {
    const out = new Float64Array(inF * inF);
    for (let i = 0; i < inF; i++)
      out.set(gram.subarray((row + i) * n + col, (row + i) * n + col + inF), i * inF);
    return out;
  };
  return {
    count: moments.count,
    quantized: block(0, 0),
    cross: block(0, inF),
    float: block(inF, inF),
    quantizedSum: moments.sum.slice(0, inF),
    floatSum: moments.sum.slice(inF),
  };
}

/** One layer through Aqer, the grid search and Wqer, with its output errors. */
function erqLayer(index: GraphIndex, setting: WeightSetting, grams: LayerGrams, s: ErqSettings) {
  const { layer, bits } = setting;
  const { inFeatures: inF, outFeatures: outF } = layer;
  const w = weightRows(index, setting);
  const bias = layer.bias
    ? Float64Array.from(readFloat32(index.constantTensor(layer.bias)!))
    : undefined;
  const corrected = s.aqer
    ? aqerCorrection(w, bias, grams, inF, outF, s.lambda)
    : { weight: w, bias };
  const params = s.aqer
    ? percentileMseAffineChannels(
        Float32Array.from(corrected.weight),
        [inF, outF],
        1,
        bits,
        s.percentiles,
      ).map((c) => c.params)
    : setting.params;
  const next: WeightSetting = { ...setting, params };
  const rows = s.wqer
    ? wqerQuantize(corrected.weight, grams.quantized, inF, outF, params, bits, s)
    : roundRows(corrected.weight, next);

  const aug = augmentedGrams(grams, inF, !!bias);
  const theta = (weight: ArrayLike<number>, b: Float64Array | undefined) => {
    const out = new Float64Array(aug.n * outF);
    out.set(weight);
    if (b) out.set(b, inF * outF);
    return out;
  };
  const target = theta(w, bias);
  const report: ErqLayerReport = {
    role: setting.role,
    inFeatures: inF,
    outFeatures: outF,
    roundingError: relativeOutputError(theta(roundRows(w, setting), bias), target, aug, outF),
    error: relativeOutputError(theta(rows, corrected.bias), target, aug, outF),
  };
  return { rows, bias: s.aqer ? corrected.bias : undefined, setting: next, report };
}

/** The commands writing a layer's new bias, in its stored shape. */
function writeBiasCommands(
  index: GraphIndex,
  names: NamePrefixes,
  layer: LinearLayer,
  bias: Float64Array,
) {
  const dims = index.constantTensor(layer.bias!)!.dims.map(Number);
  const reader = layer.biasNode ?? layer.node;
  return replaceConstant(index, names, layer.bias!, reader, dims, Float32Array.from(bias));
}
