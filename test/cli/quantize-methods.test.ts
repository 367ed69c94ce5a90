/** `vitslim quantize --method fp | adalog | isvit` as a user runs it: errors and the report. */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mnistDir, repoRoot, vitMnist } from '../fixtures.js';
import { errorLines, vitslim } from './helpers.js';

const calib = join(repoRoot, 'assets', 'mnist-calib-256');

describe('quantize --method fp, adalog, isvit', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vitslim-methods-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('names --fp-format or --bits when the float format does not fit, in one line', async () => {
    const base = [vitMnist, '--calib', calib, '-o', join(dir, 'bad')];
    const wrong = await vitslim([
      'quantize',
      ...base,
      '--bits',
      'w8a8',
      '--method',
      'fp',
      '--fp-format',
      'e2m1',
    ]);
    expect(wrong.code).not.toBe(0);
    expect(errorLines(wrong.stderr)).toHaveLength(1);
    expect(wrong.stderr).toMatch(/--fp-format: e2m1 is 4 bits/);
    const w3 = await vitslim(['quantize', ...base, '--bits', 'w3a3', '--method', 'fp']);
    expect(w3.stderr).toMatch(/--bits: --method fp has float formats for 4, 6 and 8 bits/);
  });

  it('writes a W4A4 AdaLog model whose report.md has an AdaLog section', async () => {
    const out = join(dir, 'adalog');
    const run = await vitslim([
      'quantize',
      vitMnist,
      '--bits',
      'w4a4',
      '--method',
      'adalog',
      '--calib',
      calib,
      '--calib-count',
      '8',
      '--data',
      mnistDir,
      '--limit',
      '100',
      '--latency-runs',
      '0',
      '-o',
      out,
    ]);
    expect(run.code).toBe(0);
    const report = await readFile(join(out, 'report.md'), 'utf8');
    expect(report).toMatch(/## AdaLog/);
    expect(report).toMatch(/## RepQ-ViT/);
    const json = JSON.parse(await readFile(join(out, 'report.json'), 'utf8')) as {
      adalog: { softmax: unknown[] };
      evaluation: { accuracy: { top1: number } };
    };
    expect(json.adalog.softmax.length).toBeGreaterThan(0);
    expect(json.evaluation.accuracy.top1).toBeGreaterThan(0.9);
  });

  it('takes --weights erq with --method adalog and reports ERQ per layer', async () => {
    const out = join(dir, 'adalog-erq');
    const common = ['--calib', calib, '--calib-count', '8', '--latency-runs', '0'];
    const run = await vitslim([
      'quantize',
      vitMnist,
      ...['--bits', 'w4a4', '--method', 'adalog', '--weights', 'erq'],
      ...common,
      ...['--data', mnistDir, '--limit', '100', '-o', out],
    ]);
    expect(run.code).toBe(0);
    const report = await readFile(join(out, 'report.md'), 'utf8');
    expect(report).toMatch(/### Weights by ERQ/);
    const json = JSON.parse(await readFile(join(out, 'report.json'), 'utf8')) as {
      method: string;
      weights: string;
      evaluation: { accuracy: { top1: number } };
    };
    expect([json.method, json.weights]).toEqual(['adalog', 'erq']);
    expect(json.evaluation.accuracy.top1).toBeGreaterThan(0.9);

    const fp = await vitslim([
      'quantize',
      vitMnist,
      ...['--bits', 'w4a4', '--method', 'fp', '--weights', 'erq'],
      ...common,
      ...['-o', join(dir, 'fp-erq')],
    ]);
    expect(fp.code).not.toBe(0);
    expect(errorLines(fp.stderr)).toHaveLength(1);
    expect(fp.stderr).toMatch(/--weights: GPTQ and ERQ weights run on a RepQ-ViT calibration/);
  });
});
