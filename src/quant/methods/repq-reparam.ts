/**
 * RepQ-ViT's scale reparameterisation of post-LayerNorm activations (arXiv:2212.08254 §4.2,
 * reference notes §6(5), `test_quant.py` of zkkli/RepQ-ViT). A LayerNorm output A = LN(x) with
 * affine γ, β, read by linear layers y = A·W + b, has been calibrated per channel: steps Δ_c and
 * zero points z_c. With
 *
 *   Δ̃ = mean(Δ), z̃ = mean(z), r_c = Δ_c / Δ̃, δ_c = −z_c·Δ_c / r_c + z̃·Δ̃ = Δ̃·(z̃ − z_c),
 *   γ′ = γ / r,  β′ = β / r − δ,  W′ = diag(r)·W (row c of an [in, out] weight times r_c),
 *   b′ = b + δ·W′,
 *
 * the norm now outputs A′ = A / r − δ and the layers compute A′·W′ + b′ = A·W + b: the float
 * function is unchanged. One per-tensor grid (Δ̃, z̃) on A′ gives channel c the code
 * round(A′/Δ̃) + z̃ = round(A_c/Δ_c − z̃ + z_c) + z̃, which is round(A_c/Δ_c) + z_c, the
 * per-channel code itself, when z̃ is an integer: a per-tensor quantizer in front of an
 * ordinary GEMM.
 * RepQ-ViT's code keeps the mean's fraction, which shifts every channel's grid by frac(z̃) of a
 * step; the `zeroPoint: 'rounded'` option rounds it, as AdaLog does, making the equivalence
 * exact (and the zero point an integer that deployment needs).
 */
import type { Command } from '../../graph/commands.js';
import type { GraphIndex } from '../../graph/graph.js';
import { makeNode } from '../../graph/attributes.js';
import { floatTensor, readFloat32, tensorDims } from '../../onnx/tensor.js';
import type { BlockMap, LinearLayer, NormLayer, ViTStructure } from '../../vit/types.js';
import {
  outputChannelAxis,
  readWeight,
  replaceConstant,
  type NamePrefixes,
} from '../quantizer-commands.js';
import type { UniformParams } from '../uniform.js';
import { roundHalfEven } from '../uniform.js';
import type { RepQNormReport } from './repq-types.js';

/** A LayerNorm and the linear layers reading its output. */
export interface NormFold {
  norm: NormLayer;
  targets: LinearLayer[];
  /**
   * The value the targets read, calibrated per channel, when not the norm output itself: the
   * class token or token mean of the final norm's output, which the head reads. Selecting or
   * averaging tokens commutes with a per-channel scale and offset, so the fold stays exact.
   */
  pooled?: { node: string; value: string };
}

/** The value a fold's per-channel grid quantizes. */
export function foldValue(fold: NormFold): string {
  return fold.pooled?.value ?? fold.norm.output;
}

/** The per-tensor grid replacing a per-channel one, and the rewrite that makes it exact. */
export interface Reparameterisation {
  scale: number;
  zeroPoint: number;
  /** r_c = Δ_c / Δ̃. */
  ratio: Float64Array;
  /** δ_c = Δ̃·(z̃ − z_c). */
  offset: Float64Array;
}

/**
 * The LayerNorms to fold whose output is quantized (norm1 into qkv or q, k and v; norm2 into
 * fc1; with `finalNorm`, the final norm into the head through its pooling), by the quantized
 * value, and a report line for each, saying why where one cannot be folded.
 */
export function planFolds(
  index: GraphIndex,
  structure: ViTStructure,
  quantized: ReadonlySet<string>,
  finalNorm = false,
): { folds: Map<string, NormFold>; norms: RepQNormReport[] } {
  const folds = new Map<string, NormFold>();
  const norms: RepQNormReport[] = [];
  const planned = structure.blocks.flatMap(blockFolds);
  if (finalNorm) planned.push(...headFold(structure));
  for (const fold of planned) {
    if (!quantized.has(foldValue(fold))) continue;
    const reason = foldProblem(index, fold);
    const targets = fold.targets.map((t) => t.role);
    norms.push({
      role: fold.norm.role,
      targets,
      reparameterised: !reason,
      ...(reason ? { reason } : {}),
    });
    if (!reason) folds.set(foldValue(fold), fold);
  }
  return { folds, norms };
}

/** The final norm into the head, through the class-token or mean pooling between them. */
function headFold(structure: ViTStructure): NormFold[] {
  const { finalNorm, pooling, preLogits, head } = structure;
  if (!finalNorm || !pooling || preLogits) return [];
  return [{ norm: finalNorm, targets: [head], pooled: { node: pooling.node, value: head.input } }];
}

function blockFolds(block: BlockMap): NormFold[] {
  const attn = block.attention;
  const readers = attn.qkv ? [attn.qkv] : [attn.q, attn.k, attn.v];
  return [
    { norm: block.norm1, targets: readers.filter((l): l is LinearLayer => l !== undefined) },
    { norm: block.norm2, targets: [block.mlp.fc1] },
  ];
}

/** Ops that read only a tensor's shape, which the reparameterisation leaves as it is. */
const shapeReaders = new Set(['Shape', 'Size']);

/**
 * Why a norm cannot be folded into its readers, or undefined when it can: every reader of the
 * norm output must be a MatMul or Gemm reading it as its activation, with a constant weight,
 * or an op reading only its shape (timm exports take the attention's B, N, C from it).
 */
export function foldProblem(index: GraphIndex, fold: NormFold): string | undefined {
  const readers = index
    .consumersOf(fold.norm.output)
    .filter((n) => !shapeReaders.has(n.opType))
    .map((n) => n.name);
  const targets = new Set(fold.targets.map((t) => t.node));
  const value = foldValue(fold);
  if (fold.pooled) {
    const pool = index.node(fold.pooled.node);
    if (pool.input[0] !== fold.norm.output || pool.output[0] !== value) {
      return `pooling node ${pool.name} does not read the norm output into ${value}`;
    }
    targets.add(pool.name);
    const poolReaders = index.consumersOf(value).filter((n) => !shapeReaders.has(n.opType));
    const extra = poolReaders.find((n) => !fold.targets.some((t) => t.node === n.name));
    if (extra) return `node ${extra.name} also reads ${value}`;
  }
  const other = readers.find((r) => !targets.has(r));
  if (other) return `node ${other} also reads the norm output`;
  if (index.isGraphOutput(fold.norm.output)) return 'the norm output is a graph output';
  const conv = fold.targets.find((t) => t.opType === 'Conv' || t.input !== value);
  if (conv) return `${conv.role} is not a MatMul/Gemm reading the norm output`;
  for (const name of [fold.norm.scale, fold.norm.bias]) {
    const dims = index.constantDims(name);
    if (!dims) return `${name} is not a constant`;
  }
  return undefined;
}

/** Δ̃, z̃, r and δ from the per-channel grids (z̃ rounded half to even when asked). */
export function reparameterisation(
  channels: readonly UniformParams[],
  roundZeroPoint: boolean,
): Reparameterisation {
  const n = channels.length;
  let scaleSum = 0;
  let zeroSum = 0;
  for (const c of channels) {
    scaleSum += c.scale;
    zeroSum += c.zeroPoint;
  }
  const scale = scaleSum / n;
  const zeroPoint = roundZeroPoint ? roundHalfEven(zeroSum / n) : zeroSum / n;
  const ratio = Float64Array.from(channels, (c) => c.scale / scale);
  const offset = Float64Array.from(channels, (c) => scale * (zeroPoint - c.zeroPoint));
  return { scale, zeroPoint, ratio, offset };
}

/** The commands rewriting γ, β and every reader's weight and bias for `rep`. */
export function foldCommands(
  index: GraphIndex,
  names: NamePrefixes,
  fold: NormFold,
  rep: Reparameterisation,
): Command[] {
  const { norm } = fold;
  const channels = rep.ratio.length;
  const gamma = normConstant(index, norm.scale, channels);
  const beta = normConstant(index, norm.bias, channels);
  const newGamma = Float32Array.from(gamma, (g, c) => g / rep.ratio[c]!);
  const newBeta = Float32Array.from(beta, (b, c) => b / rep.ratio[c]! - rep.offset[c]!);
  const reader = (name: string) => norm.nodes.find((n) => index.node(n).input.includes(name))!;
  return [
    ...replaceConstant(index, names, norm.scale, reader(norm.scale), [channels], newGamma),
    ...replaceConstant(index, names, norm.bias, reader(norm.bias), [channels], newBeta),
    ...fold.targets.flatMap((layer) => layerCommands(index, names, layer, rep)),
  ];
}

/** γ or β as one value per channel (a scalar is broadcast, as the norm would). */
function normConstant(index: GraphIndex, name: string, channels: number): Float64Array {
  const tensor = index.constantTensor(name)!;
  const values = readFloat32(tensor);
  if (values.length === 1) return new Float64Array(channels).fill(values[0]!);
  if (values.length !== channels) {
    throw new RangeError(
      `${name} has ${values.length} values (dims [${tensorDims(tensor).join(', ')}]), the norm ${channels} channels`,
    );
  }
  return Float64Array.from(values);
}

/** W′ = diag(r)·W and b′ = b + δ·W′ for one reader; a layer without bias gets an Add. */
function layerCommands(
  index: GraphIndex,
  names: NamePrefixes,
  layer: LinearLayer,
  rep: Reparameterisation,
): Command[] {
  const { values, dims } = readWeight(index, layer.role, layer);
  const outAxis = outputChannelAxis(layer);
  const outputs = dims[outAxis]!;
  const inputs = dims[1 - outAxis]!;
  const scaled = new Float32Array(values.length);
  const shift = new Float64Array(outputs);
  for (let i = 0; i < inputs; i++) {
    for (let o = 0; o < outputs; o++) {
      const at = outAxis === 1 ? i * outputs + o : o * inputs + i;
      const w = Math.fround(values[at]! * rep.ratio[i]!);
      scaled[at] = w;
      shift[o]! += w * rep.offset[i]!;
    }
  }
  const commands = replaceConstant(index, names, layer.weight, layer.node, dims, scaled);
  if (layer.bias) {
    const bias = readFloat32(index.constantTensor(layer.bias)!);
    const biased = Float32Array.from(bias, (b, o) => b + shift[o]!);
    const reader = layer.biasNode ?? layer.node;
    return [...commands, ...replaceConstant(index, names, layer.bias, reader, [outputs], biased)];
  }
  return [...commands, ...addBias(names, layer, Float32Array.from(shift))];
}

/** An Add of `bias` after the layer's output, read by everything that read the output. */
function addBias(names: NamePrefixes, layer: LinearLayer, bias: Float32Array): Command[] {
  const prefix = names.prefix(`vitslim/repq/${layer.role}`);
  const tensor = floatTensor(`${prefix}/bias`, [bias.length], bias);
  const add = `${prefix}/Add`;
  const node = makeNode({
    name: add,
    opType: 'Add',
    inputs: [layer.output, tensor.name],
    outputs: [`${prefix}/biased`],
  });
  return [
    { kind: 'addInitializer', tensor },
    { kind: 'addNode', node },
    { kind: 'replaceUses', from: layer.output, to: `${prefix}/biased`, exceptNodes: [add] },
  ];
}
