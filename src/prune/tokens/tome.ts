/**
 * ToMe's bipartite soft matching and size-weighted merge (arXiv 2210.09461, §3) as ONNX ops.
 *
 * Tokens at even positions form set A (the class token, at 0, among them) and tokens at odd
 * positions set B. Each A token finds its most similar B token by cosine similarity of the
 * attention keys averaged over heads; the r A tokens with the most similar partners are merged
 * into them. The class token's similarity is set to −∞ so it is never merged. The output is the
 * unmerged A tokens in their original order, then every B token: the class token stays first.
 *
 * Merging averages tokens weighted by their size (how many patches each already stands for):
 * x ← Σ s·x / Σ s and s ← Σ s over each group. Merging x·s and s in one pass, as one tensor of
 * width D + 1, halves the gathers. The sum over the sources of each destination is a product
 * with a one-hot matrix [Nb, r]: OneHot exists from opset 11, where ScatterElements only adds
 * from opset 16, and the product is r·Nb·(D + 1) multiply-adds, noise beside the block.
 *
 * TODO: one evaluation of ToMe r = 12 on the 500 ViT-Tiny validation images gave 75.4 % top-1
 * where three others of the same graph on the same images gave 81.2 % (and r = 8 gave 81.8 %
 * once, 81.2 % twice), on a heavily loaded machine. Batch sizes 1, 25 and 50 agree within 6e-6.
 * Which op's result depends on the session's history is not known; until it is found, compare
 * ToMe accuracies over repeated evaluations.
 */
import type { SubgraphWriter } from './subgraph.js';

export interface TomeInputs {
  /** Tokens [B, N, D] after the attention residual. */
  x: string;
  /** The key operand of QKᵀ, [B, H, dh, N]. */
  keys: string;
  /** Token sizes [B, N, 1]; absent before the first merge (all 1). */
  size?: string;
  tokens: number;
  width: number;
  r: number;
}

export interface Matching {
  /** A positions merged away, [B, r, 1]. */
  sources: string;
  /** B positions each source merges into, [B, r]. */
  destinations: string;
  /** A positions kept, in increasing order, [B, Na − r, 1]. */
  unmerged: string;
}

/** The matching of `r` tokens from the keys ([B, H, dh, N]) of N tokens. */
export function bipartiteMatching(w: SubgraphWriter, keys: string, tokens: number, r: number) {
  const a = Math.ceil(tokens / 2);

  // cosine similarity of A against B on the head-averaged keys: [B, Na, Nb]
  const mean = w.reduce('ReduceMean', keys, [1], false);
  const unit = w.op('Div', [mean, w.reduce('ReduceL2', mean, [1], true)]);
  const setA = w.op('Transpose', [w.slice(unit, 2, 0, tokens, 2)], { perm: [0, 2, 1] });
  const scores = w.op('MatMul', [setA, w.slice(unit, 2, 1, tokens, 2)]);

  // best partner of each A token, the class token's score pushed to −∞
  const [best, partner] = w.topK(scores, 1, 2, true);
  const protect = new Array<number>(a).fill(0);
  protect[0] = -Infinity;
  const ranked = w.op('Add', [best, w.floats(protect, [a, 1])]);
  const [, order] = w.topK(ranked, a, 1, true);

  const sources = w.slice(order, 1, 0, r);
  const destinations = w.squeeze(w.op('GatherElements', [partner, sources], { axis: 1 }), [2]);
  const [unmerged] = w.topK(w.slice(order, 1, r, a), a - r, 1, false);
  return { sources, destinations, unmerged: unmerged! } satisfies Matching;
}

/** The merged tokens [B, N − r, D] and their sizes [B, N − r, 1]. */
export function tomeMerge(w: SubgraphWriter, inputs: TomeInputs): { x: string; size: string } {
  const { x, size, tokens, width, r } = inputs;
  const m = bipartiteMatching(w, inputs.keys, tokens, r);
  const b = Math.floor(tokens / 2);

  // [x·s, s] as one tensor of width D + 1
  const ones =
    size ?? w.op('Expand', [w.floats([1], [1, 1, 1]), w.op('Shape', [w.slice(x, 2, 0, 1)])]);
  const weighted = size ? w.op('Mul', [x, size]) : x;
  const both = w.op('Concat', [weighted, ones], { axis: 2 });
  const setA = w.slice(both, 1, 0, tokens, 2);
  const setB = w.slice(both, 1, 1, tokens, 2);

  const kept = w.gatherRows(setA, m.unmerged, width + 1);
  const moved = w.gatherRows(setA, m.sources, width + 1);
  const onehot = w.op('OneHot', [m.destinations, w.ints([b], []), w.floats([0, 1])], { axis: 1 });
  const merged = w.op('Add', [setB, w.op('MatMul', [onehot, moved])]);
  const out = w.op('Concat', [kept, merged], { axis: 1 });

  const newSize = w.slice(out, 2, width, width + 1);
  return { x: w.op('Div', [w.slice(out, 2, 0, width), newSize]), size: newSize };
}

/** log(s) of `tokens` sizes laid out to be added to attention logits [B, H, N, N]: [B, 1, 1, N]. */
export function sizeBias(w: SubgraphWriter, size: string, tokens: number): string {
  return w.op('Reshape', [w.op('Log', [size]), w.ints([-1, 1, 1, tokens])]);
}
