/** Token reduction in the graph: ToMe, EViT and single-layer pruning, and schedule choice. */
export { reduceTokens } from './reduce.js';
export {
  defaultEvitBlocks,
  parseTokenSchedule,
  planTokens,
  scheduleLabel,
  type BlockPlan,
} from './schedule.js';
export { blockMacs } from './macs.js';
export type * from './types.js';
export {
  chooseTokenSchedule,
  measureTokenSchedules,
  scheduleMacRatio,
  singleCandidates,
  tomeCandidates,
  type LatencyCurveOptions,
  type ScheduleTiming,
} from './latency-curve.js';
