/** The option schemas: recipes, per-layer overrides as flags give them, and error wording. */
import { describe, expect, it } from 'vitest';
import { optionsInEffect, parseOptions, quantizeOptionsSchema } from '../src/options.js';

const parse = (value: object) => parseOptions(quantizeOptionsSchema, value, 'quantize options');

describe('quantize options', () => {
  it('expands a simulated recipe into the method that measured best', () => {
    const o = parse({ recipe: 'w4a4', calib: 'calib' });
    expect(o.recipe).toBeUndefined();
    expect([o.bits, o.method, o.weights]).toEqual(['w4a4', 'adalog', 'erq']);
    const w6 = parse({ recipe: 'w6a6', calib: 'calib' });
    expect([w6.bits, w6.method, w6.weights]).toEqual(['w6a6', 'adalog', 'erq']);
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

  it('refuses an observer flag the run would not consult, and defaults the ones it would', () => {
    expect(() => parse({ bits: 'w4a4', method: 'repq', observer: 'minmax' })).toThrow(
      /--observer: not used by --method repq/,
    );
    expect(() => parse({ recipe: 'w4a4', percentile: 99.9 })).toThrow(/--percentile.*w4a4/);
    expect(() => parse({ recipe: 'w8a8', weightObserver: 'mse' })).toThrow(/--weight-observer/);
    expect(() => parse({ recipe: 'dynamic-int8', observer: 'mse' })).toThrow(/--observer/);
    // the w8a8 recipe takes its activation ranges from --observer
    expect(parse({ recipe: 'w8a8', observer: 'percentile', percentile: 99.9 }).observer).toBe(
      'percentile',
    );
    const plain = parse({ bits: 'w4a4' });
    expect([plain.observer, plain.weightObserver, plain.percentile]).toEqual([
      'minmax',
      'minmax',
      99.99,
    ]);
  });

  it('accepts the deployable forms of RepQ-ViT, GPTQ and ERQ', () => {
    const repq = parse({ recipe: 'w8a8', method: 'repq', weights: 'erq', weightRange: 'full' });
    expect([repq.recipe, repq.method, repq.weights, repq.weightRange]).toEqual([
      'w8a8',
      'repq',
      'erq',
      'full',
    ]);
    const int4 = parse({ recipe: 'int4-weights', weights: 'gptq' });
    expect([int4.recipe, int4.method, int4.weights]).toEqual(['int4-weights', 'baseline', 'gptq']);
  });

  it('refuses the combinations that have no deployable form, naming the flag', () => {
    const cases: [object, RegExp][] = [
      [{ recipe: 'int4-weights', method: 'repq' }, /--method: RepQ-ViT deploys with --recipe w8a8/],
      [{ recipe: 'dynamic-int8', method: 'repq' }, /--method: RepQ-ViT deploys/],
      [{ recipe: 'w8a8', method: 'ptq4vit' }, /--method: only --method repq has a deployable/],
      [{ recipe: 'int4-weights', weights: 'erq' }, /--weights: int4-weights takes --weights rtn/],
      [{ bits: 'w4a4', weightRange: 'full' }, /--weight-range: .* --bits run is simulated/],
      [{ recipe: 'w8a8', weightRange: 'wide' }, /--weight-range/],
      // int4-weights holds 4-bit blocks: no int8 kernel would read the grid
      [{ recipe: 'int4-weights', weightRange: 'full' }, /--weight-range: .* w8a8 or dynamic-int8/],
      [{ recipe: 'int4-weights', weightRange: 'reduced' }, /--weight-range: .*int4-weights/],
    ];
    for (const [options, message] of cases) expect(() => parse(options)).toThrow(message);
  });

  it('records the int8 weight grid of the recipes that store int8 weights, given or not', () => {
    const effect = (value: object) => optionsInEffect(parse(value));
    // the documented default grid of w8a8 and dynamic-int8 is the reduced one
    expect(effect({ recipe: 'w8a8', calib: 'calib' }).weightRange).toBe('reduced');
    expect(effect({ recipe: 'dynamic-int8' }).weightRange).toBe('reduced');
    expect(effect({ recipe: 'dynamic-int8', weightRange: 'full' }).weightRange).toBe('full');
    // int4-weights stores 4-bit blocks; a simulated run has no int8 grid to record
    expect(effect({ recipe: 'int4-weights' })).not.toHaveProperty('weightRange');
    expect(effect({ bits: 'w8a8' })).not.toHaveProperty('weightRange');
    // what is recorded parses back to the same options
    const recorded = effect({ recipe: 'w8a8', calib: 'calib' });
    expect(parse(recorded)).toEqual({
      ...parse({ recipe: 'w8a8', calib: 'calib' }),
      weightRange: 'reduced',
    });
  });
});
