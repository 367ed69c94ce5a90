/**
 * AdaLog and I&S-ViT with GPTQ or ERQ weights on the MNIST ViT. The weight methods must see the
 * inputs as the final model quantizes them: a layer whose input quantizer AdaLog replaced gets
 * weights of its own, a layer whose input keeps RepQ-ViT's quantizer gets exactly the weights
 * RepQ-ViT with the same weight method gives.
 */
import type { ModelProto } from 'onnx-buf';
import { beforeAll, describe, expect, it } from 'vitest';
import { GraphIndex } from '../../src/graph/graph.js';
import { loadModel, serializeModel } from '../../src/onnx/model-io.js';
import {
  adaLogUniformPercentiles,
  quantizeAdaLog,
  type AdaLogResult,
} from '../../src/quant/methods/adalog-method.js';
import { quantizeIsVit } from '../../src/quant/methods/isvit.js';
import { quantizeRepQ, type RepQResult } from '../../src/quant/methods/repq.js';
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

/** A small AdaLog search, so that the test stays short. */
const quick = {
  geluRows: 16,
  attentionRows: 64,
  search: { preselect: 4, topBases: 2, scales: 8, keep: 2, steps: 2, perStep: 4 },
  threads: 2,
};

function constant(model: ModelProto, name: string): Float32Array {
  return new GraphIndex(model).constantFloat32(name)!;
}

describe('AdaLog with ERQ and GPTQ weights on the MNIST ViT', () => {
  let model: ModelProto;
  let structure: ViTStructure;
  let digits: HeldBatch[];
  const results = new Map<string, AdaLogResult | RepQResult>();
  const bits = { weightBits: 4, activationBits: 4 };

  beforeAll(async () => {
    model = await loadModel(vitMnist);
    structure = recognizeViT(model);
    const calib = await fixtureImages(vitMnist, mnistDir, 1000, 32);
    for (const weights of ['rtn', 'erq', 'gptq'] as const) {
      const options = { ...bits, ...quick, weights };
      results.set(
        `adalog-${weights}`,
        await quantizeAdaLog(model, structure, calib.batches(16), options),
      );
    }
    // RepQ-ViT calibrated as AdaLog calibrates it: its uniform candidates, the final norm folded
    const asAdaLog = { percentiles: [...adaLogUniformPercentiles], foldFinalNorm: true };
    for (const weights of ['erq', 'gptq'] as const) {
      const options = { ...bits, ...asAdaLog, threads: 2, weights };
      results.set(
        `repq-${weights}`,
        await quantizeRepQ(model, structure, calib.batches(16), options),
      );
    }
    digits = await holdBatches(await fixtureImages(vitMnist, mnistDir, 0, 500), 250);
  });

  const weightOf = (key: string, name: string) => constant(results.get(key)!.model, name);

  it('gives a byte-identical model when run again on the same images (the recipes’ method)', async () => {
    const calib = await fixtureImages(vitMnist, mnistDir, 1000, 32);
    const again = await quantizeAdaLog(model, structure, calib.batches(16), {
      ...bits,
      ...quick,
      weights: 'erq',
    });
    const first = serializeModel(results.get('adalog-erq')!.model);
    expect(Buffer.from(serializeModel(again.model)).equals(Buffer.from(first))).toBe(true);
  });

  it('reports the weight method and writes weights other than rounding to nearest', () => {
    const fc2 = structure.blocks[0]!.mlp.fc2;
    for (const method of ['erq', 'gptq'] as const) {
      const report = results.get(`adalog-${method}`)!.report;
      expect(report.weightMethod?.method).toBe(method);
      expect(weightOf(`adalog-${method}`, fc2.weight)).not.toEqual(
        weightOf('adalog-rtn', fc2.weight),
      );
    }
    expect(results.get('adalog-rtn')!.report.weightMethod).toBeUndefined();
  });

  it('solves ERQ for AdaLog’s GELU quantizer on fc2, and as RepQ-ViT+ERQ where inputs agree', () => {
    // ERQ takes its statistics in parallel on the float model: only the quantizer of a layer's
    // own input decides its weights; AdaLog replaced fc2's, not qkv's, fc1's or proj's
    for (const block of structure.blocks) {
      const { qkv, q, k, v, proj } = block.attention;
      const inputs = [qkv, q, k, v].filter((l) => l !== undefined);
      for (const layer of [...inputs, block.mlp.fc1, proj]) {
        expect(weightOf('adalog-erq', layer.weight)).toEqual(weightOf('repq-erq', layer.weight));
      }
      const fc2 = block.mlp.fc2.weight;
      expect(weightOf('adalog-erq', fc2)).not.toEqual(weightOf('repq-erq', fc2));
    }
  });

  it('runs GPTQ on the AdaLog model: the first qkv as RepQ-ViT+GPTQ, the layers after softmax not', () => {
    // GPTQ's Hessians come from the simulated model block by block: the first block's qkv reads
    // what it reads under RepQ-ViT, its proj reads AdaLog's softmax output times V
    const { qkv, q, proj: projection } = structure.blocks[0]!.attention;
    const query = (qkv ?? q)!.weight;
    const proj = projection.weight;
    expect(weightOf('adalog-gptq', query)).toEqual(weightOf('repq-gptq', query));
    expect(weightOf('adalog-gptq', proj)).not.toEqual(weightOf('repq-gptq', proj));
  });

  it('keeps W4A4 within three points of fp32 top-1 on 500 digits with either weight method', async () => {
    const labels = labelsOf(digits);
    const fp32 = agreement(await predictions(model, digits), labels);
    for (const method of ['erq', 'gptq']) {
      const top1 = agreement(
        await predictions(results.get(`adalog-${method}`)!.model, digits),
        labels,
      );
      expect(top1).toBeGreaterThan(fp32 - 0.03);
    }
  });
});

describe('I&S-ViT with ERQ weights on the MNIST ViT', () => {
  it('runs and reports ERQ', async () => {
    const model = await loadModel(vitMnist);
    const structure = recognizeViT(model);
    const calib = await fixtureImages(vitMnist, mnistDir, 1000, 16);
    const options = { weightBits: 4, activationBits: 4, threads: 2, weights: 'erq' } as const;
    const result = await quantizeIsVit(model, structure, calib.batches(16), options);
    expect(result.report.weightMethod?.method).toBe('erq');
    expect(result.report.isvit.softmax).toHaveLength(structure.blocks.length);
  });
});
