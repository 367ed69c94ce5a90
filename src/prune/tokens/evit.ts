/**
 * EViT's token selection (arXiv 2202.07800, §3) and the single-layer pruning of arXiv
 * 2407.05941 as ONNX ops. Both keep the class token first, then the best-ranked patch tokens (in
 * rank order: the blocks after them do not depend on token order, and pooling reads index 0),
 * then one token standing for the discarded ones.
 *
 * The discarded tokens are summed through a weight vector that is zero at the kept positions:
 * ScatterElements writes the zeros, and one [1, N − 1] × [N − 1, D] product adds up the rest,
 * where gathering the complement would need a second sort.
 */
import type { SubgraphWriter } from './subgraph.js';

export interface SelectionInputs {
  /** Tokens [B, N, D] after the attention residual. */
  x: string;
  /** Attention probabilities [B, H, N, N] (softmax output) of the same block. */
  probabilities: string;
  tokens: number;
  width: number;
  /** Patch tokens kept. */
  kept: number;
}

/**
 * EViT: patch tokens ranked by the attention the class token pays them, averaged over heads;
 * with `fuse`, the others are added up weighted by that attention (not renormalised, as EViT's
 * code does).
 */
export function evitSelect(w: SubgraphWriter, inputs: SelectionInputs, fuse: boolean): string {
  const { probabilities, tokens } = inputs;
  const fromClass = w.op('Slice', [
    probabilities,
    w.ints([0, 1]),
    w.ints([1, tokens]),
    w.ints([2, 3]),
  ]);
  const score = w.reduce('ReduceMean', fromClass, [1, 2], false);
  return keepBest(w, inputs, score, fuse ? 'attention' : 'none');
}

/**
 * Single-layer pruning: the attention a patch token receives from patch queries (max over
 * heads, summed over queries, divided by its largest value in the image) plus a softmax over all
 * tokens of the value magnitude (max over heads, summed over features); the discarded tokens
 * are averaged into one. The reference code divides the attention term by its largest value in
 * the whole batch; here each image is scaled on its own, so an image's result does not depend
 * on the other images of its batch.
 */
export function singleSelect(w: SubgraphWriter, inputs: SelectionInputs, values: string): string {
  const { probabilities, tokens } = inputs;
  const patchToPatch = w.op('Slice', [
    probabilities,
    w.ints([1, 1]),
    w.ints([tokens, tokens]),
    w.ints([2, 3]),
  ]);
  const received = w.reduce(
    'ReduceSum',
    w.reduce('ReduceMax', patchToPatch, [1], false),
    [1],
    false,
  );
  const attention = w.op('Div', [received, w.reduce('ReduceMax', received, [1], true)]);
  const magnitude = w.reduce('ReduceSum', w.reduce('ReduceMax', values, [1], false), [2], false);
  const share = w.slice(w.op('Softmax', [magnitude], { axis: 1 }), 1, 1, tokens);
  return keepBest(w, inputs, w.op('Add', [attention, share]), 'mean');
}

/**
 * [class token, the `kept` best patch tokens by `score` ([B, N − 1]), one token for the rest]:
 * the rest weighted by `score`, averaged, or dropped.
 */
function keepBest(
  w: SubgraphWriter,
  inputs: SelectionInputs,
  score: string,
  rest: 'attention' | 'mean' | 'none',
): string {
  const { x, tokens, width, kept } = inputs;
  const [best, order] = w.topK(score, kept, 1, true);
  const patches = w.slice(x, 1, 1, tokens);
  const parts = [w.slice(x, 1, 0, 1), w.gatherRows(patches, w.unsqueeze(order, [2]), width)];
  if (rest !== 'none') {
    const base =
      rest === 'attention'
        ? score
        : w.op('Expand', [w.floats([1 / (tokens - 1 - kept)], [1, 1]), w.op('Shape', [score])]);
    const zeros = w.op('Sub', [best, best]);
    const weights = w.op('ScatterElements', [base, order, zeros], { axis: 1 });
    parts.push(w.op('MatMul', [w.unsqueeze(weights, [1]), patches]));
  }
  return w.op('Concat', parts, { axis: 1 });
}
