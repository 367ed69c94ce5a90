/** Shared vocabulary of the quantization modules. */

/** Observed range of one activation tensor (after the observer's choice of clipping). */
export interface TensorRange {
  min: number;
  max: number;
}

/** Calibrated ranges of activation tensors, keyed by the graph value name. */
export type ActivationRanges = ReadonlyMap<string, TensorRange>;

export type ObserverKind = 'minmax' | 'percentile' | 'mse' | 'omse';
