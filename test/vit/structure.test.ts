import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { ModelProto } from 'onnx-buf';
import { beforeAll, describe, expect, it } from 'vitest';
import { UnsupportedModelError } from '../../src/errors.js';
import { applyCommands } from '../../src/graph/commands.js';
import { GraphIndex } from '../../src/graph/graph.js';
import { loadModel } from '../../src/onnx/model-io.js';
import { tensorDims } from '../../src/onnx/tensor.js';
import { capture } from '../../src/runtime/capture.js';
import {
  linearLayers,
  macNodesByRole,
  recognizeViT,
  type BlockMap,
  type ViTStructure,
} from '../../src/vit/index.js';
import { noiseInput, vitMnist, vitTiny } from '../fixtures.js';
import { tinyConvNet, tinyMlp } from './tiny-models.js';

/** What a ViT is, as its authors describe it (not as the graph is read). */
interface VitFacts {
  depth: number;
  width: number;
  heads: number;
  mlpWidth: number;
  patchSize: number;
  imageSize: [number, number, number];
  numClasses: number;
  epsilon: number;
  qkvBias: boolean;
  finalNorm: boolean;
  /** Width of a hidden layer between pooling and the classifier, if the head has one. */
  headHidden?: number;
}

function readJson(path: string): Record<string, unknown> {
  return JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
}

// ViT-Tiny: config.json beside the model (timm's vit_tiny_patch16_224 layout: qkv with bias,
// final norm, a single linear head).
const tinyConfig = readJson(vitTiny.config);
const tinyFacts: VitFacts = {
  depth: tinyConfig['depth'] as number,
  width: tinyConfig['embed_dim'] as number,
  heads: tinyConfig['num_heads'] as number,
  mlpWidth: (tinyConfig['embed_dim'] as number) * (tinyConfig['mlp_ratio'] as number),
  patchSize: tinyConfig['patch_size'] as number,
  imageSize: tinyConfig['input_size'] as [number, number, number],
  numClasses: tinyConfig['num_classes'] as number,
  epsilon: tinyConfig['layer_norm_eps'] as number,
  qkvBias: true,
  finalNorm: true,
};

// The MNIST ViT: config.json for classes and input; the rest from the training script of the
// PyTorch demo it comes from, ViT(image_size=28, patch_size=7, num_classes=10, channels=1,
// dim=64, depth=6, heads=8, mlp_dim=128), whose attention has no qkv bias, whose blocks end
// without a final norm and whose head is Linear(64, 128), GELU, Linear(128, 10); nn.LayerNorm's
// default epsilon is 1e-5.
const mnistConfig = readJson(join(dirname(vitMnist), 'config.json'));
const mnistFacts: VitFacts = {
  depth: 6,
  width: 64,
  heads: 8,
  mlpWidth: 128,
  patchSize: 7,
  imageSize: mnistConfig['input_size'] as [number, number, number],
  numClasses: mnistConfig['num_classes'] as number,
  epsilon: 1e-5,
  qkvBias: false,
  finalNorm: false,
  headHidden: 128,
};

/** Parameters of a ViT by hand: every weight, bias, norm and embedding of the design. */
function handParameters(f: VitFacts): number {
  const d = f.width;
  const m = f.mlpWidth;
  const [channels, height, width] = f.imageSize;
  const patches = (height / f.patchSize) * (width / f.patchSize);
  const patchEmbed = channels * f.patchSize ** 2 * d + d;
  const embeddings = d + (patches + 1) * d;
  const attention = d * 3 * d + (f.qkvBias ? 3 * d : 0) + d * d + d;
  const block = 2 * (2 * d) + attention + (d * m + m) + (m * d + d);
  const h = f.headHidden;
  const head = h ? d * h + h + h * f.numClasses + f.numClasses : d * f.numClasses + f.numClasses;
  return patchEmbed + embeddings + f.depth * block + (f.finalNorm ? 2 * d : 0) + head;
}

/** MACs per image by hand: patches × patch inputs × width, then per block and the head. */
function handMacs(f: VitFacts): number {
  const d = f.width;
  const [channels, height, width] = f.imageSize;
  const patches = (height / f.patchSize) * (width / f.patchSize);
  const t = patches + 1;
  const headDim = d / f.heads;
  const linears = t * d * 3 * d + t * d * d + t * d * f.mlpWidth + t * f.mlpWidth * d;
  const attention = 2 * f.heads * t * t * headDim;
  const h = f.headHidden;
  const head = h ? d * h + h * f.numClasses : d * f.numClasses;
  return patches * channels * f.patchSize ** 2 * d + f.depth * (linears + attention) + head;
}

/** Every node a block's roles name, with repetitions kept. */
function blockNodes(block: BlockMap): string[] {
  const a = block.attention;
  const linear = [a.qkv, a.q, a.k, a.v, a.proj, block.mlp.fc1, block.mlp.fc2];
  return [
    ...block.norm1.nodes,
    ...linear.flatMap((l) => (l ? [l.node, ...(l.biasNode ? [l.biasNode] : [])] : [])),
    a.scores.node,
    ...(a.scale ? [a.scale.node] : []),
    a.softmax.node,
    a.context.node,
    block.residual1.node,
    ...block.norm2.nodes,
    ...block.mlp.activation.nodes,
    block.residual2.node,
  ];
}

const fixtures = [
  {
    name: 'ViT-Tiny at opset 17',
    path: vitTiny.opset17,
    facts: tinyFacts,
    norm: 'LayerNormalization',
  },
  { name: 'ViT-Tiny at opset 13', path: vitTiny.opset13, facts: tinyFacts, norm: 'decomposed' },
  { name: 'the MNIST ViT', path: vitMnist, facts: mnistFacts, norm: 'LayerNormalization' },
] as const;

describe.each(fixtures)('the structure map of $name', ({ path, facts, norm }) => {
  let model: ModelProto;
  let index: GraphIndex;
  let s: ViTStructure;

  beforeAll(async () => {
    model = await loadModel(path);
    index = new GraphIndex(model);
    s = recognizeViT(model);
  });

  it('has the depth, width, heads, head size and MLP width of the model design', () => {
    expect(s.counts).toMatchObject({
      depth: facts.depth,
      width: facts.width,
      heads: facts.heads,
      headDim: facts.width / facts.heads,
      mlpWidth: facts.mlpWidth,
    });
    for (const block of s.blocks) {
      expect([block.attention.heads, block.attention.headDim]).toEqual([
        facts.heads,
        facts.width / facts.heads,
      ]);
    }
  });

  it('counts one token per patch plus the class token, and the classes of the head', () => {
    const [, height, width] = facts.imageSize;
    const patches = (height / facts.patchSize) * (width / facts.patchSize);
    expect(s.counts).toMatchObject({ patches, tokens: patches + 1, numClasses: facts.numClasses });
    expect(s.counts.imageSize).toEqual(facts.imageSize);
    expect(s.patchEmbed.patchSize).toBe(facts.patchSize);
    const pos = index.initializers.get(s.positionEmbedding!.initializer)!;
    expect(tensorDims(pos)).toEqual([1, patches + 1, facts.width]);
    expect(tensorDims(index.initializers.get(s.classToken!.initializer)!)).toEqual([
      1,
      1,
      facts.width,
    ]);
  });

  it('counts the parameters of a hand calculation', () => {
    expect(s.counts.parameters).toBe(handParameters(facts));
  });

  it('counts the MACs of a hand calculation, attention MatMuls included', () => {
    expect(s.counts.macs).toBe(handMacs(facts));
    const byRole = Object.values(s.counts.macsByRole ?? {});
    expect(byRole.reduce((sum, m) => sum + m, 0)).toBe(s.counts.macs);
  });

  it('reads the norms in the form the export has, with the design epsilon', () => {
    const norms = s.blocks.flatMap((b) => [b.norm1, b.norm2]);
    if (s.finalNorm) norms.push(s.finalNorm);
    expect(Boolean(s.finalNorm)).toBe(facts.finalNorm);
    for (const n of norms) {
      expect(n.form).toBe(norm);
      expect(n.epsilon).toBe(Math.fround(facts.epsilon));
      expect(tensorDims(index.initializers.get(n.scale)!)).toEqual([facts.width]);
      expect(tensorDims(index.initializers.get(n.bias)!)).toEqual([facts.width]);
    }
  });

  it('gives every role of every block a distinct existing node', () => {
    const all = s.blocks.flatMap(blockNodes);
    expect(new Set(all).size).toBe(all.length);
    for (const name of all) expect(index.nodeByName.has(name), name).toBe(true);
    for (const block of s.blocks) {
      expect(index.node(block.attention.softmax.node).opType).toBe('Softmax');
      expect(index.node(block.attention.scores.node).opType).toBe('MatMul');
      expect(index.node(block.attention.context.node).opType).toBe('MatMul');
      expect(index.node(block.residual1.node).opType).toBe('Add');
      expect(index.node(block.residual2.node).opType).toBe('Add');
    }
    s.blocks.slice(1).forEach((block, i) => expect(block.input).toBe(s.blocks[i]!.output));
  });

  it('maps every MatMul, Gemm and Conv of the graph to a role', () => {
    const mapped = new Set(macNodesByRole(s).values());
    const heavy = index.nodes.filter((n) => ['MatMul', 'Gemm', 'Conv'].includes(n.opType));
    expect(heavy.map((n) => n.name).filter((n) => !mapped.has(n))).toEqual([]);
    expect(mapped.size).toBe(heavy.length);
  });

  it('points every linear layer at an initializer laid out as its features say', () => {
    const layers = linearLayers(s);
    expect(layers.length).toBe(1 + 4 * facts.depth + (facts.headHidden ? 2 : 1));
    for (const layer of layers) {
      const weight = index.initializers.get(layer.weight);
      expect(weight, layer.role).toBeDefined();
      const dims = tensorDims(weight!);
      if (layer.weightLayout === 'in-out')
        expect(dims).toEqual([layer.inFeatures, layer.outFeatures]);
      if (layer.weightLayout === 'out-in')
        expect(dims).toEqual([layer.outFeatures, layer.inFeatures]);
      if (layer.weightLayout === 'conv') {
        expect(dims[0]).toBe(layer.outFeatures);
        expect(dims.slice(1).reduce((p, d) => p * d, 1)).toBe(layer.inFeatures);
      }
      if (layer.bias)
        expect(tensorDims(index.initializers.get(layer.bias)!)).toEqual([layer.outFeatures]);
    }
    const a = s.blocks[0]!.attention;
    expect([a.qkv?.inFeatures, a.qkv?.outFeatures]).toEqual([facts.width, 3 * facts.width]);
    expect(Boolean(a.qkv?.bias)).toBe(facts.qkvBias);
    expect(s.head.outFeatures).toBe(facts.numClasses);
  });

  it('recomputes block 0 norm1 from its captured input with the γ, β and ε of the map', async () => {
    const n = s.blocks[0]!.norm1;
    const gamma = index.constantFloat32(n.scale)!;
    const beta = index.constantFloat32(n.bias)!;
    const dims = [1, ...facts.imageSize];
    const batch = {
      data: noiseInput(
        dims.reduce((p, d) => p * d, 1),
        5,
      ),
      dims,
    };
    let worst = Infinity;
    await capture(model, [n.input, n.output], [batch], (values) => {
      const x = values.get(n.input)!.data as Float32Array;
      const y = values.get(n.output)!.data as Float32Array;
      worst = maxLayerNormError(x, y, gamma, beta, n.epsilon);
    });
    // float32 onnxruntime against a float64 recomputation: a few ulps of values around 1
    expect(worst).toBeLessThan(1e-4);
  });

  it('finds softmax rows that sum to 1 and equal softmax(scale · scores)', async () => {
    const a = s.blocks[s.blocks.length - 1]!.attention;
    const dims = [1, ...facts.imageSize];
    const batch = {
      data: noiseInput(
        dims.reduce((p, d) => p * d, 1),
        9,
      ),
      dims,
    };
    const tokens = s.counts.tokens;
    await capture(model, [a.scores.output, a.softmax.output], [batch], (values) => {
      const probabilities = values.get(a.softmax.output)!;
      const scores = values.get(a.scores.output)!.data as Float32Array;
      expect(probabilities.dims).toEqual([1, facts.heads, tokens, tokens]);
      const p = probabilities.data as Float32Array;
      for (let row = 0; row < p.length / tokens; row++) {
        const sum = p.subarray(row * tokens, (row + 1) * tokens).reduce((acc, v) => acc + v, 0);
        expect(Math.abs(sum - 1)).toBeLessThan(1e-5);
      }
      const expected = softmaxRows(scores, tokens, a.scale?.factor ?? 1);
      expect(maxDifference(expected, p)).toBeLessThan(1e-5);
    });
  });
});

/** Largest |y − LayerNorm(x)| over rows of length γ.length, computed in float64. */
function maxLayerNormError(
  x: Float32Array,
  y: Float32Array,
  gamma: Float32Array,
  beta: Float32Array,
  epsilon: number,
): number {
  const d = gamma.length;
  let worst = 0;
  for (let row = 0; row < x.length / d; row++) {
    let mean = 0;
    for (let i = 0; i < d; i++) mean += x[row * d + i]!;
    mean /= d;
    let variance = 0;
    for (let i = 0; i < d; i++) variance += (x[row * d + i]! - mean) ** 2;
    const inv = 1 / Math.sqrt(variance / d + epsilon);
    for (let i = 0; i < d; i++) {
      const expected = (x[row * d + i]! - mean) * inv * gamma[i]! + beta[i]!;
      worst = Math.max(worst, Math.abs(expected - y[row * d + i]!));
    }
  }
  return worst;
}

function softmaxRows(scores: Float32Array, length: number, factor: number): Float64Array {
  const out = new Float64Array(scores.length);
  for (let row = 0; row < scores.length / length; row++) {
    const start = row * length;
    let max = -Infinity;
    for (let i = 0; i < length; i++) max = Math.max(max, scores[start + i]! * factor);
    let sum = 0;
    for (let i = 0; i < length; i++)
      sum += out[start + i] = Math.exp(scores[start + i]! * factor - max);
    for (let i = 0; i < length; i++) out[start + i]! /= sum;
  }
  return out;
}

function maxDifference(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!));
  return worst;
}

/** float32 tensors of a safetensors file by name (the header is JSON, then the raw data). */
function readSafetensors(path: string): Map<string, { shape: number[]; data: Float32Array }> {
  const bytes = readFileSync(path);
  const length = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + length).toString('utf8')) as Record<
    string,
    { dtype: string; shape: number[]; data_offsets: [number, number] }
  >;
  const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [name, entry] of Object.entries(header)) {
    if (entry.dtype !== 'F32') continue;
    const [start, end] = entry.data_offsets;
    const copy = Uint8Array.from(bytes.subarray(8 + length + start, 8 + length + end));
    tensors.set(name, { shape: entry.shape, data: new Float32Array(copy.buffer) });
  }
  return tensors;
}

/** The [in, out] transpose of an [out, in] matrix. */
function transpose(data: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(data.length);
  for (let r = 0; r < rows; r++)
    for (let c = 0; c < cols; c++) out[c * rows + r] = data[r * cols + c]!;
  return out;
}

/** Whether two float32 arrays hold the same values, bit for bit. */
function sameBits(a: Float32Array | undefined, b: Float32Array | undefined): boolean {
  if (!a || !b) return false;
  const bytes = (x: Float32Array) => Buffer.from(x.buffer, x.byteOffset, x.byteLength);
  return bytes(a).equals(bytes(b));
}

describe('the ViT-Tiny structure map against the timm weights', () => {
  it("finds under each role the weights timm stores under that role's name", async () => {
    const model = await loadModel(vitTiny.opset17);
    const index = new GraphIndex(model);
    const s = recognizeViT(model);
    const timm = readSafetensors(join(dirname(vitTiny.opset17), 'model.safetensors'));
    for (const layer of linearLayers(s)) {
      const name = layer.role.replace('patch_embed', 'patch_embed.proj');
      const reference = timm.get(`${name}.weight`);
      expect(reference, layer.role).toBeDefined();
      const { shape, data } = reference!;
      // timm stores [out, in]; a MatMul reads [in, out]
      const expected =
        layer.weightLayout === 'in-out' ? transpose(data, shape[0]!, shape[1]!) : data;
      expect(sameBits(index.constantFloat32(layer.weight), expected), layer.role).toBe(true);
      const bias = timm.get(`${name}.bias`)?.data;
      expect(sameBits(index.constantFloat32(layer.bias!), bias), layer.role).toBe(true);
    }
    for (const norm of [...s.blocks.flatMap((b) => [b.norm1, b.norm2]), s.finalNorm!]) {
      const gamma = timm.get(`${norm.role}.weight`)?.data;
      expect(sameBits(index.constantFloat32(norm.scale), gamma), norm.role).toBe(true);
      const beta = timm.get(`${norm.role}.bias`)?.data;
      expect(sameBits(index.constantFloat32(norm.bias), beta), norm.role).toBe(true);
    }
    const pos = timm.get('pos_embed')?.data;
    expect(sameBits(index.constantFloat32(s.positionEmbedding!.initializer), pos)).toBe(true);
    const cls = timm.get('cls_token')?.data;
    expect(sameBits(index.constantFloat32(s.classToken!.initializer), cls)).toBe(true);
  });
});

describe('the ViT-Tiny structure maps at opset 13 and opset 17', () => {
  it('agree on every count and on every block', async () => {
    const s13 = recognizeViT(await loadModel(vitTiny.opset13));
    const s17 = recognizeViT(await loadModel(vitTiny.opset17));
    expect(s13.counts).toEqual(s17.counts);
    const shape = (b: BlockMap) => [
      b.attention.heads,
      b.attention.headDim,
      b.mlp.fc1.outFeatures,
      b.mlp.activation.kind,
      b.norm1.epsilon,
    ];
    expect(s13.blocks.map(shape)).toEqual(s17.blocks.map(shape));
    expect(s13.blocks[0]!.norm1.nodes).toHaveLength(9);
    expect(s17.blocks[0]!.norm1.nodes).toHaveLength(1);
  });
});

/** The UnsupportedModelError that recognising `model` throws. */
function recognitionError(model: ModelProto): UnsupportedModelError {
  try {
    recognizeViT(model);
  } catch (error) {
    if (error instanceof UnsupportedModelError) return error;
    throw error;
  }
  throw new Error('recognizeViT accepted a graph that is not a ViT');
}

describe('recognizeViT on graphs that are not ViTs', () => {
  it('refuses a perceptron: no patch embedding, tracing stopped at its first MatMul', () => {
    const error = recognitionError(tinyMlp());
    expect(error.message).toMatch(
      /^no patch embedding found: expected a Conv with stride equal to its kernel/,
    );
    expect(error.message).toMatch(/tracing stopped at node matmul1 \(MatMul\)/);
  });

  it('refuses a convolutional net: its first Conv has stride 1, not its kernel', () => {
    const error = recognitionError(tinyConvNet());
    expect(error.message).toMatch(
      /^no patch embedding found: conv0 \(Conv\) has kernel 3×3, stride 1×1/,
    );
    expect(error.subject).toBe('conv0');
  });

  it('refuses a ViT cut after the patch embedding, naming the node where tracing stopped', async () => {
    const model = await loadModel(vitMnist);
    const norm = model.graph!.node.find((n) => n.opType === 'LayerNormalization')!;
    const cut = applyCommands(
      model,
      [
        { kind: 'removeOutput', name: 'logits' },
        { kind: 'addOutput', name: norm.output[0]! },
      ],
      { removeUnused: true },
    );
    const error = recognitionError(cut);
    expect(error.message).toMatch(/^no transformer block found after the patch embedding:/);
    expect(error.message).toContain(
      'to feed a LayerNorm (feeding a qkv projection) and a residual Add',
    );
    expect(error.message).toContain(`tracing stopped at node ${norm.name} (LayerNormalization)`);
  });

  it('refuses attention without a Softmax, naming the qkv projection it traced from', async () => {
    const model = await loadModel(vitMnist);
    for (const node of model.graph!.node) if (node.opType === 'Softmax') node.opType = 'Sigmoid';
    const error = recognitionError(model);
    expect(error.message).toMatch(/^block 0: no Softmax over the last axis found after the/);
    expect(error.message).toContain('the projection /blocks.0/to_qkv/MatMul');
  });
});
