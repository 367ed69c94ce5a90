/**
 * The prune job: remove MLP channels, heads or head dimensions of a ViT (compensated from
 * calibration statistics when images are given), check that the result runs, and, when
 * evaluation images are given, prove it against the original model.
 */
import { createHash } from 'node:crypto';
import type { ModelProto } from 'onnx-buf';
import { checkDatasetFolder, type PreprocessConfig } from '../data/index.js';
import { InputError } from '../errors.js';
import { silentLogger, type Reporting } from '../log.js';
import { serializeModel } from '../onnx/model-io.js';
import type { HeadsFlag, PruneFlags, RunOptions } from '../options.js';
import { factorizeModel, type LowRankReport } from '../prune/low-rank.js';
import { pruneModel, type PruneOptions } from '../prune/prune.js';
import { sparsifyModel, type SparsityReport } from '../prune/sparsity.js';
import { parseTokenSchedule, reduceTokens, type TokenReport } from '../prune/tokens/index.js';
import type { HeadsOption, PruneReport } from '../prune/types.js';
import { createSession } from '../runtime/session.js';
import type { ViTStructure } from '../vit/types.js';
import { calibrationSample } from './calibration.js';
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
  /** One entry per width-pruning pass (heads and head dimensions need a pass each). */
  passes: PruneReport[];
  lowRank?: LowRankReport;
  tokens?: TokenReport;
  sparsity?: SparsityReport;
  calibration?: { path: string; images: number; seed: number };
  /** The input model, as it was. */
  original: ModelCounts & { bytes: number };
  /**
   * The result; its MACs are estimated when low rank and tokens are combined (the token
   * reduction's ratio applied to the factored model's count), and `macsEstimated` says so.
   */
  output: ModelCounts & { bytes: number; sha256: string; macsEstimated?: boolean };
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
  if (request.options.data) await checkDatasetFolder(request.options.data, '--data');
  const started = performance.now();
  const pruned = await pruneStages(request, reporting);
  const bytes = serializeModel(pruned.model);
  await (await createSession(bytes, { threads: request.run.threads }, 'pruned model')).release();
  const report: PruneJobReport = {
    ...pruned.report,
    output: { ...pruned.counts, bytes: bytes.byteLength, sha256: sha256(bytes) },
    seconds: { prune: (performance.now() - started) / 1000 },
  };
  logger.info(`pruned in ${report.seconds.prune.toFixed(1)} s`);
  if (request.options.data) {
    const t = performance.now();
    const candidate = { model: bytes, fileBytes: bytes.byteLength };
    report.evaluation = withCounts(
      await evaluateAgainstSource(candidate, request, reporting),
      pruned.counts,
    );
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

/** What the stages give: the model, the last structure recognised on the way, the counts. */
export interface PrunedStages {
  model: ModelProto;
  /**
   * The structure of the width-pruned model. Low rank and token reduction rewrite the graph
   * into a form that is no longer a plain ViT; their linear layers keep their nodes (tokens) or
   * not (low rank), and this structure still names the blocks' tensors.
   */
  structure: ViTStructure;
  counts: ModelCounts & { macsEstimated?: boolean };
  report: StagesReport;
}

/**
 * Calibration images sampled when `--calib-count` is not given: 256 when MLP channels are
 * removed, 32 otherwise. The ridge fold of MLP channels needs many images: on the ViT-Tiny,
 * MLP −30 % kept 67.4 % top-1 on val-500 with 32 images and 78.8 % with 256 (README, Pruning).
 */
export function pruneCalibrationCount(options: Pick<PruneFlags, 'calibCount' | 'mlp'>): number {
  return options.calibCount ?? ((options.mlp ?? 0) > 0 ? 256 : 32);
}

/**
 * The pruning itself, without serialising or evaluating, in the order that keeps each step
 * exact: width pruning, then low rank, then token reduction; or sparsity alone. Compress runs
 * this and quantizes its result.
 */
export async function pruneStages(
  request: PruneRequest,
  reporting: Reporting = {},
): Promise<PrunedStages> {
  const { source, options } = request;
  const calibCount = pruneCalibrationCount(options);
  const calibration = options.calib
    ? await calibrationSample(
        options.calib,
        { ...request, options: { ...options, calibCount } },
        reporting,
      )
    : undefined;
  const fail = calibration?.unreadable ?? rethrow;
  const shared = { threads: request.run.threads, ...reporting };
  let model = source.model;
  let structure = source.structure;
  const passes: PruneReport[] = [];
  for (const widths of widthPasses(options, structure)) {
    const result = await pruneModel(model, structure, {
      ...widths,
      ...pruneSettings(options),
      ...(calibration ? { calibration: calibration.batches() } : {}),
      ...shared,
    }).catch(fail);
    ({ model, structure } = result);
    passes.push(result.report);
  }
  const stages: StagesReport = {
    passes,
    original: { ...countsOf(source.structure), bytes: source.fileBytes },
    notes: [],
  };
  let counts: PrunedStages['counts'] = countsOf(structure);

  if (options.rank !== undefined) {
    const method = options.rankMethod ?? (calibration ? 'whitened' : 'svd');
    const result = await factorizeModel(model, structure, {
      rank: options.rank,
      method,
      ...(options.rankLayers ? { layers: options.rankLayers } : {}),
      ...(calibration && method === 'whitened' ? { calibration: calibration.batches() } : {}),
      ...shared,
    }).catch(fail);
    model = result.model;
    stages.lowRank = result.report;
    counts = { parameters: result.report.parameters[1], macs: result.report.macs[1] };
  }
  if (options.tokens !== undefined) {
    const schedule = parseTokenSchedule(options.tokens);
    const result = tokenStep(() =>
      reduceTokens(model, structure, schedule, { logger: reporting.logger, source: source.path }),
    );
    model = result.model;
    stages.tokens = result.report;
    const { before, after } = result.report.macs;
    counts = stages.lowRank
      ? { ...counts, macs: Math.round((counts.macs * after) / before), macsEstimated: true }
      : { ...counts, macs: after };
  }
  if (options.sparsity || options.sparsityPattern !== 'unstructured') {
    const result = await sparsifyModel(model, structure, {
      ...sparsityPattern(options),
      method: options.sparsityMethod ?? (calibration ? 'wanda' : 'magnitude'),
      ...(calibration ? { calibration: calibration.batches() } : {}),
      ...shared,
    }).catch(fail);
    model = result.model;
    stages.sparsity = result.report;
  }

  const images = [
    ...passes.map((p) => p.calibrationImages),
    stages.lowRank?.calibrationImages ?? 0,
    stages.sparsity?.calibrationImages ?? 0,
  ];
  // token reduction alone reads no image: a calibration folder it never opened is not reported
  if (calibration && Math.max(...images) > 0) {
    stages.calibration = {
      path: calibration.path,
      images: Math.max(...images),
      seed: options.seed,
    };
  }
  stages.notes = pruneNotes(stages);
  return { model, structure, counts, report: stages };
}

/** Token schedules that do not fit the model are the user's input errors. */
function tokenStep<T>(reduce: () => T): T {
  try {
    return reduce();
  } catch (error) {
    if (error instanceof RangeError) throw new InputError(`--tokens: ${error.message}`);
    throw error;
  }
}

function sparsityPattern(o: PruneFlags) {
  if (o.sparsityPattern === 'unstructured') {
    return { pattern: 'unstructured' as const, sparsity: o.sparsity ?? 0 };
  }
  const [n, m] = o.sparsityPattern.split(':').map(Number) as [number, number];
  const sparsity = o.sparsity ? { sparsity: o.sparsity } : {};
  return n === 2 && m === 4
    ? { pattern: '2:4' as const, ...sparsity }
    : { pattern: 'N:M' as const, n, m, ...sparsity };
}

/** The evaluation with the candidate's parameters and MACs, which only the stages know. */
export function withCounts(e: EvaluationReport, counts: ModelCounts): EvaluationReport {
  return { ...e, candidate: { ...e.candidate, ...counts } };
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
    ...(o.scope ? { scope: o.scope } : {}),
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

function pruneNotes(stages: StagesReport): string[] {
  const notes: string[] = [];
  const { passes } = stages;
  if (passes.length > 0) {
    notes.push(
      'structured pruning: the removed channels and heads are gone from the weight matrices, ' +
        'so onnxruntime runs smaller dense MatMuls; the latency below is measured, not estimated',
      passes.some((p) => p.compensation !== 'none')
        ? 'what the removed units contributed on the calibration images is folded into the ' +
            'next layers (compensation), without any training'
        : 'no compensation: the removed units are dropped as they are (no calibration images, ' +
            'or --compensation none); expect a larger accuracy loss',
    );
  }
  if (stages.lowRank) {
    notes.push(
      `low rank (${stages.lowRank.method}): chosen layers are replaced by two thinner MatMuls ` +
        'where that saves MACs; layers whose rank would pass the break-even stay dense',
    );
  }
  if (stages.tokens) {
    notes.push(
      `token reduction ${stages.tokens.label} changes the graph: ${stages.tokens.addedNodes} ` +
        'nodes merge or drop tokens inside the model, so later blocks run on fewer tokens ' +
        `(${stages.tokens.tokens.before} → ${stages.tokens.tokens.after}); the model is no ` +
        'longer a plain ViT for other tools, and its outputs per token are not those of the input',
    );
  }
  if (stages.sparsity) notes.push(`sparsity: ${stages.sparsity.speed}`);
  return notes;
}
