/** Flat lists of the layers of a structure map, in graph order, for passes that visit them all. */
import type { LinearLayer, NormLayer, ViTStructure } from './types.js';

type MapLike = Omit<ViTStructure, 'counts'>;

/** Every linear layer: patch embedding, each block's q/k/v or qkv, proj, fc1, fc2, the head. */
export function linearLayers(structure: MapLike): LinearLayer[] {
  const layers = [structure.patchEmbed.linear];
  for (const { attention: a, mlp } of structure.blocks) {
    for (const layer of [a.qkv, a.q, a.k, a.v]) if (layer) layers.push(layer);
    layers.push(a.proj, mlp.fc1, mlp.fc2);
  }
  if (structure.preLogits) layers.push(structure.preLogits.linear);
  layers.push(structure.head);
  return layers;
}

/** Every layer norm: each block's norm1 and norm2, then the final norm if there is one. */
export function normLayers(structure: MapLike): NormLayer[] {
  const norms = structure.blocks.flatMap((block) => [block.norm1, block.norm2]);
  if (structure.finalNorm) norms.push(structure.finalNorm);
  return norms;
}
