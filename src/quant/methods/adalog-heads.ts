/**
 * AdaLog's per-head grids for the operands of the attention matmuls (reference notes §14 (1),
 * `matmul_head_channel_wise`): the query, key and value tensors, laid out [batch, heads, …], get
 * one asymmetric uniform grid per head instead of one per tensor. Heads differ in range (one
 * head's queries may span three times another's), and at 3 bits one shared step spends most
 * codes of the narrow heads on nothing.
 *
 * Each head's grid is chosen by the percentile-MSE search on that head's float values; the
 * fake-quant chain is RepQ-ViT's per-channel one with its parameters shaped [1, H, 1, 1].
 */
import type { Command } from '../../graph/commands.js';
import { makeNode } from '../../graph/attributes.js';
import { floatTensor } from '../../onnx/tensor.js';
import type { CaptureBatch } from '../../runtime/capture.js';
import type { SessionOptions } from '../../runtime/session.js';
import { percentileMseAffine } from '../percentile-mse.js';
import type { ActivationSetting } from '../quantizer-commands.js';
import { intRange, roundHalfEven, type UniformParams } from '../uniform.js';
import type { Replacement } from './replacement-chains.js';
import { captureFloat } from './replaced-quantizers.js';

/** Values of one head kept for its search: an even stride over each batch, at most this many. */
const samplesPerHead = 1 << 17;

/** One attention operand's grids, one per head. */
export interface HeadGrids {
  setting: ActivationSetting;
  bits: number;
  params: UniformParams[];
}

/**
 * Per-head grids for the rank-4 [batch, heads, …] operands among `settings`, from the float
 * model's tensors; an operand of another rank (an exporter that folds heads into the batch)
 * keeps RepQ-ViT's per-tensor grid and is left out.
 */
export async function searchHeadGrids(
  model: Parameters<typeof captureFloat>[0],
  settings: readonly ActivationSetting[],
  images: readonly CaptureBatch[],
  percentiles: readonly number[],
  session: SessionOptions,
): Promise<HeadGrids[]> {
  const samples = new Map<string, number[][]>();
  await captureFloat(
    model,
    settings.map((s) => s.value),
    images,
    (value, data, dims) => {
      if (dims.length !== 4) return;
      const heads = dims[1]!;
      const per = data.length / (dims[0]! * heads);
      const kept = samples.get(value) ?? Array.from({ length: heads }, () => []);
      const take = Math.max(1, Math.ceil(samplesPerHead / images.length / dims[0]!));
      for (let b = 0; b < dims[0]!; b++) {
        for (let h = 0; h < heads; h++) {
          const at = (b * heads + h) * per;
          const n = Math.min(take, per);
          for (let i = 0; i < n; i++) kept[h]!.push(data[at + Math.floor((i * per) / n)]!);
        }
      }
      samples.set(value, kept);
    },
    session,
  );
  const grids: HeadGrids[] = [];
  for (const setting of settings) {
    const heads = samples.get(setting.value);
    const q = setting.quantizer;
    if (!heads || q.kind !== 'affine') continue;
    const params = heads.map((v) => percentileMseAffine(Float32Array.from(v), q.bits, percentiles));
    grids.push({ setting, bits: q.bits, params: params.map((c) => c.params) });
  }
  return grids;
}

/** The fake-quant chain of per-head grids on a [batch, heads, …] value. */
export function headReplacement(grids: HeadGrids): Replacement {
  return {
    setting: grids.setting,
    tag: 'heads',
    chain: (value, prefix) => headChain(value, prefix, grids.bits, grids.params),
  };
}

/**
 * Div by the head's step, Round (half to even), clamp to the codes [−z, 2^b − 1 − z] shifted by
 * the zero point, Mul by the step: the affine grid with integer zero point z, per head.
 */
function headChain(value: string, prefix: string, bits: number, params: UniformParams[]) {
  const top = intRange(bits, false).qmax;
  const p = (name: string) => `${prefix}/${name}`;
  const shape = [1, params.length, 1, 1];
  const tensor = (name: string, f: (q: UniformParams) => number) =>
    floatTensor(p(name), shape, Float32Array.from(params, f));
  const op = (opType: string, inputs: string[]): Command => ({
    kind: 'addNode',
    node: makeNode({ name: p(opType), opType, inputs, outputs: [p(opType)] }),
  });
  const commands: Command[] = [
    ...[
      tensor('scale', (q) => q.scale),
      tensor('low', (q) => -q.zeroPoint),
      tensor('high', (q) => top - q.zeroPoint),
    ].map((t): Command => ({ kind: 'addInitializer', tensor: t })),
    op('Div', [value, p('scale')]),
    op('Round', [p('Div')]),
    op('Max', [p('Round'), p('low')]),
    op('Min', [p('Max'), p('high')]),
    op('Mul', [p('Min'), p('scale')]),
  ];
  return { commands, output: p('Mul') };
}

/**
 * `x` (concatenated [batch, heads, …] batches) on its per-head grids as the chain computes it
 * in float32: the value operand the softmax search multiplies by.
 */
export function applyHeadGrids(x: Float32Array, grids: HeadGrids, perHead: number): Float32Array {
  const top = intRange(grids.bits, false).qmax;
  const heads = grids.params.length;
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const q = grids.params[Math.floor(i / perHead) % heads]!;
    const scale = Math.fround(q.scale);
    const code = roundHalfEven(Math.fround(x[i]! / scale));
    out[i] = Math.min(Math.max(code, -q.zeroPoint), top - q.zeroPoint) * scale;
  }
  return out;
}
