import { existsSync } from 'node:fs';
import { mkdtemp, readFile, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fromBinary } from '@bufbuild/protobuf';
import { ModelProtoSchema, type ModelProto } from 'onnx-buf';
import * as ort from 'onnxruntime-node';
import { describe, expect, it, vi } from 'vitest';
import { main } from '../../src/cli/main.js';
import { imagenetCalib, imagenetVal, mnistDir, vitMnist, vitTiny } from '../fixtures.js';
import { errorLines, sha256, vitslim } from './helpers.js';

const mnistCalib = 'assets/mnist-calib-256';

async function outFolder(): Promise<string> {
  return join(await mkdtemp(join(tmpdir(), 'vitslim-prune-')), 'out');
}

/** ONNX element types that count as parameters: float, float16, double, bfloat16. */
const floatTypes = new Set([1, 10, 11, 16]);

async function readOnnx(path: string): Promise<ModelProto> {
  return fromBinary(ModelProtoSchema, await readFile(path));
}

/** Float initializer elements, summed straight from the protobuf. */
function initializerElements(model: ModelProto): number {
  let total = 0;
  for (const t of model.graph!.initializer) {
    if (floatTypes.has(t.dataType)) total += t.dims.reduce((a, d) => a * Number(d), 1);
  }
  return total;
}

/** How many initializers have exactly these dims. */
function withDims(model: ModelProto, dims: readonly number[]): number {
  const key = dims.join('x');
  return model.graph!.initializer.filter((t) => t.dims.map(Number).join('x') === key).length;
}

/** Runs the model in a fresh onnxruntime session on a zero image; returns the output dims. */
async function runsOnZeros(path: string, image: readonly number[]): Promise<readonly number[]> {
  const session = await ort.InferenceSession.create(path, { intraOpNumThreads: 1 });
  try {
    const count = image.reduce((a, b) => a * b, 1);
    const input = new ort.Tensor('float32', new Float32Array(count), [1, ...image]);
    const result = await session.run({ [session.inputNames[0]!]: input });
    const output = result[session.outputNames[0]!]!;
    expect([...(output.data as Float32Array)].every(Number.isFinite)).toBe(true);
    return output.dims;
  } finally {
    await session.release();
  }
}

interface Widths {
  mlp: [number, number];
  heads: [number, number];
  headDim: [number, number];
}

interface ReportJson {
  command: string;
  input: { sha256: string };
  passes: { criterion: string; compensation: string; blocks: Widths[] }[];
  original: { parameters: number; macs: number };
  output: { parameters: number; macs: number; bytes: number };
  evaluation: {
    data: { images: number };
    accuracy: { top1: number; agreement: number; baseline: { top1: number } };
    latency?: { rows: { batch: number; ratio: number }[] };
  };
}

describe('vitslim prune', () => {
  it('prunes the MNIST ViT into a smaller model that runs, with a report that adds up', async () => {
    const before = await sha256(vitMnist);
    const out = await outFolder();
    const run = await vitslim([
      'prune',
      vitMnist,
      ...['--mlp', '0.25', '--heads', '1@[0,3]', '--head-dims', '0.25'],
      ...['--criterion', 'wanda', '--scope', 'local'],
      ...['--calib', mnistCalib, '--calib-count', '8'],
      ...['--data', mnistDir, '--limit', '200', '--latency-runs', '2', '--threads', '2'],
      ...['-q', '-o', out],
    ]);
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    expect((await readdir(out)).sort()).toEqual([
      'config.json',
      'model.onnx',
      'report.json',
      'report.md',
    ]);
    expect(await sha256(vitMnist)).toBe(before);

    const report = JSON.parse(await readFile(join(out, 'report.json'), 'utf8')) as ReportJson;
    const pruned = await readOnnx(join(out, 'model.onnx'));
    expect(report.input.sha256).toBe(before);
    expect(report.output.parameters).toBe(initializerElements(pruned));
    expect(report.original.parameters).toBe(initializerElements(await readOnnx(vitMnist)));
    expect(report.output.macs).toBeLessThan(report.original.macs);

    // the MNIST ViT: width 64, 8 heads of 8, MLP 128 (fc1 [64, 128] and fc2 [128, 64] as MatMul
    // initializers); a quarter of 128 channels is 32, a multiple of 8 already. MLP and heads go
    // in a first pass, head dimensions (8 → 6, heads this small are not rounded) in a second.
    expect(report.passes).toHaveLength(2);
    const [first, second] = [report.passes[0]!.blocks, report.passes[1]!.blocks];
    expect(first.map((b) => b.mlp)).toEqual(Array.from({ length: 6 }, () => [128, 96]));
    expect(first.map((b) => b.heads[1])).toEqual([7, 8, 8, 7, 8, 8]);
    expect(second.map((b) => b.headDim)).toEqual(Array.from({ length: 6 }, () => [8, 6]));
    expect(withDims(pruned, [64, 96])).toBe(6);
    expect(withDims(pruned, [96, 64])).toBe(6);
    expect(withDims(pruned, [64, 128])).toBe(0);
    // fused qkv [64, 3 · heads · 6] and output projection [heads · 6, 64]
    expect(withDims(pruned, [64, 3 * 7 * 6])).toBe(2);
    expect(withDims(pruned, [64, 3 * 8 * 6])).toBe(4);
    expect(withDims(pruned, [7 * 6, 64])).toBe(2);
    expect(withDims(pruned, [8 * 6, 64])).toBe(4);
    expect(report.passes[0]).toMatchObject({ criterion: 'wanda', compensation: 'ridge' });

    expect(await runsOnZeros(join(out, 'model.onnx'), [1, 28, 28])).toEqual([1, 10]);
    const e = report.evaluation;
    expect(e.data.images).toBe(200);
    expect(e.latency?.rows.map((r) => r.batch)).toEqual([1, 16]);
    // this small model loses little (measured with MLP and heads alone: −0.5 point, 99 %
    // agreement on these digits); the bounds leave room for another calibration sample
    expect(e.accuracy.top1).toBeGreaterThan(e.accuracy.baseline.top1 - 0.03);
    expect(e.accuracy.agreement).toBeGreaterThan(0.95);
    const markdown = await readFile(join(out, 'report.md'), 'utf8');
    expect(markdown).toContain('| blocks.0 | 128 → 96 | 8 → 7 | 8 → 6 |');
  });

  it('prunes the ViT-Tiny with a few calibration images and evaluates it against the input', async () => {
    const out = await outFolder();
    const run = await vitslim([
      'prune',
      vitTiny.opset17,
      ...['--heads', '1@[5]', '--calib', imagenetCalib],
      ...['--calib-count', '2', '--data', imagenetVal, '--limit', '4', '--latency-runs', '0'],
      ...['--batch', '2', '--threads', '2', '-q', '-o', out],
    ]);
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    const report = JSON.parse(await readFile(join(out, 'report.json'), 'utf8')) as ReportJson;
    const pruned = await readOnnx(join(out, 'model.onnx'));
    expect(report.output.parameters).toBe(initializerElements(pruned));

    // one head of three in block 5: its reshapes are computed by Shape/Gather/Concat chains
    const blocks = report.passes[0]!.blocks;
    expect(blocks.map((b) => b.heads[1])).toEqual([3, 3, 3, 3, 3, 2, 3, 3, 3, 3, 3, 3]);
    // fused qkv [192, 3 · heads · 64] and proj [heads · 64, 192]
    expect(withDims(pruned, [192, 3 * 3 * 64])).toBe(11);
    expect(withDims(pruned, [192, 3 * 2 * 64])).toBe(1);
    expect(withDims(pruned, [2 * 64, 192])).toBe(1);

    expect(await runsOnZeros(join(out, 'model.onnx'), [3, 224, 224])).toEqual([1, 1000]);
    expect(report.evaluation.data.images).toBe(4);
    const config = JSON.parse(await readFile(join(out, 'config.json'), 'utf8')) as {
      mean: number[];
    };
    expect(config.mean).toEqual([0.5, 0.5, 0.5]);
  });

  it('factors layers and reduces tokens after the widths, and zeroes weights alone', async () => {
    const [stacked, sparse] = [await outFolder(), await outFolder()];
    const common = ['--calib', mnistCalib, '--calib-count', '8', '--threads', '2', '-q'];
    const runs = await Promise.all([
      vitslim([
        'prune',
        vitMnist,
        ...['--mlp', '0.25', '--scope', 'local', '--rank', '0.6', '--rank-layers', 'blocks.*.mlp'],
        ...['--tokens', 'evit:0.5@2', ...common, '-o', stacked],
      ]),
      // by magnitude, which needs no calibration images
      vitslim(['prune', vitMnist, '--sparsity', '0.5', '--threads', '2', '-q', '-o', sparse]),
    ]);
    for (const run of runs) expect([run.code, run.stderr]).toEqual([0, '']);

    const report = JSON.parse(
      await readFile(join(stacked, 'report.json'), 'utf8'),
    ) as ReportJson & {
      lowRank: { layers: { role: string; rank: number | null }[] };
      tokens: { label: string; blocks: { block: number; mlp: number }[] };
    };
    const model = await readOnnx(join(stacked, 'model.onnx'));
    expect(report.output.parameters).toBe(initializerElements(model));
    // MLP 96 wide after the widths; every factored layer is a pair [in, k], [k, out]
    for (const layer of report.lowRank.layers.filter((l) => l.rank !== null)) {
      const [inF, outF] = layer.role.endsWith('fc1') ? [64, 96] : [96, 64];
      expect(withDims(model, [inF, layer.rank!]), layer.role).toBeGreaterThan(0);
      expect(withDims(model, [layer.rank!, outF]), layer.role).toBeGreaterThan(0);
    }
    expect(report.lowRank.layers.some((l) => l.rank !== null)).toBe(true);
    // EViT in block 2: 16 patches → 8 kept, with the class token and one fused token
    expect(report.tokens.label).toBe('evit:0.5@2');
    expect(report.tokens.blocks.map((b) => b.mlp)).toEqual([17, 17, 10, 10, 10, 10]);
    expect(model.graph!.node.some((n) => n.opType === 'TopK')).toBe(true);
    expect(await runsOnZeros(join(stacked, 'model.onnx'), [1, 28, 28])).toEqual([1, 10]);
    expect(report.output.macs).toBeLessThan(report.original.macs * 0.7);

    // sparsity: half of every block weight is zero in the file, nothing else changes
    const zeroed = await readOnnx(join(sparse, 'model.onnx'));
    const weights = zeroed.graph!.initializer.filter((t) => {
      const dims = t.dims.map(Number).join('x');
      return ['64x192', '64x64', '64x128', '128x64'].includes(dims);
    });
    // (the MLP head's first layer has one of these shapes too, and is not a block layer)
    const halves = weights.map((t) => {
      const raw = t.rawData;
      const values = new Float32Array(
        raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.length),
      );
      return values.filter((v) => v === 0).length / values.length;
    });
    expect(halves.filter((z) => Math.abs(z - 0.5) < 0.01)).toHaveLength(24);
    expect(halves.filter((z) => z === 0)).toHaveLength(weights.length - 24);
    expect(initializerElements(zeroed)).toBe(initializerElements(await readOnnx(vitMnist)));
    expect(await readFile(join(sparse, 'report.md'), 'utf8')).toMatch(/no speed-up/);
  });

  it('names a bad flag in one line and exits non-zero, writing nothing', async () => {
    const out = await outFolder();
    const cases: [string[], RegExp, number][] = [
      [['--mlp', '1'], /--mlp: must be in \[0, 1\)/, 1],
      [['--mlp', '-0.1'], /--mlp: must be in \[0, 1\)/, 1],
      [['--heads', '1@x'], /--heads: expected a fraction in \[0, 1\) or COUNT@BLOCKS/, 1],
      [['--head-dims', 'half'], /--head-dims/, 1],
      [['--mlp', '0.3', '--criterion', 'taylor'], /--criterion: .*wanda/, 1],
      [['--mlp', '0.3', '--scope', 'everywhere'], /--scope: .*isomorphic/, 1],
      [['--mlp', '0.3', '--compensation', 'magic'], /--compensation: .*ridge/, 1],
      [['--heads', '1@[9]'], /--heads: the model has 6 blocks/, 1],
      [['--heads', '8@2'], /--heads: cannot remove 8 heads/, 1],
      [[], /nothing to prune/, 1],
      [['--tokens', 'tome'], /--tokens: token schedule "tome"/, 1],
      [['--tokens', 'evit:0.5@9'], /--tokens: .*block/, 1],
      [['--rank', '0'], /--rank: must be in \(0, 1\]/, 1],
      [['--mlp', '0.2', '--sparsity', '0.5'], /--sparsity: sparsity is applied alone/, 1],
      [['--sparsity-pattern', '4:2'], /--sparsity-pattern: .*1 ≤ n < m/, 1],
      // a command-line usage error (commander's): an unknown flag
      [['--mlp', '0.3', '--sparsify', '0.5'], /unknown option '--sparsify'/, 2],
    ];
    for (const [flags, message, code] of cases) {
      const run = await inProcess(['prune', vitMnist, ...flags, '-o', out]);
      expect(run.code, flags.join(' ')).toBe(code);
      const lines = errorLines(run.stderr);
      // commander may add a second line to its own usage errors: "(Did you mean --sparsity?)"
      if (code === 1) expect(lines, flags.join(' ')).toHaveLength(1);
      expect(lines[0], flags.join(' ')).toMatch(message);
    }
    expect(existsSync(out)).toBe(false);
  });

  it('runs as a child process and exits 1 on a bad value', async () => {
    const run = await vitslim(['prune', vitMnist, '--mlp', '1.5', '-o', await outFolder()]);
    expect(run.code).toBe(1);
    expect(errorLines(run.stderr)).toEqual([
      'vitslim: invalid prune options: --mlp: must be in [0, 1), got "1.5"',
    ]);
  });
});

/** The CLI's `main` in this process, with what it writes to stderr (quicker than a child). */
async function inProcess(args: string[]): Promise<{ code: number; stderr: string }> {
  let stderr = '';
  const spy = vi.spyOn(process.stderr, 'write').mockImplementation((chunk) => {
    stderr += String(chunk);
    return true;
  });
  try {
    const code = await main(['node', 'vitslim', '-q', ...args]);
    return { code, stderr };
  } finally {
    spy.mockRestore();
  }
}
