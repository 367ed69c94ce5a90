/**
 * Evaluation of a model on labelled images: accuracy, agreement with a baseline, latency
 * measured side by side with the baseline, throughput, file size, parameters and MACs.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { ModelProto } from 'onnx-buf';
import { InputError } from '../errors.js';
import { openDataset, resolvePreprocess, type PreprocessConfig } from '../data/index.js';
import { evaluateAccuracy, type AccuracyResult } from '../eval/accuracy.js';
import { measureLatency, type LatencyRow } from '../eval/latency.js';
import type { Logger, Reporting } from '../log.js';
import type { ViTStructure } from '../vit/types.js';

export interface EvaluateInput {
  /** The model under test, with its path (for size) or its serialised size. */
  candidate: EvaluatedModel;
  baseline?: EvaluatedModel;
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

/**
 * A model to evaluate. `structure` is absent for a graph vitslim does not recognise as a ViT
 * (an exported quantized model, any other classifier): it is still evaluated, without counts.
 */
export interface EvaluatedModel {
  model: ModelProto | Uint8Array;
  structure?: ViTStructure;
  /** Counts recorded for the file by the report that made it, when there is no structure. */
  counts?: { parameters: number; macs: number };
  fileBytes: number;
}

export interface ModelFacts {
  fileBytes: number;
  /**
   * Parameters and MACs of the recognised structure, or those its report recorded for an
   * exported model; null when neither is known.
   */
  parameters: number | null;
  macs: number | null;
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

function facts(m: EvaluatedModel): ModelFacts {
  return {
    fileBytes: m.fileBytes,
    parameters: m.structure?.counts.parameters ?? m.counts?.parameters ?? null,
    macs: m.structure?.counts.macs ?? m.counts?.macs ?? null,
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
    flag: '--data',
  });
  const accuracy = await evaluateAccuracy(
    input.candidate.model,
    dataset.batches(input.batch, { stage: 'evaluation', onProgress: reporting.onProgress }),
    {
      baseline: input.baseline?.model,
      threads: input.threads,
      total: dataset.size,
      labelSource: dataset.labelSource,
    },
  );
  if (accuracy.images === 0) {
    throw new InputError(`no readable image in ${input.data}`, input.data);
  }
  if (accuracy.labelled === 0) {
    reporting.logger?.warn(
      `no labels found in ${input.data}: top-1 and top-5 not measured (label the images with ` +
        '<synset>/ subfolders, a labels.txt or labels.csv, or MNIST label files)',
    );
  }
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

/**
 * The preprocessing of the first of `modelPaths` that has a config.json beside it (a compressed
 * model is usually evaluated with its original's preprocessing), with `overrides` on top.
 */
export async function preprocessFor(
  modelPaths: readonly string[],
  overrides: Partial<PreprocessConfig>,
): Promise<PreprocessConfig> {
  const withConfig = modelPaths.find((p) => existsSync(join(dirname(p), 'config.json')));
  return resolvePreprocess(withConfig ?? modelPaths[0]!, overrides);
}
