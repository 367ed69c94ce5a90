/**
 * The linear layers a deployable export rewrites. They come from the structure map (so that
 * the exports work on any exporter's graph), or from an explicit list for graphs that are not
 * whole ViTs (a single layer under test, a sub-graph).
 */
import type { ModelProto } from 'onnx-buf';
import { recognizeViT } from '../../vit/structure.js';
import { linearLayers } from '../../vit/layers.js';
import type { LinearLayer, ViTStructure } from '../../vit/types.js';

/** A structure map, or the linear layers themselves. */
export type LayerSource = ViTStructure | readonly LinearLayer[];

/**
 * The linear layers to export, in graph order: those of the structure map (recognised from
 * `model` when no source is given), or the given list.
 */
export function deployLayers(model: ModelProto, source?: LayerSource): LinearLayer[] {
  if (!source) return linearLayers(recognizeViT(model));
  if (isStructure(source)) return linearLayers(source);
  return [...source];
}

function isStructure(source: LayerSource): source is ViTStructure {
  return 'patchEmbed' in source;
}

/** Where the output-channel axis of a layer's weight lies. */
export function outputChannelAxis(layer: LinearLayer): number {
  return layer.weightLayout === 'in-out' ? 1 : 0;
}
