/**
 * Evaluation of a model on labelled images: accuracy, agreement with a baseline, latency
 * measured side by side with the baseline, throughput, file size, parameters and MACs.
 */
import type { ModelProto } from 'onnx-buf';
import { openDataset, resolvePreprocess, type PreprocessConfig } from '../data/index.js';
import { evaluateAccuracy, type AccuracyResult } from '../eval/accuracy.js';
import { measureLatency, type LatencyRow } from '../eval/latency.js';
import type { Logger, Reporting } from '../log.js';
import type { ViTStructure } from '../vit/types.js';

export interface EvaluateInput {
  /** The model under test, with its path (for size) or its serialised size. */
  candidate: { model: ModelProto | Uint8Array; structure: ViTStructure; fileBytes: number };
  baseline?: { model: ModelProto | Uint8Array; structure: ViTStructure; fileBytes: number };
  /** Dataset folder. */
  data: string;
  preprocess: PreprocessConfig;
  batch: number;
  threads?: number;
  strict?: boolean;
  classes?: string;
  limit?: number;
  /** Latency measurement; `false` to skip it. */
  latency?: { runs: number; batchSizes: number[] } | false;
}

export interface ModelFacts {
  fileBytes: number;
  parameters: number;
  macs: number;
}

export interface EvaluationReport {
  data: { path: string; images: number; skipped: number };
  accuracy: AccuracyResult;
  latency?: {
    threads: number | 'default';
    rows: (LatencyRow & { ratio?: number })[];
    note: string;
  };
  candidate: ModelFacts;
  baseline?: ModelFacts;
}

function facts(m: EvaluateInput['candidate']): ModelFacts {
  return {
    fileBytes: m.fileBytes,
    parameters: m.structure.counts.parameters,
    macs: m.structure.counts.macs,
  };
}

export async function evaluate(
  input: EvaluateInput,
  reporting: Reporting & { logger?: Logger } = {},
): Promise<EvaluationReport> {
  const dataset = await openDataset(input.data, input.preprocess, {
    logger: reporting.logger,
    strict: input.strict,
    classes: input.classes,
    limit: input.limit,
  });
  const accuracy = await evaluateAccuracy(
    input.candidate.model,
    dataset.batches(input.batch, { stage: 'evaluation', onProgress: reporting.onProgress }),
    { baseline: input.baseline?.model, threads: input.threads, total: dataset.size },
  );
  const report: EvaluationReport = {
    data: { path: input.data, images: accuracy.images, skipped: dataset.stats.skipped },
    accuracy,
    candidate: facts(input.candidate),
    ...(input.baseline ? { baseline: facts(input.baseline) } : {}),
  };
  if (input.latency !== false) {
    const latency = input.latency ?? { runs: 20, batchSizes: [1, input.batch] };
    const models = input.baseline
      ? [input.candidate.model, input.baseline.model]
      : [input.candidate.model];
    const p = input.preprocess;
    const rows = await measureLatency(models, {
      sampleDims: [p.channels, p.height, p.width],
      batchSizes: latency.batchSizes,
      runs: latency.runs,
      threads: input.threads,
      onProgress: reporting.onProgress,
    });
    report.latency = {
      threads: input.threads ?? 'default',
      rows: rows.map((r) => ({
        ...r,
        ...(input.baseline ? { ratio: r.medianMs[0]! / r.medianMs[1]! } : {}),
      })),
      note:
        'median of interleaved runs in one process; medianMs lists the candidate first, then ' +
        'the baseline; ratio = candidate / baseline time (below 1 is faster)',
    };
  }
  return report;
}

export async function preprocessFor(
  modelPath: string,
  overrides: Partial<PreprocessConfig>,
): Promise<PreprocessConfig> {
  return resolvePreprocess(modelPath, overrides);
}
