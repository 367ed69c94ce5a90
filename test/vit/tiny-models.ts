/**
 * Tiny models built in code, one per graph pattern the structure map must handle (or refuse):
 * ViTs written the way different exporters write them, and graphs that are not ViTs. Weights are
 * deterministic noise; the models run in onnxruntime, so the patterns are real graphs.
 */
import { create } from '@bufbuild/protobuf';
import {
  GraphProtoSchema,
  ModelProtoSchema,
  OperatorSetIdProtoSchema,
  TensorShapeProto_DimensionSchema,
  TensorShapeProtoSchema,
  TypeProto_TensorSchema,
  TypeProtoSchema,
  ValueInfoProtoSchema,
  type ModelProto,
  type NodeProto,
  type TensorProto,
} from 'onnx-buf';
import { makeNode, type AttributeValue } from '../../src/graph/attributes.js';
import { DataType, floatTensor, int64Tensor } from '../../src/onnx/tensor.js';
import { noiseInput } from '../fixtures.js';

/** A graph under construction: nodes and initializers with short, generated names. */
export class GraphBuilder {
  readonly nodes: NodeProto[] = [];
  readonly initializers: TensorProto[] = [];
  private count = 0;

  /** Adds a node and returns its (first) output. */
  op(opType: string, inputs: string[], attributes: Record<string, AttributeValue> = {}): string {
    const name = `${opType.toLowerCase()}${this.count++}`;
    this.nodes.push(makeNode({ name, opType, inputs, outputs: [name], attributes }));
    return name;
  }

  /** A float initializer of noise scaled by `scale` (or filled with `fill`). */
  weight(name: string, dims: number[], scale = 0.3, fill?: number): string {
    const count = dims.reduce((p, d) => p * d, 1);
    const values = fill === undefined ? noiseInput(count, this.count + 7) : new Float32Array(count);
    for (let i = 0; i < count; i++) values[i] = fill ?? values[i]! * scale;
    this.initializers.push(floatTensor(name, dims, values));
    return name;
  }

  ints(name: string, values: number[], dims = [values.length]): string {
    this.initializers.push(int64Tensor(name, dims, values));
    return name;
  }

  scalar(name: string, value: number): string {
    this.initializers.push(floatTensor(name, [], Float32Array.of(value)));
    return name;
  }

  /** The model reading `input` (float, `inputDims`) and giving `output`. */
  model(input: string, inputDims: number[], output: string): ModelProto {
    const graph = create(GraphProtoSchema, {
      name: 'tiny',
      node: this.nodes,
      initializer: this.initializers,
      input: [valueInfo(input, inputDims)],
      output: [valueInfo(output)],
    });
    return create(ModelProtoSchema, {
      irVersion: 8n,
      opsetImport: [create(OperatorSetIdProtoSchema, { domain: '', version: 17n })],
      graph,
    });
  }
}

function valueInfo(name: string, dims?: (number | string)[]) {
  const dim = (dims ?? []).map((d) =>
    create(TensorShapeProto_DimensionSchema, {
      value:
        typeof d === 'number'
          ? { case: 'dimValue', value: BigInt(d) }
          : { case: 'dimParam', value: d },
    }),
  );
  const tensorType = create(TypeProto_TensorSchema, {
    elemType: DataType.FLOAT,
    ...(dims ? { shape: create(TensorShapeProtoSchema, { dim }) } : {}),
  });
  return create(ValueInfoProtoSchema, {
    name,
    type: create(TypeProtoSchema, { value: { case: 'tensorType', value: tensorType } }),
  });
}

export interface TinyViTOptions {
  /** One fused qkv MatMul split by Split, or separate q, k and v MatMuls (Hugging Face). */
  qkv: 'fused' | 'separate';
  norm: 'op' | 'decomposed';
  /** A class token read by Slice, or no class token and the mean of the tokens. */
  pooling: 'class-token' | 'mean';
}

/** The facts a tiny ViT is built with, to compare the recognised map against. */
export const tiny = {
  channels: 3,
  image: 8,
  patch: 4,
  width: 8,
  heads: 2,
  headDim: 4,
  mlp: 16,
  depth: 2,
  classes: 5,
  epsilon: 1e-6,
};

function layerNorm(g: GraphBuilder, x: string, role: string, form: TinyViTOptions['norm']) {
  const scale = g.weight(`${role}.weight`, [tiny.width], 0.1);
  const bias = g.weight(`${role}.bias`, [tiny.width], 0.1);
  if (form === 'op') {
    return g.op('LayerNormalization', [x, scale, bias], { axis: -1, epsilon: tiny.epsilon });
  }
  const mean = g.op('ReduceMean', [x], { axes: [-1] });
  const centred = g.op('Sub', [x, mean]);
  const squared = g.op('Pow', [centred, g.scalar(`${role}.two`, 2)]);
  const variance = g.op('ReduceMean', [squared], { axes: [-1] });
  const std = g.op('Sqrt', [g.op('Add', [variance, g.scalar(`${role}.eps`, tiny.epsilon)])]);
  return g.op('Add', [g.op('Mul', [g.op('Div', [centred, std]), scale]), bias]);
}

function linear(g: GraphBuilder, x: string, role: string, inF: number, outF: number) {
  const y = g.op('MatMul', [x, g.weight(`${role}.weight`, [inF, outF])]);
  return g.op('Add', [g.weight(`${role}.bias`, [outF], 0.1), y]);
}

/** Separate projections, each reshaped to heads as Hugging Face's ViT does. */
function separateQkv(g: GraphBuilder, h: string, role: string, tokens: number) {
  const { width, heads, headDim } = tiny;
  const split = g.ints(`${role}.split_heads`, [0, tokens, heads, headDim]);
  const toHeads = (name: string, perm: number[]) => {
    const y = linear(g, h, `${role}.${name}`, width, width);
    return g.op('Transpose', [g.op('Reshape', [y, split])], { perm });
  };
  const q = toHeads('query', [0, 2, 1, 3]);
  const kT = toHeads('key', [0, 2, 3, 1]);
  const v = toHeads('value', [0, 2, 1, 3]);
  const scores = g.op('Div', [g.op('MatMul', [q, kT]), g.scalar(`${role}.sqrt_d`, 2)]);
  return { scores, v };
}

/** One fused projection, split into q, k and v after moving the qkv axis first. */
function fusedQkv(g: GraphBuilder, h: string, role: string, tokens: number) {
  const { width, heads, headDim } = tiny;
  const qkv = linear(g, h, `${role}.qkv`, width, 3 * width);
  const shape = g.ints(`${role}.qkv_shape`, [1, tokens, 3, heads, headDim]);
  const moved = g.op('Transpose', [g.op('Reshape', [qkv, shape])], { perm: [2, 0, 3, 1, 4] });
  const parts = ['q', 'k', 'v'].map((name) => `${role}.${name}`);
  g.nodes.push(
    makeNode({
      name: `${role}.split`,
      opType: 'Split',
      inputs: [moved],
      outputs: parts,
      attributes: { axis: 0 },
    }),
  );
  const axis0 = g.ints(`${role}.axis0`, [0]);
  const [q, k, v] = parts.map((part) => g.op('Squeeze', [part, axis0])) as [string, string, string];
  const kT = g.op('Transpose', [k], { perm: [0, 1, 3, 2] });
  const scores = g.op('Mul', [g.op('MatMul', [q, kT]), g.scalar(`${role}.scale`, 0.5)]);
  return { scores, v };
}

function block(g: GraphBuilder, x: string, i: number, options: TinyViTOptions, tokens: number) {
  const role = `blocks.${i}`;
  const h = layerNorm(g, x, `${role}.norm1`, options.norm);
  const qkv = options.qkv === 'fused' ? fusedQkv : separateQkv;
  const { scores, v } = qkv(g, h, `${role}.attn`, tokens);
  const context = g.op('MatMul', [g.op('Softmax', [scores], { axis: -1 }), v]);
  const merged = g.op('Reshape', [
    g.op('Transpose', [context], { perm: [0, 2, 1, 3] }),
    g.ints(`${role}.merge`, [0, tokens, tiny.width]),
  ]);
  const r1 = g.op('Add', [x, linear(g, merged, `${role}.attn.proj`, tiny.width, tiny.width)]);
  const h2 = layerNorm(g, r1, `${role}.norm2`, options.norm);
  const a = g.op('Relu', [linear(g, h2, `${role}.mlp.fc1`, tiny.width, tiny.mlp)]);
  return g.op('Add', [r1, linear(g, a, `${role}.mlp.fc2`, tiny.mlp, tiny.width)]);
}

/** A two-block ViT on 3×8×8 images, 4×4 patches, width 8, 2 heads, MLP 16, 5 classes. */
export function tinyViT(options: TinyViTOptions): ModelProto {
  const g = new GraphBuilder();
  const { channels, image, patch, width } = tiny;
  const patches = (image / patch) ** 2;
  const conv = g.op(
    'Conv',
    [
      'image',
      g.weight('patch.weight', [width, channels, patch, patch]),
      g.weight('patch.bias', [width]),
    ],
    { kernel_shape: [patch, patch], strides: [patch, patch] },
  );
  const grid = g.op('Reshape', [conv, g.ints('flat', [1, width, patches])]);
  let x = g.op('Transpose', [grid], { perm: [0, 2, 1] });
  let tokens = patches;
  if (options.pooling === 'class-token') {
    const cls = g.op('Expand', [
      g.weight('cls', [1, 1, width]),
      g.ints('cls_shape', [1, 1, width]),
    ]);
    x = g.op('Concat', [cls, x], { axis: 1 });
    tokens += 1;
  }
  x = g.op('Add', [x, g.weight('pos', [1, tokens, width], 0.1)]);
  for (let i = 0; i < tiny.depth; i++) x = block(g, x, i, options, tokens);

  let pooled: string;
  if (options.pooling === 'class-token') {
    x = layerNorm(g, x, 'norm', options.norm);
    const first = g.op('Slice', [x, g.ints('s0', [0]), g.ints('s1', [1]), g.ints('ax1', [1])]);
    pooled = g.op('Squeeze', [first, g.ints('sq1', [1])]);
  } else {
    pooled = layerNorm(
      g,
      g.op('ReduceMean', [x], { axes: [1], keepdims: 0 }),
      'fc_norm',
      options.norm,
    );
  }
  const head = g.weight('head.weight', [tiny.classes, width]);
  const logits = g.op('Gemm', [pooled, head, g.weight('head.bias', [tiny.classes])], { transB: 1 });
  return g.model('image', [1, channels, image, image], logits);
}

/** A two-layer perceptron on flattened 4×4 images: no patches, no tokens. */
export function tinyMlp(): ModelProto {
  const g = new GraphBuilder();
  const flat = g.op('Flatten', ['image']);
  const hidden = g.op('Relu', [g.op('MatMul', [flat, g.weight('w1', [16, 32])])]);
  return g.model('image', [1, 1, 4, 4], g.op('MatMul', [hidden, g.weight('w2', [32, 4])]));
}

/** A small convolutional net: 3×3 convolutions with stride 1, pooling and a Gemm. */
export function tinyConvNet(): ModelProto {
  const g = new GraphBuilder();
  const conv = (x: string, name: string, c: number) =>
    g.op('Relu', [
      g.op('Conv', [x, g.weight(name, [8, c, 3, 3])], { kernel_shape: [3, 3], pads: [1, 1, 1, 1] }),
    ]);
  const features = conv(conv('image', 'conv1.weight', 3), 'conv2.weight', 8);
  const pooled = g.op('Flatten', [g.op('GlobalAveragePool', [features])]);
  const logits = g.op('Gemm', [pooled, g.weight('fc.weight', [5, 8])], { transB: 1 });
  return g.model('image', [1, 3, 8, 8], logits);
}
