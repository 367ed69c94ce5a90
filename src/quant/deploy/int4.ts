/**
 * Recipe `int4-weights`: every MatMul/Gemm with a constant weight becomes a com.microsoft
 * MatMulNBits (peer-tools C.7) with 4-bit weights quantized in blocks along the input features;
 * activations stay float. The bias (Gemm's third input, or the constant of a following Add)
 * becomes MatMulNBits' `bias` input, so the Add disappears. The patch-embedding Conv keeps
 * float arithmetic; by default its weight is stored as int8 per output channel behind a
 * DequantizeLinear (a quarter of the bytes; the DQ of 147 K values per run is lost in the
 * noise). Position embedding, class token and LayerNorm stay float.
 *
 * Measured on the ViT-Tiny (500 validation images, fp32 83.0 %, file 22.99 MB): asymmetric
 * blocks of 32 with the clipping search 81.4 %, 4.08 MB (0.18×); without the search 80.4 %;
 * symmetric 79.2–81.6 % at 3.99 MB; blocks of 16 81.2–81.4 % but 4.85 MB (0.21×). Hence the
 * defaults: asymmetric, blocks of 32, search on. Speed is not the point of this recipe:
 * MatMulNBits runs at 0.9–1.2× the fp32 time at batch 1 on this 2-core CPU, and accuracy level
 * 4 and 0 gave the same top-1 on every image.
 */
import type { ModelProto } from 'onnx-buf';
import { applyCommands } from '../../graph/commands.js';
import { GraphIndex } from '../../graph/graph.js';
import { opsetVersion } from '../../onnx/model-io.js';
import { DataType } from '../../onnx/tensor.js';
import type { LinearLayer } from '../../vit/types.js';
import { RewriteBuilder, weightDequantize } from './builder.js';
import { floatRow, row } from './dynamic.js';
import { deployLayers, type LayerSource } from './layers.js';
import type { DeployLayerRow, DeployResult } from './types.js';
import {
  layerWeight,
  quantizeWeightBlocks,
  quantizeWeightPerChannel,
  type BlockQuantizedWeight,
} from './weights.js';

export interface Int4Options {
  /** Weights per block along K: a power of two ≥ 16 (default 32). */
  blockSize?: number;
  /**
   * MatMulNBits `accuracy_level`: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 (A quantized to int8
   * per block inside the kernel). Default 4.
   */
  accuracyLevel?: 0 | 1 | 2 | 3 | 4;
  /** Symmetric blocks (zero point 8, none stored) or asymmetric (default) with zero points. */
  symmetric?: boolean;
  /** Search a clipped range per block that lowers its squared error (default true). */
  clipSearch?: boolean;
  /** What to do with the patch-embedding Conv weight (default 'int8-weight'). */
  conv?: 'float' | 'int8-weight';
  /** Roles (or node names) to leave in float. */
  exclude?: readonly string[];
  /**
   * Blocks a method already chose for a layer (GPTQ: gptq-blocks.ts), in this export's block
   * size; undefined rounds the layer's float weight to nearest.
   */
  blocksOf?: (layer: LinearLayer) => BlockQuantizedWeight | undefined;
}

const msDomain = 'com.microsoft';

/** Exports `model` with 4-bit MatMulNBits weights. */
export function exportInt4(
  model: ModelProto,
  structure?: LayerSource,
  options: Int4Options = {},
): DeployResult {
  const blockSize = options.blockSize ?? 32;
  if (!Number.isInteger(blockSize) || blockSize < 16 || (blockSize & (blockSize - 1)) !== 0) {
    throw new RangeError(`blockSize must be a power of two ≥ 16, got ${blockSize}`);
  }
  const index = new GraphIndex(model);
  const builder = new RewriteBuilder(model);
  builder.push({ kind: 'addOpset', domain: msDomain, version: 1 });
  const exclude = new Set(options.exclude ?? []);
  const layers = deployLayers(model, structure).map((layer): DeployLayerRow => {
    if (exclude.has(layer.role) || exclude.has(layer.node)) {
      return floatRow(index, layer, 'excluded');
    }
    if (layer.opType === 'Conv') return convLayer(builder, index, layer, options);
    return addNBitsLayer(builder, index, layer, { ...options, blockSize });
  });
  const result = applyCommands(model, builder.commands, {
    removeUnused: true,
    context: 'int4-weights export',
  });
  return { model: result, layers };
}

function addNBitsLayer(
  builder: RewriteBuilder,
  index: GraphIndex,
  layer: LinearLayer,
  options: Int4Options & { blockSize: number },
): DeployLayerRow {
  const { values } = layerWeight(index, layer);
  const [k, n] = [layer.inFeatures, layer.outFeatures];
  // W as [N, K]: MatMul and Gemm(transB=0) store [K, N]; Gemm(transB=1) stores [N, K]
  const weightAt =
    layer.weightLayout === 'in-out'
      ? (row: number, col: number) => values[col * n + row]!
      : (row: number, col: number) => values[row * k + col]!;
  const symmetric = options.symmetric ?? false;
  const search = options.clipSearch ?? true;
  const q =
    given(layer, options) ??
    quantizeWeightBlocks(weightAt, n, k, options.blockSize, symmetric, search);

  const b = builder.initializer(
    `${layer.weight}_nbits`,
    DataType.UINT8,
    [n, q.kBlocks, options.blockSize / 2],
    q.packed,
  );
  const scales = builder.floats(`${layer.weight}_nbits_scales`, q.scales, [n, q.kBlocks]);
  const inputs = [layer.input, b, scales, '', '', ''];
  let stored = q.packed.length + 4 * q.scales.length;
  if (q.zeroPoints) {
    const packed = packZeroPoints(q.zeroPoints, n, q.kBlocks);
    stored += packed.length;
    inputs[3] = builder.initializer(
      `${layer.weight}_nbits_zero_points`,
      DataType.UINT8,
      [n, packed.length / n],
      packed,
    );
  }
  const bias = layer.bias ? index.constantFloat32(layer.bias) : undefined;
  if (bias) inputs[5] = builder.floats(`${layer.bias}_nbits_bias`, bias, [n]);
  while (inputs[inputs.length - 1] === '') inputs.pop();

  builder.nodeTo(
    `${layer.node}_MatMulNBits`,
    'MatMulNBits',
    inputs,
    layer.biasedOutput,
    {
      K: k,
      N: n,
      bits: 4,
      block_size: options.blockSize,
      accuracy_level: options.accuracyLevel ?? 4,
    },
    msDomain,
  );
  builder.push({ kind: 'removeNode', name: layer.node });
  if (layer.biasNode) builder.push({ kind: 'removeNode', name: layer.biasNode });
  return row(layer, 'nbits', `int4 blocks of ${options.blockSize}`, {
    before: 4 * values.length,
    after: stored,
  });
}

/** The blocks `blocksOf` gives for a layer, checked against its shape and the block size. */
function given(layer: LinearLayer, options: Int4Options & { blockSize: number }) {
  const q = options.blocksOf?.(layer);
  if (!q) return undefined;
  const [k, n] = [layer.inFeatures, layer.outFeatures];
  const bytes = n * Math.ceil(k / options.blockSize) * (options.blockSize / 2);
  if (q.n !== n || q.k !== k || q.packed.length !== bytes) {
    throw new RangeError(
      `${layer.role}: given 4-bit blocks are [${q.n}, ${q.k}] in ${q.packed.length} bytes, the ` +
        `layer needs [${n}, ${k}] in blocks of ${options.blockSize} (${bytes} bytes)`,
    );
  }
  return q;
}

/**
 * Zero points of 4-bit blocks, two per byte along each row's blocks (low nibble first), rows
 * padded to whole bytes: [N, ceil(kBlocks / 2)].
 */
export function packZeroPoints(zeroPoints: Uint8Array, n: number, kBlocks: number): Uint8Array {
  const perRow = Math.ceil(kBlocks / 2);
  const out = new Uint8Array(n * perRow);
  for (let row = 0; row < n; row++) {
    for (let b = 0; b < kBlocks; b++) {
      const at = row * perRow + (b >> 1);
      const z = zeroPoints[row * kBlocks + b]! & 0x0f;
      out[at] = out[at]! | (b & 1 ? z << 4 : z);
    }
  }
  return out;
}

/** The Conv keeps float arithmetic; its weight optionally stored as int8 behind a DQ. */
function convLayer(
  builder: RewriteBuilder,
  index: GraphIndex,
  layer: LinearLayer,
  options: Int4Options,
): DeployLayerRow {
  if ((options.conv ?? 'int8-weight') === 'float' || (opsetVersion(index.model) ?? 0) < 13) {
    return floatRow(index, layer, 'Conv kept float');
  }
  const weight = quantizeWeightPerChannel(index, layer);
  const wDq = weightDequantize(builder, layer.weight, weight, false);
  builder.push({ kind: 'setNodeInput', node: layer.node, index: 1, value: wDq });
  return row(layer, 'float', 'Conv: int8 weight storage, float arithmetic', {
    before: 4 * weight.values.length,
    after: weight.values.length + 4 * layer.outFeatures,
  });
}
