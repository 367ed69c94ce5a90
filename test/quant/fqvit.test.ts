/**
 * FQ-ViT on the MNIST ViT and the ViT-Tiny graphs: the power-of-two factors recomputed here
 * by brute force from the captured LayerNorm inputs, accuracy at W8A8, and both opsets.
 */
import type { ModelProto } from 'onnx-buf';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadModel } from '../../src/onnx/model-io.js';
import { quantizeFqVit, type FqVitResult } from '../../src/quant/methods/fqvit.js';
import { capture } from '../../src/runtime/capture.js';
import { recognizeViT } from '../../src/vit/index.js';
import type { ViTStructure } from '../../src/vit/types.js';
import { imagenetVal, mnistDir, vitMnist, vitTiny } from '../fixtures.js';
import {
  agreement,
  fixtureImages,
  holdBatches,
  labelsOf,
  predictions,
  type HeldBatch,
} from './helpers.js';

describe('FQ-ViT on the MNIST ViT', () => {
  let model: ModelProto;
  let structure: ViTStructure;
  let calib: HeldBatch[];
  let w8a8: FqVitResult;

  beforeAll(async () => {
    model = await loadModel(vitMnist);
    structure = recognizeViT(model);
    // calibration digits 1000–1031, never the evaluated ones
    calib = await holdBatches(await fixtureImages(vitMnist, mnistDir, 1000, 32), 16);
    w8a8 = await quantizeFqVit(model, structure, calib, {
      weightBits: 8,
      activationBits: 8,
      threads: 2,
    });
  });

  it('chooses each channel factor 2^α with the least squared error, as a direct search does', async () => {
    const norm = structure.blocks[1]!.norm1;
    const values: Float32Array[] = [];
    await capture(model, [norm.input], calib, (tensors) => {
      values.push((tensors.get(norm.input)!.data as Float32Array).slice());
    });
    const channels = structure.counts.width;
    let min = 0;
    let max = 0;
    for (const v of values) {
      for (const x of v) {
        min = Math.min(min, x);
        max = Math.max(max, x);
      }
    }
    // 8 bits: s8 = (max − min) / 255, zero point round(−min / s8), base step s8 / 8
    const s8 = (max - min) / 255;
    const zeroPoint = Math.round(-min / s8);
    const factors = [0, 0, 0, 0];
    for (let c = 0; c < channels; c++) {
      const errors = [0, 1, 2, 3].map((a) => {
        const step = (s8 / 8) * 2 ** a;
        let e = 0;
        for (const v of values) {
          for (let i = c; i < v.length; i += channels) {
            const code = Math.min(255, Math.max(0, Math.round(v[i]! / step) + zeroPoint));
            e += ((code - zeroPoint) * step - v[i]!) ** 2;
          }
        }
        return e;
      });
      factors[errors.indexOf(Math.min(...errors))]!++;
    }
    const report = w8a8.report.ptf.find((p) => p.value === norm.input)!;
    expect(report.zeroPoint).toBe(zeroPoint);
    expect(report.baseScale).toBeCloseTo(s8 / 8, 6);
    expect(report.factors).toEqual(factors);
    expect(factors.reduce((a, b) => a + b)).toBe(channels);
  });

  it('keeps W8A8 within one point of fp32 on 500 digits and quantizes every softmax at 4 bits', async () => {
    const digits = await holdBatches(await fixtureImages(vitMnist, mnistDir, 0, 500), 250);
    const labels = labelsOf(digits);
    const fp32 = agreement(await predictions(model, digits), labels);
    const quantized = await predictions(w8a8.model, digits);
    expect(agreement(quantized, labels)).toBeGreaterThanOrEqual(fp32 - 0.01);
    expect(w8a8.report.softmax.roles).toHaveLength(structure.blocks.length);
    expect(w8a8.report.softmax.bits).toBe(4);
    // one PTF grid per distinct tensor entering a LayerNorm
    const norms = structure.blocks.flatMap((b) => [b.norm1.input, b.norm2.input]);
    if (structure.finalNorm) norms.push(structure.finalNorm.input);
    expect(w8a8.report.ptf.map((p) => p.value).sort()).toEqual([...new Set(norms)].sort());
    const logNodes = w8a8.model.graph!.node.filter((n) => n.name.includes('/fq/blocks.0.attn'));
    expect(logNodes.length).toBeGreaterThan(0);
  });
});

describe('FQ-ViT on the ViT-Tiny', () => {
  // opset 17 is measured by bench:ptq on all 500 validation images
  it('runs on the opset 13 graph and keeps most W8A8 predictions', async () => {
    const images = await holdBatches(await fixtureImages(vitTiny.opset13, imagenetVal, 0, 8), 4);
    for (const path of [vitTiny.opset13]) {
      const model = await loadModel(path);
      const structure = recognizeViT(model);
      const { model: quantized } = await quantizeFqVit(model, structure, images.slice(0, 1), {
        weightBits: 8,
        activationBits: 8,
        threads: 2,
      });
      const same = agreement(
        await predictions(quantized, images),
        await predictions(model, images),
      );
      expect(same).toBeGreaterThanOrEqual(0.75);
    }
  });
});
