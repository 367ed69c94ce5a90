/**
 * The main job: quantize a ViT, deployable (w8a8, dynamic-int8, int4-weights) or simulated
 * (any WxAy), and, when evaluation images are given, prove the result against the original.
 */
import { createHash } from 'node:crypto';
import type { ModelProto } from 'onnx-buf';
import { openDataset, sampleDataset, type PreprocessConfig } from '../data/index.js';
import { CalibrationError, InputError } from '../errors.js';
import { silentLogger, type Reporting } from '../log.js';
import { serializeModel } from '../onnx/model-io.js';
import type { MethodName, QuantizeOptions, RunOptions } from '../options.js';
import { activationRanges, calibrate, defaultValues } from '../quant/calibrate.js';
import { exportDynamic } from '../quant/deploy/dynamic.js';
import { exportInt4 } from '../quant/deploy/int4.js';
import { countIntegerKernels, type KernelCount } from '../quant/deploy/kernels.js';
import { deployLayers } from '../quant/deploy/layers.js';
import { exportQdq, qdqCalibrationValues } from '../quant/deploy/qdq.js';
import { quantizeRepQ, type RepQResult } from '../quant/methods/repq.js';
import type { DeployLayerRow } from '../quant/deploy/types.js';
import type { ActivationRanges } from '../quant/types.js';
import { excludePoints, type KeptPoint } from '../quant/quant-points.js';
import { simulateQuantization, type SimulationReport } from '../quant/simulate.js';
import { createSession } from '../runtime/session.js';
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
  repq?: RepQResult['report'];
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
async function calibrationSample(request: QuantizeRequest, reporting: Reporting) {
  const { options, run } = request;
  if (!options.calib) {
    throw new InputError('this recipe needs calibration images: pass --calib <dir>');
  }
  const dataset = await openDataset(options.calib, request.preprocess, {
    logger: reporting.logger,
    strict: run.strict,
    classes: run.classes,
  });
  const sample = sampleDataset(dataset, Math.min(options.calibCount, dataset.size), options.seed);
  const batches = () =>
    sample.batches(run.batch, { stage: 'calibration', onProgress: reporting.onProgress });
  /** A calibration failure with no image decoded is the folder's fault, not the model's. */
  const unreadable = (error: unknown): never => {
    if (sample.stats.decoded > 0 || !(error instanceof CalibrationError)) throw error;
    throw new InputError(`no readable image among the calibration images of ${options.calib}`);
  };
  return { sample, batches, unreadable, path: options.calib };
}

async function calibrateValues(
  request: QuantizeRequest,
  values: readonly string[],
  reporting: Reporting,
) {
  const { options, source, run } = request;
  const { sample, batches, unreadable, path } = await calibrationSample(request, reporting);
  const result = await calibrate(source.model, source.structure, batches(), {
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
  const { exclude, kept } = keptLayers(request);
  let calibration: CalibrationSummary | undefined;
  let exported;
  switch (options.recipe) {
    case 'w8a8': {
      const values = qdqCalibrationValues(source.model, source.structure, { exclude });
      let ranges: ActivationRanges = new Map();
      // every layer may have taken a form that quantizes at run time: nothing to calibrate
      if (values.length > 0) {
        const { result, summary } = await calibrateValues(request, values, reporting);
        calibration = summary;
        const grid = { bits: 8, signed: false, symmetric: false };
        ranges = activationRanges(result, options.observer, grid, {
          percentile: options.percentile,
        });
      }
      exported = exportQdq(source.model, source.structure, ranges, { exclude });
      break;
    }
    case 'dynamic-int8':
      exported = exportDynamic(source.model, source.structure, { exclude });
      break;
    default:
      exported = exportInt4(source.model, source.structure, {
        blockSize: options.blockSize,
        exclude,
      });
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
  if (options.method === 'repq') return repq(request, reporting);
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

/** RepQ-ViT: sequential percentile-MSE calibration, LayerNorm reparameterisation, log√2 softmax. */
async function repq(request: QuantizeRequest, reporting: Reporting): Promise<Product> {
  const { source, options, run } = request;
  const { sample, batches, unreadable, path } = await calibrationSample(request, reporting);
  const result = await quantizeRepQ(source.model, source.structure, batches(), {
    ...bitWidths(options.bits!),
    keepFloat: options.keepFloat,
    threads: run.threads,
    logger: reporting.logger,
    onProgress: reporting.onProgress,
  }).catch(unreadable);
  const { calibration } = result.report;
  return {
    model: result.model,
    report: {
      kind: 'simulated',
      recipe: options.bits!,
      method: 'repq',
      calibration: {
        path,
        images: calibration.images,
        seed: options.seed,
        observer: 'percentile-mse',
        seconds: calibration.seconds,
        tensors: result.report.activations.length,
      },
      repq: result.report,
      keptFloat: result.report.keptFloat,
      notes: [
        simulatedNote,
        `RepQ-ViT (arXiv:2212.08254): post-LayerNorm activations calibrated per channel and ` +
          `folded into the LayerNorm and the next layer, log√2 softmax quantizer, ` +
          `percentile-MSE initialisation, sequential calibration; no back-propagation needed. ` +
          `Calibration used ${sample.size} images.`,
      ],
    },
  };
}
