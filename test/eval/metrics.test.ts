import { describe, expect, it } from 'vitest';
import { argmax, klDivergence, median, topK } from '../../src/eval/metrics.js';

describe('classification metrics', () => {
  it('topK returns the k largest classes of a row, largest first', () => {
    const logits = Float32Array.of(0, 5, 1, 9, 3, /* row 2 */ 7, 7.5, -1, 0, 2);
    expect(topK(logits, 5, 0, 3)).toEqual([3, 1, 4]);
    expect(topK(logits, 5, 1, 2)).toEqual([1, 0]);
    expect(argmax(logits, 5, 1)).toBe(1);
  });

  it('KL of identical logits is zero and matches a hand calculation otherwise', () => {
    const a = Float32Array.of(0, 0);
    expect(klDivergence(a, a, 2, 0)).toBe(0);
    // p = softmax(ln 3, 0) = (0.75, 0.25), q = (0.5, 0.5):
    // KL = 0.75 ln 1.5 + 0.25 ln 0.5 = 0.130812...
    const p = Float32Array.of(Math.log(3), 0);
    const q = Float32Array.of(0, 0);
    expect(klDivergence(p, q, 2, 0)).toBeCloseTo(0.75 * Math.log(1.5) + 0.25 * Math.log(0.5), 6);
  });

  it('median takes the middle value, or the mean of the two middle values', () => {
    expect(median([5, 1, 3])).toBe(3);
    expect(median([4, 1, 3, 2])).toBe(2.5);
  });
});
