/** Options of the float-format, AdaLog and I&S-ViT methods, and their errors naming the flag. */
import { describe, expect, it } from 'vitest';
import { fpFormats, parseOptions, quantizeOptionsSchema } from '../src/options.js';

const parse = (value: object) => parseOptions(quantizeOptionsSchema, value, 'quantize options');

describe('--method fp options', () => {
  it('takes the format of each bit width unless --fp-format names one', () => {
    expect(fpFormats('w8a8')).toEqual({ weights: 'e4m3', activations: 'e4m3' });
    expect(fpFormats('w6a6')).toEqual({ weights: 'e3m2', activations: 'e3m2' });
    expect(fpFormats('w4a8')).toEqual({ weights: 'e2m1', activations: 'e4m3' });
    const o = parse({ bits: 'w8a8', method: 'fp', fpFormat: 'E5M2' });
    expect(o.fpFormat).toEqual({ weights: 'e5m2', activations: 'e5m2' });
    const mixed = parse({ bits: 'w4a8', method: 'fp', fpFormat: 'e2m1,e4m3' });
    expect(mixed.fpFormat).toEqual({ weights: 'e2m1', activations: 'e4m3' });
  });

  it('names the flag when a format does not fit the bit width or the method', () => {
    expect(() => parse({ bits: 'w8a8', method: 'fp', fpFormat: 'e2m1' })).toThrow(
      /--fp-format: e2m1 is 4 bits but --bits w8a8 gives the weights 8/,
    );
    expect(() => parse({ bits: 'w3a3', method: 'fp' })).toThrow(/--bits: .*4, 6 and 8 bits/);
    expect(() => parse({ bits: 'w4a4', method: 'fp', fpFormat: 'e3m3' })).toThrow(
      /--fp-format: expected a format .*e4m3, e5m2, e3m2, e2m1/,
    );
    expect(() => parse({ bits: 'w4a4', method: 'repq', fpFormat: 'e2m1' })).toThrow(
      /--fp-format: .*add --method fp/,
    );
  });
});

describe('--method adalog and isvit options', () => {
  it('are simulated methods that need --bits', () => {
    expect(parse({ bits: 'w3a3', method: 'adalog' }).method).toBe('adalog');
    expect(parse({ bits: 'w4a4', method: 'isvit' }).method).toBe('isvit');
    expect(() => parse({ recipe: 'w8a8', method: 'adalog' })).toThrow(/--method: .*--bits/);
  });

  it('take GPTQ or ERQ weights, as RepQ-ViT does, and keep rtn as the default', () => {
    const erq = parse({ bits: 'w3a3', method: 'adalog', weights: 'erq' });
    expect([erq.bits, erq.method, erq.weights]).toEqual(['w3a3', 'adalog', 'erq']);
    expect(parse({ bits: 'w4a4', method: 'isvit', weights: 'gptq' }).weights).toBe('gptq');
    expect(parse({ bits: 'w4a4', method: 'adalog' }).weights).toBe('rtn');
  });

  it('refuse GPTQ or ERQ weights for a method without RepQ-ViT calibration, naming --weights', () => {
    for (const method of ['baseline', 'ptq4vit', 'fqvit', 'fp']) {
      expect(() => parse({ bits: 'w4a4', method, weights: 'erq' })).toThrow(
        /--weights: GPTQ and ERQ weights run on a RepQ-ViT calibration: add --method repq, adalog/,
      );
    }
    expect(() => parse({ bits: 'w4a4', method: 'adalog', weights: 'awq' })).toThrow(/--weights/);
  });
});
