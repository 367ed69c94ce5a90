/**
 * The structure map: what vitslim recognised in a ViT graph. Every method works on these roles,
 * never on node names, so that it works on any exporter's graph. Values and nodes are referred to
 * by their names in the graph the map was built from.
 */

/** A layer computing y = x·W (+ b) with a constant weight. */
export interface LinearLayer {
  /** Role path, e.g. `blocks.3.attn.qkv`, `blocks.0.mlp.fc1`, `patch_embed`, `head`. */
  role: string;
  /** The MatMul, Gemm or Conv node. */
  node: string;
  opType: 'MatMul' | 'Gemm' | 'Conv';
  /** The activation input of the node. */
  input: string;
  /** The node's own output (before a separate bias Add). */
  output: string;
  /** Initializer (or Constant output) holding the weight. */
  weight: string;
  /**
   * How the weight is laid out: `in-out` is [in, out] (MatMul, Gemm transB=0), `out-in` is
   * [out, in] (Gemm transB=1), `conv` is [out, in, kh, kw].
   */
  weightLayout: 'in-out' | 'out-in' | 'conv';
  /** Bias initializer: Gemm/Conv's third input, or the constant of a following Add. */
  bias?: string;
  /** The Add node that adds the bias, when the bias is a separate node. */
  biasNode?: string;
  /** Output of the layer after its bias (the Add's output, or `output`). */
  biasedOutput: string;
  inFeatures: number;
  outFeatures: number;
}

/** A layer normalisation, as one op or decomposed (ReduceMean/Sub/Pow/Sqrt/Div/Mul/Add). */
export interface NormLayer {
  role: string;
  form: 'LayerNormalization' | 'decomposed';
  /** All nodes making up the norm, in graph order. */
  nodes: string[];
  input: string;
  output: string;
  /** γ and β initializers. */
  scale: string;
  bias: string;
  epsilon: number;
}

export interface AttentionMap {
  /** Fused qkv projection, or separate q, k, v projections. */
  qkv?: LinearLayer;
  q?: LinearLayer;
  k?: LinearLayer;
  v?: LinearLayer;
  /** The MatMul computing QKᵀ, its two inputs, and the scale node (Mul/Div) if any. */
  scores: { node: string; query: string; key: string; output: string };
  scale?: { node: string; factor: number };
  softmax: { node: string; input: string; output: string };
  /** The MatMul computing softmax(·)·V. */
  context: { node: string; probabilities: string; value: string; output: string };
  proj: LinearLayer;
  heads: number;
  headDim: number;
}

export interface MlpMap {
  fc1: LinearLayer;
  activation: {
    kind: 'gelu-erf' | 'gelu-tanh' | 'gelu' | 'relu' | 'other';
    nodes: string[];
    input: string;
    output: string;
  };
  fc2: LinearLayer;
}

/** The activation between two linear layers (an MLP's, or the head's hidden layer's). */
export type ActivationMap = MlpMap['activation'];

export interface BlockMap {
  index: number;
  input: string;
  norm1: NormLayer;
  attention: AttentionMap;
  /** The residual Add after attention and its output. */
  residual1: { node: string; output: string };
  norm2: NormLayer;
  mlp: MlpMap;
  residual2: { node: string; output: string };
  output: string;
}

export interface PatchEmbedMap {
  /** A Conv with stride = kernel, or a reshape of patches followed by a MatMul/Gemm. */
  form: 'conv' | 'linear';
  linear: LinearLayer;
  patchSize: number;
  /** Value holding the patch tokens [N, P, D] after flatten/transpose. */
  tokens: string;
}

export interface StructureCounts {
  width: number;
  depth: number;
  /** Heads, head size and MLP width of the first block (see each block for pruned models). */
  heads: number;
  headDim: number;
  mlpWidth: number;
  /** Tokens per image including the class token. */
  tokens: number;
  patches: number;
  imageSize: [number, number, number];
  numClasses: number;
  parameters: number;
  /** Multiply-accumulates per image of every MatMul/Gemm/Conv (attention matmuls included). */
  macs: number;
  /**
   * MACs per image of each role of the map: the linear layers by their role, and the attention
   * MatMuls as `blocks.<i>.attn.scores` and `blocks.<i>.attn.context`.
   */
  macsByRole?: Record<string, number>;
}

export interface ViTStructure {
  input: string;
  output: string;
  patchEmbed: PatchEmbedMap;
  /** Initializer of the class token, the Concat adding it, and the position embedding Add. */
  classToken?: { initializer: string; concat: string };
  positionEmbedding?: { initializer: string; add: string };
  blocks: BlockMap[];
  /** The norm after the last block (or after pooling); absent where the model has none. */
  finalNorm?: NormLayer;
  /** Node selecting the class token (Gather/Slice) or pooling (ReduceMean), if recognised. */
  pooling?: { node: string; kind: 'class-token' | 'mean' };
  /**
   * A hidden layer between pooling and the classifier, with its activation: timm's pre-logits
   * representation layer, or the first layer of a two-layer MLP head (role `pre_logits`).
   */
  preLogits?: { linear: LinearLayer; activation: ActivationMap };
  /** The classifier giving the logits. */
  head: LinearLayer;
  counts: StructureCounts;
}
