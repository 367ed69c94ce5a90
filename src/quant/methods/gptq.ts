/**
 * GPTQ weights (Frantar et al., arXiv:2210.17323; reference notes §10) on a RepQ-ViT calibration.
 *
 * RepQ-ViT's activation quantizers and per-output-channel weight grids stay as calibrated; only
 * the weight values change: each linear layer is swept by gptq-math.ts on its own grid, with
 * H = Σ x̃x̃ᵀ the Gram of what the layer reads in the simulated model — its input after the
 * activation quantizer (or the chain that replaces it, `options.replacements`), with every
 * earlier block already carrying its GPTQ weights. As GPTQ does,
 * the stages (patch embedding, each block, the head) are visited in order and the layers of one
 * stage share one pass.
 *
 * The new weights are written into the reparameterised float model already on their grids, and
 * the weight settings are kept: the fake-quant weight op of insertRepQQuantizers maps a value on
 * its grid to itself, so the simulated model carries exactly the GPTQ weights, and a deployable
 * export reads the same integer codes back from the same settings.
 */
import { applyCommands, type Command } from '../../graph/commands.js';
import { GraphIndex } from '../../graph/graph.js';
import { holdImages, type CaptureBatch } from '../../runtime/capture.js';
import { NamePrefixes, type WeightSetting } from '../quantizer-commands.js';
import { intRange } from '../uniform.js';
import { gptqLayer, gridValue, proxyLoss } from './gptq-math.js';
import {
  gramsOf,
  planStages,
  readValue,
  weightRows,
  writeWeightCommands,
  type LayerPlan,
} from './gptq-layers.js';
import {
  gptqOptionsSchema,
  type GptqOptions,
  type GptqReport,
  type GptqSettings,
  type SkippedLayerReport,
  type WeightLayerReport,
} from './gptq-types.js';
import { simulateWithReplacements } from './replacement-chains.js';
import type { RepQCalibration } from './repq-types.js';
import { parseMethodOptions, splitRunOptions } from './method-options.js';

export * from './gptq-types.js';

type Batches = AsyncIterable<CaptureBatch> | Iterable<CaptureBatch>;

/**
 * The calibration with GPTQ weights in its model; `report.weightMethod` says what was done.
 * `images` are the calibration images (RepQ-ViT's own, for the method as published). The
 * calibration passed in is not modified.
 */
export async function gptqWeights(
  calibration: RepQCalibration,
  images: Batches,
  options: GptqOptions = {},
): Promise<RepQCalibration> {
  const { run, rest: withReplacements } = splitRunOptions(options);
  const { logger, onProgress, threads, optimization } = run;
  const { replacements = [], ...rest } = withReplacements;
  const settings = parseGptqSettings(rest);
  const session = { optimization: optimization ?? 'basic', ...(threads ? { threads } : {}) };
  const started = performance.now();
  const held = await holdImages(images);
  const original = new GraphIndex(calibration.model);
  const stages = planStages(calibration.quantizers.weights);
  const layers: WeightLayerReport[] = [];
  const skipped: SkippedLayerReport[] = [];
  const stage = 'GPTQ weights';
  let model = calibration.model;
  let passes = 0;

  onProgress({ status: 'start', stage, total: stages.length });
  for (const [s, plans] of stages.entries()) {
    const matrices = usable(plans, original, skipped);
    if (matrices.length > 0) {
      // the Gram of what each layer reads, with every earlier stage's GPTQ weights in place
      const simulated = simulateWithReplacements(
        model,
        calibration.quantizers,
        replacements,
        'GPTQ Hessian pass',
      );
      const simIndex = new GraphIndex(simulated);
      const values = matrices.map((w) => readValue(simIndex, original, w.layer));
      const grams = await gramsOf(simulated, calibration.structure.input, values, held, session);
      passes++;
      const index = new GraphIndex(model);
      const names = new NamePrefixes(index);
      const commands: Command[] = [];
      matrices.forEach((w, k) => {
        const h = grams.get(values[k]!)!.gram!;
        const { rows, report } = sweep(index, w, h, settings);
        layers.push(report);
        commands.push(...writeWeightCommands(index, names, w.layer, rows));
      });
      model = applyCommands(model, commands, { context: 'GPTQ weights' });
    }
    onProgress({ status: 'advance', stage, done: s + 1, total: stages.length });
  }
  onProgress({ status: 'end', stage });

  const seconds = (performance.now() - started) / 1000;
  logger.info(
    `GPTQ: ${layers.length} layers in ${passes} passes, ${skipped.length} left to rounding, ${seconds.toFixed(1)} s`,
  );
  const report: GptqReport = { method: 'gptq', ...settings, passes, seconds, layers, skipped };
  return { ...calibration, model, report: { ...calibration.report, weightMethod: report } };
}

export function parseGptqSettings(value: unknown): GptqSettings {
  return parseMethodOptions(gptqOptionsSchema, value, 'GPTQ');
}

/** The matrix layers of a stage; the others go to `skipped` with their reason. */
export function usable(
  plans: readonly LayerPlan[],
  original: GraphIndex,
  skipped: SkippedLayerReport[],
): WeightSetting[] {
  const out: WeightSetting[] = [];
  for (const p of plans) {
    const shared = original.consumersOf(p.setting.layer.weight).length > 1;
    if (p.kind === 'skipped') skipped.push({ role: p.setting.role, reason: p.reason });
    else if (shared) skipped.push({ role: p.setting.role, reason: 'its weight is shared' });
    else out.push(p.setting);
  }
  return out;
}

/** One layer through GPTQ, with its proxy losses against rounding to nearest. */
function sweep(index: GraphIndex, setting: WeightSetting, h: Float64Array, s: GptqSettings) {
  const { inFeatures: inF, outFeatures: outF } = setting.layer;
  const w = weightRows(index, setting);
  const { quantized } = gptqLayer(w, h, inF, outF, setting.params, setting.bits, s);
  return {
    rows: quantized,
    report: layerReport(setting, w, quantized, h),
  };
}

/** Proxy losses of `quantized` and of rounding `w` to nearest, relative to tr(Wᵀ H W). */
export function layerReport(
  setting: WeightSetting,
  w: Float64Array,
  quantized: Float32Array,
  h: Float64Array,
): WeightLayerReport {
  const { inFeatures: inF, outFeatures: outF } = setting.layer;
  const energy = proxyLoss(w, new Float64Array(w.length), h, inF, outF) || 1;
  const rounded = roundRows(w, setting);
  return {
    role: setting.role,
    inFeatures: inF,
    outFeatures: outF,
    roundingLoss: proxyLoss(w, rounded, h, inF, outF) / energy,
    loss: proxyLoss(w, quantized, h, inF, outF) / energy,
  };
}

/** Round-to-nearest of [in, out] rows on the setting's per-output-channel grids. */
export function roundRows(w: Float64Array, setting: WeightSetting): Float32Array {
  const outF = setting.layer.outFeatures;
  const { qmax } = intRange(setting.bits, false);
  return Float32Array.from(w, (v, k) => gridValue(v, setting.params[k % outF]!, qmax));
}
