/**
 * Token reduction: the public schedule, options and report types. A schedule says which method
 * removes tokens, where and how many; `reduceTokens` writes it into the graph so that the token
 * count shrinks block by block and stock onnxruntime runs fewer, smaller matrix products.
 */
import type { ModelProto } from 'onnx-buf';
import type { Reporting } from '../../log.js';

/**
 * ToMe (arXiv 2210.09461): in every block, between attention and MLP, merge `r` tokens into
 * their most similar partners by bipartite soft matching on the attention keys. `r` is one
 * count for every block or one per block. Proportional attention (the log of each token's size
 * added to the attention logits of the following blocks) is on unless `propAttention` is false.
 */
export interface TomeSchedule {
  kind: 'tome';
  r: number | readonly number[];
  propAttention?: boolean;
}

/**
 * EViT (arXiv 2202.07800): in each of `blocks` (0-based), after attention, keep the
 * ceil(keep · patches) patch tokens the class token attends to most (mean over heads) and, unless
 * `fuse` is false, add one token: the sum of the others weighted by that attention.
 */
export interface EvitSchedule {
  kind: 'evit';
  keep: number;
  blocks: readonly number[];
  fuse?: boolean;
}

/**
 * Single-layer pruning (arXiv 2407.05941): in block `block` only, remove `r` tokens. Patch
 * tokens are ranked by the attention they receive (max over heads, summed over patch queries,
 * scaled to a maximum of 1) plus a softmax over tokens of their value magnitude (max over
 * heads, summed over features); the N − r − 2 best are kept with the class token, and the
 * discarded ones are averaged into one token.
 */
export interface SingleSchedule {
  kind: 'single';
  block: number;
  r: number;
}

export type TokenSchedule = TomeSchedule | EvitSchedule | SingleSchedule;

export interface ReduceTokensOptions extends Reporting {
  /** What the model is called in error messages. */
  source?: string;
}

/** Tokens per image entering a block's attention and its MLP (class token included). */
export interface BlockTokens {
  block: number;
  attention: number;
  mlp: number;
}

export interface TokenReport {
  /** The schedule as applied, with defaults filled in and per-block counts capped. */
  schedule: TokenSchedule;
  /** The schedule written as `parseTokenSchedule` reads it. */
  label: string;
  blocks: BlockTokens[];
  tokens: { before: number; after: number };
  /**
   * Multiply-accumulates per image of every MatMul, Gemm and Conv before and after, the
   * matrix products the reduction itself adds included; `ratio` is before / after.
   */
  macs: { before: number; after: number; ratio: number };
  /** Nodes the reduction added to the graph. */
  addedNodes: number;
}

export interface ReduceTokensResult {
  model: ModelProto;
  report: TokenReport;
}
