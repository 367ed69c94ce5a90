/** Deployable exports: models onnxruntime runs with integer kernels, and the kernel count. */
export { exportQdq, qdqCalibrationValues, fastestForm, defaultActivationType } from './qdq.js';
export type { QdqOptions, QdqPolicy } from './qdq.js';
export { exportDynamic, type DynamicOptions } from './dynamic.js';
export { exportInt4, packZeroPoints, type Int4Options } from './int4.js';
export {
  gptqBlocks,
  gptqBlockLayer,
  dequantizeBlocks,
  type GptqBlockOptions,
  type GptqBlocksResult,
} from './gptq-blocks.js';
export {
  repqForDeployment,
  methodWeights,
  methodWeightBits,
  type DeployWeightMethod,
  type RepQDeployOptions,
} from './method-weights.js';
export { quantizeWeightOnGrids, type ChannelQuantizedWeight } from './weights.js';
export {
  countIntegerKernels,
  optimizedGraph,
  integerKernels,
  floatKernels,
  type KernelCount,
  type LayerKernel,
} from './kernels.js';
export { deployLayers, type LayerSource } from './layers.js';
export type {
  ActivationType,
  DeployLayerRow,
  DeployResult,
  LayerForm,
  WeightRange,
} from './types.js';
export { defaultWeightRange } from './types.js';
