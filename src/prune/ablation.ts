/**
 * Ablation sensitivity, a forward-only stand-in for second-order saliency (pruning-methods.md
 * §2.3): a unit's score is the mean KL(p_dense ‖ p_masked) of the model's output over a few
 * calibration images when that unit alone is zeroed. Near the dense point the KL is ½δᵀFδ with F
 * the Fisher information, which is what gradient criteria such as NViT's approximate.
 *
 * One probe model serves every unit: each scored group gets a mask input, [channels] float,
 * multiplied onto the input of the layer reading its channels (proj for heads, fc2 for MLP
 * channels), so that a unit is removed by feeding a mask with zeros on its channels. That costs
 * one forward pass of the scored images per unit: meant for heads (36 on ViT-Tiny), not for the
 * hundreds of MLP channels of a block.
 */
import type { ModelProto } from 'onnx-buf';
import { makeNode } from '../graph/attributes.js';
import { applyCommands, valueInfo, type Command } from '../graph/commands.js';
import { GraphIndex } from '../graph/graph.js';
import { klDivergence } from '../eval/metrics.js';
import { CalibrationError } from '../errors.js';
import { cloneModel } from '../onnx/model-io.js';
import type { CaptureBatch } from '../runtime/capture.js';
import { createSession, floatInput, type ort, type SessionOptions } from '../runtime/session.js';
import type { Importance, ImportanceInputs } from './importance.js';
import { NameAllocator } from './tensors.js';
import type { CriterionName, DependencyGroup, GroupMember } from './types.js';

/** Scores the importance read from `inputs.ablation`, computed by `ablationScores`. */
export class AblationImportance implements Importance {
  readonly name: CriterionName = 'ablation';
  readonly needsActivations = false;
  /** KL divergences of one model's output: one scale for every group. */
  readonly comparable = true;

  score(group: DependencyGroup, inputs: ImportanceInputs): Float64Array {
    const scores = inputs.ablation?.get(group.name);
    if (!scores) {
      throw new RangeError(`AblationImportance: ${group.name} was not scored; run ablationScores`);
    }
    return scores;
  }
}

interface MaskedGroup {
  group: DependencyGroup;
  member: GroupMember;
  /** The probe model's mask input. */
  input: string;
  channels: number;
}

/** The consumer member whose input is masked (the group's one reading layer). */
function maskedMember(group: DependencyGroup): GroupMember {
  const consumers = group.members.filter((m) => m.role === 'consumer-weight' && m.layer);
  if (consumers.length !== 1) {
    throw new RangeError(`ablation: ${group.name} has ${consumers.length} reading layers, not 1`);
  }
  return consumers[0]!;
}

/** `model` with a mask input per group on the reading layer's input. */
export function ablationProbe(model: ModelProto, groups: readonly DependencyGroup[]) {
  const index = new GraphIndex(model);
  const names = new NameAllocator(index);
  const commands: Command[] = [];
  const masked: MaskedGroup[] = groups.map((group) => {
    const member = maskedMember(group);
    const layer = member.layer!;
    const input = names.name(`vitslim_mask/${group.name}`);
    const output = names.name(`${layer.input}_masked`);
    const mul = makeNode({
      name: output,
      opType: 'Mul',
      inputs: [layer.input, input],
      outputs: [output],
    });
    const at = index.node(layer.node).input.indexOf(layer.input);
    commands.push({ kind: 'addNode', node: mul });
    commands.push({ kind: 'setNodeInput', node: layer.node, index: at, value: output });
    return { group, member, input, channels: layer.inFeatures };
  });
  // the mask inputs are declared on a copy before the commands are validated
  const source = cloneModel(model);
  for (const m of masked) source.graph!.input.push(valueInfo(m.input, undefined, [m.channels]));
  return { model: applyCommands(source, commands, { context: 'ablation probe' }), masked };
}

/**
 * Mean output KL of removing each unit of each group alone, keyed by group name, over `images`
 * (a few batches are enough: the score ranks units, it does not measure accuracy).
 */
export async function ablationScores(
  model: ModelProto,
  groups: readonly DependencyGroup[],
  images: readonly CaptureBatch[],
  options: SessionOptions = {},
): Promise<Map<string, Float64Array>> {
  if (images.length === 0) throw new CalibrationError('ablation scores need calibration images');
  const { model: probe, masked } = ablationProbe(model, groups);
  const session = await createSession(probe, options, 'ablation probe');
  try {
    const ones = new Map(masked.map((m) => [m.input, new Float32Array(m.channels).fill(1)]));
    const run = async (batch: CaptureBatch, masks: ReadonlyMap<string, Float32Array>) => {
      const feeds: Record<string, ort.Tensor> = {
        [session.inputNames.find((n) => !masks.has(n))!]: floatInput(batch.data, batch.dims),
      };
      for (const [name, data] of masks) feeds[name] = floatInput(data, [data.length]);
      const out = await session.run(feeds);
      return out[session.outputNames[0]!]!;
    };
    const reference = await Promise.all(images.map(async (b) => run(b, ones)));
    const scores = new Map<string, Float64Array>();
    for (const m of masked) {
      const s = new Float64Array(m.group.units);
      for (let u = 0; u < m.group.units; u++) {
        const mask = new Float32Array(m.channels).fill(1);
        for (const c of m.member.channels[u]!) mask[c] = 0;
        s[u] = await meanKl(images, reference, (b) => run(b, new Map([...ones, [m.input, mask]])));
      }
      scores.set(m.group.name, s);
    }
    return scores;
  } finally {
    await session.release();
  }
}

async function meanKl(
  images: readonly CaptureBatch[],
  reference: readonly ort.Tensor[],
  run: (batch: CaptureBatch) => Promise<ort.Tensor>,
): Promise<number> {
  let total = 0;
  let count = 0;
  for (const [i, batch] of images.entries()) {
    const out = await run(batch);
    const ref = reference[i]!;
    const classes = ref.dims[ref.dims.length - 1]!;
    const rows = ref.data.length / classes;
    for (let r = 0; r < rows; r++) {
      total += klDivergence(ref.data as Float32Array, out.data as Float32Array, classes, r);
    }
    count += rows;
  }
  return total / count;
}
