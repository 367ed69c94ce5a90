import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { InputError } from '../../src/errors.js';
import { resolvePreprocess } from '../../src/data/preprocess.js';

const models = join(import.meta.dirname, '..', '..', '..', 'shared', 'fixtures', 'models');
const vitTiny = join(models, 'vit_tiny_patch16_224', 'model.opset17.onnx');
const vitMnist = join(models, 'vit4mnist', 'model.opset17.onnx');

function modelInTempDir(config?: unknown): string {
  const dir = mkdtempSync(join(tmpdir(), 'vitslim-pre-'));
  if (config !== undefined) writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
  return join(dir, 'model.onnx');
}

describe('resolvePreprocess', () => {
  it("reads the ViT-Tiny's timm config: resize 248 = floor(224 / 0.9), crop 224, bicubic", async () => {
    expect(await resolvePreprocess(vitTiny)).toEqual({
      channels: 3,
      mean: [0.5, 0.5, 0.5],
      std: [0.5, 0.5, 0.5],
      resize: 248,
      crop: 224,
      interpolation: 'bicubic',
      height: 224,
      width: 224,
    });
  });

  it("reads the MNIST ViT's config: one channel 28×28, no resize or crop", async () => {
    const config = await resolvePreprocess(vitMnist);
    expect(config).toMatchObject({ channels: 1, mean: [0.1307], std: [0.3081], height: 28 });
    expect(config.resize).toBeNull();
    expect(config.crop).toBeNull();
  });

  it('puts overrides on top of the config', async () => {
    const config = await resolvePreprocess(vitTiny, { interpolation: 'bilinear', resize: 256 });
    expect(config.interpolation).toBe('bilinear');
    expect(config.resize).toBe(256);
    expect(config.crop).toBe(224);
  });

  it('refuses a model without config and overrides, naming the model and the flags', async () => {
    const model = modelInTempDir();
    const error = await resolvePreprocess(model).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InputError);
    expect((error as Error).message).toContain(model);
    for (const flag of ['--mean', '--std', '--resize', '--crop', '--interpolation']) {
      expect((error as Error).message).toContain(flag);
    }
  });

  it('builds a config from overrides alone, broadcasting a single mean and std', async () => {
    const config = await resolvePreprocess(modelInTempDir(), {
      mean: [0.5],
      std: [0.25],
      resize: 256,
      crop: 224,
    });
    expect(config).toMatchObject({ mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25] });
    expect(config).toMatchObject({ height: 224, width: 224, interpolation: 'bicubic' });
  });

  it('reports every bad override together, unknown keys included', async () => {
    const overrides = { std: [0], crop: -1, colour: 'rgb' } as unknown as object;
    const error = await resolvePreprocess(vitTiny, overrides).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InputError);
    const message = (error as Error).message;
    expect(message).toMatch(/std\.0.*colour/s);
    expect(message).toContain('--crop: expected a whole number of pixels ≥ 1, got "-1"');
  });

  it('refuses a crop larger than the resize of its own config.json, naming the file', async () => {
    // crop_pct 1.25: resize = floor(224 / 1.25) = 179, less than the 224 crop
    const model = modelInTempDir({ input_size: [3, 224, 224], crop_pct: 1.25, mean: [0.5] });
    const error = await resolvePreprocess(model, { std: [0.5] }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InputError);
    expect((error as Error).message).toBe(
      `bad preprocessing for ${join(model, '..', 'config.json')}: crop 224 is larger than the ` +
        'resized shorter side 179',
    );
  });

  it('names --crop and --resize with the value given when they do not fit the input', async () => {
    const config = join(vitTiny, '..', 'config.json');
    const message = async (overrides: object, model = vitTiny) => {
      const error = await resolvePreprocess(model, overrides).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(InputError);
      return (error as Error).message;
    };
    // the ViT-Tiny's config.json: input 224×224, crop 224 from a 248 resize
    expect(await message({ crop: 200 })).toBe(
      `--crop: expected 224 (the input of ${config} is 224×224), got "200"`,
    );
    expect(await message({ resize: 200 })).toBe(
      `--resize: expected at least the crop, 224 (from ${config}), got "200"`,
    );
    expect(await message({ crop: 224, resize: 200 })).toBe(
      '--resize: expected at least the crop, 224 (from --crop), got "200"',
    );
    // a crop that is not the input size is the one problem named, even if above the resize
    expect(await message({ crop: 300, resize: 256 })).toBe(
      `--crop: expected 224 (the input of ${config} is 224×224), got "300"`,
    );
    expect(await message({ resize: 20000 })).toBe(
      '--resize: expected at most 16384 pixels, got "20000"',
    );
    // a non-square input takes no square crop
    const wide = modelInTempDir({ input_size: [3, 224, 192], mean: [0.5], std: [0.5] });
    expect(await message({ crop: 200 }, wide)).toBe(
      `--crop: expected none (the input of ${join(wide, '..', 'config.json')} is 224×192, ` +
        'not a square), got "200"',
    );
  });

  it('names --mean and --std with the values given when their count does not fit the input', async () => {
    // the ViT-Tiny's config.json gives input_size [3, 224, 224]: one value or three
    const tiny = await resolvePreprocess(vitTiny, { mean: [0.5, 0.5] }).catch((e: unknown) => e);
    expect(tiny).toBeInstanceOf(InputError);
    expect((tiny as Error).message).toBe(
      `--mean: expected 1 value or 3 (the input of ${join(vitTiny, '..', 'config.json')} has ` +
        '3 channels), got "0.5,0.5"',
    );
    // the MNIST ViT's input_size is [1, 28, 28]: both flags are named, in one line
    const mnist = await resolvePreprocess(vitMnist, { mean: [0.1, 0.2], std: [1, 2, 3] }).catch(
      (e: unknown) => e,
    );
    expect((mnist as Error).message).toMatch(
      /^--mean: expected 1 value \(.* 1 channel\), got "0\.1,0\.2"; --std: .* got "1,2,3"$/,
    );
  });

  it('names a config.json that is not valid JSON', async () => {
    const model = modelInTempDir();
    writeFileSync(join(model, '..', 'config.json'), '{ "input_size": [3, 224');
    await expect(resolvePreprocess(model)).rejects.toThrow(/config\.json is not valid JSON/);
  });
});
