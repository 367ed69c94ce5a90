/**
 * The main job: quantize a ViT, deployable (w8a8, dynamic-int8, int4-weights) or simulated
 * (any WxAy), and, when evaluation images are given, prove the result against the original.
 */
import { createHash } from 'node:crypto';
import type { ModelProto } from 'onnx-buf';
import { checkDatasetFolder, type PreprocessConfig } from '../data/index.js';
import { CalibrationError, InputError, InternalError } from '../errors.js';
import { silentLogger, type Reporting } from '../log.js';
import { serializeModel } from '../onnx/model-io.js';
import {
  fpFormats,
  type MethodName,
  type QuantizeOptions,
  type RunOptions,
  type WeightMethodName,
} from '../options.js';
import { activationRanges, calibrate, defaultValues } from '../quant/calibrate.js';
import { exportDynamic } from '../quant/deploy/dynamic.js';
import { exportInt4 } from '../quant/deploy/int4.js';
import { countIntegerKernels, type KernelCount } from '../quant/deploy/kernels.js';
import { deployLayers } from '../quant/deploy/layers.js';
import { gptqBlocks } from '../quant/deploy/gptq-blocks.js';
import { methodWeights, repqForDeployment } from '../quant/deploy/method-weights.js';
import { exportQdq, qdqCalibrationValues, type QdqOptions } from '../quant/deploy/qdq.js';
import { quantizeAdaLog, type AdaLogReport } from '../quant/methods/adalog-method.js';
import { quantizeFloatFormat, type FloatFormatReport } from '../quant/methods/float-format.js';
import { quantizeIsVit, type IsVitReport } from '../quant/methods/isvit.js';
import { quantizeFqVit, type FqVitReport } from '../quant/methods/fqvit.js';
import { quantizePtq4Vit } from '../quant/methods/ptq4vit.js';
import type { Ptq4VitReport } from '../quant/methods/ptq4vit-types.js';
import { insertRepQQuantizers, quantizeRepQ, type RepQResult } from '../quant/methods/repq.js';
import { holdImages } from '../runtime/capture.js';
import type { DeployLayerRow } from '../quant/deploy/types.js';
import type { ActivationRanges } from '../quant/types.js';
import {
  excludePoints,
  parseLayerSelector,
  quantPoints,
  type KeptPoint,
} from '../quant/quant-points.js';
import { simulateQuantization, type SimulationReport } from '../quant/simulate.js';
import { createSession } from '../runtime/session.js';
import { calibrationSample } from './calibration.js';
import { evaluate, type EvaluationReport } from './evaluate.js';
import type { LoadedModel } from './model.js';

export interface QuantizeRequest {
  source: LoadedModel;
  options: QuantizeOptions;
  run: RunOptions;
  preprocess: PreprocessConfig;
  /** Skip latency measurement during evaluation (tests). */
  latencyRuns?: number;
}

export interface CalibrationSummary {
  path: string;
  images: number;
  seed: number;
  observer: string;
  seconds: number;
  tensors: number;
}

export interface QuantizeReport {
  kind: 'deployable' | 'simulated';
  recipe: string;
  calibration?: CalibrationSummary;
  layers?: DeployLayerRow[];
  kernels?: Omit<KernelCount, 'layers'> & { layers: KernelCount['layers'] };
  simulation?: SimulationReport;
  /** The simulated method, when not the observer baseline. */
  method?: MethodName;
  /** RepQ-ViT's weight rounding. */
  weights?: WeightMethodName;
  repq?: RepQResult['report'];
  ptq4vit?: Ptq4VitReport;
  fqvit?: FqVitReport;
  fp?: FloatFormatReport;
  adalog?: AdaLogReport;
  isvit?: IsVitReport;
  keptFloat: KeptPoint[];
  output: { bytes: number; sha256: string; parameters: number; macs: number };
  evaluation?: EvaluationReport;
  seconds: { quantize: number; evaluate?: number };
  /** Peak resident memory of the process so far (it includes the evaluation when there is one). */
  peakRssMb?: number;
  notes: string[];
}

export interface QuantizeResult {
  model: ModelProto;
  bytes: Uint8Array;
  report: QuantizeReport;
}

export async function quantizeModel(
  request: QuantizeRequest,
  reporting: Reporting = {},
): Promise<QuantizeResult> {
  const logger = reporting.logger ?? silentLogger;
  const started = performance.now();
  const { options, source } = request;
  checkKeepFloat(source, options);
  if (options.data) await checkDatasetFolder(options.data, '--data');
  const product = options.recipe
    ? await deployable(request, reporting)
    : await simulated(request, reporting);
  const bytes = serializeModel(product.model);
  // the exported model must load in stock onnxruntime before anything is written
  await (await createSession(bytes, { threads: request.run.threads }, 'exported model')).release();
  // quantization changes neither the parameter count nor the MACs of the graph
  const structure = source.structure;
  const report: QuantizeReport = {
    ...product.report,
    output: {
      bytes: bytes.byteLength,
      sha256: createHash('sha256').update(bytes).digest('hex'),
      parameters: structure.counts.parameters,
      macs: structure.counts.macs,
    },
    seconds: { quantize: (performance.now() - started) / 1000 },
  };
  logger.info(`quantized in ${report.seconds.quantize.toFixed(1)} s`);
  if (options.data) {
    const t = performance.now();
    report.evaluation = await evaluate(
      {
        candidate: { model: bytes, structure, fileBytes: bytes.byteLength },
        baseline: { model: source.model, structure: source.structure, fileBytes: source.fileBytes },
        data: options.data,
        preprocess: request.preprocess,
        batch: request.run.batch,
        threads: request.run.threads,
        strict: request.run.strict,
        classes: request.run.classes,
        limit: options.limit,
        latency:
          request.latencyRuns === 0
            ? false
            : { runs: request.latencyRuns ?? 20, batchSizes: [1, request.run.batch] },
      },
      { ...reporting, logger },
    );
    report.seconds.evaluate = (performance.now() - t) / 1000;
  }
  report.peakRssMb = Math.round(process.resourceUsage().maxRSS / 1024);
  return { model: product.model, bytes, report };
}

interface Product {
  model: ModelProto;
  report: Omit<QuantizeReport, 'output' | 'seconds' | 'evaluation'>;
}

/** The calibration images: a seeded sample of `--calib`, with its summary for the report. */
async function requireCalibration(request: QuantizeRequest, reporting: Reporting) {
  if (!request.options.calib) {
    throw new InputError('this recipe needs calibration images: pass --calib <dir>');
  }
  return calibrationSample(request.options.calib, request, reporting);
}

async function calibrateValues(
  request: QuantizeRequest,
  values: readonly string[],
  reporting: Reporting,
  // the model to calibrate, when not the input (RepQ-ViT's reparameterised one)
  target: { model: ModelProto; structure: LoadedModel['structure'] } = request.source,
) {
  const { options, run } = request;
  const { sample, batches, unreadable, path } = await requireCalibration(request, reporting);
  const result = await calibrate(target.model, target.structure, batches(), {
    values,
    threads: run.threads,
    total: sample.size,
    seed: options.seed,
    ...reporting,
  }).catch(unreadable);
  const summary: CalibrationSummary = {
    path,
    images: result.images,
    seed: options.seed,
    observer: options.observer,
    seconds: result.seconds,
    tensors: values.length,
  };
  return { result, summary };
}

/**
 * Refuses, before any calibration, a keep-float selector that matches no layer of the model (a
 * typo, or a recipe written for another model); `roles` checks only the role selectors (node
 * names may change in a rewrite of the model that keeps its roles, such as pruning).
 */
export function checkKeepFloat(
  source: Pick<LoadedModel, 'model' | 'structure'>,
  options: Pick<QuantizeOptions, 'recipe' | 'keepFloat'>,
  only: 'all' | 'roles' = 'all',
): void {
  const selectors = options.keepFloat
    .map(parseLayerSelector)
    .filter((s) => only === 'all' || s.kind === 'role');
  if (selectors.length === 0) return;
  if (options.recipe) {
    const layers = deployLayers(source.model, source.structure);
    excludePoints(
      { activations: [], weights: layers.map((l) => ({ role: l.role, layer: l })) },
      selectors,
    );
  } else {
    excludePoints(quantPoints(source.structure), selectors);
  }
}

/** Roles of linear layers kept in float by the keep-float selectors. */
function keptLayers(request: QuantizeRequest) {
  const { source, options } = request;
  const layers = deployLayers(source.model, source.structure);
  const points = { activations: [], weights: layers.map((l) => ({ role: l.role, layer: l })) };
  const { kept } = excludePoints(points, options.keepFloat);
  return { exclude: kept.map((k) => k.role), kept };
}

async function deployable(request: QuantizeRequest, reporting: Reporting): Promise<Product> {
  const { source, options } = request;
  if (options.method === 'repq') return deployableRepQ(request, reporting);
  if (options.recipe === 'int4-weights' && options.weights === 'gptq') {
    return deployableGptqInt4(request, reporting);
  }
  const { exclude, kept } = keptLayers(request);
  const weightRange = options.weightRange;
  let calibration: CalibrationSummary | undefined;
  let exported;
  switch (options.recipe) {
    case 'w8a8': {
      const w8a8 = await w8a8Export(request, source, { exclude, weightRange }, reporting);
      exported = w8a8.exported;
      calibration = w8a8.calibration;
      break;
    }
    case 'dynamic-int8':
      exported = exportDynamic(source.model, source.structure, { exclude, weightRange });
      break;
    case 'int4-weights':
      exported = exportInt4(source.model, source.structure, {
        blockSize: options.blockSize,
        exclude,
      });
      break;
    default:
      throw new InternalError(`recipe ${options.recipe} is not deployable`);
  }
  const kernels = await countIntegerKernels(exported.model, source.structure, source.model);
  return {
    model: exported.model,
    report: {
      kind: 'deployable',
      recipe: options.recipe!,
      ...(calibration ? { calibration } : {}),
      layers: exported.layers,
      kernels,
      keptFloat: kept,
      notes: deployNotes(options.recipe!),
    },
  };
}

/** The w8a8 export of `target` (the input model, or a method's rewrite of it). */
async function w8a8Export(
  request: QuantizeRequest,
  target: { model: ModelProto; structure: LoadedModel['structure'] },
  qdq: QdqOptions,
  reporting: Reporting,
) {
  const { options } = request;
  const values = qdqCalibrationValues(target.model, target.structure, qdq);
  let ranges: ActivationRanges = new Map();
  let calibration: CalibrationSummary | undefined;
  // every layer may have taken a form that quantizes at run time: nothing to calibrate
  if (values.length > 0) {
    const { result, summary } = await calibrateValues(request, values, reporting, target);
    calibration = summary;
    const grid = { bits: 8, signed: false, symmetric: false };
    ranges = activationRanges(result, options.observer, grid, {
      percentile: options.percentile,
    });
  }
  return { exported: exportQdq(target.model, target.structure, ranges, qdq), calibration };
}

/**
 * w8a8 of RepQ-ViT's reparameterised model with the weights of `--weights` (RepQ-ViT's
 * rounding, GPTQ or ERQ) on their per-channel grids (quant/deploy/method-weights.ts).
 */
async function deployableRepQ(request: QuantizeRequest, reporting: Reporting): Promise<Product> {
  const { source, options, run } = request;
  if (options.recipe !== 'w8a8') {
    throw new InternalError(`RepQ-ViT deploys with the w8a8 recipe, not ${options.recipe}`);
  }
  const { exclude, kept } = keptLayers(request);
  const held = await heldCalibration(request, reporting);
  const calibration = await repqForDeployment(source.model, source.structure, held.images, {
    weights: options.weights,
    weightRange: options.weightRange,
    threads: run.threads,
    logger: reporting.logger,
    onProgress: reporting.onProgress,
  });
  const qdq = { exclude, weightRange: options.weightRange, weightOf: methodWeights(calibration) };
  const w8a8 = await w8a8Export(request, calibration, qdq, reporting);
  const kernels = await countIntegerKernels(
    w8a8.exported.model,
    calibration.structure,
    calibration.model,
  );
  const repq = insertRepQQuantizers(calibration).report;
  return {
    model: w8a8.exported.model,
    report: {
      kind: 'deployable',
      recipe: options.recipe,
      method: 'repq',
      weights: options.weights,
      // RepQ-ViT's own quantizers set the reparameterisation and the weights; the observer
      // sets the ranges of the w8a8 forms that are static
      calibration: held.summary(
        repq.calibration.seconds,
        repq.activations.length,
        w8a8.calibration
          ? `percentile-mse (RepQ-ViT), ${options.observer} (w8a8 ranges)`
          : 'percentile-mse (RepQ-ViT)',
      ),
      layers: w8a8.exported.layers,
      kernels,
      repq,
      keptFloat: kept,
      notes: [
        ...deployNotes(options.recipe),
        ...methodNotes('repq', options.weights),
        `deployed: the reparameterised model with the ${options.weights} weights on RepQ-ViT's ` +
          `per-channel grids (${repq.weightBits} bits, stored as int8 with per-channel zero ` +
          'points) in the w8a8 forms; activations are quantized per tensor by those forms (at ' +
          'run time for MatMul/Gemm), so RepQ-ViT’s calibrated activation grids and its log√2 ' +
          'softmax quantizer are not in the deployed model (softmax stays float, as in w8a8)',
      ],
    },
  };
}

/** int4-weights with GPTQ in MatMulNBits blocks (quant/deploy/gptq-blocks.ts). */
async function deployableGptqInt4(
  request: QuantizeRequest,
  reporting: Reporting,
): Promise<Product> {
  const { source, options, run } = request;
  const { exclude, kept } = keptLayers(request);
  const held = await heldCalibration(request, reporting);
  const gptq = await gptqBlocks(source.model, source.structure, held.images, {
    blockSize: options.blockSize,
    exclude,
    threads: run.threads,
    logger: reporting.logger,
    onProgress: reporting.onProgress,
  });
  const exported = exportInt4(source.model, source.structure, {
    blockSize: options.blockSize,
    exclude,
    blocksOf: (layer) => gptq.blocks.get(layer.node),
  });
  const kernels = await countIntegerKernels(exported.model, source.structure, source.model);
  return {
    model: exported.model,
    report: {
      kind: 'deployable',
      recipe: options.recipe!,
      weights: 'gptq',
      calibration: held.summary(gptq.seconds, gptq.layers.length, 'GPTQ Hessians'),
      layers: exported.layers,
      kernels,
      keptFloat: kept,
      notes: [
        ...deployNotes(options.recipe!),
        `weights by GPTQ (arXiv:2210.17323) on the MatMulNBits grid: blocks of ` +
          `${options.blockSize} input channels, each block's scale and zero point chosen when ` +
          `the sweep reaches it; Hessians of the float inputs, block by block ` +
          `(${gptq.passes} passes); proxy loss against rounding to nearest ` +
          `${meanRatio(gptq.layers)} on average over the layers`,
      ],
    },
  };
}

/** Mean of GPTQ's proxy loss over rounding's, as `0.62×`. */
function meanRatio(layers: readonly { loss: number; roundingLoss: number }[]): string {
  const ratios = layers.map((l) => (l.roundingLoss > 0 ? l.loss / l.roundingLoss : 1));
  return `${(ratios.reduce((a, b) => a + b, 0) / Math.max(1, ratios.length)).toFixed(2)}×`;
}

/** The calibration sample held in memory, for the methods that pass over it several times. */
async function heldCalibration(request: QuantizeRequest, reporting: Reporting) {
  const { options } = request;
  const { sample, batches, unreadable, path } = await requireCalibration(request, reporting);
  const images = await holdImages(batches()).catch(unreadable);
  if (images.length === 0) unreadable(new CalibrationError('no calibration image was read'));
  const summary = (seconds: number, tensors: number, observer: string): CalibrationSummary => ({
    path,
    images: sample.size,
    seed: options.seed,
    observer,
    seconds,
    tensors,
  });
  return { images, summary };
}

function deployNotes(recipe: string): string[] {
  const notes = [
    'deployable: the accuracy below is that of the exported model run by onnxruntime with its ' +
      'integer kernels, not a simulation',
  ];
  if (recipe === 'w8a8') {
    notes.push(
      'w8a8 chooses per layer the form measured fastest on onnxruntime CPU without accuracy ' +
        'loss: see each layer row for the form and the reason',
    );
  }
  return notes;
}

const floatNote =
  'simulated (fake-quant): weights and activations are rounded to the floating-point grid ' +
  'of their format but computed in float32; the accuracy is that of the quantized ' +
  'arithmetic, the model is not faster or smaller';

const simulatedNote =
  'simulated (fake-quant): weights and activations are rounded to the integer grid but ' +
  'computed in float; the accuracy is that of the quantized arithmetic, the model is ' +
  'not faster or smaller';

function bitWidths(bits: string): { weightBits: number; activationBits: number } {
  const [weightBits, activationBits] = bits.slice(1).split('a').map(Number) as [number, number];
  return { weightBits, activationBits };
}

async function simulated(request: QuantizeRequest, reporting: Reporting): Promise<Product> {
  const { source, options } = request;
  if (options.method !== 'baseline') return method(request, reporting);
  const { weightBits, activationBits } = bitWidths(options.bits!);
  const values = defaultValues(source.structure);
  const { result, summary } = await calibrateValues(request, values, reporting);
  const simulation = simulateQuantization(source.model, source.structure, result, {
    weightBits,
    activationBits,
    observer: options.observer,
    weightObserver: options.weightObserver,
    percentile: options.percentile,
    keepFloat: options.keepFloat,
    overrides: options.overrides,
    logger: reporting.logger,
  });
  return {
    model: simulation.model,
    report: {
      kind: 'simulated',
      recipe: options.bits!,
      calibration: summary,
      simulation: simulation.report,
      keptFloat: simulation.report.keptFloat,
      notes: [simulatedNote],
    },
  };
}

/** The methods of the literature: each calibrates on the held sample and reports itself. */
async function method(request: QuantizeRequest, reporting: Reporting): Promise<Product> {
  const { source, options, run } = request;
  const { images: held, summary } = await heldCalibration(request, reporting);
  const common = {
    ...bitWidths(options.bits!),
    keepFloat: options.keepFloat,
    threads: run.threads,
    logger: reporting.logger,
    onProgress: reporting.onProgress,
  };
  const base = { kind: 'simulated' as const, recipe: options.bits!, method: options.method };
  switch (options.method) {
    case 'repq': {
      const result = await quantizeRepQ(source.model, source.structure, held, {
        ...common,
        weights: options.weights,
      });
      const r = result.report;
      return {
        model: result.model,
        report: {
          ...base,
          weights: options.weights,
          calibration: summary(r.calibration.seconds, r.activations.length, 'percentile-mse'),
          repq: r,
          keptFloat: r.keptFloat,
          notes: [simulatedNote, ...methodNotes(options.method, options.weights)],
        },
      };
    }
    case 'ptq4vit': {
      const result = await quantizePtq4Vit(source.model, source.structure, held, {
        ...common,
        noisyQuant: options.noisyQuant ? 'post-gelu' : 'off',
      });
      const r = result.report;
      return {
        model: result.model,
        report: {
          ...base,
          calibration: summary(r.calibration.seconds, r.activations.length, 'output search'),
          ptq4vit: r,
          keptFloat: r.keptFloat,
          notes: [simulatedNote, ...methodNotes(options.method, 'rtn', options.noisyQuant)],
        },
      };
    }
    case 'fqvit': {
      const result = await quantizeFqVit(source.model, source.structure, held, common);
      const r = result.report;
      const tensors = r.simulation.activations.length + r.ptf.length + r.softmax.roles.length;
      return {
        model: result.model,
        report: {
          ...base,
          calibration: summary(r.calibration.seconds, tensors, 'minmax + PTF'),
          fqvit: r,
          keptFloat: r.simulation.keptFloat,
          notes: [simulatedNote, ...methodNotes(options.method)],
        },
      };
    }
    case 'fp': {
      const formats = fpFormats(options.bits!, options.fpFormat);
      if (typeof formats === 'string') throw new InputError(formats);
      const { keepFloat, threads, logger, onProgress } = common;
      const result = await quantizeFloatFormat(source.model, source.structure, held, {
        weightFormat: formats.weights,
        activationFormat: formats.activations,
        ...{ keepFloat, threads, logger, onProgress },
      });
      const r = result.report;
      return {
        model: result.model,
        report: {
          ...base,
          calibration: summary(r.calibration.seconds, r.activations.length, 'float-scale MSE'),
          fp: r,
          keptFloat: r.keptFloat,
          notes: [floatNote, ...methodNotes(options.method)],
        },
      };
    }
    case 'adalog':
    case 'isvit': {
      const quantize = options.method === 'adalog' ? quantizeAdaLog : quantizeIsVit;
      const result = await quantize(source.model, source.structure, held, {
        ...common,
        weights: options.weights,
      });
      const r = result.report;
      const extra = 'adalog' in r ? { adalog: r.adalog } : { isvit: r.isvit };
      return {
        model: result.model,
        report: {
          ...base,
          weights: options.weights,
          calibration: summary(r.calibration.seconds, r.activations.length, 'percentile-mse'),
          repq: r,
          ...extra,
          keptFloat: r.keptFloat,
          notes: [simulatedNote, ...methodNotes(options.method, options.weights)],
        },
      };
    }
    default:
      throw new InputError(`unknown method ${options.method}`);
  }
}

/** What each method is and what of its paper is approximated, for the report. */
function methodNotes(
  name: MethodName,
  weights: WeightMethodName = 'rtn',
  noisyQuant = false,
): string[] {
  const notes: string[] = [];
  if (name === 'repq') {
    notes.push(
      'RepQ-ViT (arXiv:2212.08254): post-LayerNorm activations calibrated per channel and ' +
        'folded into the LayerNorm and the next layer, log√2 softmax quantizer, percentile-MSE ' +
        'initialisation, sequential calibration; no back-propagation needed.',
    );
  }
  if (weights === 'gptq') {
    notes.push(
      'weights by GPTQ (arXiv:2210.17323) on the RepQ-ViT grids: float64 Cholesky of the ' +
        'Hessian of each layer’s quantized inputs (through the method’s own activation ' +
        'quantizers), stage by stage.',
    );
  }
  if (weights === 'erq') {
    notes.push(
      'weights by ERQ (arXiv:2407.06794) on the RepQ-ViT grids: closed-form ridge ' +
        'corrections for the activation quantization errors (of the method’s own activation ' +
        'quantizers) and the weight quantization errors.',
    );
  }
  if (name === 'ptq4vit') {
    notes.push(
      'PTQ4ViT (arXiv:2111.12293): twin uniform quantizers after softmax and GELU, scales ' +
        'searched on each layer’s output. Its Hessian-guided distance needs gradients of the ' +
        'task loss; the gradient-free cosine distance of the paper is used instead.',
    );
  }
  if (noisyQuant) {
    notes.push(
      'NoisyQuant (arXiv:2211.16056): a fixed noise added before the post-GELU quantizers and ' +
        'removed after, its amplitude searched on the layer output.',
    );
  }
  if (name === 'fp') {
    notes.push(
      'LLM-FP4 (arXiv:2310.16836): floating-point formats with a scale searched per weight ' +
        'output channel and per activation tensor (tensor MSE), the inputs of MatMul layers ' +
        'with a power of two per channel folded into the weight rows (pre-shifted exponent ' +
        'bias). The paper scores candidates with a Hessian-based loss that needs gradients and ' +
        'searches the format per layer; neither is done here.',
    );
  }
  if (name === 'adalog') {
    notes.push(
      'AdaLog (arXiv:2407.12951), calibration form: adaptive-base log quantizers on the ' +
        'softmax outputs (base searched on the attention output) and the GELU outputs (base ' +
        'and scale by the fast progressive combining search on fc2’s output), query, key and ' +
        'value on one uniform grid per head; the LayerNorm reparameterisation and the uniform ' +
        'quantizers are RepQ-ViT’s, their percentile-MSE candidates reaching down to AdaLog’s ' +
        '0.1–0.9 quantile range (not FPCS-searched on the layer output). The paper’s ' +
        'reconstruction ("retrain") needs gradients and is not done.',
    );
  }
  if (name === 'isvit') {
    notes.push(
      'I&S-ViT (arXiv:2311.10126), gradient-free form: its shift-uniform-log2 quantizer on the ' +
        'softmax outputs, shift chosen by tensor MSE, every other quantizer and the LayerNorm ' +
        'reparameterisation RepQ-ViT’s; its block reconstruction (weights trained through a ' +
        'straight-through estimator) needs gradients and is not done.',
    );
  }
  if (name === 'fqvit') {
    notes.push(
      'FQ-ViT (arXiv:2111.13824): power-of-two factors on the LayerNorm inputs, log2 softmax ' +
        'grid (4 bits), min-max elsewhere. Simulated in float: the integer softmax exponential ' +
        'and the integer LayerNorm of the paper are not reproduced.',
    );
  }
  return notes;
}
