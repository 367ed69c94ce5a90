/** LLM-FP4's pre-shifted exponent bias: the per-channel powers of two and their fold. */
import { describe, expect, it } from 'vitest';
import { floatFormats } from '../../src/quant/float-formats.js';
import {
  preShiftedWeight,
  preShiftExponents,
  searchPreShift,
} from '../../src/quant/methods/float-format-shift.js';

describe('pre-shifted exponent bias', () => {
  it('gives each channel k = clip(round(log2(ρ / s_c)), 0, 2^e − 1), as worked by hand', () => {
    // E2M1 (max 6): s = [1, 0.25, 0.0667, 0]; log2(1 / s) = [0, 2, 3.91, ∞] → [0, 2, 3, 3]
    const k = preShiftExponents(Float32Array.of(6, 1.5, 0.4, 0), floatFormats.e2m1, 1);
    expect([...k]).toEqual([0, 2, 3, 3]);
    // ρ = 0.5 clips the first channel: log2(0.5 / 1) = −1 → 0
    expect([...preShiftExponents(Float32Array.of(6, 1.5), floatFormats.e2m1, 0.5)]).toEqual([0, 1]);
  });

  it('finds the exact grid of rows whose channels differ by a power of two', () => {
    // E4M3 (max 448): channel maxima 448 and 28 = 448 / 16 → ρ = 1, k = [0, 4], no error
    const rows = Float32Array.of(448, 28, -224, 14, 0, -28);
    const choice = searchPreShift(rows, Float32Array.of(448, 28), floatFormats.e4m3, 16);
    expect(choice.rho).toBe(1);
    expect([...choice.exponents]).toEqual([0, 4]);
  });

  it('quantizes the weight after folding 2^(−k) into its input rows', () => {
    // W [in 2, out 2] = [[1, 2], [0.3, 0.5]], k = [0, 2]: folded rows [1, 2], [0.075, 0.125];
    // E2M1 scales max / 6 per output column: 1/6 and 1/3. Column 0: 0.075·6 = 0.45 → 0.5
    // → 0.5/6·4 = 1/3. Column 1: 0.125·3 = 0.375 → 0.5 (subnormal step 0.5) → 0.5/3·4 = 2/3.
    const w = Float32Array.of(1, 2, 0.3, 0.5);
    const scales = Float32Array.of(1 / 6, 1 / 3);
    const q = preShiftedWeight(w, [2, 2], 1, Int32Array.of(0, 2), scales, floatFormats.e2m1);
    const expected = [1, 2, 1 / 3, 2 / 3];
    q.forEach((v, i) => expect(v).toBeCloseTo(expected[i]!, 6));
  });
});
