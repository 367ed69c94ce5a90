/** The option schemas: recipes, per-layer overrides as flags give them, and error wording. */
import { describe, expect, it } from 'vitest';
import { parseOptions, quantizeOptionsSchema } from '../src/options.js';

const parse = (value: object) => parseOptions(quantizeOptionsSchema, value, 'quantize options');

describe('quantize options', () => {
  it('expands a simulated recipe into the method that measured best', () => {
    const o = parse({ recipe: 'w4a4', calib: 'calib' });
    expect(o.recipe).toBeUndefined();
    expect([o.bits, o.method, o.weights]).toEqual(['w4a4', 'repq', 'erq']);
    const d = parse({ recipe: 'w8a8', calib: 'calib' });
    expect([d.recipe, d.bits, d.method]).toEqual(['w8a8', undefined, 'baseline']);
  });

  it('reads overrides written as flags and as objects', () => {
    const o = parse({
      bits: 'w4a4',
      overrides: [
        'blocks.*.mlp.fc2=a8',
        'head=w8a6,observer:mse',
        { select: 'blocks.0', weightBits: 6 },
      ],
    });
    expect(o.overrides).toEqual([
      { select: 'blocks.*.mlp.fc2', activationBits: 8 },
      { select: 'head', weightBits: 8, activationBits: 6, observer: 'mse' },
      { select: 'blocks.0', weightBits: 6 },
    ]);
  });

  it('names the flag of a bad value, not the key', () => {
    expect(() => parse({ bits: 'w4a4', calibCount: 0 })).toThrow(/--calib-count/);
    expect(() => parse({ bits: 'w4a4', overrides: ['head=w9'] })).toThrow(/--override/);
    expect(() => parse({ recipe: 'w8a8', weights: 'gptq' })).toThrow(/--weights.*--method repq/);
  });
});
