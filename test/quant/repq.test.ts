import type { ModelProto } from 'onnx-buf';
import { beforeAll, describe, expect, it } from 'vitest';
import { InputError } from '../../src/errors.js';
import { applyCommands } from '../../src/graph/commands.js';
import { GraphIndex } from '../../src/graph/graph.js';
import { loadModel, serializeModel } from '../../src/onnx/model-io.js';
import { readFloat32 } from '../../src/onnx/tensor.js';
import {
  calibrateRepQ,
  insertRepQQuantizers,
  quantizeRepQ,
  type RepQCalibration,
} from '../../src/quant/methods/repq.js';
import {
  foldCommands,
  planFolds,
  reparameterisation,
  type NormFold,
} from '../../src/quant/methods/repq-reparam.js';
import { NamePrefixes } from '../../src/quant/quantizer-commands.js';
import { createSession, runSingle } from '../../src/runtime/session.js';
import { recognizeViT } from '../../src/vit/index.js';
import type { ViTStructure } from '../../src/vit/types.js';
import {
  imagenetCalib,
  imagenetVal,
  mnistDir,
  noiseInput,
  vitMnist,
  vitTiny,
} from '../fixtures.js';
import {
  agreement,
  fixtureImages,
  holdBatches,
  labelsOf,
  predictions,
  type HeldBatch,
} from './helpers.js';

/** Logits of a batch at 'basic' optimisation (the float ops as written). */
async function logits(model: ModelProto, batch: HeldBatch): Promise<Float32Array> {
  const session = await createSession(model, { threads: 2, optimization: 'basic' });
  try {
    const out = await runSingle(session, batch.data, batch.dims);
    return out[session.outputNames[0]!]!.data as Float32Array;
  } finally {
    await session.release();
  }
}

function maxAbsDifference(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

function maxAbs(a: Float32Array): number {
  return a.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
}

/**
 * Every norm1/norm2 of the model folded with made-up per-channel grids: steps spread over two
 * orders of magnitude and zero points from −40 to 40, far harsher than calibration gives.
 */
function foldWithSyntheticGrids(model: ModelProto, structure: ViTStructure): ModelProto {
  const index = new GraphIndex(model);
  const names = new NamePrefixes(index);
  const folds: NormFold[] = structure.blocks.flatMap((b) => [
    { norm: b.norm1, targets: b.attention.qkv ? [b.attention.qkv] : [] },
    { norm: b.norm2, targets: [b.mlp.fc1] },
  ]);
  const commands = folds.flatMap((fold, f) => {
    const width = fold.targets[0]!.inFeatures;
    const noise = noiseInput(2 * width, f + 1);
    const grids = Array.from({ length: width }, (_, c) => ({
      scale: 0.01 * 10 ** (noise[c]! + 1),
      zeroPoint: Math.round(noise[width + c]! * 40),
    }));
    return foldCommands(index, names, fold, reparameterisation(grids, f % 2 === 0));
  });
  return applyCommands(model, commands);
}

describe('RepQ-ViT scale reparameterisation', () => {
  it('leaves the float function of the ViT-Tiny unchanged, LayerNormalization and decomposed', async () => {
    const images = await holdBatches(await fixtureImages(vitTiny.opset17, imagenetVal, 0, 4), 4);
    for (const path of [vitTiny.opset17, vitTiny.opset13]) {
      const model = await loadModel(path);
      const folded = foldWithSyntheticGrids(model, recognizeViT(model));
      const before = await logits(model, images[0]!);
      const after = await logits(folded, images[0]!);
      // float32 rounding through 12 blocks: far below the logits' spread of about ten
      expect(maxAbsDifference(before, after)).toBeLessThan(2e-3 * maxAbs(before));
      const changed = model.graph!.initializer.filter((t) => {
        const other = folded.graph!.initializer.find((u) => u.name === t.name);
        return other && readFloat32(other)[0] !== readFloat32(t)[0];
      });
      // per block: γ, β, the qkv and fc1 weights and biases
      expect(changed.length).toBe(12 * 8);
    }
  });
});

describe('RepQ-ViT with the final norm folded into the head', () => {
  it('plans the fold through the class-token pooling and leaves the logits unchanged', async () => {
    const images = await holdBatches(await fixtureImages(vitTiny.opset17, imagenetVal, 0, 4), 4);
    for (const path of [vitTiny.opset17, vitTiny.opset13]) {
      const model = await loadModel(path);
      const structure = recognizeViT(model);
      const index = new GraphIndex(model);
      const headInput = structure.head.input;
      expect(planFolds(index, structure, new Set([headInput])).folds.size).toBe(0);
      const { folds, norms } = planFolds(index, structure, new Set([headInput]), true);
      expect(norms.map((n) => [n.role, n.reparameterised])).toEqual([
        [structure.finalNorm!.role, true],
      ]);
      const fold = folds.get(headInput)!;
      const width = structure.head.inFeatures;
      const noise = noiseInput(2 * width, 7);
      const grids = Array.from({ length: width }, (_, c) => ({
        scale: 0.01 * 10 ** (noise[c]! + 1),
        zeroPoint: Math.round(noise[width + c]! * 40),
      }));
      const names = new NamePrefixes(index);
      const commands = foldCommands(index, names, fold, reparameterisation(grids, true));
      const folded = applyCommands(model, commands);
      const before = await logits(model, images[0]!);
      const after = await logits(folded, images[0]!);
      expect(maxAbsDifference(before, after)).toBeLessThan(2e-3 * maxAbs(before));
      expect(after).not.toEqual(before);
    }
  });
});

describe('RepQ-ViT on the MNIST ViT', () => {
  let model: ModelProto;
  let structure: ViTStructure;
  let calibration: RepQCalibration;
  let digits: HeldBatch[];
  let labels: Int32Array;

  beforeAll(async () => {
    model = await loadModel(vitMnist);
    structure = recognizeViT(model);
    // calibrate on digits 1000–1031, evaluate on 0–499: never the same images
    const calib = await fixtureImages(vitMnist, mnistDir, 1000, 32);
    calibration = await calibrateRepQ(model, structure, calib.batches(32), {
      weightBits: 4,
      activationBits: 4,
      threads: 2,
    });
    digits = await holdBatches(await fixtureImages(vitMnist, mnistDir, 0, 500), 250);
    labels = labelsOf(digits);
  });

  it('returns a reparameterised float model that computes what the original does', async () => {
    const before = await logits(model, digits[0]!);
    const after = await logits(calibration.model, digits[0]!);
    expect(maxAbsDifference(before, after)).toBeLessThan(1e-3 * maxAbs(before));
    // its qkv layers had no bias: the reparameterisation added one after each
    const adds = calibration.model.graph!.node.filter((n) => n.name.startsWith('vitslim/repq/'));
    expect(adds.length).toBe(structure.blocks.length);
  });

  it('keeps W4A4 within two points of fp32 top-1 on 500 digits', async () => {
    const { model: w4a4 } = insertRepQQuantizers(calibration);
    const fp32 = agreement(await predictions(model, digits), labels);
    const top1 = agreement(await predictions(w4a4, digits), labels);
    expect(fp32).toBeGreaterThan(0.95);
    expect(top1).toBeGreaterThan(fp32 - 0.02);
  });

  it('quantizes as RepQ-ViT does: 8-bit image, log√2 softmax, per-tensor norms after folding', () => {
    const { report } = calibration;
    const byRole = (role: string) => report.activations.find((a) => a.roles.includes(role))!;
    expect(byRole('patch_embed.input').bits).toBe(8);
    const softmax = byRole('blocks.0.attn.softmax');
    expect(softmax.kind).toBe('log');
    expect(softmax.bits).toBe(4);
    const norm = byRole('blocks.0.attn.qkv.input');
    expect(norm.kind).toBe('affine');
    expect(norm.channels?.count).toBe(64);
    expect(report.norms.every((n) => n.reparameterised)).toBe(true);
    expect(byRole('head.input').bits).toBe(4);
    expect(calibration.quantizers.weights.every((w) => w.bits === 4)).toBe(true);
  });

  it('bakes weights with at most 2^4 distinct values per output channel', () => {
    const { model: w4a4 } = insertRepQQuantizers(calibration);
    const index = new GraphIndex(w4a4);
    // the fake-quant model reads its weights from the reparameterised model's initializers
    const fc1 = calibration.structure.blocks[0]!.mlp.fc1;
    const values = index.constantFloat32(fc1.weight)!;
    for (let o = 0; o < fc1.outFeatures; o++) {
      const column = new Set<number>();
      for (let i = 0; i < fc1.inFeatures; i++) column.add(values[i * fc1.outFeatures + o]!);
      expect(column.size).toBeLessThanOrEqual(16);
    }
  });

  it('gives a byte-identical model for the same images, however they are batched', async () => {
    const calib = await fixtureImages(vitMnist, mnistDir, 1000, 16);
    const options = { weightBits: 4, activationBits: 4, threads: 2 } as const;
    const a = await quantizeRepQ(model, structure, calib.batches(16), options);
    const b = await quantizeRepQ(model, structure, calib.batches(8), options);
    expect(serializeModel(a.model)).toEqual(serializeModel(b.model));
  });

  it('keeps selected points in float and takes the softmax quantizer asked for', async () => {
    const calib = await fixtureImages(vitMnist, mnistDir, 1000, 16);
    const { report, quantizers } = await calibrateRepQ(model, structure, calib.batches(16), {
      weightBits: 6,
      activationBits: 6,
      softmax: 'uniform',
      keepFloat: ['blocks.*.mlp.fc1', 'head'],
      threads: 2,
    });
    // fc1's input is kept in float, so norm2 is not folded; norm1 still is
    expect(report.norms.map((n) => n.role)).toEqual(
      structure.blocks.map((b) => `blocks.${b.index}.norm1`),
    );
    expect(report.keptFloat.map((k) => k.role)).toContain('head.weight');
    expect(quantizers.weights.some((w) => w.role === 'head.weight')).toBe(false);
    const softmax = report.activations.find((a) => a.roles.includes('blocks.0.attn.softmax'))!;
    expect(softmax.kind).toBe('affine');
  });

  it('refuses bad options, naming each', async () => {
    const run = (options: object) =>
      calibrateRepQ(model, structure, [], { weightBits: 4, activationBits: 4, ...options });
    await expect(run({ weightBits: 9 })).rejects.toThrow(/weightBits/);
    await expect(run({ softmax: 'cubic' })).rejects.toThrow(InputError);
    await expect(run({ colour: 'red' })).rejects.toThrow(/colour/);
  });
});

describe('RepQ-ViT on the ViT-Tiny', () => {
  it('runs W6A6 (opset 17) and W4A4 (opset 13, decomposed LayerNorm) end to end', async () => {
    const calib = await fixtureImages(vitTiny.opset17, imagenetCalib, 0, 8);
    const images = await holdBatches(await fixtureImages(vitTiny.opset17, imagenetVal, 0, 32), 32);
    const results: number[] = [];
    for (const [path, bits] of [
      [vitTiny.opset17, 6],
      [vitTiny.opset13, 4],
    ] as const) {
      const model = await loadModel(path);
      const { model: q, report } = await quantizeRepQ(
        model,
        recognizeViT(model),
        calib.batches(8),
        {
          weightBits: bits,
          activationBits: bits,
          threads: 2,
        },
      );
      expect(report.norms.filter((n) => n.reparameterised).length).toBe(24);
      expect(report.calibration.images).toBe(8);
      results.push(agreement(await predictions(q, images), await predictions(model, images)));
    }
    // bench-ptq, 32 calibration images, all 500: agreement 86.4 % at W6A6, 28.6 % at W4A4
    expect(results[0]).toBeGreaterThan(0.7);
    expect(results[1]).toBeGreaterThan(0.02);
  });
});
