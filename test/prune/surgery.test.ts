import type { ModelProto } from 'onnx-buf';
import { beforeAll, describe, expect, it } from 'vitest';
import { validateGraph } from '../../src/graph/validate.js';
import { loadModel } from '../../src/onnx/model-io.js';
import { dependencyGroups, headDimGroup, headGroup, mlpGroup } from '../../src/prune/groups.js';
import { traceContext } from '../../src/prune/groups.js';
import { applyPruning, pruningCommands } from '../../src/prune/surgery.js';
import type { DependencyGroup, GroupSelection } from '../../src/prune/types.js';
import { recognizeViT, type ViTStructure } from '../../src/vit/index.js';
import { noiseInput, vitMnist, vitTiny } from '../fixtures.js';
import { tiny, tinyViT } from '../vit/tiny-models.js';
import { maxAbsDiff, run, zeroed } from './helpers.js';

function allBut(group: DependencyGroup, removed: readonly number[]): GroupSelection {
  const keep = Array.from({ length: group.units }, (_, u) => u).filter((u) => !removed.includes(u));
  return { group, keep };
}

function range(from: number, count: number): number[] {
  return Array.from({ length: count }, (_, i) => from + i);
}

describe.each([
  { qkv: 'fused', norm: 'op', pooling: 'class-token' },
  { qkv: 'separate', norm: 'decomposed', pooling: 'mean' },
] as const)('surgery on a tiny ViT with $qkv q/k/v', (options) => {
  const model = tinyViT(options);
  const structure = recognizeViT(model);
  const dims = [1, tiny.channels, tiny.image, tiny.image];
  const input = noiseInput(
    dims.reduce((a, b) => a * b, 1),
    3,
  );

  it('removes nothing, and changes nothing, when every unit is kept', async () => {
    const groups = dependencyGroups(model, structure);
    const selections = groups.map((group) => allBut(group, []));
    expect(pruningCommands(model, structure, selections)).toEqual([]);
    const { model: same } = applyPruning(model, structure, selections);
    expect(await run(same, input, dims)).toEqual(await run(model, input, dims));
  });

  it('gives the outputs of a copy whose fc2 row of the removed channel is zero', async () => {
    const fc2 = structure.blocks[1]!.mlp.fc2;
    const truth = zeroed(model, fc2.weight, 0, [3, 11]);
    const group = mlpGroup(structure.blocks[1]!);
    const { model: pruned, structure: after } = applyPruning(truth, structure, [
      allBut(group, [3, 11]),
    ]);
    expect(after.blocks[1]!.mlp.fc1.outFeatures).toBe(tiny.mlp - 2);
    expect(maxAbsDiff(await run(pruned, input, dims), await run(truth, input, dims))).toBeLessThan(
      1e-5,
    );
  });

  it('removes a head like zeroing its rows of the output projection', async () => {
    // head h reads proj input rows h·headDim … (h + 1)·headDim − 1 (heads merged as [H, dh])
    const block = structure.blocks[0]!;
    const truth = zeroed(model, block.attention.proj.weight, 0, range(tiny.headDim, tiny.headDim));
    const group = headGroup(traceContext(model), block);
    const { model: pruned, structure: after } = applyPruning(model, structure, [
      allBut(group, [1]),
    ]);
    expect(after.blocks[0]!.attention).toMatchObject({ heads: 1, headDim: tiny.headDim });
    expect(after.blocks[1]!.attention.heads).toBe(tiny.heads);
    expect(maxAbsDiff(await run(pruned, input, dims), await run(truth, input, dims))).toBeLessThan(
      1e-5,
    );
  });
});

/** Fixture facts from the model authors' code, not from the graph: timm packs qkv as [3][H][dh]. */
interface Fixture {
  name: string;
  path: string;
  sample: number[];
  heads: number;
  headDim: number;
  mlp: number;
}

const fixtures: Fixture[] = [
  {
    name: 'ViT-Tiny opset 17',
    path: vitTiny.opset17,
    sample: [3, 224, 224],
    heads: 3,
    headDim: 64,
    mlp: 768,
  },
  {
    name: 'ViT-Tiny opset 13',
    path: vitTiny.opset13,
    sample: [3, 224, 224],
    heads: 3,
    headDim: 64,
    mlp: 768,
  },
  { name: 'MNIST ViT', path: vitMnist, sample: [1, 28, 28], heads: 8, headDim: 8, mlp: 128 },
];

describe.each(fixtures)('surgery on the $name', (f) => {
  let model: ModelProto;
  let structure: ViTStructure;
  // two images: a shape frozen at batch 1 would fail here
  const dims = [2, ...f.sample];
  const input = noiseInput(
    dims.reduce((a, b) => a * b, 1),
    5,
  );

  beforeAll(async () => {
    model = await loadModel(f.path);
    structure = recognizeViT(model);
  });

  it('removes nothing, and changes nothing, when every unit is kept', async () => {
    const groups = dependencyGroups(model, structure);
    const selections = groups.map((group) => allBut(group, []));
    const { model: same } = applyPruning(model, structure, selections);
    expect(await run(same, input, dims)).toEqual(await run(model, input, dims));
  });

  it('removes one head of a block like zeroing that head in the output projection', async () => {
    const block = structure.blocks[1]!;
    const h = 1;
    const rows = range(h * f.headDim, f.headDim);
    const truth = zeroed(model, block.attention.proj.weight, 0, rows);
    const group = headGroup(traceContext(model), block);
    const pruned = applyPruning(model, structure, [allBut(group, [h])]);
    validateGraph(pruned.model);
    const after = pruned.structure.blocks[1]!.attention;
    expect(after).toMatchObject({ heads: f.heads - 1, headDim: f.headDim });
    // the softmax scale stays that of the original head size
    expect(after.scale?.factor).toBe(block.attention.scale?.factor);
    const diff = maxAbsDiff(await run(pruned.model, input, dims), await run(truth, input, dims));
    expect(diff).toBeLessThan(1e-4);
  });

  it('removes a head dimension like zeroing it in the queries and the projection', async () => {
    // dimension j of every head: query columns h·dh + j (first third of qkv), proj rows the same
    const block = structure.blocks[2]!;
    const j = 5;
    const columns = range(0, f.heads).map((h) => h * f.headDim + j);
    const qkv = block.attention.qkv!;
    let truth = zeroed(model, qkv.weight, 1, columns);
    if (qkv.bias) truth = zeroed(truth, qkv.bias, 0, columns);
    truth = zeroed(truth, block.attention.proj.weight, 0, columns);
    const group = headDimGroup(traceContext(model), block);
    const pruned = applyPruning(model, structure, [allBut(group, [j])]);
    expect(pruned.structure.blocks[2]!.attention).toMatchObject({
      heads: f.heads,
      headDim: f.headDim - 1,
    });
    const diff = maxAbsDiff(await run(pruned.model, input, dims), await run(truth, input, dims));
    expect(diff).toBeLessThan(1e-4);
  });

  it('prunes heads and MLP channels of every block into a graph onnxruntime runs', async () => {
    const heads = structure.blocks.map((b) => allBut(headGroup(traceContext(model), b), [0]));
    const mlp = structure.blocks.map((b) => allBut(mlpGroup(b), range(0, f.mlp / 4)));
    const pruned = applyPruning(model, structure, [...heads, ...mlp]);
    validateGraph(pruned.model);
    for (const b of pruned.structure.blocks) {
      expect([b.attention.heads, b.mlp.fc1.outFeatures]).toEqual([f.heads - 1, (f.mlp * 3) / 4]);
    }
    const out = await run(pruned.model, input, dims);
    expect(out.every(Number.isFinite)).toBe(true);
    expect(pruned.structure.counts.macs).toBeLessThan(structure.counts.macs);
  });
});
