/**
 * Choosing a token schedule from latency measured on this machine (pruning-methods.md §4.3):
 * latency against tokens is not the MAC count (fixed per-op costs, GEMM blocking), so each
 * candidate is written into the graph and timed at batch 1 beside the original model. Only the
 * two sessions of a pair are alive while it is timed: more idle sessions bias the timings.
 * Candidates are tried from the mildest (fewest MACs removed) and the first whose measured
 * speed-up reaches the target is chosen: it keeps the most tokens, so the most accuracy.
 */
import type { ModelProto } from 'onnx-buf';
import { measureLatency } from '../../eval/latency.js';
import { median } from '../../eval/metrics.js';
import type { Reporting } from '../../log.js';
import type { ViTStructure } from '../../vit/types.js';
import { tokenMacs } from './macs.js';
import { reduceTokens } from './reduce.js';
import { planTokens } from './schedule.js';
import type { TokenReport, TokenSchedule } from './types.js';

export interface LatencyCurveOptions extends Reporting {
  /** onnxruntime intra-op threads (default 2). */
  threads?: number;
  /** Timed runs of each model per round (default 20) after `warmup` (default 3). */
  runs?: number;
  warmup?: number;
  /** Rounds per candidate; the speed-up is the median of the rounds' ratios (default 3). */
  rounds?: number;
}

export interface ScheduleTiming {
  report: TokenReport;
  /** Median batch-1 milliseconds of the original and the reduced model, last round. */
  medianMs: [number, number];
  /** Original time / reduced time, median over rounds. */
  speedup: number;
}

/** Times each schedule at batch 1 against the original model, pair by pair. */
export async function measureTokenSchedules(
  model: ModelProto,
  structure: ViTStructure,
  schedules: readonly TokenSchedule[],
  options: LatencyCurveOptions = {},
): Promise<ScheduleTiming[]> {
  const timings: ScheduleTiming[] = [];
  for (const schedule of schedules) {
    const { model: reduced, report } = reduceTokens(model, structure, schedule);
    timings.push({ report, ...(await timePair(model, reduced, structure, options)) });
    options.logger?.info(
      `${report.label}: ${timings.at(-1)!.speedup.toFixed(2)}× measured, MACs ÷${report.macs.ratio.toFixed(2)}`,
    );
  }
  return timings;
}

async function timePair(
  model: ModelProto,
  reduced: ModelProto,
  structure: ViTStructure,
  options: LatencyCurveOptions,
): Promise<Omit<ScheduleTiming, 'report'>> {
  const ratios: number[] = [];
  let medianMs: [number, number] = [0, 0];
  for (let round = 0; round < (options.rounds ?? 3); round++) {
    const [row] = await measureLatency([model, reduced], {
      sampleDims: structure.counts.imageSize,
      batchSizes: [1],
      threads: options.threads ?? 2,
      runs: options.runs ?? 20,
      warmup: options.warmup ?? 3,
    });
    medianMs = [row!.medianMs[0]!, row!.medianMs[1]!];
    ratios.push(medianMs[0] / medianMs[1]);
  }
  return { medianMs, speedup: median(ratios) };
}

/**
 * The mildest of `schedules` whose measured batch-1 speed-up reaches `target`, with the timings
 * of every candidate tried (in order of MAC reduction, stopping at the first that qualifies);
 * `chosen` is undefined when none does.
 */
export async function chooseTokenSchedule(
  model: ModelProto,
  structure: ViTStructure,
  schedules: readonly TokenSchedule[],
  target: number,
  options: LatencyCurveOptions = {},
): Promise<{ chosen?: ScheduleTiming; tried: ScheduleTiming[] }> {
  if (!(target > 0)) throw new RangeError(`target speed-up must be > 0, got ${target}`);
  const ordered = schedules
    .map((schedule) => ({ schedule, ratio: scheduleMacRatio(structure, schedule) }))
    .sort((a, b) => a.ratio - b.ratio);
  const tried: ScheduleTiming[] = [];
  for (const { schedule } of ordered) {
    const [timing] = await measureTokenSchedules(model, structure, [schedule], options);
    tried.push(timing!);
    if (timing!.speedup >= target) return { chosen: timing, tried };
  }
  return { tried };
}

/** ToMe with r from 1 to the largest r that still leaves `minTokens` at the end, step `step`. */
export function tomeCandidates(structure: ViTStructure, step = 1, minTokens = 8): TokenSchedule[] {
  const depth = structure.blocks.length;
  const out: TokenSchedule[] = [];
  for (let r = step; structure.counts.tokens - r * depth >= minTokens; r += step) {
    out.push({ kind: 'tome', r });
  }
  return out;
}

/** Single-layer pruning at `block`, removing `step`, 2·`step`, … tokens while some remain. */
export function singleCandidates(
  structure: ViTStructure,
  block: number,
  step: number,
): TokenSchedule[] {
  const out: TokenSchedule[] = [];
  for (let r = step; r <= structure.counts.tokens - 3; r += step) {
    out.push({ kind: 'single', block, r });
  }
  return out;
}

/** MACs before / after `schedule`, without writing the graph. */
export function scheduleMacRatio(structure: ViTStructure, schedule: TokenSchedule): number {
  const plans = planTokens(schedule, structure.counts.tokens, structure.blocks.length);
  return tokenMacs(structure, schedule, plans).ratio;
}
