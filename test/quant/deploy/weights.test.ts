import { describe, expect, it } from 'vitest';
import { GraphIndex } from '../../../src/graph/graph.js';
import { quantizeWeightPerChannel } from '../../../src/quant/deploy/weights.js';
import type { WeightRange } from '../../../src/quant/deploy/types.js';
import { TinyGraph, bareMatMulLayer } from './tiny.js';

/** One output channel [0.32, −0.05, 0.1] and one all-zero channel, as W [3, 2] (in, out). */
function twoChannels() {
  const g = new TinyGraph();
  g.floats('W', [3, 2], [0.32, 0, -0.05, 0, 0.1, 0]);
  g.op('MatMul', ['x', 'W'], 'y');
  const index = new GraphIndex(g.model(['N', 3]));
  return { index, layer: bareMatMulLayer('fc', 'x', 'W', 'y', [3, 2]) };
}

describe('quantizeWeightPerChannel', () => {
  it('puts a channel on the reduced grid by default: scale max/64, codes by hand', () => {
    const { index, layer } = twoChannels();
    const w = quantizeWeightPerChannel(index, layer);
    // 0.32 / 64 = 0.005: codes 64, −0.05 / 0.005 = −10, 0.1 / 0.005 = 20
    expect(Array.from(w.scales)).toEqual([Math.fround(0.005), 1]);
    expect(Array.from(w.values)).toEqual([64, 0, -10, 0, 20, 0]);
    expect(w.axis).toBe(1);
  });

  it('puts it on the full grid when asked: scale max/127, halves rounded to nearest', () => {
    const { index, layer } = twoChannels();
    const w = quantizeWeightPerChannel(index, layer, 'full');
    // −0.05 · 127 / 0.32 = −19.84 → −20; 0.1 · 127 / 0.32 = 39.69 → 40
    expect(Array.from(w.scales)).toEqual([Math.fround(0.32 / 127), 1]);
    expect(Array.from(w.values)).toEqual([127, 0, -20, 0, 40, 0]);
  });

  it('refuses an unknown grid, listing the allowed ones', () => {
    const { index, layer } = twoChannels();
    const call = () => quantizeWeightPerChannel(index, layer, 'wide' as WeightRange);
    expect(call).toThrow(RangeError);
    expect(call).toThrow(/'reduced' or 'full', got 'wide'/);
  });
});
