/**
 * The prune job: remove MLP channels, heads or head dimensions of a ViT (compensated from
 * calibration statistics when images are given), check that the result runs, and, when
 * evaluation images are given, prove it against the original model.
 */
import { createHash } from 'node:crypto';
import type { ModelProto } from 'onnx-buf';
import { openDataset, sampleDataset, type PreprocessConfig } from '../data/index.js';
import { CalibrationError, InputError } from '../errors.js';
import { silentLogger, type Reporting } from '../log.js';
import { serializeModel } from '../onnx/model-io.js';
import type { HeadsFlag, PruneFlags, RunOptions } from '../options.js';
import { pruneModel, type PruneOptions } from '../prune/prune.js';
import type { HeadsOption, PruneReport } from '../prune/types.js';
import { createSession } from '../runtime/session.js';
import type { ViTStructure } from '../vit/types.js';
import { evaluate, type EvaluatedModel, type EvaluationReport } from './evaluate.js';
import type { LoadedModel } from './model.js';

export interface PruneRequest {
  source: LoadedModel;
  options: PruneFlags;
  run: RunOptions;
  preprocess: PreprocessConfig;
  /** Timed runs per model in evaluation; 0 skips latency (tests). */
  latencyRuns?: number;
}

/** Size and cost of one model of the job. */
export interface ModelCounts {
  parameters: number;
  macs: number;
}

export interface PruneJobReport {
  /** One entry per pruning pass (heads and head dimensions need a pass each). */
  passes: PruneReport[];
  calibration?: { path: string; images: number; seed: number };
  /** The input model, as it was. */
  original: ModelCounts & { bytes: number };
  output: ModelCounts & { bytes: number; sha256: string };
  evaluation?: EvaluationReport;
  seconds: { prune: number; evaluate?: number };
  /** Peak resident memory of the process so far (it includes the evaluation when there is one). */
  peakRssMb?: number;
  notes: string[];
}

export interface PruneJobResult {
  model: ModelProto;
  structure: ViTStructure;
  bytes: Uint8Array;
  report: PruneJobReport;
}

/** Prunes, checks the result loads in onnxruntime, and evaluates it when `options.data` is set. */
export async function pruneJob(
  request: PruneRequest,
  reporting: Reporting = {},
): Promise<PruneJobResult> {
  const logger = reporting.logger ?? silentLogger;
  const started = performance.now();
  const pruned = await pruneStages(request, reporting);
  const bytes = serializeModel(pruned.model);
  await (await createSession(bytes, { threads: request.run.threads }, 'pruned model')).release();
  const report: PruneJobReport = {
    ...pruned.report,
    output: { ...countsOf(pruned.structure), bytes: bytes.byteLength, sha256: sha256(bytes) },
    seconds: { prune: (performance.now() - started) / 1000 },
  };
  logger.info(`pruned in ${report.seconds.prune.toFixed(1)} s`);
  if (request.options.data) {
    const t = performance.now();
    const candidate = { model: bytes, structure: pruned.structure, fileBytes: bytes.byteLength };
    report.evaluation = await evaluateAgainstSource(candidate, request, reporting);
    report.seconds.evaluate = (performance.now() - t) / 1000;
  }
  report.peakRssMb = Math.round(process.resourceUsage().maxRSS / 1024);
  return { model: pruned.model, structure: pruned.structure, bytes, report };
}

export function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

export function countsOf(structure: ViTStructure): ModelCounts {
  return { parameters: structure.counts.parameters, macs: structure.counts.macs };
}

/** The settings evaluation shares between prune and compress. */
export interface EvaluationSettings {
  source: LoadedModel;
  options: { data?: string; limit?: number };
  run: RunOptions;
  preprocess: PreprocessConfig;
  latencyRuns?: number;
}

/**
 * Evaluates `candidate` against the original model on `options.data`; latency is measured with
 * the two models side by side (only two sessions alive, so no idle session skews the timing).
 */
export function evaluateAgainstSource(
  candidate: EvaluatedModel,
  request: EvaluationSettings,
  reporting: Reporting,
  latency = true,
): Promise<EvaluationReport> {
  const { source, options, run } = request;
  const runs = request.latencyRuns ?? 20;
  return evaluate(
    {
      candidate,
      baseline: { model: source.model, structure: source.structure, fileBytes: source.fileBytes },
      data: options.data!,
      preprocess: request.preprocess,
      batch: run.batch,
      threads: run.threads,
      strict: run.strict,
      classes: run.classes,
      limit: options.limit,
      latency: latency && runs > 0 ? { runs, batchSizes: [1, run.batch] } : false,
    },
    reporting,
  );
}

type StagesReport = Omit<PruneJobReport, 'output' | 'seconds' | 'evaluation' | 'peakRssMb'>;

/**
 * The pruning itself, without serialising or evaluating: the width passes in order. Compress
 * runs this and quantizes its result.
 */
export async function pruneStages(
  request: PruneRequest,
  reporting: Reporting = {},
): Promise<{ model: ModelProto; structure: ViTStructure; report: StagesReport }> {
  const { source, options } = request;
  const calibration = options.calib ? await calibrationImages(request, reporting) : undefined;
  let model = source.model;
  let structure = source.structure;
  const passes: PruneReport[] = [];
  for (const widths of widthPasses(options, structure)) {
    const result = await pruneModel(model, structure, {
      ...widths,
      ...pruneSettings(options),
      ...(calibration ? { calibration: calibration.batches() } : {}),
      threads: request.run.threads,
      ...reporting,
    }).catch(calibration?.unreadable ?? rethrow);
    ({ model, structure } = result);
    passes.push(result.report);
  }
  const report: StagesReport = {
    passes,
    ...(calibration
      ? {
          calibration: {
            path: calibration.path,
            images: passes[0]?.calibrationImages ?? 0,
            seed: options.seed,
          },
        }
      : {}),
    original: { ...countsOf(source.structure), bytes: source.fileBytes },
    notes: pruneNotes(passes),
  };
  return { model, structure, report };
}

function rethrow(error: unknown): never {
  throw error;
}

/** The settings of `pruneModel` that every pass shares. */
function pruneSettings(o: PruneFlags): PruneOptions {
  return {
    ...(o.criterion ? { criterion: o.criterion } : {}),
    ...(o.compensation ? { compensation: o.compensation } : {}),
    ...(o.maxRatio !== undefined ? { maxRatio: o.maxRatio } : {}),
    ...(o.ridgeAlpha !== undefined ? { ridgeAlpha: o.ridgeAlpha } : {}),
    scope: o.scope,
    roundTo: o.roundTo,
  };
}

/**
 * The widths to remove, one `pruneModel` pass each. Heads and head dimensions cannot be chosen
 * in the same pass (a head's dimensions are scored within the heads that stay), so head
 * dimensions get a second pass on the model with fewer heads.
 */
function widthPasses(o: PruneFlags, structure: ViTStructure): PruneOptions[] {
  const heads = o.heads === undefined ? undefined : headsOption(o.heads, structure);
  const someHeads = typeof heads === 'number' ? heads > 0 : (heads?.count ?? 0) > 0;
  const first: PruneOptions = {
    ...(o.mlp ? { mlp: o.mlp } : {}),
    ...(someHeads ? { heads } : o.headDims ? { headDims: o.headDims } : {}),
  };
  const second: PruneOptions[] = someHeads && o.headDims ? [{ headDims: o.headDims }] : [];
  return [...(Object.keys(first).length > 0 ? [first] : []), ...second];
}

/** The heads flag for this model; out-of-range blocks or counts are the user's input errors. */
function headsOption(heads: HeadsFlag, structure: ViTStructure): HeadsOption {
  if (typeof heads === 'number') return heads;
  const depth = structure.blocks.length;
  const fewest = Math.min(...structure.blocks.map((b) => b.attention.heads));
  if (heads.count >= fewest) {
    throw new InputError(
      `--heads: cannot remove ${heads.count} heads from blocks of ${fewest}; at least one stays`,
    );
  }
  if (heads.blocks === 'all') return { count: heads.count, blocks: depth };
  const outside =
    typeof heads.blocks === 'number' ? heads.blocks > depth : heads.blocks.some((b) => b >= depth);
  if (outside) {
    throw new InputError(
      `--heads: the model has ${depth} blocks (0 to ${depth - 1}); got ` +
        `${JSON.stringify(heads.blocks)}`,
    );
  }
  return { count: heads.count, blocks: heads.blocks };
}

function pruneNotes(passes: readonly PruneReport[]): string[] {
  const compensated = passes.some((p) => p.compensation !== 'none');
  return [
    'structured pruning: the removed channels and heads are gone from the weight matrices, so ' +
      'onnxruntime runs smaller dense MatMuls; the latency below is measured, not estimated',
    compensated
      ? 'what the removed units contributed on the calibration images is folded into the next ' +
        'layer (compensation), without any training'
      : 'no compensation: the removed units are dropped as they are (no calibration images, or ' +
        '--compensation none); expect a larger accuracy loss',
  ];
}

/** A seeded sample of `--calib`, read anew for each pass. */
async function calibrationImages(request: PruneRequest, reporting: Reporting) {
  const { options, run } = request;
  const path = options.calib!;
  const dataset = await openDataset(path, request.preprocess, {
    logger: reporting.logger,
    strict: run.strict,
    classes: run.classes,
  });
  const sample = sampleDataset(dataset, Math.min(options.calibCount, dataset.size), options.seed);
  const batches = () =>
    sample.batches(run.batch, { stage: 'calibration', onProgress: reporting.onProgress });
  /** With no image decoded, a calibration failure is the folder's fault, not the model's. */
  const unreadable = (error: unknown): never => {
    if (sample.stats.decoded > 0 || !(error instanceof CalibrationError)) throw error;
    throw new InputError(`no readable image among the calibration images of ${path}`, path);
  };
  return { path, batches, unreadable };
}
