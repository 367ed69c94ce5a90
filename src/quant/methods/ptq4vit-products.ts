/**
 * The products PTQ4ViT searches, read from the structure map, and the float tensors each one
 * is searched on: every linear layer (input · weight) and both attention matmuls (query · key,
 * attention map · value). PTQ4ViT calibrates in parallel (reference notes §0.4, §1(3)): every
 * product sees the float model's tensors, so one capture of the float model serves them all.
 */
import type { ModelProto } from 'onnx-buf';
import { UnsupportedModelError } from '../../errors.js';
import { GraphIndex } from '../../graph/graph.js';
import { capture, type CaptureBatch } from '../../runtime/capture.js';
import type { SessionOptions } from '../../runtime/session.js';
import type { LinearLayer, ViTStructure } from '../../vit/types.js';
import type { ActivationPoint, QuantPoints, WeightPoint } from '../quant-points.js';
import { readWeight } from '../quantizer-commands.js';
import type { CapturedTensor } from '../sequential.js';

/** A product Y = A·B: a linear layer (A its input rows, B its weight as [in, out]). */
export interface LinearProduct {
  kind: 'linear';
  role: string;
  layer: LinearLayer;
  /** The points quantizing the input (none when it is kept in float). */
  input: ActivationPoint[];
  weight?: WeightPoint;
  /** Whether the input is a GELU output (fc2, a hidden head layer). */
  postGelu: boolean;
}

/** An attention matmul: query · key, or attention map · value, on [batch, heads, …] tensors. */
export interface AttentionProduct {
  kind: 'attention';
  role: string;
  left: { value: string; points: ActivationPoint[] };
  right: { value: string; points: ActivationPoint[] };
  heads: number;
  softmax: boolean;
}

export type Product = LinearProduct | AttentionProduct;

/** Every product of the structure with at least one quantized operand, in graph order. */
export function listProducts(structure: ViTStructure, points: QuantPoints): Product[] {
  const byRole = (role: string) => points.activations.filter((p) => p.role === role);
  const gelus = new Set<string>();
  for (const b of structure.blocks) {
    if (b.mlp.activation.kind.startsWith('gelu')) gelus.add(b.mlp.activation.output);
  }
  const pre = structure.preLogits?.activation;
  if (pre?.kind.startsWith('gelu')) gelus.add(pre.output);
  const linear = (layer: LinearLayer): LinearProduct => {
    const weight = points.weights.find((w) => w.role === `${layer.role}.weight`);
    const input = byRole(`${layer.role}.input`);
    return {
      kind: 'linear',
      role: layer.role,
      layer,
      input,
      ...(weight ? { weight } : {}),
      postGelu: gelus.has(layer.input),
    };
  };
  const products: Product[] = [linear(structure.patchEmbed.linear)];
  for (const block of structure.blocks) {
    const attn = block.attention;
    const at = `blocks.${block.index}.attn`;
    const operand = (name: string, value: string) => ({ value, points: byRole(`${at}.${name}`) });
    for (const layer of [attn.qkv, attn.q, attn.k, attn.v]) if (layer) products.push(linear(layer));
    products.push({
      kind: 'attention',
      role: `${at}.scores`,
      left: operand('query', attn.scores.query),
      right: operand('key', attn.scores.key),
      heads: attn.heads,
      softmax: false,
    });
    products.push({
      kind: 'attention',
      role: `${at}.context`,
      left: operand('softmax', attn.context.probabilities),
      right: operand('value', attn.context.value),
      heads: attn.heads,
      softmax: true,
    });
    products.push(linear(attn.proj), linear(block.mlp.fc1), linear(block.mlp.fc2));
  }
  if (structure.preLogits) products.push(linear(structure.preLogits.linear));
  products.push(linear(structure.head));
  return products.filter((p) =>
    p.kind === 'linear'
      ? p.input.length > 0 || p.weight !== undefined
      : p.left.points.length > 0 || p.right.points.length > 0,
  );
}

/** How much of each captured tensor the search keeps. */
export interface SampleLimits {
  /** Rows of a linear layer's input (0: all), evenly spaced. */
  rows: number;
  /** Images of an attention tensor (0: all), the first ones. */
  images: number;
}

/** The float operands of `products`, captured from `model` over `images` in one pass. */
export async function captureOperands(
  model: ModelProto,
  products: readonly Product[],
  images: readonly CaptureBatch[],
  limits: SampleLimits,
  options: SessionOptions,
): Promise<Map<string, CapturedTensor>> {
  const total = images.reduce((n, b) => n + (b.dims[0] ?? 0), 0);
  const samplers = new Map<string, Sampler>();
  for (const p of products) {
    if (p.kind === 'linear') samplers.set(p.layer.input, new RowSampler(p, total, limits.rows));
    else for (const v of [p.left.value, p.right.value]) samplers.set(v, new ImageSampler(limits));
  }
  await capture(
    model,
    [...samplers.keys()],
    images,
    (values) => {
      for (const [name, sampler] of samplers) {
        const t = values.get(name)!;
        sampler.add(t.data as Float32Array, t.dims.map(Number));
      }
    },
    options,
  );
  return new Map([...samplers].map(([name, s]) => [name, s.result()]));
}

interface Sampler {
  add(data: Float32Array, dims: number[]): void;
  result(): CapturedTensor;
}

/** Rows of a linear layer's input ([…, in], or image patches for a Conv), every step-th kept. */
class RowSampler implements Sampler {
  private readonly kept: Float32Array[] = [];
  private seen = 0;
  private step = 0;

  constructor(
    private readonly product: LinearProduct,
    private readonly images: number,
    private readonly limit: number,
  ) {}

  add(data: Float32Array, dims: number[]): void {
    const rows = this.product.layer.opType === 'Conv' ? patches(this.product, data, dims) : data;
    const width = this.product.layer.inFeatures;
    const count = rows.length / width;
    if (this.step === 0) {
      const all = (count / (dims[0] ?? 1)) * this.images;
      this.step = this.limit > 0 ? Math.max(1, Math.ceil(all / this.limit)) : 1;
    }
    for (let r = 0; r < count; r++, this.seen++) {
      if (this.seen % this.step === 0) this.kept.push(rows.slice(r * width, (r + 1) * width));
    }
  }

  result(): CapturedTensor {
    const width = this.product.layer.inFeatures;
    const data = new Float32Array(this.kept.length * width);
    this.kept.forEach((row, r) => data.set(row, r * width));
    return { data, dims: [this.kept.length, width] };
  }
}

/** The first images of an attention tensor [batch, …]. */
class ImageSampler implements Sampler {
  private readonly kept: Float32Array[] = [];
  private dims: number[] = [];
  private count = 0;

  constructor(private readonly limits: SampleLimits) {}

  add(data: Float32Array, dims: number[]): void {
    const batch = dims[0] ?? 1;
    const take = this.limits.images > 0 ? Math.min(batch, this.limits.images - this.count) : batch;
    if (take <= 0) return;
    this.dims = dims.slice(1);
    this.kept.push(data.slice(0, (data.length / batch) * take));
    this.count += take;
  }

  result(): CapturedTensor {
    const data = new Float32Array(this.kept.reduce((n, k) => n + k.length, 0));
    let at = 0;
    for (const k of this.kept) {
      data.set(k, at);
      at += k.length;
    }
    return { data, dims: [this.count, ...this.dims] };
  }
}

/**
 * A patch-embedding Conv's input as rows of patches (im2col): the Conv has stride = kernel and
 * no padding, so it is a linear layer on the patch vectors, laid out as the weight's
 * [out, channel, kh, kw] flattens: column c·p² + i·p + j.
 */
function patches(product: LinearProduct, data: Float32Array, dims: number[]): Float32Array {
  const [batch, channels, height, width] = dims as [number, number, number, number];
  const p = Math.round(Math.sqrt(product.layer.inFeatures / channels));
  if (p * p * channels !== product.layer.inFeatures || height % p !== 0 || width % p !== 0) {
    throw new UnsupportedModelError(
      `${product.role}: a ${height}×${width} image does not cut into ${p}×${p} patches of ${channels} channels`,
      product.layer.node,
    );
  }
  const [gh, gw] = [height / p, width / p];
  const out = new Float32Array(batch * gh * gw * product.layer.inFeatures);
  let at = 0;
  for (let b = 0; b < batch; b++) {
    for (let y = 0; y < gh; y++) {
      for (let x = 0; x < gw; x++) {
        for (let c = 0; c < channels; c++) {
          for (let i = 0; i < p; i++) {
            const from = ((b * channels + c) * height + y * p + i) * width + x * p;
            out.set(data.subarray(from, from + p), at);
            at += p;
          }
        }
      }
    }
  }
  return out;
}

/** A linear layer's weight as [in, out] (the layout of the search's products). */
export function weightInOut(index: GraphIndex, role: string, layer: LinearLayer): CapturedTensor {
  const { values } = readWeight(index, role, layer);
  const [k, n] = [layer.inFeatures, layer.outFeatures];
  if (layer.weightLayout === 'in-out') return { data: values, dims: [k, n] };
  // out-in and conv ([out, c, kh, kw] = [out, in]) are transposed
  const data = new Float32Array(k * n);
  for (let o = 0; o < n; o++) for (let i = 0; i < k; i++) data[i * n + o] = values[o * k + i]!;
  return { data, dims: [k, n] };
}
