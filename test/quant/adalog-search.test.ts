/** AdaLog's search scores, against products worked by hand. */
import { describe, expect, it } from 'vitest';
import {
  attentionSquaredError,
  outputSquaredError,
  searchSoftmaxBase,
} from '../../src/quant/methods/adalog-search.js';

describe('AdaLog search scores', () => {
  it('scores a layer output as Σ(X̂·W − Y)², each row weighted by the rows it stands for', () => {
    // X̂ = [[1, 2], [0, 1]], W = I, Y = [[1, 1], [0, 0]]: errors 1 and 1; weights 3 and 1 → 4
    const problem = {
      x: new Float32Array(4),
      rows: 2,
      inner: 2,
      weight: Float32Array.of(1, 0, 0, 1),
      outer: 2,
      reference: Float64Array.of(1, 1, 0, 0),
    };
    const xq = Float32Array.of(1, 2, 0, 1);
    expect(outputSquaredError(xq, problem)).toBe(2);
    expect(outputSquaredError(xq, { ...problem, rowWeights: Float64Array.of(3, 1) })).toBe(4);
  });

  it('scores an attention output as Σ(P̂·V̂ − P·V)² over the sampled rows', () => {
    // one row [0.5, 0.5] of head 1, whose V (n = 2, d = 1) is [2, 4]: 3 against 3.5 → 0.25
    const problem = {
      p: new Float32Array(2),
      group: Int32Array.of(1),
      values: Float32Array.of(9, 9, 2, 4),
      n: 2,
      d: 1,
      reference: Float64Array.of(3.5),
    };
    expect(attentionSquaredError(Float32Array.of(0.5, 0.5), problem)).toBe(0.25);
  });

  it('keeps s = 1 after Softmax and picks the base that represents powers of two exactly', () => {
    // P rows [1, 0, …] and [0.5, 0.25, …]: base 2 (q_b = 37) hits every level, base 2^(36/37)
    // and 2^(38/37) do not (exact levels, not the table)
    const p = Float32Array.of(1, 0, 0.5, 0.25);
    const problem = {
      p,
      group: Int32Array.of(0, 0),
      values: Float32Array.of(1, 3),
      n: 2,
      d: 1,
      reference: Float64Array.of(1, 0.5 + 0.75),
    };
    const best = searchSoftmaxBase(problem, 4, false, [36, 37, 38]);
    expect(best.quantizer).toMatchObject({ baseNumerator: 37, scale: 1 });
    expect(best.error).toBe(0);
  });
});
