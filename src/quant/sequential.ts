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
 *   then runs only the part of its segment between the tensors already known and its own.
 * Memory therefore holds all calibration images' activations of one segment (RepQ-ViT's exact
 * quantiles need every value of a tensor anyway); it is meant for the small calibration sets
 * these methods use (32 images).
 */
import { create } from '@bufbuild/protobuf';
import { GraphProtoSchema, ModelProtoSchema, type ModelProto, type NodeProto } from 'onnx-buf';
import { CalibrationError, InternalError } from '../errors.js';
import { applyCommands, valueInfo, type Command } from '../graph/commands.js';
import { GraphIndex } from '../graph/graph.js';
import { validateGraph } from '../graph/validate.js';
import { noProgress, type ProgressListener } from '../log.js';
import type { CaptureBatch } from '../runtime/capture.js';
import { createSession, floatInput, type ort, type SessionOptions } from '../runtime/session.js';
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
  /** onnxruntime runs over the calibration images (levels and segment boundaries). */
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
  let boundary: readonly CaptureBatch[] = images;
  let passes = 0;
  onProgress({ status: 'start', stage, total: groups.length });
  for (const segment of planSegments(model, boundaries, groups)) {
    if (segment.groups.length === 0 && !segment.end) continue;
    const runner = new SegmentRunner(model, boundaries[0]!, segment, images, boundary, options);
    for (const level of runner.levels()) {
      const captured = await runner.capture(level.map((g) => g.value));
      for (const group of level) {
        const setting = { ...group, quantizer: choose(group, captured.get(group.value)!) };
        settings.push(setting);
        runner.insert(setting);
        onProgress({ status: 'advance', stage, done: settings.length, total: groups.length });
      }
    }
    if (segment.end) boundary = await runner.boundary(segment.end);
    passes += runner.passes;
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

/**
 * One segment of the model: its sliced graph, the quantizers inserted so far, and the tensors
 * known so far (the segment's input, and every value a level captured). A captured value stays
 * exact for the rest of the segment: a quantizer inserted later sits on an edge downstream of it
 * (or its own level would be later). So each run starts from the known tensors nearest to what
 * it computes: the softmax level runs the scores from the captured q and k, not the block again.
 */
class SegmentRunner {
  private readonly slice: ModelProto;
  private readonly index: GraphIndex;
  private readonly names: NamePrefixes;
  private readonly inserted: Command[] = [];
  /** Per-batch tensors of the values known so far. */
  private readonly known = new Map<string, readonly CaptureBatch[]>();
  passes = 0;

  constructor(
    model: ModelProto,
    imageInput: string,
    private readonly segment: Segment,
    images: readonly CaptureBatch[],
    start: readonly CaptureBatch[],
    private readonly options: SessionOptions,
  ) {
    const outputs = [
      ...segment.groups.flatMap((g) => [g.value, ...g.nodes.flatMap((n) => nodeOutputs(model, n))]),
      ...(segment.end ? [segment.end] : []),
    ];
    this.slice = sliceModel(model, [segment.start], [...new Set(outputs)]).model;
    this.index = new GraphIndex(this.slice);
    this.names = new NamePrefixes(this.index);
    this.known.set(imageInput, images);
    this.known.set(segment.start, start);
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
  async capture(values: readonly string[]): Promise<Map<string, CapturedTensor>> {
    const out = new Map<string, CapturedTensor>();
    for (const value of values) {
      const tensor = concatBatches(await this.tensors(value, values));
      checkFinite(value, tensor.data);
      out.set(value, tensor);
    }
    return out;
  }

  /** The segment's end value per batch, the next segment's input. */
  async boundary(end: string): Promise<readonly CaptureBatch[]> {
    return this.tensors(end, [end]);
  }

  /** One value's per-batch tensors, computing (with `together`) whatever is not known yet. */
  private async tensors(value: string, together: readonly string[]) {
    const missing = together.filter((v) => !this.known.has(v));
    if (missing.length > 0) await this.compute(missing);
    return this.known.get(value)!;
  }

  /** Runs the segment, from the known tensors, for `values`; they become known. */
  private async compute(values: readonly string[]): Promise<void> {
    const retarget: Command[] = [
      ...this.index.outputs.map((o): Command => ({ kind: 'removeOutput', name: o.name })),
      ...values.map((name): Command => ({ kind: 'addOutput', name })),
    ];
    const quantized = applyCommands(this.slice, [...this.inserted, ...retarget], {
      removeUnused: true,
      context: `calibration segment from ${this.segment.start}`,
    });
    const cut = sliceModel(quantized, [...this.known.keys()], values);
    const session = await createSession(cut.model, this.options, 'calibration segment');
    const results = values.map((): CaptureBatch[] => []);
    try {
      const batches = this.known.get(this.segment.start)!.length;
      for (let i = 0; i < batches; i++) {
        const feeds: Record<string, ort.Tensor> = {};
        for (const input of cut.inputs) {
          const known = this.known.get(input)![i]!;
          feeds[input] = floatInput(known.data, known.dims);
        }
        const result = await session.run(feeds, [...values]);
        values.forEach((v, k) => {
          const t = result[v]!;
          results[k]!.push({ data: t.data as Float32Array, dims: t.dims.map(Number) });
        });
      }
    } finally {
      await session.release();
    }
    this.passes++;
    values.forEach((v, k) => this.known.set(v, results[k]!));
  }
}

function nodeOutputs(model: ModelProto, name: string): string[] {
  return model.graph!.node.find((n) => n.name === name)?.output.filter((o) => o) ?? [];
}

/**
 * A model computing `outputs` from the values `starts`: the nodes between, the initializers they
 * read, and as graph inputs the starts it reaches, plus any graph input of `model` it reaches
 * otherwise (a shape read from the image, say); `inputs` lists them. Inputs that were not graph
 * inputs are declared float with their shape left to onnxruntime. Nodes and tensors are shared
 * with `model`, never modified.
 */
export function sliceModel(
  model: ModelProto,
  starts: readonly string[],
  outputs: readonly string[],
): { model: ModelProto; inputs: string[] } {
  const index = new GraphIndex(model);
  const cut = new Set(starts);
  const needed = new Set<NodeProto>();
  const initializers = new Set<string>();
  const inputs: string[] = [];
  const stack = [...outputs];
  const seen = new Set<string>();
  while (stack.length) {
    const value = stack.pop()!;
    if (seen.has(value) || value === '') continue;
    seen.add(value);
    const node = index.producer.get(value);
    if (cut.has(value) || (!node && !index.initializers.has(value))) inputs.push(value);
    else if (index.initializers.has(value)) initializers.add(value);
    else if (node && !needed.has(node)) {
      needed.add(node);
      stack.push(...node.input);
    }
  }
  const declared = new Map(index.inputs.map((i) => [i.name, i]));
  inputs.sort((a, b) => starts.indexOf(a) - starts.indexOf(b));
  const sliced = create(ModelProtoSchema, {
    irVersion: model.irVersion,
    opsetImport: model.opsetImport,
    producerName: 'vitslim',
    graph: create(GraphProtoSchema, {
      name: `${model.graph?.name ?? 'graph'} slice`,
      node: index.nodes.filter((n) => needed.has(n)),
      initializer: model.graph!.initializer.filter((t) => initializers.has(t.name)),
      input: inputs.map((name) => declared.get(name) ?? valueInfo(name)),
      output: outputs.map((name) => valueInfo(name)),
    }),
  });
  validateGraph(sliced, `slice from ${starts.join(', ')}`);
  return { model: sliced, inputs };
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
