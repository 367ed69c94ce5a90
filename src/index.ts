/**
 * vitslim as a library: load a ViT, recognise its structure, quantize it (deployable or
 * simulated), evaluate it. The CLI is a thin layer over these functions.
 */
export * from './errors.js';
export type { Logger, LogLevel, ProgressEvent, ProgressListener, Reporting } from './log.js';
export { createLogger, silentLogger } from './log.js';
export { loadModel, saveModel, parseModel, serializeModel, cloneModel } from './onnx/model-io.js';
export { GraphIndex } from './graph/graph.js';
export { applyCommands, type Command } from './graph/commands.js';
export { validateGraph, graphProblems } from './graph/validate.js';
export { recognizeViT, describeStructure } from './vit/index.js';
export type * from './vit/types.js';
export { openDataset, resolvePreprocess, sampleDataset, findDefaults } from './data/index.js';
export type { Dataset, Batch, PreprocessConfig } from './data/index.js';
export { calibrate, activationRanges } from './quant/calibrate.js';
export { simulateQuantization } from './quant/simulate.js';
export { exportQdq, qdqCalibrationValues } from './quant/deploy/qdq.js';
export { exportDynamic } from './quant/deploy/dynamic.js';
export { exportInt4 } from './quant/deploy/int4.js';
export { countIntegerKernels } from './quant/deploy/kernels.js';
export { createObserver } from './quant/observers.js';
export * from './quant/uniform.js';
export { openModel, type LoadedModel } from './pipeline/model.js';
export { quantizeModel, type QuantizeReport } from './pipeline/quantize.js';
export { evaluate, type EvaluationReport } from './pipeline/evaluate.js';
export { quantizeOptionsSchema, parseOptions } from './options.js';
export {
  quantizeRepQ,
  calibrateRepQ,
  insertRepQQuantizers,
  type RepQOptions,
  type RepQResult,
  type RepQReport,
} from './quant/methods/repq.js';
export {
  pruneJob,
  pruneStages,
  type PruneRequest,
  type PruneJobReport,
  type PruneJobResult,
} from './pipeline/prune.js';
export { compressModel, type CompressRequest, type CompressReport } from './pipeline/compress.js';
export { pruneOptionsSchema, parseHeadsFlag, type PruneFlags } from './options.js';
export { pruneModel, type PruneOptions, type PruneResult } from './prune/prune.js';
export { quantizePtq4Vit } from './quant/methods/ptq4vit.js';
export { quantizeFqVit } from './quant/methods/fqvit.js';
export { quantizeFloatFormat, type FloatFormatOptions } from './quant/methods/float-format.js';
export { quantizeAdaLog, type AdaLogOptions } from './quant/methods/adalog-method.js';
export { quantizeIsVit, type IsVitOptions } from './quant/methods/isvit.js';
export { gptqWeights } from './quant/methods/gptq.js';
export { erqWeights } from './quant/methods/erq.js';
export { repqForDeployment } from './quant/deploy/method-weights.js';
export { gptqBlocks } from './quant/deploy/gptq-blocks.js';
