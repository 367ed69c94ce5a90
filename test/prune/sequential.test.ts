import { describe, expect, it } from 'vitest';
import { klDivergence } from '../../src/eval/metrics.js';
import { ablationScores } from '../../src/prune/ablation.js';
import { headGroup, mlpGroup, traceContext } from '../../src/prune/groups.js';
import { sequentialCompensation } from '../../src/prune/sequential.js';
import { applyPruning } from '../../src/prune/surgery.js';
import { recognizeViT } from '../../src/vit/index.js';
import { noiseInput } from '../fixtures.js';
import { tiny, tinyViT } from '../vit/tiny-models.js';
import { initializer, maxAbsDiff, replaced, run, zeroed } from './helpers.js';

const dims = [1, tiny.channels, tiny.image, tiny.image];
const size = dims.reduce((a, b) => a * b, 1);
const calibration = Array.from({ length: 40 }, (_, i) => ({
  data: noiseInput(size, 300 + i),
  dims,
}));
const probe = noiseInput(size, 11);

describe('sequential compensation', () => {
  const model = tinyViT({ qkv: 'fused', norm: 'op', pooling: 'class-token' });
  const structure = recognizeViT(model);

  it('refitting every proj and fc2 of an unpruned model gives the same outputs', async () => {
    const { updates } = await sequentialCompensation(model, structure, [], calibration, {
      refit: 'all',
      alpha: 1e-6,
    });
    expect(updates.tensors.size).toBe(4 * tiny.depth);
    const refitted = applyPruning(model, structure, [], updates).model;
    const before = await run(model, probe, dims);
    expect(maxAbsDiff(before, await run(refitted, probe, dims))).toBeLessThan(1e-3);
  });

  it('reconstructs exactly an MLP channel that copies another, in both blocks', async () => {
    // hidden channel 5 of each block copies channel 2, and a positive bias keeps both active:
    // removing it loses nothing that the fit cannot restore
    let copied = model;
    for (const b of structure.blocks) {
      const w = initializer(copied, b.mlp.fc1.weight);
      const bias = initializer(copied, b.mlp.fc1.bias!);
      for (let i = 0; i < tiny.width; i++) w[i * tiny.mlp + 5] = w[i * tiny.mlp + 2]!;
      bias[2] = 1;
      bias[5] = 1;
      copied = replaced(replaced(copied, b.mlp.fc1.weight, w), b.mlp.fc1.bias!, bias);
    }
    const keep = Array.from({ length: tiny.mlp }, (_, c) => c).filter((c) => c !== 5);
    const selections = structure.blocks.map((b) => ({ group: mlpGroup(b), keep }));
    const { updates } = await sequentialCompensation(copied, structure, selections, calibration, {
      alpha: 1e-6,
    });
    const pruned = applyPruning(copied, structure, selections, updates).model;
    const plain = applyPruning(copied, structure, selections).model;
    const before = await run(copied, probe, dims);
    expect(maxAbsDiff(before, await run(pruned, probe, dims))).toBeLessThan(1e-3);
    expect(maxAbsDiff(before, await run(plain, probe, dims))).toBeGreaterThan(1e-2);
  });
});

describe('ablation scores', () => {
  it('are the mean output KL of the model with that head zeroed in its proj', async () => {
    const model = tinyViT({ qkv: 'separate', norm: 'op', pooling: 'class-token' });
    const structure = recognizeViT(model);
    const group = headGroup(traceContext(model), structure.blocks[1]!);
    const images = calibration.slice(0, 4);
    const scores = (await ablationScores(model, [group], images)).get(group.name)!;
    const proj = structure.blocks[1]!.attention.proj;
    for (let h = 0; h < tiny.heads; h++) {
      const rows = Array.from({ length: tiny.headDim }, (_, j) => h * tiny.headDim + j);
      const masked = zeroed(model, proj.weight, 0, rows);
      let kl = 0;
      for (const image of images) {
        const p = await run(model, image.data, dims);
        const q = await run(masked, image.data, dims);
        kl += klDivergence(p, q, tiny.classes, 0);
      }
      expect(scores[h]).toBeCloseTo(kl / images.length, 5);
      expect(scores[h]).toBeGreaterThan(0);
    }
  });
});
