/**
 * Per-channel statistics of activations over calibration images, for importance (‖x‖₂,
 * variance) and compensation (means, Gram matrices). The reductions run inside onnxruntime: the
 * model gets, for each observed value x of shape [..., C], the nodes
 * `Σ x`, `Σ x²` over all rows and optionally `Xᵀ X` ([C, C]) of the rows as a matrix, and only
 * these small outputs leave the session. Batches are added up in float64, so memory holds the
 * accumulators (C² numbers per value with a Gram) whatever the number of images.
 */
import type { ModelProto } from 'onnx-buf';
import { makeNode } from '../graph/attributes.js';
import { applyCommands, type Command } from '../graph/commands.js';
import { CalibrationError } from '../errors.js';
import { int64Tensor } from '../onnx/tensor.js';
import { capture, type CaptureBatch } from '../runtime/capture.js';
import type { SessionOptions } from '../runtime/session.js';
import { unsupported } from '../vit/trace.js';
import { traceContext } from './groups.js';
import { NameAllocator } from './tensors.js';

/** Running sums of one value's channels (the last axis) over every row seen. */
export class ChannelMoments {
  readonly channels: number;
  /** Rows (tokens × images) seen. */
  count = 0;
  readonly sum: Float64Array;
  readonly sumSquares: Float64Array;
  /** Σ xxᵀ, row-major [channels, channels], when requested. */
  readonly gram: Float64Array | undefined;
  /**
   * With a target t read on the same rows (what a layer reading x should output): Σ t and
   * Σ x tᵀ, row-major [channels, target channels].
   */
  readonly target: { channels: number; sum: Float64Array; cross: Float64Array } | undefined;

  constructor(channels: number, gram: boolean, targetChannels?: number) {
    this.channels = channels;
    this.sum = new Float64Array(channels);
    this.sumSquares = new Float64Array(channels);
    this.gram = gram ? new Float64Array(channels * channels) : undefined;
    this.target = targetChannels
      ? {
          channels: targetChannels,
          sum: new Float64Array(targetChannels),
          cross: new Float64Array(channels * targetChannels),
        }
      : undefined;
  }

  mean(): Float64Array {
    return this.sum.map((s) => s / this.count);
  }

  /** Population variance of each channel. */
  variance(): Float64Array {
    return this.sumSquares.map((q, c) =>
      Math.max(0, q / this.count - (this.sum[c]! / this.count) ** 2),
    );
  }

  /** ‖x_c‖₂ over every row: the activation norm of Wanda. */
  norm(): Float64Array {
    return this.sumSquares.map(Math.sqrt);
  }

  /**
   * The covariance E[xxᵀ] − μμᵀ, row-major. Centring here (not in the solve) keeps the ridge
   * fit equal to a regression with an unpenalised intercept (pruning-methods.md §2.3, CORP).
   */
  covariance(): Float64Array {
    if (!this.gram) throw new RangeError('covariance: these moments were collected without a Gram');
    const n = this.channels;
    const mean = this.mean();
    const out = new Float64Array(n * n);
    for (let i = 0; i < n; i++) {
      const mi = mean[i]!;
      for (let j = 0; j < n; j++)
        out[i * n + j] = this.gram[i * n + j]! / this.count - mi * mean[j]!;
    }
    return out;
  }

  /** The cross-covariance E[x tᵀ] − μ_x μ_tᵀ with the target, row-major [channels, target]. */
  crossCovariance(): Float64Array {
    if (!this.target) throw new RangeError('crossCovariance: these moments have no target');
    const { channels: d, sum, cross } = this.target;
    const mean = this.mean();
    const out = new Float64Array(this.channels * d);
    for (let i = 0; i < this.channels; i++) {
      const mi = mean[i]!;
      for (let o = 0; o < d; o++) {
        out[i * d + o] = cross[i * d + o]! / this.count - (mi * sum[o]!) / this.count;
      }
    }
    return out;
  }

  targetMean(): Float64Array {
    if (!this.target) throw new RangeError('targetMean: these moments have no target');
    return this.target.sum.map((s) => s / this.count);
  }
}

export interface StatisticsRequest {
  value: string;
  /** Also accumulate the Gram matrix (for ridge compensation and the reconstruction criterion). */
  gram: boolean;
}

/** Where the reductions of one request are in a probe model. */
interface Probe {
  value: string;
  channels: number;
  rowsPerImage: number;
  sum: string;
  sumSquares: string;
  gram?: string;
}

/** The reductions of each request added to `model` (through commands), and where they are. */
function addStatisticsProbes(model: ModelProto, requests: readonly StatisticsRequest[]) {
  const ctx = traceContext(model);
  const names = new NameAllocator(ctx.index);
  const opset = Number(model.opsetImport.find((o) => o.domain === '')?.version ?? 13n);
  const commands: Command[] = [];
  const node = (opType: string, inputs: string[], attributes = {}) => {
    const output = names.name(`vitslim_stats/${opType}`);
    const spec = { name: output, opType, inputs, outputs: [output], attributes };
    commands.push({ kind: 'addNode', node: makeNode(spec) });
    return output;
  };
  const axis0 = names.name('vitslim_stats/axis0');
  commands.push({ kind: 'addInitializer', tensor: int64Tensor(axis0, [1], [0]) });
  // ReduceSum takes its axes as an input from opset 13, as an attribute before
  const reduce = (x: string) =>
    opset >= 13
      ? node('ReduceSum', [x, axis0], { keepdims: 0 })
      : node('ReduceSum', [x], { axes: [0], keepdims: 0 });
  const asRows = (value: string) => {
    const shape = ctx.shapes.shape(value);
    const width = shape?.[shape.length - 1];
    if (!shape || !width)
      unsupported(`cannot collect statistics of ${value}: unknown shape`, value);
    const target = names.name(`vitslim_stats/shape${width}`);
    commands.push({ kind: 'addInitializer', tensor: int64Tensor(target, [2], [-1, width]) });
    const perImage = shape.slice(0, -1).reduce((p, d) => p * d, 1);
    return { rows: node('Reshape', [value, target]), width, perImage };
  };
  const probes = requests.map(({ value, gram }): Probe => {
    const { rows, width, perImage } = asRows(value);
    const probe: Probe = {
      value,
      channels: width,
      rowsPerImage: perImage,
      sum: reduce(rows),
      sumSquares: reduce(node('Mul', [rows, rows])),
    };
    if (gram) probe.gram = node('MatMul', [node('Transpose', [rows], { perm: [1, 0] }), rows]);
    return probe;
  });
  return { model: applyCommands(model, commands, { context: 'statistics graph' }), probes };
}

/** The graph outputs a probe reads. */
function probeOutputs(probes: readonly Probe[]): string[] {
  return probes.flatMap((p) => [p.sum, p.sumSquares, ...(p.gram ? [p.gram] : [])]);
}

function createMoments(probes: readonly Probe[]): Map<string, ChannelMoments> {
  return new Map(probes.map((p) => [p.value, new ChannelMoments(p.channels, !!p.gram)]));
}

type Captured = ReadonlyMap<string, { data: unknown }>;

/** Adds one batch of `images` images to the moments. */
function addBatch(
  moments: ReadonlyMap<string, ChannelMoments>,
  probes: readonly Probe[],
  tensors: Captured,
  images: number,
): void {
  const read = (name: string) => tensors.get(name)!.data as Float32Array;
  for (const p of probes) {
    const m = moments.get(p.value)!;
    add(m.sum, read(p.sum));
    add(m.sumSquares, read(p.sumSquares));
    if (p.gram) add(m.gram!, read(p.gram));
    m.count += images * p.rowsPerImage;
  }
}

function add(into: Float64Array, batch: Float32Array): void {
  for (let i = 0; i < into.length; i++) into[i] = into[i]! + batch[i]!;
}

/** CalibrationError when a statistic is not finite (NaN or ±Inf activations). */
function checkMoments(moments: ReadonlyMap<string, ChannelMoments>): void {
  for (const [value, m] of moments) {
    const arrays = [m.sum, m.sumSquares, m.gram];
    if (arrays.some((a) => a?.some((v) => !Number.isFinite(v)))) {
      throw new CalibrationError(
        `the activations of ${value} hold NaN or ±Inf on the calibration images`,
        value,
      );
    }
  }
}

export interface StatisticsResult {
  moments: Map<string, ChannelMoments>;
  images: number;
}

/**
 * Runs the batches through `model` once and returns the moments of every requested value.
 *
 * TODO: all Gram matrices are held at once (12 × 768² float64, 57 MB, for ViT-Tiny's MLPs, but
 * 12 × 3072², 900 MB, for ViT-B's); for wide models the requests must be split over several
 * passes to keep peak memory under the 4 GB target.
 */
export async function channelStatistics(
  model: ModelProto,
  requests: readonly StatisticsRequest[],
  batches: AsyncIterable<CaptureBatch> | Iterable<CaptureBatch>,
  options: SessionOptions = {},
): Promise<StatisticsResult> {
  const { model: probe, probes } = addStatisticsProbes(model, requests);
  const moments = createMoments(probes);
  let images = 0;
  let current = 0;
  // capture asks for the next batch only after the previous one's callback returned
  const counted = async function* () {
    for await (const batch of batches) {
      current = batch.dims[0] ?? 0;
      images += current;
      yield batch;
    }
  };
  await capture(
    probe,
    probeOutputs(probes),
    counted(),
    (tensors) => addBatch(moments, probes, tensors, current),
    options,
  );
  if (images === 0) throw new CalibrationError('calibration saw no images: the set is empty');
  checkMoments(moments);
  return { moments, images };
}
