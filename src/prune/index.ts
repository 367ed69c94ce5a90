/** Width pruning: dependency groups, importance, selection, compensation and graph surgery. */
export { pruneModel, type PruneOptions, type PruneResult } from './prune.js';
export {
  dependencyGroups,
  embeddingGroup,
  headDimGroup,
  headGroup,
  mlpGroup,
  type GroupOptions,
} from './groups.js';
export {
  createImportance,
  lampNormalize,
  MagnitudeImportance,
  VarianceImportance,
  WandaImportance,
  type Importance,
  type ImportanceInputs,
} from './importance.js';
export { roundKept, selectInBlocks, selectUnits, type SelectionOptions } from './selection.js';
export { compensationUpdates, fitKept, type CompensationOptions } from './compensate.js';
export { channelStatistics, ChannelMoments, type StatisticsRequest } from './statistics.js';
export { ReconstructionImportance } from './reconstruction.js';
export { applyPruning, pruningCommands, type WeightUpdates } from './surgery.js';
export type * from './types.js';
export {
  applyFactorization,
  factorizeModel,
  layerSpectrum,
  type FactorizeOptions,
  type LowRankMethod,
  type LowRankReport,
  type LowRankResult,
} from './low-rank.js';
export {
  sparsifyModel,
  type SparsifyOptions,
  type SparsityMethod,
  type SparsityReport,
  type SparsityResult,
} from './sparsity.js';
export { sparseGpt, type SparseGptOptions } from './sparsegpt.js';
export {
  chooseTokenSchedule,
  measureTokenSchedules,
  parseTokenSchedule,
  reduceTokens,
  type ReduceTokensOptions,
  type ReduceTokensResult,
  type TokenReport,
  type TokenSchedule,
} from './tokens/index.js';
