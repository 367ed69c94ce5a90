/** The ViT structure map: what vitslim recognised in a graph, and how to read it. */
export { recognizeViT } from './structure.js';
export { describeStructure, formatCount, formatMacs, type DescribeOptions } from './describe.js';
export { countMacs, countParameters, macNodesByRole } from './counts.js';
export { linearLayers, normLayers } from './layers.js';
export type * from './types.js';
