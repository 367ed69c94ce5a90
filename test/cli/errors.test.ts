import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readFile, readdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { makeNode } from '../../src/graph/attributes.js';
import { valueInfo } from '../../src/graph/commands.js';
import { create, fromBinary } from '@bufbuild/protobuf';
import { GraphProtoSchema, ModelProtoSchema, OperatorSetIdProtoSchema } from 'onnx-buf';
import { serializeModel } from '../../src/onnx/model-io.js';
import { floatTensor } from '../../src/onnx/tensor.js';
import { imagenetCalib, imagenetVal, vitMnist, vitTiny } from '../fixtures.js';
import { errorLines, sha256, vitslim } from './helpers.js';

const mnistCalib = 'assets/mnist-calib-256';

/** A valid ONNX model that is not a ViT: one MatMul. */
function perceptron(): Uint8Array {
  const graph = create(GraphProtoSchema, {
    name: 'mlp',
    node: [makeNode({ name: 'mm', opType: 'MatMul', inputs: ['x', 'w'], outputs: ['y'] })],
    initializer: [floatTensor('w', [4, 2], new Float32Array(8).fill(0.5))],
    input: [valueInfo('x', 1, [1, 4])],
    output: [valueInfo('y', 1, [1, 2])],
  });
  const model = create(ModelProtoSchema, {
    irVersion: 8n,
    opsetImport: [create(OperatorSetIdProtoSchema, { domain: '', version: 17n })],
    graph,
  });
  return serializeModel(model);
}

async function workdir() {
  return mkdtemp(join(tmpdir(), 'vitslim-cli-'));
}

describe('the CLI on bad input', () => {
  it('names a truncated model file in one line, exits non-zero and writes nothing', async () => {
    const dir = await workdir();
    const model = join(dir, 'truncated.onnx');
    await writeFile(model, (await readFile(vitMnist)).subarray(0, 4096));
    const out = join(dir, 'out');
    const run = await vitslim(['quantize', model, '--recipe', 'dynamic-int8', '-o', out]);
    expect(run.code).not.toBe(0);
    const lines = errorLines(run.stderr);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain(model);
    expect(existsSync(out)).toBe(false);
  });

  it('refuses a graph that is not a ViT, saying what was not found', async () => {
    const dir = await workdir();
    const model = join(dir, 'mlp.onnx');
    await writeFile(model, perceptron());
    const run = await vitslim(['inspect', model]);
    expect(run.code).toBe(3);
    const lines = errorLines(run.stderr);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain(model);
    expect(lines[0]).toMatch(/patch|block|found/i);
  });

  it('says plainly that a quantized model is already quantized, naming a quantized node', async () => {
    const dir = await workdir();
    const out = join(dir, 'int8');
    const quantize = ['quantize', vitMnist, '--recipe', 'dynamic-int8', '-q', '-o', out];
    expect((await vitslim(quantize)).code).toBe(0);
    const model = join(out, 'model.onnx');
    const run = await vitslim(['inspect', model]);
    expect(run.code).toBe(3);
    const lines = errorLines(run.stderr);
    expect(lines).toHaveLength(1);
    const match =
      /^vitslim: (.*): the model is already quantized: .* such as (\w+) \(node (.+?)\);/.exec(
        lines[0]!,
      );
    expect(match?.[1]).toBe(model);
    expect(lines[0]).not.toMatch(/tracing stopped/);
    // the node named is in the file, with that op type, read by the protobuf decoder alone
    const proto = fromBinary(ModelProtoSchema, await readFile(model));
    const node = proto.graph?.node.find((n) => n.name === match?.[3]);
    expect(node?.opType).toBe(match?.[2]);
    expect(node?.opType).toBe('DynamicQuantizeLinear');
  });

  it('names a missing calibration folder and an empty one, with --calib, leaving no output', async () => {
    const dir = await workdir();
    const empty = join(dir, 'empty');
    await mkdir(empty);
    for (const calib of [join(dir, 'missing'), empty]) {
      const out = join(dir, 'out');
      const run = await vitslim([
        'quantize',
        vitMnist,
        '--bits',
        'w8a8',
        '--calib',
        calib,
        '-o',
        out,
      ]);
      expect(run.code).toBe(1);
      const lines = errorLines(run.stderr);
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(/^vitslim: --calib: /);
      expect(lines[0]).toContain(calib);
      expect(existsSync(out)).toBe(false);
    }
    // the evaluation folder is named by its own flag
    const data = join(dir, 'no-such-data');
    const run = await vitslim(['eval', vitMnist, '--data', data, '--latency-runs', '0']);
    expect(run.code).toBe(1);
    expect(errorLines(run.stderr)).toEqual([`vitslim: --data: dataset folder not found: ${data}`]);
  });

  it('refuses a missing or empty --data folder before calibrating or pruning', async () => {
    const dir = await workdir();
    const missing = join(dir, 'missing');
    const empty = join(dir, 'empty');
    await mkdir(empty);
    const calib = ['--calib', mnistCalib];
    const noImages =
      `vitslim: --data: no images in ${empty}: expected image files, <class>/ subfolders of ` +
      'images, or MNIST *-images-idx3-ubyte files';
    for (const args of [
      ['quantize', vitMnist, '--recipe', 'w8a8', ...calib],
      ['prune', vitMnist, '--mlp', '0.25', ...calib],
      ['compress', vitMnist, '--mlp', '0.25', '--recipe', 'w8a8', ...calib],
    ]) {
      for (const [data, message] of [
        [missing, `vitslim: --data: dataset folder not found: ${missing}`],
        [empty, noImages],
      ] as const) {
        const out = join(dir, `${args[0]!}-out`);
        const run = await vitslim([...args, '--data', data, '-o', out]);
        expect(run.code).toBe(1);
        // the message of eval's own check, and nothing logged before it (no calibration ran)
        expect(errorLines(run.stderr)).toEqual([message]);
        expect(existsSync(out)).toBe(false);
      }
    }
  });

  it('skips a corrupt image with a warning, and fails on it with --strict', async () => {
    const dir = await workdir();
    const calib = join(dir, 'calib');
    await mkdir(calib);
    const names = (await readdir(imagenetCalib)).sort().slice(0, 3);
    for (const name of names) await copyFile(join(imagenetCalib, name), join(calib, name));
    const broken = join(calib, 'broken.JPEG');
    await writeFile(broken, (await readFile(join(imagenetCalib, names[0]!))).subarray(0, 300));
    const model = join(dir, 'model.onnx');
    const fixture = join(imagenetCalib, '..', '..', 'models', 'vit_tiny_patch16_224');
    await copyFile(join(fixture, 'model.opset17.onnx'), model);
    await copyFile(join(fixture, 'config.json'), join(dir, 'config.json'));
    const args = ['quantize', model, '--bits', 'w8a8', '--calib', calib, '--calib-count', '4'];
    const lenient = await vitslim([...args, '-o', join(dir, 'lenient')]);
    expect(lenient.code).toBe(0);
    expect(lenient.stderr).toContain('broken.JPEG');
    const strict = await vitslim([...args, '--strict', '-o', join(dir, 'strict')]);
    expect(strict.code).toBe(1);
    expect(errorLines(strict.stderr).join('\n')).toContain('broken.JPEG');
    expect(existsSync(join(dir, 'strict'))).toBe(false);
  });

  it('refuses an existing output folder without --force and never modifies the input', async () => {
    const dir = await workdir();
    const before = await sha256(vitMnist);
    const out = join(dir, 'out');
    await mkdir(out);
    await writeFile(join(out, 'keep.txt'), 'mine');
    const args = ['quantize', vitMnist, '--bits', 'w4a4', '--calib', mnistCalib, '-o', out];
    const refused = await vitslim(args);
    expect(refused.code).toBe(1);
    expect(errorLines(refused.stderr)[0]).toMatch(/--force/);
    expect(await readFile(join(out, 'keep.txt'), 'utf8')).toBe('mine');
    const forced = await vitslim([...args, '--force']);
    expect(forced.code).toBe(0);
    expect((await readdir(out)).sort()).toEqual([
      'config.json',
      'model.onnx',
      'report.json',
      'report.md',
    ]);
    expect(await sha256(vitMnist)).toBe(before);
  });

  it('reports bad option values with the option name and the allowed values', async () => {
    const dir = await workdir();
    const run = await vitslim(['quantize', vitMnist, '--bits', 'w9a4', '-o', join(dir, 'o')]);
    expect(run.code).toBe(1);
    expect(errorLines(run.stderr)[0]).toMatch(/bits.*WxAy/);
    const both = await vitslim(['quantize', vitMnist, '-o', join(dir, 'o')]);
    expect(errorLines(both.stderr)[0]).toMatch(/--recipe.*--bits/);
    const out = ['-o', join(dir, 'o')];
    const method = await vitslim([
      'quantize',
      vitMnist,
      '--recipe',
      'w8a8',
      '--method',
      'ptq4vit',
      ...out,
    ]);
    // PTQ4ViT's twin grids have no integer kernel: only simulated, with --bits
    expect(errorLines(method.stderr)[0]).toMatch(/--method.*--bits/);
    const count = await vitslim([
      'quantize',
      vitMnist,
      '--bits',
      'w8a8',
      '--calib-count',
      '0',
      ...out,
    ]);
    expect(errorLines(count.stderr)[0]).toMatch(/--calib-count/);
    const gptq = await vitslim([
      'quantize',
      vitMnist,
      '--bits',
      'w4a4',
      '--weights',
      'gptq',
      ...out,
    ]);
    expect(errorLines(gptq.stderr)[0]).toMatch(/--weights.*--method repq/);
    const override = ['--bits', 'w4a4', '--override', 'head=x8', ...out];
    const bad = await vitslim(['quantize', vitMnist, ...override]);
    expect(errorLines(bad.stderr)[0]).toMatch(/--override.*"head=x8".*"x8"/);
  });

  it('names a malformed number flag, what it expects and the value given, in one line', async () => {
    const dir = await workdir();
    const out = join(dir, 'o');
    const quantize = ['quantize', vitMnist, '--recipe', 'dynamic-int8', '-o', out];
    const cases: [string[], RegExp][] = [
      [[...quantize, '--threads', 'abc'], /--threads: expected a whole number ≥ 1, got "abc"/],
      [[...quantize, '--batch', '1.5'], /--batch: expected a whole number ≥ 1, got "1.5"/],
      [[...quantize, '--calib-count', 'x'], /--calib-count: expected a whole number ≥ 1, got "x"/],
      [[...quantize, '--latency-runs', 'abc'], /--latency-runs: expected a whole number ≥ 0/],
      [[...quantize, '--percentile', 'p99'], /--percentile: expected a number, got "p99"/],
      [[...quantize, '--mean', '0.5,x'], /--mean: expected comma-separated numbers, got "0.5,x"/],
      [[...quantize, '--mean', '0.5,0.5'], /--mean: expected 1 value \(.*\), got "0.5,0.5"$/],
      [[...quantize, '--crop', '20'], /--crop: expected 28 \(.*config\.json is 28×28\), got "20"$/],
      [['eval', vitMnist, '--data', mnistCalib, '--limit', 'ten'], /--limit: .* got "ten"/],
      // a setting of an override is named as typed, not by its key in a recipe file
      [
        ['quantize', vitMnist, '--bits', 'w4a4', '--override', 'head=w9', '-o', out],
        /--override "head=w9" \(w<bits>\): expected a bit width from 2 to 8$/,
      ],
    ];
    for (const [args, message] of cases) {
      const run = await vitslim(args);
      expect(run.code).toBe(1);
      const lines = errorLines(run.stderr);
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(message);
      expect(lines[0]).not.toMatch(/NaN|Invalid input|internal error|[a-z][A-Z]/);
      expect(existsSync(out)).toBe(false);
    }
  });

  it('refuses --weight-range with --recipe int4-weights in one line naming the flag', async () => {
    const dir = await workdir();
    const out = join(dir, 'o');
    const int4 = ['--recipe', 'int4-weights', '--weight-range', 'full', '-o', out];
    for (const args of [
      ['quantize', vitMnist, ...int4],
      ['compress', vitMnist, '--mlp', '0.25', '--calib', mnistCalib, ...int4],
    ]) {
      const run = await vitslim(args);
      expect(run.code).toBe(1);
      const lines = errorLines(run.stderr);
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(/--weight-range: .*w8a8 or dynamic-int8/);
      expect(existsSync(out)).toBe(false);
    }
  });

  it('refuses a keep-float selector that matches no layer before any calibration', async () => {
    const dir = await workdir();
    const calib = ['--calib', mnistCalib];
    const keep = ['--keep-float', 'head', 'blocks.99'];
    for (const args of [
      ['quantize', vitMnist, '--bits', 'w8a8', ...calib, ...keep],
      ['compress', vitMnist, '--mlp', '0.25', '--recipe', 'w8a8', ...calib, ...keep],
    ]) {
      const out = join(dir, args[0]!);
      const run = await vitslim([...args, '-o', out]);
      expect(run.code).toBe(1);
      // one line, naming the selector; no calibration or pruning was logged before it
      const lines = errorLines(run.stderr);
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(/selector "blocks\.99" matches no/);
      expect(existsSync(out)).toBe(false);
    }
  });

  it('names the labels file when a label is not one of the model classes', async () => {
    const dir = await workdir();
    const data = join(dir, 'flat');
    await mkdir(data);
    const synset = (await readdir(imagenetVal)).sort()[0]!;
    const image = (await readdir(join(imagenetVal, synset))).sort()[0]!;
    await copyFile(join(imagenetVal, synset, image), join(data, image));
    // ViT-Tiny has 1000 classes: index 1500 names none of them
    const labels = join(data, 'labels.txt');
    await writeFile(labels, `${image}\t1500\n`);
    const run = await vitslim(['eval', vitTiny.opset17, '--data', data, '--latency-runs', '0']);
    expect(run.code).toBe(1);
    const lines = errorLines(run.stderr);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain(labels);
    expect(lines[0]).toContain(image);
    expect(lines[0]).toMatch(/1500.*1000 classes/);
  });
});

describe('the CLI on good input', () => {
  it('warns once when --calib-count is more than the calibration folder holds', async () => {
    const dir = await workdir();
    const out = join(dir, 'out');
    const args = ['--bits', 'w8a8', '--calib', mnistCalib, '--calib-count', '300'];
    const run = await vitslim(['quantize', vitMnist, ...args, '-o', out]);
    expect(run.code).toBe(0);
    const warnings = errorLines(run.stderr).filter((l) => l.startsWith('warn'));
    expect(warnings).toHaveLength(1);
    // the folder holds the 256 digits of one MNIST file
    expect(warnings[0]).toContain(resolve(mnistCalib));
    expect(warnings[0]).toMatch(/300 .* all 256/);
    const report = JSON.parse(await readFile(join(out, 'report.json'), 'utf8')) as {
      calibration: { images: number };
    };
    expect(report.calibration.images).toBe(256);
  });

  it('warns once that a folder without labels gives no top-1 or top-5', async () => {
    // the calibration images are a flat folder with no labels file
    const args = ['--data', imagenetCalib, '--limit', '4', '--latency-runs', '0'];
    const run = await vitslim(['eval', vitTiny.opset17, ...args]);
    expect(run.code).toBe(0);
    const warnings = errorLines(run.stderr).filter((l) => l.startsWith('warn'));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain(`no labels found in ${imagenetCalib}`);
    expect(warnings[0]).toMatch(/top-1 and top-5 not measured/);
    expect(run.stdout).toMatch(/\| top-1 \| – \|/);
  });

  it('warns once about a folder without labels, also when compress evaluates twice', async () => {
    // MNIST digits without their labels file
    const dir = await workdir();
    const data = join(dir, 'digits');
    await mkdir(data);
    const images = 't10k-images-idx3-ubyte.gz';
    await copyFile(join(mnistCalib, images), join(data, images));
    const out = join(dir, 'out');
    const evaluation = ['--data', data, '--latency-runs', '0'];
    const compress = ['--mlp', '0.25', '--recipe', 'dynamic-int8', '--eval-pruned', '-o', out];
    for (const args of [
      ['eval', vitMnist, ...evaluation],
      ['compress', vitMnist, ...compress, ...evaluation],
    ]) {
      const run = await vitslim(args);
      expect(run.code).toBe(0);
      const warnings = errorLines(run.stderr).filter((l) => l.startsWith('warn'));
      expect(warnings).toEqual([expect.stringContaining(`no labels found in ${data}: top-1`)]);
    }
    // both models of compress were evaluated: the quantized one and the pruned float one
    const report = JSON.parse(await readFile(join(out, 'report.json'), 'utf8')) as {
      evaluation: { accuracy: { images: number } };
      pruned: { evaluation: { accuracy: { images: number } } };
    };
    expect(report.evaluation.accuracy.images).toBe(256);
    expect(report.pruned.evaluation.accuracy.images).toBe(256);
  });

  it('reports pruning calibration only when pruning read calibration images', async () => {
    const dir = await workdir();
    const common = ['--recipe', 'w8a8', '--calib', mnistCalib, '--calib-count', '16', '-q'];
    const read = async (out: string) => ({
      json: JSON.parse(await readFile(join(out, 'report.json'), 'utf8')) as {
        prune: { calibration?: { images: number } };
        quantize: { calibration: { images: number } };
      },
      md: await readFile(join(out, 'report.md'), 'utf8'),
    });
    // token merging is computed inside the graph at run time: it reads no image
    const tokens = join(dir, 'tokens');
    const merged = ['compress', vitMnist, '--tokens', 'tome:2', ...common, '-o', tokens];
    expect((await vitslim(merged)).code).toBe(0);
    const t = await read(tokens);
    expect(t.json.prune).not.toHaveProperty('calibration');
    expect(t.md).not.toMatch(/Pruning calibration/);
    expect(t.json.quantize.calibration.images).toBe(16);
    // MLP pruning ranks the hidden units on the calibration images
    const mlp = join(dir, 'mlp');
    expect(
      (await vitslim(['compress', vitMnist, '--mlp', '0.25', ...common, '-o', mlp])).code,
    ).toBe(0);
    const m = await read(mlp);
    expect(m.json.prune.calibration?.images).toBe(16);
    expect(m.md).toContain(`Pruning calibration: 16 images of \`${resolve(mnistCalib)}\``);
  });

  it('records the int8 weight grid in both reports, and the recorded options give the same model', async () => {
    const dir = await workdir();
    const first = join(dir, 'default');
    const calib = ['--calib', mnistCalib, '--calib-count', '16', '-q'];
    const w8a8 = ['quantize', vitMnist, '--recipe', 'w8a8', ...calib];
    expect((await vitslim([...w8a8, '-o', first])).code).toBe(0);
    const json = JSON.parse(await readFile(join(first, 'report.json'), 'utf8')) as {
      options: Record<string, unknown>;
    };
    // --weight-range was not given: the model holds the default, reduced grid
    expect(json.options.weightRange).toBe('reduced');
    const md = await readFile(join(first, 'report.md'), 'utf8');
    expect(md).toContain(
      'Int8 weights on the reduced grid (`--weight-range reduced`, the default)',
    );
    const recipe = join(dir, 'recipe.json');
    await writeFile(recipe, JSON.stringify(json.options));
    const again = join(dir, 'again');
    const rerun = ['quantize', vitMnist, '--config', recipe, '-q', '-o', again];
    expect((await vitslim(rerun)).code).toBe(0);
    expect(await sha256(join(again, 'model.onnx'))).toBe(await sha256(join(first, 'model.onnx')));
    // a grid given on the command line is recorded as given
    const full = join(dir, 'full');
    const dynamic = ['quantize', vitMnist, '--recipe', 'dynamic-int8', '--weight-range', 'full'];
    expect((await vitslim([...dynamic, '-q', '-o', full])).code).toBe(0);
    expect(await readFile(join(full, 'report.md'), 'utf8')).toContain(
      'Int8 weights on the full grid (`--weight-range full`):',
    );
  });

  it('prints nothing with -q, and the closing "wrote" line without it', async () => {
    const dir = await workdir();
    const args = ['quantize', vitMnist, '--recipe', 'dynamic-int8'];
    const quiet = await vitslim(['-q', ...args, '-o', join(dir, 'quiet')]);
    expect(quiet.code).toBe(0);
    expect(quiet.stdout).toBe('');
    expect(errorLines(quiet.stderr)).toEqual([]);
    expect(existsSync(join(dir, 'quiet', 'model.onnx'))).toBe(true);
    const loud = await vitslim([...args, '-o', join(dir, 'loud')]);
    expect(loud.code).toBe(0);
    expect(loud.stdout).toMatch(/^wrote .*loud\/model\.onnx/);
  });

  it('reports the observer a method used, in report.json as in report.md', async () => {
    const dir = await workdir();
    const calib = ['--calib', mnistCalib, '--calib-count', '16', '-q'];
    interface Report {
      options: Record<string, unknown>;
      calibration: { observer: string };
    }
    const read = async (out: string) => ({
      json: JSON.parse(await readFile(join(out, 'report.json'), 'utf8')) as Report,
      md: await readFile(join(out, 'report.md'), 'utf8'),
    });
    // simulated RepQ-ViT sets its own quantizers: --observer and its siblings are not consulted
    const simulated = join(dir, 'simulated');
    const args = ['quantize', vitMnist, '--bits', 'w4a4', '--method', 'repq', ...calib];
    expect((await vitslim([...args, '-o', simulated])).code).toBe(0);
    const s = await read(simulated);
    expect(s.json.calibration.observer).toBe('percentile-mse');
    expect(s.md).toContain('observer percentile-mse,');
    for (const key of ['observer', 'weightObserver', 'percentile']) {
      expect(s.json.options).not.toHaveProperty(key);
    }
    // the recorded options still reproduce the model
    const recipe = join(dir, 'recipe.json');
    await writeFile(recipe, JSON.stringify(s.json.options));
    const again = join(dir, 'again');
    const rerun = ['quantize', vitMnist, '--config', recipe, '-q', '-o', again];
    expect((await vitslim(rerun)).code).toBe(0);
    expect(await sha256(join(again, 'model.onnx'))).toBe(
      await sha256(join(simulated, 'model.onnx')),
    );
    // deployed, the w8a8 forms take their activation ranges from --observer
    const deployed = join(dir, 'deployed');
    const deploy = ['quantize', vitMnist, '--recipe', 'w8a8', '--method', 'repq', '--observer'];
    expect((await vitslim([...deploy, 'mse', ...calib, '-o', deployed])).code).toBe(0);
    const d = await read(deployed);
    expect(d.json.options.observer).toBe('mse');
    expect(d.json.options).not.toHaveProperty('weightObserver');
    expect(d.json.calibration.observer).toBe('percentile-mse (RepQ-ViT), mse (w8a8 ranges)');
    expect(d.md).toContain(`observer ${d.json.calibration.observer},`);
  });
});
