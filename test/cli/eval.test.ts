/**
 * `vitslim eval` on an exported model: accuracy and agreement against the fp32 input, and the
 * parameter and MAC counts its report recorded (an export is no longer a plain-MatMul ViT).
 */
import { copyFile, mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadModel } from '../../src/onnx/model-io.js';
import { mnistDir, vitMnist } from '../fixtures.js';
import { vitslim } from './helpers.js';

/** Elements of every float initializer of rank ≥ 1: the trainable tensors of the fp32 file. */
async function floatElements(path: string): Promise<number> {
  const model = await loadModel(path);
  let total = 0;
  for (const t of model.graph!.initializer) {
    if (t.dataType !== 1 || t.dims.length === 0) continue;
    total += t.dims.reduce((n, d) => n * Number(d), 1);
  }
  return total;
}

async function evalJson(model: string) {
  const run = await vitslim([
    'eval',
    model,
    '--data',
    mnistDir,
    '--limit',
    '300',
    '--baseline',
    vitMnist,
    '--latency-runs',
    '0',
    '--json',
    '-q',
  ]);
  expect(run.code).toBe(0);
  return JSON.parse(run.stdout);
}

describe('vitslim eval of an exported model', () => {
  let out: string;

  beforeAll(async () => {
    out = join(await mkdtemp(join(tmpdir(), 'vitslim-eval-')), 'out');
    const run = await vitslim(['quantize', vitMnist, '--recipe', 'dynamic-int8', '-q', '-o', out]);
    expect(run.code).toBe(0);
  });

  it('reports accuracy, agreement and the counts of the ViT it was made from', async () => {
    const report = await evalJson(join(out, 'model.onnx'));
    expect(report.accuracy.images).toBe(300);
    expect(report.accuracy.agreement).toBeGreaterThanOrEqual(0.97);
    expect(report.candidate.fileBytes).toBeLessThan(report.baseline.fileBytes);
    // the fp32 MNIST ViT stores only its parameters as float initializers of rank ≥ 1
    expect(report.candidate.parameters).toBe(await floatElements(vitMnist));
    expect(report.candidate.macs).toBe(report.baseline.macs);
  });

  it('ignores a report.json that does not describe the file', async () => {
    const elsewhere = join(await mkdtemp(join(tmpdir(), 'vitslim-eval-')), 'copy');
    await mkdir(elsewhere);
    await copyFile(join(out, 'model.onnx'), join(elsewhere, 'model.onnx'));
    const forged = { output: { sha256: '0'.repeat(64), parameters: 1, macs: 1 } };
    await writeFile(join(elsewhere, 'report.json'), JSON.stringify(forged));
    const report = await evalJson(join(elsewhere, 'model.onnx'));
    expect(report.candidate.parameters).toBeNull();
    expect(report.candidate.macs).toBeNull();
  });
});
