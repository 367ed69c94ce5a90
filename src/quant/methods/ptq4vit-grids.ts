/**
 * PTQ4ViT's grids before the search (ptq4vit.ts): every step starts at max|x| / (2^(b−1) − ½)
 * of what it quantizes (reference notes §1(2)), and is then searched over Δ_init · factor.
 */
import { factorGrid, type CandidateFamily } from '../search/alternating-search.js';
import { symmetricStep, type OperandGrid } from '../search/operand-grid.js';
import type { CapturedTensor } from '../sequential.js';
import { geluTwin, softmaxTwin } from '../twin-uniform.js';
import type { LinearProduct } from './ptq4vit-products.js';
import type { Ptq4VitSettings } from './ptq4vit-types.js';

export const float: OperandGrid = { kind: 'float' };
export const fixed: CandidateFamily = { kind: 'fixed' };

export function maxAbs(data: Float32Array): number {
  let m = 0;
  for (let i = 0; i < data.length; i++) m = Math.max(m, Math.abs(data[i]!));
  return m;
}

export function maxOf(data: Float32Array): number {
  let m = 0;
  for (let i = 0; i < data.length; i++) m = Math.max(m, data[i]!);
  return m;
}

/** max|x| / (2^(b−1) − ½) of each index of `axis` of a tensor. */
export function groupSteps(tensor: CapturedTensor, axis: number, bits: number): Float32Array {
  const groups = tensor.dims[axis]!;
  let stride = 1;
  for (let d = axis + 1; d < tensor.dims.length; d++) stride *= tensor.dims[d]!;
  const bounds = new Float64Array(groups);
  const { data } = tensor;
  for (let i = 0; i < data.length; i++) {
    const g = Math.floor(i / stride) % groups;
    bounds[g] = Math.max(bounds[g]!, Math.abs(data[i]!));
  }
  return Float32Array.from(bounds, (b) => symmetricStep(b, bits));
}

export function scaled(settings: Ptq4VitSettings): CandidateFamily {
  const [from, to] = settings.factorRange;
  return { kind: 'scaled', factors: factorGrid(settings.candidates, from, to) };
}

/** The input grid of a linear layer before the search. */
export function linearInput(product: LinearProduct, x: CapturedTensor, s: Ptq4VitSettings) {
  const bits = s.activationBits;
  // the image stays float, as in PTQ4ViT's configuration
  if (product.input.length === 0 || product.role === 'patch_embed') {
    return { initial: float, family: fixed };
  }
  if (product.postGelu && s.gelu === 'twin') {
    const initial: OperandGrid = {
      kind: 'twin',
      quantizer: geluTwin(bits, symmetricStep(maxOf(x.data), bits)),
    };
    return { initial, family: scaled(s) };
  }
  const initial: OperandGrid = {
    kind: 'uniform',
    bits,
    scales: Float32Array.of(symmetricStep(maxAbs(x.data), bits)),
  };
  return { initial, family: scaled(s) };
}

/** The grid of a query, key or value before the search: per head, or per tensor. */
export function headOperand(t: CapturedTensor, heads: number, s: Ptq4VitSettings) {
  const bits = s.activationBits;
  const perHead = s.perHead && t.dims.length === 4 && t.dims[1] === heads;
  const initial: OperandGrid = perHead
    ? { kind: 'uniform', bits, scales: groupSteps(t, 1, bits), groupAxis: 1 }
    : { kind: 'uniform', bits, scales: Float32Array.of(symmetricStep(maxAbs(t.data), bits)) };
  return { initial, family: scaled(s) };
}

/** The grid of a softmax output before the search, and its candidates. */
export function softmaxOperand(
  t: CapturedTensor,
  s: Ptq4VitSettings,
): { initial: OperandGrid; family: CandidateFamily } {
  const bits = s.activationBits;
  if (s.softmax === 'uniform') {
    const step = symmetricStep(maxAbs(t.data), bits);
    return { initial: { kind: 'uniform', bits, scales: Float32Array.of(step) }, family: scaled(s) };
  }
  const grids = Array.from({ length: s.softmaxSplits }, (_, k): OperandGrid => ({
    kind: 'twin',
    quantizer: softmaxTwin(bits, k),
  }));
  return { initial: grids[0]!, family: { kind: 'list', grids } };
}
