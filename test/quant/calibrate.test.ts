import { describe, expect, it } from 'vitest';
import { CalibrationError } from '../../src/errors.js';
import type { ProgressEvent } from '../../src/log.js';
import { loadModel } from '../../src/onnx/model-io.js';
import { activationRanges, calibrate, defaultValues } from '../../src/quant/calibrate.js';
import { recognizeViT } from '../../src/vit/index.js';
import { mnistDir, vitMnist } from '../fixtures.js';
import { fixtureImages, holdBatches } from './helpers.js';

describe('calibrate', () => {
  it('observes every quantization point over all batches and reports progress', async () => {
    const model = await loadModel(vitMnist);
    const structure = recognizeViT(model);
    const batches = await holdBatches(await fixtureImages(vitMnist, mnistDir, 1000, 96), 32);
    const events: ProgressEvent[] = [];
    const result = await calibrate(model, structure, batches, {
      threads: 2,
      total: 96,
      onProgress: (e) => events.push(e),
    });

    expect([result.images, result.batches]).toEqual([96, 3]);
    expect([...result.statistics.keys()]).toEqual(defaultValues(structure));
    expect(events.map((e) => e.status)).toEqual(['start', 'advance', 'advance', 'advance', 'end']);
    expect(events.every((e) => e.stage === 'calibration')).toBe(true);
    expect(events[3]).toEqual({ status: 'advance', stage: 'calibration', done: 96, total: 96 });

    // the patch-embedding input is a reshape of the pixels: same extremes as the images
    let min = Infinity;
    let max = -Infinity;
    for (const b of batches)
      for (const v of b.data) [min, max] = [Math.min(min, v), Math.max(max, v)];
    const patches = result.statistics.get(structure.patchEmbed.linear.input)!;
    expect([patches.minMax.min, patches.minMax.max]).toEqual([min, max]);
    expect(patches.histogram.total).toBe(96 * 28 * 28);

    const ranges = activationRanges(result, 'minmax', { bits: 8, signed: false, symmetric: false });
    expect(ranges.get(structure.patchEmbed.linear.input)).toEqual({ min, max });
  });

  it('fails with a CalibrationError on an empty calibration set', async () => {
    const model = await loadModel(vitMnist);
    await expect(calibrate(model, recognizeViT(model), [])).rejects.toThrow(/saw no images/);
  });

  it('names the tensor when activations hold NaN', async () => {
    const model = await loadModel(vitMnist);
    const data = new Float32Array(28 * 28).fill(NaN);
    const error: unknown = await calibrate(model, recognizeViT(model), [
      { data, dims: [1, 1, 28, 28] },
    ]).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CalibrationError);
    expect((error as CalibrationError).message).toMatch(
      /NaN or infinite activations in \/Reshape_1_output_0/,
    );
  });
});
