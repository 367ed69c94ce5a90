/**
 * The compress job: prune, then quantize the pruned model with the quantize pipeline, and prove
 * the final model against the original fp32 model (accuracy, agreement, latency side by side,
 * size). The pruned model's own accuracy is measured too when asked: it tells which half of the
 * loss comes from pruning.
 */
import { checkDatasetFolder, type PreprocessConfig } from '../data/index.js';
import { InputError } from '../errors.js';
import { errorsOnly, silentLogger, type Reporting } from '../log.js';
import { serializeModel } from '../onnx/model-io.js';
import type { PruneFlags, QuantizeOptions, RunOptions } from '../options.js';
import type { EvaluationReport } from './evaluate.js';
import type { LoadedModel } from './model.js';
import {
  evaluateAgainstSource,
  withCounts,
  pruneStages,
  sha256,
  type ModelCounts,
  type PruneJobReport,
} from './prune.js';
import { checkKeepFloat, quantizeModel, type QuantizeReport } from './quantize.js';

export interface CompressRequest {
  source: LoadedModel;
  prune: PruneFlags;
  /** Quantize options; their `data` is ignored (the evaluation is against the original). */
  quantize: QuantizeOptions;
  run: RunOptions;
  preprocess: PreprocessConfig;
  /** Timed runs per model in evaluation; 0 skips latency (tests). */
  latencyRuns?: number;
  /** Also measure the pruned float model's accuracy against the original (one more pass). */
  evaluatePruned?: boolean;
}

export interface CompressReport {
  prune: Pick<
    PruneJobReport,
    'passes' | 'lowRank' | 'tokens' | 'sparsity' | 'calibration' | 'notes'
  >;
  original: PruneJobReport['original'];
  /** The pruned float model, before quantization. */
  pruned: ModelCounts & { bytes: number; evaluation?: EvaluationReport };
  /** The quantization of the pruned model, as `vitslim quantize` reports it (no evaluation). */
  quantize: QuantizeReport;
  output: ModelCounts & { bytes: number; sha256: string };
  /** The final model against the original fp32 model. */
  evaluation?: EvaluationReport;
  seconds: { prune: number; quantize: number; evaluate?: number };
  peakRssMb?: number;
}

export interface CompressResult {
  bytes: Uint8Array;
  report: CompressReport;
}

export async function compressModel(
  request: CompressRequest,
  reporting: Reporting = {},
): Promise<CompressResult> {
  const logger = reporting.logger ?? silentLogger;
  const { source, run, preprocess } = request;
  if (request.prune.rank !== undefined) {
    // TODO: quantize factored layers. The exporters find linear layers through the structure
    // map, which does not recognise a layer split into two MatMuls; until it does, low rank
    // and quantization cannot be stacked here.
    throw new InputError(
      '--rank cannot be combined with quantization yet: the factored layers are not ' +
        'recognised by the exporters; use vitslim prune --rank alone',
    );
  }
  const q = request.quantize;
  if (request.prune.tokens !== undefined && (q.bits !== undefined || q.method !== 'baseline')) {
    // the methods recognise each block's LayerNorm, attention and MLP; the merge or drop nodes
    // of token reduction sit between them, so only the recipes' own calibration applies
    throw new InputError(
      '--tokens can be stacked with a deployable --recipe (w8a8, dynamic-int8, int4-weights) ' +
        'only: a --bits or --method quantizer needs the plain ViT blocks that token reduction ' +
        'rewrites',
    );
  }
  // the pruned model keeps the roles of the input's layers: a typo fails before pruning
  checkKeepFloat(source, request.quantize, 'roles');
  // the evaluation folder is read last: a missing or empty one fails before the pruning
  if (request.prune.data) await checkDatasetFolder(request.prune.data, '--data');
  const started = performance.now();
  const pruned = await pruneStages({ source, options: request.prune, run, preprocess }, reporting);
  const prunedBytes = serializeModel(pruned.model);
  const pruneSeconds = (performance.now() - started) / 1000;
  logger.info(`pruned in ${pruneSeconds.toFixed(1)} s; quantizing the pruned model`);

  const quantized = await quantizeModel(
    {
      source: {
        path: source.path,
        model: pruned.model,
        structure: pruned.structure,
        fileBytes: prunedBytes.byteLength,
      },
      options: { ...request.quantize, data: undefined },
      run,
      preprocess,
      latencyRuns: 0,
    },
    reporting,
  );
  const { bytes } = quantized;
  const quantizeReport = quantized.report;
  const { original, ...stagesReport } = pruned.report;
  const report: CompressReport = {
    prune: stagesReport,
    original,
    pruned: { ...pruned.counts, bytes: prunedBytes.byteLength },
    quantize: quantizeReport,
    output: { ...pruned.counts, bytes: bytes.byteLength, sha256: sha256(bytes) },
    seconds: { prune: pruneSeconds, quantize: quantizeReport.seconds.quantize },
  };

  if (request.prune.data) {
    const t = performance.now();
    const settings = { ...request, options: request.prune };
    // quantized graphs are no longer plain ViTs: their counts are the pruned model's
    const candidate = { model: bytes, fileBytes: bytes.byteLength };
    const e = await evaluateAgainstSource(candidate, settings, reporting);
    report.evaluation = withCounts(e, pruned.counts);
    if (request.evaluatePruned) {
      // the same images again: their warnings were given by the evaluation above
      const again = { ...reporting, logger: errorsOnly(reporting.logger) };
      const float = { model: prunedBytes, fileBytes: prunedBytes.length };
      const f = await evaluateAgainstSource(float, settings, again, false);
      report.pruned.evaluation = withCounts(f, pruned.counts);
    }
    report.seconds.evaluate = (performance.now() - t) / 1000;
  }
  report.peakRssMb = Math.round(process.resourceUsage().maxRSS / 1024);
  return { bytes, report };
}
