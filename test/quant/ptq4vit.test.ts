import type { ModelProto } from 'onnx-buf';
import { beforeAll, describe, expect, it } from 'vitest';
import { InputError } from '../../src/errors.js';
import { GraphIndex } from '../../src/graph/graph.js';
import { loadModel } from '../../src/onnx/model-io.js';
import { quantizePtq4Vit, type Ptq4VitResult } from '../../src/quant/methods/ptq4vit.js';
import { recognizeViT } from '../../src/vit/index.js';
import type { ViTStructure } from '../../src/vit/types.js';
import { mnistDir, vitMnist } from '../fixtures.js';
import {
  agreement,
  fixtureImages,
  holdBatches,
  labelsOf,
  predictions,
  type HeldBatch,
} from './helpers.js';

describe('PTQ4ViT on the MNIST ViT', () => {
  let model: ModelProto;
  let structure: ViTStructure;
  let result: Ptq4VitResult;
  let digits: HeldBatch[];

  beforeAll(async () => {
    model = await loadModel(vitMnist);
    structure = recognizeViT(model);
    // calibrate on digits 1000–1031, evaluate on 0–499: never the same images
    const calib = await fixtureImages(vitMnist, mnistDir, 1000, 32);
    result = await quantizePtq4Vit(model, structure, calib.batches(32), {
      weightBits: 4,
      activationBits: 4,
      rounds: 2,
      threads: 2,
    });
    digits = await holdBatches(await fixtureImages(vitMnist, mnistDir, 0, 500), 250);
  });

  it('keeps W4A4 within three points of fp32 top-1 on 500 digits', async () => {
    const labels = labelsOf(digits);
    const fp32 = agreement(await predictions(model, digits), labels);
    const top1 = agreement(await predictions(result.model, digits), labels);
    expect(fp32).toBeGreaterThan(0.95);
    expect(top1).toBeGreaterThan(fp32 - 0.03);
  });

  it('quantizes as PTQ4ViT does: twin softmax and post-GELU, per-head q/k/v, image float', () => {
    const { report } = result;
    const kind = (role: string) => report.activations.find((a) => a.roles.includes(role))?.kind;
    expect(kind('blocks.0.attn.softmax')).toBe('twin-softmax');
    expect(kind('blocks.2.mlp.fc2.input')).toBe('twin-gelu');
    // the MNIST ViT's head reads the GELU of its hidden layer
    expect(kind('head.input')).toBe('twin-gelu');
    expect(kind('blocks.1.attn.query')).toBe('uniform-per-head');
    expect(kind('blocks.1.attn.value')).toBe('uniform-per-head');
    expect(kind('blocks.1.attn.qkv.input')).toBe('uniform');
    expect(kind('patch_embed.input')).toBeUndefined();
    expect(report.keptFloat.map((k) => k.role)).toEqual(['patch_embed.input']);
  });

  it('writes the chosen quantizers as fake-quant ops: Where for twin grids, Round for all', () => {
    const count = (m: ModelProto, op: string) =>
      m.graph!.node.filter((n) => n.opType === op).length;
    const added = (op: string) => count(result.model, op) - count(model, op);
    const blocks = structure.blocks.length;
    // twin chains: softmax and fc2 input in every block, and the head input
    expect(added('Where')).toBe(2 * blocks + 1);
    // two Rounds per twin chain, one per uniform chain (qkv, q, k, v, proj, fc1 per block,
    // and the hidden head layer)
    expect(added('Round')).toBe(2 * (2 * blocks + 1) + 6 * blocks + 1);
  });

  it('lowers the output distance of the layers it searches', () => {
    const { layers } = result.report;
    const improved = layers.filter((l) => l.finalScore < l.initialScore);
    expect(layers.length).toBe(1 + structure.blocks.length * 6 + 2);
    expect(improved.length).toBeGreaterThan(layers.length * 0.8);
  });

  it('bakes weights with at most 2^4 distinct values per output channel', () => {
    const index = new GraphIndex(result.model);
    const fc1 = structure.blocks[0]!.mlp.fc1;
    const values = index.constantFloat32(fc1.weight)!;
    const out = fc1.outFeatures;
    for (let o = 0; o < out; o++) {
      const column = new Set<number>();
      for (let i = 0; i < fc1.inFeatures; i++) {
        const w =
          fc1.weightLayout === 'in-out' ? values[i * out + o] : values[o * fc1.inFeatures + i];
        column.add(w!);
      }
      expect(column.size).toBeLessThanOrEqual(16);
    }
    // the grid's factors run from 0.01 to 1.2 (float32 steps: within a relative 1e-6)
    for (const w of result.report.weights) {
      expect(w.factor.min).toBeGreaterThan(0.01 * (1 - 1e-6));
      expect(w.factor.max).toBeLessThan(1.2 * (1 + 1e-6));
    }
  });

  it('refuses bad options, naming each', async () => {
    const run = (options: object) =>
      quantizePtq4Vit(model, structure, [], { weightBits: 4, activationBits: 4, ...options });
    await expect(run({ activationBits: 1 })).rejects.toThrow(/activationBits/);
    await expect(run({ metric: 'hessian' })).rejects.toThrow(InputError);
    await expect(run({ factorRange: [1.2, 0.5] })).rejects.toThrow(/factorRange/);
    await expect(run({ colour: 'red' })).rejects.toThrow(/colour/);
  });
});
