import type { ModelProto } from 'onnx-buf';
import { beforeAll, describe, expect, it } from 'vitest';
import { validateGraph } from '../../src/graph/validate.js';
import { loadModel } from '../../src/onnx/model-io.js';
import { factorizeModel, type FactorizeOptions } from '../../src/prune/low-rank.js';
import { countMacs } from '../../src/vit/counts.js';
import { recognizeViT, type ViTStructure } from '../../src/vit/index.js';
import { imagenetCalib, mnistDir, noiseInput, vitMnist, vitTiny } from '../fixtures.js';
import { createSession, runSingle } from '../../src/runtime/session.js';
import { heldImages, maxAbsDiff, type HeldBatch } from './helpers.js';

interface Fixture {
  name: string;
  path: string;
  calibration: [string, number[]];
  /** A few layers only: an SVD of a 768 × 192 matrix takes a second or more here. */
  layers: string[];
}

const fixtures: Fixture[] = [
  {
    name: 'ViT-Tiny opset 17',
    path: vitTiny.opset17,
    calibration: [imagenetCalib, [0, 32, 64, 96, 128, 160, 192, 224]],
    layers: ['blocks.0.mlp.fc1', 'blocks.6.attn.proj'],
  },
  {
    name: 'ViT-Tiny opset 13',
    path: vitTiny.opset13,
    calibration: [imagenetCalib, [1, 33, 65, 97, 129, 161, 193, 225]],
    layers: ['blocks.11.mlp.fc2'],
  },
  {
    name: 'MNIST ViT',
    path: vitMnist,
    calibration: [mnistDir, Array.from({ length: 16 }, (_, i) => 5000 + i)],
    layers: ['blocks.*.mlp', 'blocks.*.attn'],
  },
];

describe.each(fixtures)('low-rank factorization of the $name', (f) => {
  let model: ModelProto;
  let structure: ViTStructure;
  let calibration: HeldBatch[];
  let sample: number[];

  beforeAll(async () => {
    model = await loadModel(f.path);
    structure = recognizeViT(model);
    calibration = await heldImages(f.path, ...f.calibration);
    sample = structure.counts.imageSize;
  });

  /** Validates, and runs a batch of 2 and its first image alone in one session. */
  async function checkRuns(factored: ModelProto): Promise<void> {
    validateGraph(factored);
    const size = sample.reduce((p, d) => p * d, 1);
    const pair = noiseInput(2 * size, 3);
    const session = await createSession(factored, { threads: 2 });
    const output = session.outputNames[0]!;
    try {
      const two = (await runSingle(session, pair, [2, ...sample]))[output]!.data as Float32Array;
      const first = (await runSingle(session, pair.subarray(0, size), [1, ...sample]))[output]!
        .data as Float32Array;
      expect(two.every(Number.isFinite)).toBe(true);
      expect(maxAbsDiff(two.subarray(0, first.length), first)).toBeLessThan(1e-3);
    } finally {
      await session.release();
    }
  }

  it.each(['svd', 'whitened'] as const)(
    'by %s writes a model with fewer MACs that runs at batch 1 and 2',
    async (method) => {
      const options: FactorizeOptions = { rank: 0.5, method, layers: f.layers, threads: 2 };
      if (method === 'whitened') options.calibration = calibration;
      const { model: factored, report } = await factorizeModel(model, structure, options);
      const factoredLayers = report.layers.filter((l) => l.rank !== null);
      expect(factoredLayers.length).toBeGreaterThan(0);
      for (const l of factoredLayers) {
        expect(l.rank! % 8).toBe(0);
        expect(l.rank!).toBeLessThanOrEqual(l.breakEvenRank);
        expect(l.retainedEnergy).toBeGreaterThan(0);
        expect(l.retainedEnergy).toBeLessThan(1);
      }
      expect(report.layerParameters[1]).toBeLessThanOrEqual(0.5 * report.layerParameters[0]);
      expect(report.macs[0]).toBe(structure.counts.macs);
      expect(report.macs[1]).toBe(countMacs(factored));
      expect(report.macs[1]).toBeLessThan(report.macs[0]);
      expect(report.calibrationImages).toBe(method === 'whitened' ? f.calibration[1].length : 0);
      await checkRuns(factored);
    },
  );
});
