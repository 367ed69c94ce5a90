/**
 * Token reduction on the real models: ViT-Tiny at opset 17 and 13 and the MNIST ViT (another
 * exporter's attention). The truths are the original model run by onnxruntime: a schedule that
 * removes nothing changes nothing; reducing only in the last block leaves the class token, hence
 * the logits, as they were (the MLP works token by token); a batch of two gives each image what
 * it gets alone.
 */
import type { ModelProto } from 'onnx-buf';
import { beforeAll, describe, expect, it } from 'vitest';
import { UnsupportedModelError } from '../../src/errors.js';
import { loadModel } from '../../src/onnx/model-io.js';
import {
  chooseTokenSchedule,
  parseTokenSchedule,
  reduceTokens,
} from '../../src/prune/tokens/index.js';
import type { TokenSchedule } from '../../src/prune/tokens/index.js';
import { recognizeViT, type ViTStructure } from '../../src/vit/index.js';
import { noiseInput, vitMnist, vitTiny } from '../fixtures.js';
import { tinyViT } from '../vit/tiny-models.js';
import { maxAbsDiff } from './helpers.js';
import { createSession, runSingle } from '../../src/runtime/session.js';

interface Fixture {
  name: string;
  path: string;
  /** A schedule reducing tokens in every block (ToMe) or several (EViT). */
  schedules: string[];
  finalTokens: number[];
}

const fixtures: Fixture[] = [
  {
    name: 'ViT-Tiny opset 17',
    path: vitTiny.opset17,
    schedules: ['tome:8', 'evit:0.7@3,6,9', 'single:60@4'],
    finalTokens: [101, 72, 137],
  },
  {
    name: 'ViT-Tiny opset 13',
    path: vitTiny.opset13,
    schedules: ['tome:8', 'evit:0.5@2,5:nofuse'],
    finalTokens: [101, 50],
  },
  {
    name: 'MNIST ViT',
    path: vitMnist,
    schedules: ['tome:2', 'evit:0.5@1,3', 'single:6@2'],
    finalTokens: [5, 7, 11],
  },
];

/** The same schedule moved to the last block (ToMe: r in the last block only). */
function lastBlockOnly(schedule: TokenSchedule, depth: number): TokenSchedule {
  const last = depth - 1;
  switch (schedule.kind) {
    case 'tome':
      return { ...schedule, r: Array.from({ length: depth }, (_, i) => (i === last ? 4 : 0)) };
    case 'evit':
      return { ...schedule, blocks: [last] };
    case 'single':
      return { ...schedule, block: last, r: 4 };
  }
}

for (const fixture of fixtures) {
  describe(`reduceTokens on ${fixture.name}`, () => {
    let model: ModelProto;
    let structure: ViTStructure;
    let dims: number[];
    let images: Float32Array;
    let original: Float32Array;

    beforeAll(async () => {
      model = await loadModel(fixture.path);
      structure = recognizeViT(model);
      dims = [2, ...structure.counts.imageSize];
      images = noiseInput(
        dims.reduce((a, b) => a * b, 1),
        3,
      );
      original = (await runEach(model, [[images, dims]]))[0]!;
    });

    it('changes nothing when the schedule removes nothing', async () => {
      for (const text of ['tome:0', 'evit:1@0', 'single:0@1']) {
        const { model: same, report } = reduceTokens(model, structure, parseTokenSchedule(text));
        expect(report.addedNodes, text).toBe(0);
        expect(report.macs.ratio).toBe(1);
        expect(maxAbsDiff((await runEach(same, [[images, dims]]))[0]!, original!), text).toBe(0);
      }
    });

    it('keeps the class token and the logits when only the last block reduces', async () => {
      for (const text of fixture.schedules) {
        const schedule = lastBlockOnly(parseTokenSchedule(text), structure.blocks.length);
        const { model: reduced, report } = reduceTokens(model, structure, schedule);
        expect(report.addedNodes, text).toBeGreaterThan(5);
        expect(report.tokens.after).toBeLessThan(report.tokens.before);
        const [logits] = await runEach(reduced, [[images, dims]]);
        expect(maxAbsDiff(logits!, original!), text).toBeLessThan(1e-4);
      }
    });

    it('runs at batch 1 and 2, each image getting what it gets alone', async () => {
      const one = [1, ...dims.slice(1)];
      const size = images.length / 2;
      for (const [i, text] of fixture.schedules.entries()) {
        const { model: reduced, report } = reduceTokens(model, structure, parseTokenSchedule(text));
        expect(report.tokens.after, text).toBe(fixture.finalTokens[i]);
        expect(report.macs.ratio).toBeGreaterThan(1);
        const [both, first, second] = await runEach(reduced, [
          [images, dims],
          [images.subarray(0, size), one],
          [images.subarray(size), one],
        ]);
        expect(both!.every(Number.isFinite)).toBe(true);
        const classes = both!.length / 2;
        expect(maxAbsDiff(both!.subarray(0, classes), first!), text).toBeLessThan(1e-4);
        expect(maxAbsDiff(both!.subarray(classes), second!), text).toBeLessThan(1e-4);
        expect(maxAbsDiff(both!, original!), text).toBeGreaterThan(0);
      }
    });
  });
}

/** The first output of `model` for each input, from one session. */
async function runEach(
  model: ModelProto,
  inputs: [Float32Array, number[]][],
): Promise<Float32Array[]> {
  const session = await createSession(model, { threads: 2 });
  try {
    const outputs: Float32Array[] = [];
    for (const [data, dims] of inputs) {
      const result = await runSingle(session, data, dims);
      outputs.push((result[session.outputNames[0]!]!.data as Float32Array).slice());
    }
    return outputs;
  } finally {
    await session.release();
  }
}

describe('chooseTokenSchedule on the MNIST ViT', () => {
  const quick = { rounds: 1, runs: 2, warmup: 1 };
  const schedules: TokenSchedule[] = [
    { kind: 'tome', r: 4 },
    { kind: 'tome', r: 1 },
    { kind: 'evit', keep: 0.5, blocks: [1, 3] },
  ];

  it('tries the mildest schedule first and stops at the first that reaches the target', async () => {
    const model = await loadModel(vitMnist);
    const structure = recognizeViT(model);
    const easy = await chooseTokenSchedule(model, structure, schedules, 1e-3, quick);
    expect(easy.tried).toHaveLength(1);
    expect(easy.chosen?.report.label).toBe('tome:1');
    expect(easy.chosen!.speedup).toBeGreaterThan(0);

    const impossible = await chooseTokenSchedule(model, structure, schedules, 1e3, quick);
    expect(impossible.chosen).toBeUndefined();
    const ratios = impossible.tried.map((t) => t.report.macs.ratio);
    expect(ratios).toEqual([...ratios].sort((a, b) => a - b));
    expect(impossible.tried).toHaveLength(3);
  });
});

describe('reduceTokens refuses graphs it cannot rewrite', () => {
  it('names a Reshape that holds the token count as a constant', () => {
    const model = tinyViT({ qkv: 'fused', norm: 'op', pooling: 'class-token' });
    const structure = recognizeViT(model);
    expect(() => reduceTokens(model, structure, { kind: 'tome', r: 1 })).toThrow(
      UnsupportedModelError,
    );
    expect(() => reduceTokens(model, structure, { kind: 'tome', r: 1 })).toThrow(
      /\(Reshape\): its target .* token count 5/,
    );
  });

  it('refuses a model pooled by the mean of its tokens', () => {
    const model = tinyViT({ qkv: 'separate', norm: 'op', pooling: 'mean' });
    expect(() =>
      reduceTokens(model, recognizeViT(model), { kind: 'evit', keep: 0.5, blocks: [0] }),
    ).toThrow(/class token/);
  });
});
