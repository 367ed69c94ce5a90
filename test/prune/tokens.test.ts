/**
 * The token-reduction subgraphs on small hand-made tensors: onnxruntime runs the ONNX ops, and
 * the expected tokens come from the methods written out plainly below (ToMe's bipartite
 * matching and size-weighted merge, EViT's selection, single-layer pruning), one image at a time.
 */
import { create } from '@bufbuild/protobuf';
import {
  GraphProtoSchema,
  ModelProtoSchema,
  OperatorSetIdProtoSchema,
  type ModelProto,
} from 'onnx-buf';
import { describe, expect, it } from 'vitest';
import { InputError } from '../../src/errors.js';
import { applyCommands, valueInfo } from '../../src/graph/commands.js';
import { GraphIndex } from '../../src/graph/graph.js';
import { DataType } from '../../src/onnx/tensor.js';
import { createSession, ort } from '../../src/runtime/session.js';
import { NameAllocator } from '../../src/prune/tensors.js';
import { evitSelect, singleSelect } from '../../src/prune/tokens/evit.js';
import { parseTokenSchedule, planTokens, scheduleLabel } from '../../src/prune/tokens/schedule.js';
import { SubgraphWriter } from '../../src/prune/tokens/subgraph.js';
import { bipartiteMatching, sizeBias, tomeMerge } from '../../src/prune/tokens/tome.js';
import { noiseInput } from '../fixtures.js';

const [B, N, D, H, DH] = [2, 9, 5, 2, 3];

/** Outputs holding token positions (int64). */
const indexOutputs = new Set(['sources', 'destinations', 'unmerged']);

type Inputs = Record<string, { dims: number[]; data: Float32Array }>;

/** A model over `inputs` whose outputs are what `build` writes, at `opset`. */
function subgraphModel(
  inputs: Inputs,
  opset: number,
  build: (w: SubgraphWriter) => Record<string, string>,
): { model: ModelProto; outputs: Record<string, string> } {
  const empty = create(ModelProtoSchema, {
    irVersion: 8n,
    opsetImport: [create(OperatorSetIdProtoSchema, { domain: '', version: BigInt(opset) })],
    graph: create(GraphProtoSchema, {
      name: 'tokens',
      input: Object.entries(inputs).map(([name, t]) => valueInfo(name, DataType.FLOAT, t.dims)),
    }),
  });
  const w = new SubgraphWriter(new NameAllocator(new GraphIndex(empty)), opset);
  const outputs = build(w);
  const exposed = Object.entries(outputs).map(([key, name]) => ({
    kind: 'addOutput' as const,
    name,
    elemType: indexOutputs.has(key) ? DataType.INT64 : DataType.FLOAT,
  }));
  return { model: applyCommands(empty, [...w.commands, ...exposed]), outputs };
}

async function runAll(model: ModelProto, inputs: Inputs, outputs: Record<string, string>) {
  const session = await createSession(model, { threads: 1 });
  try {
    const feeds = Object.fromEntries(
      Object.entries(inputs).map(([name, t]) => [name, new ort.Tensor('float32', t.data, t.dims)]),
    );
    const result = await session.run(feeds);
    return Object.fromEntries(
      Object.entries(outputs).map(([key, name]) => [
        key,
        Array.from(result[name]!.data as ArrayLike<number | bigint>, Number),
      ]),
    ) as Record<string, number[]>;
  } finally {
    await session.release();
  }
}

/** Element [i0, i1, …] of a row-major tensor of `dims`. */
const at = (data: ArrayLike<number>, dims: number[], ...index: number[]) =>
  data[index.reduce((offset, i, axis) => offset * dims[axis]! + i, 0)]!;

/** ToMe for one image, written out: matching indices, merged tokens and sizes. */
function tomeReference(inputs: Inputs, image: number, r: number) {
  const { x, keys, size } = inputs as Required<Inputs>;
  const metric = Array.from({ length: N }, (_, n) => {
    const v = Array.from({ length: DH }, (_, c) => {
      let sum = 0;
      for (let h = 0; h < H; h++) sum += at(keys!.data, keys!.dims, image, h, c, n);
      return sum / H;
    });
    const norm = Math.hypot(...v);
    return v.map((e) => e / norm);
  });
  const setA = Array.from({ length: Math.ceil(N / 2) }, (_, i) => 2 * i);
  const setB = Array.from({ length: Math.floor(N / 2) }, (_, j) => 2 * j + 1);
  const best = setA.map((a, i) => {
    const sims = setB.map((b) => metric[a]!.reduce((s, e, c) => s + e * metric[b]![c]!, 0));
    const partner = sims.indexOf(Math.max(...sims));
    return { i, partner, score: i === 0 ? -Infinity : sims[partner]! };
  });
  const ranked = [...best].sort((p, q) => q.score - p.score);
  const sources = ranked.slice(0, r).map((p) => p.i);
  const destinations = ranked.slice(0, r).map((p) => p.partner);
  const unmerged = ranked.slice(r).map((p) => p.i);
  unmerged.sort((p, q) => p - q);

  const token = (n: number) => {
    const s = at(size!.data, size!.dims, image, n, 0);
    return { sum: Array.from({ length: D }, (_, d) => s * at(x!.data, x!.dims, image, n, d)), s };
  };
  const groups = [
    ...unmerged.map((i) => [token(setA[i]!)]),
    ...setB.map((b, j) => [
      token(b),
      ...sources.filter((_, k) => destinations[k] === j).map((i) => token(setA[i]!)),
    ]),
  ];
  const sizes = groups.map((g) => g.reduce((t, m) => t + m.s, 0));
  const merged = groups.map((g, k) =>
    Array.from({ length: D }, (_, d) => g.reduce((t, m) => t + m.sum[d]!, 0) / sizes[k]!),
  );
  return { sources, destinations, unmerged, merged: merged.flat(), sizes };
}

function tokenInputs(seed: number): Inputs {
  const size = noiseInput(B * N, seed + 2).map((v) => 1 + Math.floor((v + 1) * 3));
  return {
    x: { dims: [B, N, D], data: noiseInput(B * N * D, seed) },
    keys: { dims: [B, H, DH, N], data: noiseInput(B * H * DH * N, seed + 1) },
    size: { dims: [B, N, 1], data: size },
  };
}

/** Image `image` of a [B, …] result. */
const imageOf = (values: number[], image: number) =>
  values.slice((image * values.length) / B, ((image + 1) * values.length) / B);

describe('ToMe merge subgraph', () => {
  for (const opset of [13, 18]) {
    it(`matches bipartite matching written out, image by image (opset ${opset})`, async () => {
      const inputs = tokenInputs(opset);
      const r = 3;
      const { model, outputs } = subgraphModel(inputs, opset, (w) => {
        const m = bipartiteMatching(w, 'keys', N, r);
        const merged = tomeMerge(w, { x: 'x', keys: 'keys', size: 'size', tokens: N, width: D, r });
        return { ...m, x: merged.x, size: merged.size };
      });
      const got = await runAll(model, inputs, outputs);
      for (let image = 0; image < B; image++) {
        const want = tomeReference(inputs, image, r);
        expect(imageOf(got.sources!, image)).toEqual(want.sources);
        expect(imageOf(got.destinations!, image)).toEqual(want.destinations);
        expect(imageOf(got.unmerged!, image)).toEqual(want.unmerged);
        expect(imageOf(got.size!, image)).toEqual(want.sizes);
        const x = imageOf(got.x!, image);
        want.merged.forEach((v, i) => expect(x[i]).toBeCloseTo(v, 5));
      }
    });
  }

  it('treats a missing size as 1 and never merges the class token', async () => {
    const inputs = tokenInputs(5);
    inputs.size!.data.fill(1);
    const r = 4; // ⌊(9 − 1) / 2⌋: every A token but the class token is merged
    const { model, outputs } = subgraphModel({ x: inputs.x!, keys: inputs.keys! }, 17, (w) =>
      tomeMerge(w, { x: 'x', keys: 'keys', tokens: N, width: D, r }),
    );
    const got = await runAll(model, inputs, outputs);
    for (let image = 0; image < B; image++) {
      const want = tomeReference(inputs, image, r);
      expect(imageOf(got.size!, image)).toEqual(want.sizes);
      expect(imageOf(got.x!, image).slice(0, D)).toEqual(
        Array.from(inputs.x!.data.slice(image * N * D, image * N * D + D)),
      );
    }
  });

  it('lays log sizes out as [B, 1, 1, N] attention-logit biases', async () => {
    const inputs = { size: tokenInputs(3).size! };
    const { model, outputs } = subgraphModel(inputs, 17, (w) => ({ bias: sizeBias(w, 'size', N) }));
    const got = await runAll(model, inputs, outputs);
    expect(got.bias).toHaveLength(B * N);
    got.bias!.forEach((v, i) => expect(v).toBeCloseTo(Math.log(inputs.size.data[i]!), 6));
  });
});

/** Attention probabilities [B, H, N, N]: positive rows summing to 1. */
function probabilities(seed: number): Float32Array {
  const p = noiseInput(B * H * N * N, seed).map((v) => Math.exp(2 * v));
  for (let row = 0; row < B * H * N; row++) {
    const slice = p.subarray(row * N, (row + 1) * N);
    const sum = slice.reduce((s, v) => s + v, 0);
    for (let i = 0; i < N; i++) slice[i]! /= sum;
  }
  return p;
}

const selectionInputs = (): Inputs => ({
  x: { dims: [B, N, D], data: noiseInput(B * N * D, 11) },
  probs: { dims: [B, H, N, N], data: probabilities(12) },
  values: { dims: [B, H, N, DH], data: noiseInput(B * H * N * DH, 13) },
});

/** [class token, patches `kept` in that order, Σ weight·patch over the others]. */
function assemble(inputs: Inputs, image: number, kept: number[], weight: (j: number) => number) {
  const x = (n: number, d: number) => at(inputs.x!.data, inputs.x!.dims, image, n, d);
  const rows = [0, ...kept.map((j) => j + 1)].map((n) =>
    Array.from({ length: D }, (_, d) => x(n, d)),
  );
  const rest = Array.from({ length: N - 1 }, (_, j) => j).filter((j) => !kept.includes(j));
  rows.push(
    Array.from({ length: D }, (_, d) => rest.reduce((s, j) => s + weight(j) * x(j + 1, d), 0)),
  );
  return rows.flat();
}

const byScore = (score: number[], k: number) =>
  score
    .map((s, j) => [s, j] as const)
    .sort((p, q) => q[0] - p[0])
    .slice(0, k)
    .map(([, j]) => j);

describe('token selection subgraphs', () => {
  const k = 5;

  it('EViT keeps the patches the class token attends to most and fuses the rest by attention', async () => {
    const inputs = selectionInputs();
    const { model, outputs } = subgraphModel(inputs, 17, (w) => ({
      y: evitSelect(w, { x: 'x', probabilities: 'probs', tokens: N, width: D, kept: k }, true),
    }));
    const got = await runAll(model, inputs, outputs);
    for (let image = 0; image < B; image++) {
      const p = (h: number, q: number, j: number) =>
        at(inputs.probs!.data, inputs.probs!.dims, image, h, q, j);
      const score = Array.from({ length: N - 1 }, (_, j) => (p(0, 0, j + 1) + p(1, 0, j + 1)) / H);
      const want = assemble(inputs, image, byScore(score, k), (j) => score[j]!);
      imageOf(got.y!, image).forEach((v, i) => expect(v).toBeCloseTo(want[i]!, 5));
    }
  });

  it('single-layer pruning ranks by received attention plus value magnitude and averages the rest', async () => {
    const inputs = selectionInputs();
    const { model, outputs } = subgraphModel(inputs, 13, (w) => ({
      y: singleSelect(
        w,
        { x: 'x', probabilities: 'probs', tokens: N, width: D, kept: k },
        'values',
      ),
    }));
    const got = await runAll(model, inputs, outputs);
    for (let image = 0; image < B; image++) {
      const p = (h: number, q: number, j: number) =>
        at(inputs.probs!.data, inputs.probs!.dims, image, h, q, j);
      const v = (h: number, n: number, c: number) =>
        at(inputs.values!.data, inputs.values!.dims, image, h, n, c);
      const received = Array.from({ length: N - 1 }, (_, j) => {
        let sum = 0;
        for (let q = 1; q < N; q++) sum += Math.max(p(0, q, j + 1), p(1, q, j + 1));
        return sum;
      });
      const top = Math.max(...received);
      const magnitude = Array.from({ length: N }, (_, n) => {
        let sum = 0;
        for (let c = 0; c < DH; c++) sum += Math.max(v(0, n, c), v(1, n, c));
        return Math.exp(sum);
      });
      const total = magnitude.reduce((s, m) => s + m, 0);
      const score = received.map((a, j) => a / top + magnitude[j + 1]! / total);
      const want = assemble(inputs, image, byScore(score, k), () => 1 / (N - 1 - k));
      imageOf(got.y!, image).forEach((y, i) => expect(y).toBeCloseTo(want[i]!, 5));
    }
  });
});

describe('token schedules', () => {
  it('parses the forms the CLI accepts and writes them back', () => {
    expect(parseTokenSchedule('tome:8')).toEqual({ kind: 'tome', r: 8 });
    expect(parseTokenSchedule('tome:8,4:noprop')).toEqual({
      kind: 'tome',
      r: [8, 4],
      propAttention: false,
    });
    expect(parseTokenSchedule('evit:0.7')).toEqual({ kind: 'evit', keep: 0.7, blocks: [3, 6, 9] });
    expect(parseTokenSchedule('evit:0.5@2,4:nofuse')).toEqual({
      kind: 'evit',
      keep: 0.5,
      blocks: [2, 4],
      fuse: false,
    });
    expect(parseTokenSchedule('single:60@4')).toEqual({ kind: 'single', r: 60, block: 4 });
    for (const text of ['tome:8:noprop', 'evit:0.7@3,6,9:nofuse', 'single:60@4']) {
      expect(scheduleLabel(parseTokenSchedule(text))).toBe(text);
    }
  });

  it('refuses malformed schedules, naming the forms it reads', () => {
    for (const text of ['tome', 'tome:x', 'tome:8@3', 'evit:0.7:fuse', 'single:8', 'topk:8']) {
      expect(() => parseTokenSchedule(text), text).toThrow(InputError);
    }
    expect(() => parseTokenSchedule('merge:8')).toThrow(/tome:<r>/);
  });

  it('counts the tokens of each block as the methods define them', () => {
    // ToMe caps r at ⌊(N − 1) / 2⌋: 17 → 9 → 5 → 3 → 2 → 2
    expect(planTokens({ kind: 'tome', r: 8 }, 17, 6).map((p) => p.mlp)).toEqual([9, 5, 3, 2, 2, 2]);
    // EViT keeps ⌈0.7 · 196⌉ = 138 patches and adds the fused token: 140, then 100, then 72
    const evit = planTokens({ kind: 'evit', keep: 0.7, blocks: [3, 6, 9] }, 197, 12);
    expect([evit[3]!.mlp, evit[6]!.mlp, evit[9]!.mlp, evit[11]!.mlp]).toEqual([140, 100, 72, 72]);
    expect(planTokens({ kind: 'single', r: 60, block: 4 }, 197, 12)[4]).toMatchObject({
      attention: 197,
      mlp: 137,
    });
  });

  it('refuses counts outside their intervals', () => {
    expect(() => planTokens({ kind: 'evit', keep: 0, blocks: [1] }, 17, 6)).toThrow(RangeError);
    expect(() => planTokens({ kind: 'evit', keep: 0.5, blocks: [6] }, 17, 6)).toThrow(/\[0, 5\]/);
    expect(() => planTokens({ kind: 'single', r: 15, block: 0 }, 17, 6)).toThrow(/\[0, 14\]/);
    expect(() => planTokens({ kind: 'tome', r: [1, 2] }, 17, 6)).toThrow(/6 values/);
  });
});
