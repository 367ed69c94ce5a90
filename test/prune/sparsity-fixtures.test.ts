import type { ModelProto } from 'onnx-buf';
import { beforeAll, describe, expect, it } from 'vitest';
import { GraphIndex } from '../../src/graph/graph.js';
import { validateGraph } from '../../src/graph/validate.js';
import { loadModel } from '../../src/onnx/model-io.js';
import { readFloat32 } from '../../src/onnx/tensor.js';
import { sparsifyModel, type SparsifyOptions } from '../../src/prune/sparsity.js';
import { blockLayers } from '../../src/prune/sparsity-layers.js';
import { recognizeViT, type ViTStructure } from '../../src/vit/index.js';
import { imagenetCalib, mnistDir, noiseInput, vitMnist, vitTiny } from '../fixtures.js';
import { createSession, runSingle } from '../../src/runtime/session.js';
import { heldImages, maxAbsDiff, type HeldBatch } from './helpers.js';

interface Fixture {
  name: string;
  path: string;
  calibration: [string, number[]];
  layers: string[];
}

const fixtures: Fixture[] = [
  {
    name: 'ViT-Tiny opset 17',
    path: vitTiny.opset17,
    calibration: [imagenetCalib, [0, 32, 64, 96, 128, 160, 192, 224]],
    layers: ['blocks.0', 'blocks.7.mlp'],
  },
  {
    name: 'ViT-Tiny opset 13',
    path: vitTiny.opset13,
    calibration: [imagenetCalib, [1, 33, 65, 97, 129, 161, 193, 225]],
    layers: ['blocks.11', 'blocks.2.attn'],
  },
  {
    name: 'MNIST ViT',
    path: vitMnist,
    calibration: [mnistDir, Array.from({ length: 16 }, (_, i) => 5000 + i)],
    layers: ['blocks'],
  },
];

describe.each(fixtures)('sparsity of the $name', (f) => {
  let model: ModelProto;
  let structure: ViTStructure;
  let calibration: HeldBatch[];

  beforeAll(async () => {
    model = await loadModel(f.path);
    structure = recognizeViT(model);
    calibration = await heldImages(f.path, ...f.calibration);
  });

  /** Validates, and runs a batch of 2 and its first image alone in one session. */
  async function checkRuns(sparse: ModelProto): Promise<void> {
    validateGraph(sparse);
    const sample = structure.counts.imageSize;
    const size = sample.reduce((p, d) => p * d, 1);
    const pair = noiseInput(2 * size, 3);
    const session = await createSession(sparse, { threads: 2 });
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

  it('by SparseGPT 2:4 leaves 2 zeros in every 4 inputs, a smaller gzip, and runs', async () => {
    const options: SparsifyOptions = { pattern: '2:4', method: 'sparsegpt', layers: f.layers };
    const result = await sparsifyModel(model, structure, { ...options, calibration, threads: 2 });
    const role = result.report.layers[0]!.role;
    const fc = blockLayers(structure).find((l) => l.role === role)!;
    const data = readFloat32(new GraphIndex(result.model).initializers.get(fc.weight)!);
    const { inFeatures: inF, outFeatures: outF } = fc;
    let groupsWithTwo = 0;
    for (let o = 0; o < outF; o++) {
      for (let g = 0; g < inF; g += 4) {
        let zeros = 0;
        for (let i = g; i < g + 4; i++) if (data[i * outF + o] === 0) zeros++;
        if (zeros === 2) groupsWithTwo++;
      }
    }
    expect(groupsWithTwo).toBe((inF / 4) * outF);
    expect(result.report.zeros).toBeCloseTo(0.5, 3);
    expect(result.report.size.gzipRatio).toBeLessThan(1);
    // only weight values changed: the structure map still reads the sparse model
    expect(recognizeViT(result.model).counts.macs).toBe(structure.counts.macs);
    for (const l of result.report.layers) expect(l.outputError).toBeLessThan(0.5);
    await checkRuns(result.model);
  });

  it('by Wanda 50 % unstructured zeroes half of every layer and runs', async () => {
    const options: SparsifyOptions = {
      pattern: 'unstructured',
      sparsity: 0.5,
      method: 'wanda',
      layers: f.layers,
    };
    const result = await sparsifyModel(model, structure, { ...options, calibration, threads: 2 });
    for (const l of result.report.layers) expect(l.zeros).toBeCloseTo(0.5, 3);
    await checkRuns(result.model);
  });
});
