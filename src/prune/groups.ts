/**
 * Dependency groups from the structure map: the slices of tensors that must be removed together
 * so that the graph stays consistent (pruning-methods.md §2.1, after Torch-Pruning's dependency
 * graph). A plain ViT has three kinds:
 *
 * - per block, the MLP hidden channels: fc1's output channels and bias, fc2's input channels;
 * - per block, the attention heads: for head h, the q, k and v output channels of h and the
 *   output projection's input channels of h. As an alternative unit, the head dimensions: index
 *   j of every head, so that all heads keep one size (a Reshape into [H, dh] needs that);
 * - for the whole model, the embedding (residual) width: the patch embedding's output channels
 *   and bias, the class token and position embedding (last axis), every norm's scale and bias,
 *   every q/k/v and fc1 input channel, every proj and fc2 output channel and bias, and the
 *   head's input channels. It is listed by `embeddingGroup`; the surgery does not prune it yet.
 */
import type { ModelProto } from 'onnx-buf';
import { GraphIndex } from '../graph/graph.js';
import { imageInput, ShapeMap } from '../vit/shapes.js';
import type { TraceContext } from '../vit/trace.js';
import type { BlockMap, LinearLayer, ViTStructure } from '../vit/types.js';
import { headLayout, type HeadLayout } from './head-layout.js';
import type { DependencyGroup, GroupMember } from './types.js';

/** The graph index and shapes for one image, which the groups and the surgery read. */
export function traceContext(model: ModelProto): TraceContext {
  const index = new GraphIndex(model);
  return { index, shapes: new ShapeMap(index, new Map([imageInput(index)])) };
}

/** The weight axis holding a layer's output channels. */
export function outputAxis(layer: LinearLayer): number {
  return layer.weightLayout === 'in-out' ? 1 : 0;
}

/** The weight axis holding a layer's input channels (MatMul/Gemm layers only). */
export function inputAxis(layer: LinearLayer): number {
  return layer.weightLayout === 'in-out' ? 0 : 1;
}

function producerMembers(layer: LinearLayer, channels: number[][]): GroupMember[] {
  const members: GroupMember[] = [
    { tensor: layer.weight, role: 'producer-weight', axis: outputAxis(layer), layer, channels },
  ];
  // a bias may be [out] or [1, 1, out]: its channels are always on the last axis
  if (layer.bias) {
    members.push({ tensor: layer.bias, role: 'producer-bias', axis: -1, layer, channels });
  }
  return members;
}

function consumerMember(layer: LinearLayer, channels: number[][]): GroupMember {
  return { tensor: layer.weight, role: 'consumer-weight', axis: inputAxis(layer), layer, channels };
}

function identity(count: number): number[][] {
  return Array.from({ length: count }, (_, i) => [i]);
}

/** One block's MLP hidden channels. */
export function mlpGroup(block: BlockMap): DependencyGroup {
  const { fc1, fc2 } = block.mlp;
  const channels = identity(fc1.outFeatures);
  return {
    name: `blocks.${block.index}.mlp`,
    kind: 'mlp',
    block: block.index,
    units: fc1.outFeatures,
    members: [...producerMembers(fc1, channels), consumerMember(fc2, channels)],
  };
}

/** Members of an attention group whose unit u covers the (head, dim) pairs `pairs(u)`. */
function attentionMembers(
  layout: HeadLayout,
  units: number,
  pairs: (unit: number) => [number, number][],
  proj: LinearLayer,
): GroupMember[] {
  const members: GroupMember[] = [];
  for (const split of layout.splits) {
    const channels = Array.from({ length: units }, (_, u) =>
      pairs(u).flatMap(([h, j]) => split.channels(h, j)),
    );
    members.push(...producerMembers(split.layer, channels));
  }
  const projChannels = Array.from({ length: units }, (_, u) =>
    pairs(u).map(([h, j]) => layout.merge.channel(h, j)),
  );
  members.push(consumerMember(proj, projChannels));
  return members;
}

/** One block's whole heads; unit h is head h. */
export function headGroup(ctx: TraceContext, block: BlockMap): DependencyGroup {
  const a = block.attention;
  const layout = headLayout(ctx, block.index, a);
  const pairs = (h: number) =>
    Array.from({ length: a.headDim }, (_, j) => [h, j] as [number, number]);
  return {
    name: `blocks.${block.index}.attn.heads`,
    kind: 'heads',
    block: block.index,
    units: a.heads,
    members: attentionMembers(layout, a.heads, pairs, a.proj),
  };
}

/** One block's head dimensions; unit j is dimension j of every head. */
export function headDimGroup(ctx: TraceContext, block: BlockMap): DependencyGroup {
  const a = block.attention;
  const layout = headLayout(ctx, block.index, a);
  const pairs = (j: number) =>
    Array.from({ length: a.heads }, (_, h) => [h, j] as [number, number]);
  return {
    name: `blocks.${block.index}.attn.head-dims`,
    kind: 'head-dims',
    block: block.index,
    units: a.headDim,
    members: attentionMembers(layout, a.headDim, pairs, a.proj),
  };
}

export interface GroupOptions {
  /** Which attention unit to group by (default heads). */
  attention?: 'heads' | 'head-dims';
}

/** Every per-block group of the model: MLP groups, then attention groups, in block order. */
export function dependencyGroups(
  model: ModelProto,
  structure: ViTStructure,
  options: GroupOptions = {},
): DependencyGroup[] {
  const ctx = traceContext(model);
  const attention = options.attention === 'head-dims' ? headDimGroup : headGroup;
  return [
    ...structure.blocks.map((b) => mlpGroup(b)),
    ...structure.blocks.map((b) => attention(ctx, b)),
  ];
}

/**
 * The embedding-width group: every tensor that holds a residual channel, with the axis that
 * indexes it. Listed for importance and planning; `pruningCommands` refuses it because
 * slicing it also needs the LayerNorms' statistics to be compensated (they are computed over
 * the remaining channels), the most damaging cut without fine-tuning.
 */
export function embeddingGroup(structure: ViTStructure): DependencyGroup {
  const width = structure.patchEmbed.linear.outFeatures;
  const channels = identity(width);
  const param = (tensor: string): GroupMember => ({
    tensor,
    role: 'parameter',
    axis: -1,
    channels,
  });
  const members: GroupMember[] = [];
  const patch = structure.patchEmbed.linear;
  members.push(...producerMembers(patch, channels));
  if (structure.classToken) members.push(param(structure.classToken.initializer));
  if (structure.positionEmbedding) members.push(param(structure.positionEmbedding.initializer));
  for (const block of structure.blocks) {
    const a = block.attention;
    for (const norm of [block.norm1, block.norm2])
      members.push(param(norm.scale), param(norm.bias));
    for (const layer of [a.qkv, a.q, a.k, a.v])
      if (layer) members.push(consumerMember(layer, channels));
    members.push(...producerMembers(a.proj, channels));
    members.push(consumerMember(block.mlp.fc1, channels));
    members.push(...producerMembers(block.mlp.fc2, channels));
  }
  if (structure.finalNorm) {
    members.push(param(structure.finalNorm.scale), param(structure.finalNorm.bias));
  }
  const first = structure.preLogits?.linear ?? structure.head;
  members.push(consumerMember(first, channels));
  return { name: 'embedding', kind: 'embedding', units: width, members };
}
