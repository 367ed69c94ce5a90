/**
 * The deployable forms of RepQ-ViT, GPTQ and ERQ through the CLI a user runs, on the MNIST ViT:
 * what the report says (deployable, method, weights, kernels) and that the model keeps fp32's
 * top-1.
 */
import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { mnistDir, vitMnist } from '../fixtures.js';
import { errorLines, vitslim } from './helpers.js';

const calib = ['--calib', 'assets/mnist-calib-256'];
const evaluation = ['--data', mnistDir, '--limit', '1000', '--batch', '100', '--latency-runs', '0'];

async function quantize(args: string[]) {
  const out = join(await mkdtemp(join(tmpdir(), 'vitslim-deploy-')), 'out');
  const run = await vitslim(['quantize', vitMnist, ...args, '--threads', '2', '-q', '-o', out]);
  expect(run.stderr).toBe('');
  expect(run.code).toBe(0);
  const report = JSON.parse(await readFile(join(out, 'report.json'), 'utf8'));
  const markdown = await readFile(join(out, 'report.md'), 'utf8');
  return { report, markdown };
}

describe('quantize: deployable methods', () => {
  it('exports RepQ-ViT with GPTQ weights as w8a8 integer kernels, saying so', async () => {
    const args = ['--recipe', 'w8a8', '--method', 'repq', '--weights', 'gptq', ...calib];
    const { report, markdown } = await quantize([...args, ...evaluation]);
    expect([report.kind, report.method, report.weights]).toEqual(['deployable', 'repq', 'gptq']);
    expect(report.kernels.integer).toBe(report.kernels.layers.length);
    expect(report.repq.weightBits).toBe(7);
    expect(markdown).toMatch(/^# vitslim quantize: w8a8 repq \+ gptq \(deployable\)/);
    const accuracy = report.evaluation.accuracy;
    expect(accuracy.top1).toBeGreaterThanOrEqual(accuracy.baseline.top1 - 0.005);
  });

  it('exports GPTQ in MatMulNBits blocks with --recipe int4-weights --weights gptq', async () => {
    const args = ['--recipe', 'int4-weights', '--weights', 'gptq', ...calib];
    const { report } = await quantize([...args, ...evaluation]);
    expect([report.kind, report.weights]).toEqual(['deployable', 'gptq']);
    const kernels = report.kernels.layers.map((l: { kernel: string }) => l.kernel);
    expect(new Set(kernels)).toEqual(new Set(['MatMulNBits']));
    const accuracy = report.evaluation.accuracy;
    expect(accuracy.top1).toBeGreaterThanOrEqual(accuracy.baseline.top1 - 0.01);
  });

  it('refuses a method without a deployable form in one line naming the flag', async () => {
    const out = join(await mkdtemp(join(tmpdir(), 'vitslim-deploy-')), 'out');
    const args = ['--recipe', 'int4-weights', '--weights', 'erq', ...calib, '-o', out];
    const run = await vitslim(['quantize', vitMnist, ...args]);
    expect(run.code).toBe(1);
    expect(errorLines(run.stderr)).toHaveLength(1);
    expect(run.stderr).toMatch(/--weights: int4-weights takes --weights rtn or gptq/);
  });
});
