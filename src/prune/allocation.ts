/**
 * The `sensitivity` scope: how many units each group loses is chosen from the model's measured
 * output change rather than from scores compared across blocks. Each group is pruned alone at a
 * few widths (its own ranking, with the compensation the run uses), the mean output KL against
 * the dense model is measured on a few calibration images, and the widths that remove the
 * asked share of all units with the least summed KL are found by dynamic programming, with the
 * KL interpolated linearly between measured widths. Summing assumes that the blocks' damages add
 * up, which drops the cross terms of a second-order expansion; layer-wise allocation in OBC and
 * ZipLM (arXiv 2208.11580, 2302.04089) makes the same assumption. On the ViT-Tiny it chose
 * better heads than uncompensated ablation, and worse MLP widths than the global greedy
 * reconstruction order (README, Pruning).
 *
 * Removing a unit is exact as a change of its one reading layer alone: its rows of that layer
 * (fc2 for MLP channels, proj for heads) are zeroed, and compensation changes the other rows and
 * the bias. So one probe model serves every measurement: the reading layers' weight and bias
 * initializers become graph inputs, and each width is one set of fed tensors, not a rebuilt
 * model. (onnxruntime-node does not let a run override an initializer, so the probe's tensors
 * are plain inputs, fed on every run.)
 */
import type { ModelProto } from 'onnx-buf';
import { valueInfo } from '../graph/commands.js';
import { GraphIndex } from '../graph/graph.js';
import { klDivergence } from '../eval/metrics.js';
import { CalibrationError, UnsupportedModelError } from '../errors.js';
import { cloneModel } from '../onnx/model-io.js';
import type { CaptureBatch } from '../runtime/capture.js';
import { createSession, floatInput, type ort, type SessionOptions } from '../runtime/session.js';
import type { LinearLayer } from '../vit/types.js';
import { fromRows, toRows } from './compensate.js';
import { topUnits } from './selection.js';
import type { WeightUpdates } from './surgery.js';
import { readConstant } from './tensors.js';
import type { DependencyGroup, GroupSelection } from './types.js';

export interface AllocationOptions extends SessionOptions {
  /** Share of all units of the groups to remove, in [0, 1). */
  ratio: number;
  /** Kept counts are multiples of this. */
  roundTo: number;
  /** The largest share of one group removed. */
  maxRatio: number;
  /** Widths measured per group, evenly spaced up to `maxRatio` (default 6). */
  points?: number;
}

/** The weight updates of a run's compensation for some selections. */
export type CompensationFor = (selections: readonly GroupSelection[]) => WeightUpdates;

interface Probe {
  session: ort.InferenceSession;
  imageInput: string;
  /** The original weights and biases of the probe's inputs. */
  defaults: ReadonlyMap<string, ort.Tensor>;
}

/** The reading layer of a group: the one layer whose input channels are its units. */
export function readingLayer(group: DependencyGroup): LinearLayer {
  const consumers = group.members.filter((m) => m.role === 'consumer-weight' && m.layer);
  if (consumers.length !== 1) {
    throw new RangeError(`${group.name} has ${consumers.length} reading layers, not 1`);
  }
  return consumers[0]!.layer!;
}

/**
 * `model` with the reading layers' weight and bias initializers turned into graph inputs, and
 * their values to feed by default.
 */
export function weightInputsProbe(model: ModelProto, layers: readonly LinearLayer[]) {
  const probe = cloneModel(model);
  const graph = probe.graph!;
  const index = new GraphIndex(model);
  const names = new Set<string>();
  for (const layer of layers) {
    for (const name of [layer.weight, layer.bias]) {
      if (name === undefined || !index.initializers.has(name)) {
        throw new UnsupportedModelError(
          `the sensitivity scope needs ${layer.node}'s weight and bias as initializers`,
          layer.node,
        );
      }
      names.add(name);
    }
  }
  const defaults = new Map<string, ort.Tensor>();
  for (const name of names) {
    const tensor = readConstant(index, name);
    defaults.set(name, floatInput(tensor.data, tensor.dims));
    graph.input.push(valueInfo(name, undefined, [...tensor.dims]));
  }
  graph.initializer = graph.initializer.filter((t) => !names.has(t.name));
  return { model: probe, defaults };
}

/**
 * The reading layer's weight (removed rows zeroed) and bias after removing `selection`'s other
 * units with `updates`, as tensors to feed the probe.
 */
function fedTensors(
  index: GraphIndex,
  selection: GroupSelection,
  updates: WeightUpdates,
): Map<string, ort.Tensor> {
  const layer = readingLayer(selection.group);
  const member = selection.group.members.find((m) => m.layer === layer)!;
  const weight = readConstant(index, layer.weight);
  const bias = readConstant(index, layer.bias!);
  const rows = toRows(layer, updates.tensors.get(layer.weight) ?? weight.data);
  const kept = new Set(selection.keep);
  member.channels.forEach((channels, unit) => {
    if (kept.has(unit)) return;
    for (const c of channels) rows.data.fill(0, c * rows.out, (c + 1) * rows.out);
  });
  const newBias = updates.tensors.get(layer.bias!) ?? bias.data;
  return new Map([
    [layer.weight, floatInput(fromRows(layer, rows), weight.dims)],
    [layer.bias!, floatInput(Float32Array.from(newBias), bias.dims)],
  ]);
}

/** Mean KL of the probe's output against `reference` over `images`. */
async function meanKl(
  probe: Probe,
  images: readonly CaptureBatch[],
  reference: readonly Float32Array[],
  fed: ReadonlyMap<string, ort.Tensor>,
): Promise<number> {
  let total = 0;
  let rows = 0;
  for (const [i, batch] of images.entries()) {
    const feeds: Record<string, ort.Tensor> = Object.fromEntries([...probe.defaults, ...fed]);
    feeds[probe.imageInput] = floatInput(batch.data, batch.dims);
    const out = await probe.session.run(feeds);
    const logits = out[probe.session.outputNames[0]!]!.data as Float32Array;
    const ref = reference[i]!;
    const classes = ref.length / (batch.dims[0] ?? 1);
    for (let r = 0; r < ref.length / classes; r++) {
      total += klDivergence(ref, logits, classes, r);
      rows++;
    }
  }
  return total / rows;
}

/** Removed-unit counts measured for one group: 0 and `points` widths up to the cap. */
export function measuredCounts(
  units: number,
  roundTo: number,
  maxRatio: number,
  points: number,
): number[] {
  const counts = new Set([0]);
  for (let p = 1; p <= points; p++) {
    // kept rounded up, so that no measured width removes more than the cap
    const kept = Math.ceil((units * (1 - (maxRatio * p) / points)) / roundTo - 1e-6) * roundTo;
    counts.add(units - Math.min(units, Math.max(roundTo, kept)));
  }
  return [...counts].sort((a, b) => a - b);
}

/**
 * Per-group removed counts (multiples of `step`, each at most `caps[g]`) summing to `target`
 * with the least total cost, `cost(g, removed)` given by the caller; undefined when no
 * combination reaches `target`.
 */
export function allocateCounts(
  caps: readonly number[],
  step: number,
  target: number,
  cost: (group: number, removed: number) => number,
): number[] | undefined {
  const steps = Math.round(target / step);
  // best[s] = least cost of removing s steps from the groups seen so far
  let best = new Float64Array(steps + 1).fill(Infinity);
  best[0] = 0;
  const choices: Int32Array[] = [];
  caps.forEach((cap, g) => {
    const next = new Float64Array(steps + 1).fill(Infinity);
    const choice = new Int32Array(steps + 1).fill(-1);
    const most = Math.floor(cap / step);
    for (let s = 0; s <= steps; s++) {
      if (best[s] === Infinity) continue;
      for (let k = 0; k <= most && s + k <= steps; k++) {
        const c = best[s]! + cost(g, k * step);
        if (c < next[s + k]!) [next[s + k], choice[s + k]] = [c, k];
      }
    }
    choices.push(choice);
    best = next;
  });
  if (best[steps] === Infinity) return undefined;
  const counts = new Array<number>(caps.length).fill(0);
  let s = steps;
  for (let g = caps.length - 1; g >= 0; g--) {
    const k = choices[g]![s]!;
    counts[g] = k * step;
    s -= k;
  }
  return counts;
}

/** Linear interpolation of measured (count, KL) points. */
function interpolate(counts: readonly number[], kls: readonly number[], removed: number): number {
  for (let i = 1; i < counts.length; i++) {
    if (removed <= counts[i]!) {
      const t = (removed - counts[i - 1]!) / (counts[i]! - counts[i - 1]!);
      return kls[i - 1]! + t * (kls[i]! - kls[i - 1]!);
    }
  }
  return Infinity;
}

/**
 * Selections for `groups` (scored by `scores`, same order) removing `ratio` of all their units
 * with the least summed output KL, measured on `images` with `compensate`'s weights.
 */
export async function sensitivitySelect(
  model: ModelProto,
  groups: readonly DependencyGroup[],
  scores: readonly Float64Array[],
  images: readonly CaptureBatch[],
  compensate: CompensationFor,
  options: AllocationOptions,
): Promise<GroupSelection[]> {
  const index = new GraphIndex(model);
  const { probe, reference } = await openProbe(model, groups, images, options);
  try {
    const measured: { counts: number[]; kls: number[] }[] = [];
    for (const [g, group] of groups.entries()) {
      const counts = measuredCounts(
        group.units,
        options.roundTo,
        options.maxRatio,
        options.points ?? 6,
      );
      const kls = [0];
      for (const removed of counts.slice(1)) {
        const selection = { group, keep: topUnits(scores[g]!, group.units - removed) };
        const fed = fedTensors(index, selection, compensate([selection]));
        kls.push(await meanKl(probe, images, reference, fed));
      }
      measured.push({ counts, kls });
    }
    const total = groups.reduce((sum, g) => sum + g.units, 0);
    const caps = measured.map((m) => m.counts.at(-1)!);
    const target = Math.round((options.ratio * total) / options.roundTo) * options.roundTo;
    const counts = allocateCounts(caps, options.roundTo, target, (g, removed) =>
      interpolate(measured[g]!.counts, measured[g]!.kls, removed),
    );
    if (!counts) {
      throw new RangeError(
        `cannot remove ${options.ratio} of the units with at most ${options.maxRatio} of a group`,
      );
    }
    return groups.map((group, g) => ({
      group,
      keep: topUnits(scores[g]!, group.units - counts[g]!),
    }));
  } finally {
    await probe.session.release();
  }
}

/** The probe session for `groups` and the dense model's outputs on `images`. */
async function openProbe(
  model: ModelProto,
  groups: readonly DependencyGroup[],
  images: readonly CaptureBatch[],
  options: SessionOptions,
): Promise<{ probe: Probe; reference: Float32Array[] }> {
  if (images.length === 0) throw new CalibrationError('the sensitivity scope needs images');
  const { model: probeModel, defaults } = weightInputsProbe(model, groups.map(readingLayer));
  const session = await createSession(probeModel, options, 'sensitivity probe');
  const imageInput = session.inputNames.find((n) => !defaults.has(n))!;
  const probe = { session, imageInput, defaults };
  try {
    const reference = await Promise.all(
      images.map(async (b) => {
        const feeds = { ...Object.fromEntries(defaults), [imageInput]: floatInput(b.data, b.dims) };
        const out = await session.run(feeds);
        return (out[session.outputNames[0]!]!.data as Float32Array).slice();
      }),
    );
    return { probe, reference };
  } catch (error) {
    await session.release();
    throw error;
  }
}

/**
 * Scores of each unit of `groups`: the mean output KL of removing it alone with `compensate`'s
 * weights, so that the unit whose compensated removal costs least goes first. This is ablation
 * with the compensation the run applies: a head that the others can stand in for scores low even
 * if zeroing it alone would hurt.
 */
export async function compensatedAblation(
  model: ModelProto,
  groups: readonly DependencyGroup[],
  images: readonly CaptureBatch[],
  compensate: CompensationFor,
  options: SessionOptions = {},
): Promise<Float64Array[]> {
  const index = new GraphIndex(model);
  const { probe, reference } = await openProbe(model, groups, images, options);
  try {
    const scores: Float64Array[] = [];
    for (const group of groups) {
      const s = new Float64Array(group.units);
      for (let u = 0; u < group.units; u++) {
        const keep = Array.from({ length: group.units }, (_, i) => i).filter((i) => i !== u);
        const selection = { group, keep };
        s[u] = await meanKl(
          probe,
          images,
          reference,
          fedTensors(index, selection, compensate([selection])),
        );
      }
      scores.push(s);
    }
    return scores;
  } finally {
    await probe.session.release();
  }
}
