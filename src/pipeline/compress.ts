/**
 * The compress job: prune, then quantize the pruned model with the quantize pipeline, and prove
 * the final model against the original fp32 model (accuracy, agreement, latency side by side,
 * size). The pruned model's own accuracy is measured too when asked: it tells which half of the
 * loss comes from pruning.
 */
import type { PreprocessConfig } from '../data/index.js';
import { silentLogger, type Reporting } from '../log.js';
import { serializeModel } from '../onnx/model-io.js';
import type { PruneFlags, QuantizeOptions, RunOptions } from '../options.js';
import type { EvaluationReport } from './evaluate.js';
import type { LoadedModel } from './model.js';
import {
  countsOf,
  evaluateAgainstSource,
  pruneStages,
  sha256,
  type ModelCounts,
  type PruneJobReport,
} from './prune.js';
import { quantizeModel, type QuantizeReport } from './quantize.js';

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
  prune: Pick<PruneJobReport, 'passes' | 'calibration' | 'notes'>;
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
  const report: CompressReport = {
    prune: {
      passes: pruned.report.passes,
      ...(pruned.report.calibration ? { calibration: pruned.report.calibration } : {}),
      notes: pruned.report.notes,
    },
    original: pruned.report.original,
    pruned: { ...countsOf(pruned.structure), bytes: prunedBytes.byteLength },
    quantize: quantizeReport,
    output: { ...countsOf(pruned.structure), bytes: bytes.byteLength, sha256: sha256(bytes) },
    seconds: { prune: pruneSeconds, quantize: quantizeReport.seconds.quantize },
  };

  if (request.prune.data) {
    const t = performance.now();
    const settings = { ...request, options: request.prune };
    // quantized graphs are no longer plain ViTs: their counts are the pruned model's
    const candidate = { model: bytes, structure: pruned.structure, fileBytes: bytes.byteLength };
    report.evaluation = await evaluateAgainstSource(candidate, settings, reporting);
    if (request.evaluatePruned) {
      const float = {
        model: prunedBytes,
        structure: pruned.structure,
        fileBytes: prunedBytes.length,
      };
      report.pruned.evaluation = await evaluateAgainstSource(float, settings, reporting, false);
    }
    report.seconds.evaluate = (performance.now() - t) / 1000;
  }
  report.peakRssMb = Math.round(process.resourceUsage().maxRSS / 1024);
  return { bytes, report };
}
