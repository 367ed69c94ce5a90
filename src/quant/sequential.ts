/**
 * Sequential calibration (reference notes §0.4): activation quantizers are initialised in
 * execution order, each on the tensor that the model produces with every earlier quantizer
 * already in place, as RepQ-ViT's single quantized forward pass does (§6(3a)).
 *
 * Done literally, that is one forward pass per quantizer. Two things make it cheap without
 * changing the result:
 * - quantizers that do not depend on each other are calibrated together ("levels": q, k and v
 *   read the same qkv output and none feeds another; the softmax output depends on q and k);
 * - the model is cut into segments at the block inputs. The tensor entering a segment is computed
 *   once, with all earlier quantizers, for every calibration image and kept in memory; each level
 *   then runs only its segment, pruned to what the level needs.
 * Memory therefore holds all calibration images' activations of one segment boundary and one
 * level (RepQ-ViT's exact quantiles need every value anyway); it is meant for the small
 * calibration sets these methods use (32 images).
 */
import { create } from '@bufbuild/protobuf';
import { GraphProtoSchema, ModelProtoSchema, type ModelProto, type NodeProto } from 'onnx-buf';
import { CalibrationError, InternalError } from '../errors.js';
import { applyCommands, valueInfo, type Command } from '../graph/commands.js';
import { GraphIndex } from '../graph/graph.js';
import { validateGraph } from '../graph/validate.js';
import { noProgress, type ProgressListener } from '../log.js';
import type { CaptureBatch } from '../runtime/capture.js';
import { createSession, floatInput, type SessionOptions } from '../runtime/session.js';
import {
  activationCommands,
  NamePrefixes,
  type ActivationQuantizer,
  type ActivationSetting,
} from './quantizer-commands.js';

/** Activation values quantized together: every point reading one value. */
export interface PointGroup {
  value: string;
  roles: string[];
  nodes: string[];
}

/** One tensor over all calibration images, concatenated along the batch axis. */
export interface CapturedTensor {
  data: Float32Array;
  dims: number[];
}

/** Chooses a group's quantizer from the tensor the partly quantized model gives it. */
export type QuantizerChoice = (group: PointGroup, tensor: CapturedTensor) => ActivationQuantizer;

export interface SequentialOptions extends SessionOptions {
  onProgress?: ProgressListener;
  stage?: string;
}

export interface SequentialResult {
  settings: ActivationSetting[];
  /** onnxruntime passes over the calibration images (levels plus segment boundaries). */
  passes: number;
}

interface Segment {
  start: string;
  /** The boundary tensor to compute for the next segment, if any. */
  end?: string;
  groups: PointGroup[];
}

/**
 * Calibrates `groups` (in graph order) one level after another on `model`, which should already
 * hold whatever is quantized before activations (the fake-quant weights). `boundaries` are the
 * values where the model is cut, in order, the first being its image input (for a ViT: the
 * image, each block's input, the last block's output).
 */
export async function calibrateSequentially(
  model: ModelProto,
  boundaries: readonly string[],
  groups: readonly PointGroup[],
  images: readonly CaptureBatch[],
  choose: QuantizerChoice,
  options: SequentialOptions = {},
): Promise<SequentialResult> {
  const onProgress = options.onProgress ?? noProgress;
  const stage = options.stage ?? 'sequential calibration';
  const settings: ActivationSetting[] = [];
  let boundary: CaptureBatch[] = [...images];
  let passes = 0;
  onProgress({ status: 'start', stage, total: groups.length });
  for (const segment of planSegments(model, boundaries, groups)) {
    if (segment.groups.length === 0 && !segment.end) continue;
    const runner = new SegmentRunner(model, boundaries[0]!, segment, images, options);
    for (const level of runner.levels()) {
      const captured = await runner.capture(
        boundary,
        level.map((g) => g.value),
      );
      passes++;
      for (const group of level) {
        const setting = { ...group, quantizer: choose(group, captured.get(group.value)!) };
        settings.push(setting);
        runner.insert(setting);
        onProgress({ status: 'advance', stage, done: settings.length, total: groups.length });
      }
    }
    if (segment.end) {
      boundary = await runner.boundary(boundary, segment.end);
      passes++;
    }
  }
  onProgress({ status: 'end', stage });
  return { settings, passes };
}

/**
 * Segments between consecutive boundaries (the last one runs to the graph outputs). A group goes
 * to the segment holding its reading nodes: downstream of that segment's start and not of the
 * next boundary.
 */
function planSegments(
  model: ModelProto,
  boundaries: readonly string[],
  groups: readonly PointGroup[],
): Segment[] {
  if (boundaries.length === 0) throw new InternalError('sequential calibration needs a boundary');
  const index = new GraphIndex(model);
  const reach = boundaries.map((b) => new Set([...index.downstream(b)].map((n) => n.name)));
  const segments: Segment[] = boundaries.map((start, i) => ({
    start,
    ...(i + 1 < boundaries.length ? { end: boundaries[i + 1]! } : {}),
    groups: [],
  }));
  for (const group of groups) {
    const node = group.nodes[0]!;
    let at = -1;
    for (let i = 0; i < boundaries.length; i++) {
      if (reach[i]!.has(node) && !(reach[i + 1]?.has(node) ?? false)) at = i;
    }
    if (at < 0) {
      throw new InternalError(
        `${group.roles.join(', ')}: node ${node} lies in no segment from ${boundaries[0]}`,
      );
    }
    segments[at]!.groups.push(group);
  }
  return segments;
}

/** One segment of the model: its sliced graph, the quantizers inserted so far, its passes. */
class SegmentRunner {
  private readonly slice: ModelProto;
  private readonly index: GraphIndex;
  private readonly names: NamePrefixes;
  private readonly inserted: Command[] = [];
  private readonly graphInput: string | undefined;

  constructor(
    model: ModelProto,
    imageInput: string,
    private readonly segment: Segment,
    private readonly images: readonly CaptureBatch[],
    private readonly options: SessionOptions,
  ) {
    const outputs = [
      ...segment.groups.flatMap((g) => [g.value, ...g.nodes.flatMap((n) => nodeOutputs(model, n))]),
      ...(segment.end ? [segment.end] : []),
    ];
    const cut = sliceModel(model, segment.start, [...new Set(outputs)]);
    this.slice = cut.model;
    this.graphInput = cut.needsGraphInput ? imageInput : undefined;
    this.index = new GraphIndex(this.slice);
    this.names = new NamePrefixes(this.index);
  }

  /** The groups in levels: a group's level is one more than that of any group it depends on. */
  levels(): PointGroup[][] {
    const levelOf = new Map<PointGroup, number>();
    const reach = new Map<PointGroup, Set<string>>();
    for (const group of this.segment.groups) reach.set(group, this.downstreamValues(group));
    for (const group of this.segment.groups) {
      let level = 0;
      for (const [earlier, l] of levelOf) {
        if (reach.get(earlier)!.has(group.value)) level = Math.max(level, l + 1);
      }
      levelOf.set(group, level);
    }
    const levels: PointGroup[][] = [];
    for (const [group, l] of levelOf) (levels[l] ??= []).push(group);
    return levels.filter((l) => l.length > 0);
  }

  /** Values computed from the quantized edges of a group (the reading nodes' outputs onwards). */
  private downstreamValues(group: PointGroup): Set<string> {
    const values = new Set<string>();
    for (const name of group.nodes) {
      for (const out of this.index.node(name).output) {
        values.add(out);
        for (const node of this.index.downstream(out)) for (const o of node.output) values.add(o);
      }
    }
    return values;
  }

  insert(setting: ActivationSetting): void {
    this.inserted.push(...activationCommands(this.index, this.names, setting));
  }

  /** The values over all images, from the segment with every quantizer inserted so far. */
  async capture(boundary: readonly CaptureBatch[], values: readonly string[]) {
    const perBatch = await this.run(boundary, values);
    const out = new Map<string, CapturedTensor>();
    for (const value of values) out.set(value, concatBatches(perBatch.map((b) => b.get(value)!)));
    for (const [value, tensor] of out) checkFinite(value, tensor.data);
    return out;
  }

  /** The segment's end value per batch, the next segment's input. */
  async boundary(boundary: readonly CaptureBatch[], end: string): Promise<CaptureBatch[]> {
    const perBatch = await this.run(boundary, [end]);
    return perBatch.map((b) => b.get(end)!);
  }

  /** Each batch's `values`; the segment's own input is the boundary tensor, not computed. */
  private async run(boundary: readonly CaptureBatch[], values: readonly string[]) {
    const computed = values.filter((v) => v !== this.segment.start);
    const fetched = computed.length > 0 ? await this.fetch(boundary, computed) : undefined;
    return boundary.map((start, i) => {
      const batch = new Map<string, CaptureBatch>(fetched?.[i] ?? []);
      if (computed.length < values.length) batch.set(this.segment.start, start);
      return batch;
    });
  }

  private async fetch(boundary: readonly CaptureBatch[], values: readonly string[]) {
    const retarget: Command[] = [
      ...this.index.outputs.map((o): Command => ({ kind: 'removeOutput', name: o.name })),
      ...values.map((name): Command => ({ kind: 'addOutput', name })),
    ];
    const model = applyCommands(this.slice, [...this.inserted, ...retarget], {
      removeUnused: true,
      context: `calibration segment from ${this.segment.start}`,
    });
    const session = await createSession(model, this.options, 'calibration segment');
    const needed = new Set(session.inputNames);
    try {
      const out: Map<string, CaptureBatch>[] = [];
      for (let i = 0; i < boundary.length; i++) {
        const feeds: Record<string, ReturnType<typeof floatInput>> = {};
        const start = boundary[i]!;
        if (needed.has(this.segment.start)) {
          feeds[this.segment.start] = floatInput(start.data, start.dims);
        }
        if (this.graphInput && needed.has(this.graphInput)) {
          const image = this.images[i]!;
          feeds[this.graphInput] = floatInput(image.data, image.dims);
        }
        const result = await session.run(feeds, [...values]);
        const batch = new Map<string, CaptureBatch>();
        for (const v of values) {
          const t = result[v]!;
          batch.set(v, { data: t.data as Float32Array, dims: t.dims.map(Number) });
        }
        out.push(batch);
      }
      return out;
    } finally {
      await session.release();
    }
  }
}

function nodeOutputs(model: ModelProto, name: string): string[] {
  return model.graph!.node.find((n) => n.name === name)?.output.filter((o) => o) ?? [];
}

/**
 * A model computing `outputs` from `start` alone: the nodes between them, the initializers they
 * read, and `start` as the graph input (float, its shape left to onnxruntime). Where a node also
 * needs the original graph input (a shape read from the image, say), that input stays and
 * `needsGraphInput` says so. Nodes and tensors are shared with `model`, never modified.
 */
export function sliceModel(model: ModelProto, start: string, outputs: readonly string[]) {
  const index = new GraphIndex(model);
  const needed = new Set<NodeProto>();
  const initializers = new Set<string>();
  const stack = [...outputs];
  const seen = new Set<string>();
  let needsGraphInput = false;
  while (stack.length) {
    const value = stack.pop()!;
    if (seen.has(value) || value === start || value === '') continue;
    seen.add(value);
    if (index.initializers.has(value)) initializers.add(value);
    else if (index.inputs.some((i) => i.name === value)) needsGraphInput = true;
    const node = index.producer.get(value);
    if (node && !needed.has(node)) {
      needed.add(node);
      stack.push(...node.input);
    }
  }
  const graphInputs = index.inputs.filter((i) => needsGraphInput && i.name !== start);
  const startInput = index.inputs.find((i) => i.name === start) ?? valueInfo(start);
  const sliced = create(ModelProtoSchema, {
    irVersion: model.irVersion,
    opsetImport: model.opsetImport,
    producerName: 'vitslim',
    graph: create(GraphProtoSchema, {
      name: `${model.graph?.name ?? 'graph'} slice`,
      node: index.nodes.filter((n) => needed.has(n)),
      initializer: model.graph!.initializer.filter((t) => initializers.has(t.name)),
      input: [startInput, ...graphInputs],
      output: outputs.map((name) => valueInfo(name)),
    }),
  });
  validateGraph(sliced, `slice from ${start}`);
  return { model: sliced, needsGraphInput: graphInputs.length > 0 };
}

function concatBatches(batches: readonly CaptureBatch[]): CapturedTensor {
  const first = batches[0];
  if (!first) throw new CalibrationError('calibration saw no images: the calibration set is empty');
  if (batches.length === 1) return { data: first.data, dims: [...first.dims] };
  const total = batches.reduce((n, b) => n + b.data.length, 0);
  const data = new Float32Array(total);
  let offset = 0;
  for (const b of batches) {
    data.set(b.data, offset);
    offset += b.data.length;
  }
  const rows = batches.reduce((n, b) => n + (b.dims[0] ?? 0), 0);
  return { data, dims: [rows, ...first.dims.slice(1)] };
}

function checkFinite(value: string, data: Float32Array): void {
  for (let i = 0; i < data.length; i++) {
    if (data[i]! - data[i]! !== 0) {
      throw new CalibrationError(
        `calibration found NaN or infinite activations in ${value} (index ${i}); check the preprocessing and the model`,
        value,
      );
    }
  }
}
