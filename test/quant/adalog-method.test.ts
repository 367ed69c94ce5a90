/**
 * AdaLog on RepQ-ViT's calibration: every softmax and GELU output on an adaptive-base log grid
 * whose levels are checked against the paper's shift-and-table formula worked here, MNIST W4A4
 * accuracy against the float model, and the ViT-Tiny at opset 17 and 13.
 */
import type { ModelProto } from 'onnx-buf';
import { beforeAll, describe, expect, it } from 'vitest';
import { InputError } from '../../src/errors.js';
import { GraphIndex } from '../../src/graph/graph.js';
import { loadModel } from '../../src/onnx/model-io.js';
import { quantizeAdaLog, type AdaLogResult } from '../../src/quant/methods/adalog-method.js';
import { capture } from '../../src/runtime/capture.js';
import { recognizeViT } from '../../src/vit/index.js';
import { imagenetVal, mnistDir, vitMnist, vitTiny } from '../fixtures.js';
import { fixtureImages, holdBatches, labelsOf, predictions, type HeldBatch } from './helpers.js';

/** A small search, so that the test stays short; the method's defaults are the measured ones. */
const quick = {
  geluRows: 16,
  attentionRows: 64,
  search: { preselect: 4, topBases: 2, scales: 8, keep: 2, steps: 2, perStep: 4 },
  threads: 2,
};

/**
 * The dequantized levels of AdaLog with s = 1 at `bits`, by the paper's formula (reference notes
 * §0.3): 2^(−⌊c·q_b/37⌋) · round(2^(−((c·q_b) mod 37)/37) · D) / D, D = 2^(b+1) − 2, and 0.
 */
function handLevels(bits: number, qb: number): number[] {
  const d = 2 ** (bits + 1) - 2;
  const levels = [0];
  for (let c = 0; c < 2 ** bits; c++) {
    const p = c * qb;
    levels.push(2 ** -Math.floor(p / 37) * (Math.round(2 ** (-(p % 37) / 37) * d) / d));
  }
  return levels;
}

function accuracy(predicted: Int32Array, labels: Int32Array): number {
  return predicted.reduce((n, p, i) => n + (p === labels[i] ? 1 : 0), 0) / labels.length;
}

describe('AdaLog on the MNIST ViT', () => {
  let model: ModelProto;
  let digits: HeldBatch[];
  let result: AdaLogResult;

  beforeAll(async () => {
    model = await loadModel(vitMnist);
    const calib = await fixtureImages(vitMnist, mnistDir, 1000, 16);
    result = await quantizeAdaLog(model, recognizeViT(model), calib.batches(16), {
      weightBits: 4,
      activationBits: 4,
      ...quick,
    });
    digits = await holdBatches(await fixtureImages(vitMnist, mnistDir, 0, 200), 100);
  });

  it('puts an AdaLog quantizer on every softmax and GELU output', () => {
    const blocks = recognizeViT(model).blocks.length;
    expect(result.report.adalog.softmax).toHaveLength(blocks);
    expect(result.report.adalog.gelu).toHaveLength(blocks);
    for (const p of result.report.adalog.softmax) expect(p.scale).toBe(1);
    for (const p of result.report.adalog.gelu) expect(p.shift).toBeCloseTo(0.16997, 5);
    // RepQ-ViT's quantizers of those points are gone from its part of the report
    expect(result.report.activations.some((a) => a.roles[0]!.endsWith('.softmax'))).toBe(false);
  });

  it('gives softmax outputs only on the levels of the paper’s formula', async () => {
    const first = result.report.adalog.softmax[0]!;
    const output = `vitslim/adalog/${first.role}/output`;
    const levels = handLevels(4, first.baseNumerator);
    let seen = 0;
    await capture(result.model, [output], digits.slice(0, 1), (tensors) => {
      for (const v of tensors.get(output)!.data as Float32Array) {
        const nearest = Math.min(...levels.map((l) => Math.abs(l - v)));
        expect(nearest).toBeLessThan(1e-6);
        seen++;
      }
    });
    expect(seen).toBeGreaterThan(0);
  });

  it('keeps W4A4 top-1 within 3 points of the float model on 200 digits', async () => {
    const labels = labelsOf(digits);
    const float = accuracy(await predictions(model, digits), labels);
    const quantized = accuracy(await predictions(result.model, digits), labels);
    expect(quantized).toBeGreaterThanOrEqual(float - 0.03);
  });

  it('quantizes query, key and value with one grid per head, as the chain’s ops compute', async () => {
    const roles = result.report.adalog.perHead;
    expect(roles).toHaveLength(3 * recognizeViT(model).blocks.length);
    const role = roles.find((r) => r.endsWith('.attn.query'))!;
    const index = new GraphIndex(result.model);
    const prefix = `vitslim/heads/${role}`;
    const scale = index.constantFloat32(`${prefix}/scale`)!;
    const low = index.constantFloat32(`${prefix}/low`)!;
    const high = index.constantFloat32(`${prefix}/high`)!;
    expect(new Set(scale).size).toBeGreaterThan(1);
    const input = index.node(`${prefix}/Div`).input[0]!;
    const output = `${prefix}/Mul`;
    let checked = 0;
    let worst = 0;
    await capture(result.model, [input, output], digits.slice(0, 1), (tensors) => {
      const x = tensors.get(input)!;
      const y = tensors.get(output)!.data as Float32Array;
      const heads = Number(x.dims[1]);
      const per = x.data.length / (Number(x.dims[0]) * heads);
      (x.data as Float32Array).forEach((v, i) => {
        const h = Math.floor(i / per) % heads;
        // round half to even by hand, then the code range shifted by the zero point
        const t = Math.fround(v / scale[h]!);
        const r = Math.abs(t % 1) === 0.5 ? 2 * Math.round(t / 2) : Math.round(t);
        const code = Math.min(Math.max(r, low[h]!), high[h]!);
        worst = Math.max(worst, Math.abs(y[i]! - Math.fround(code * scale[h]!)));
        checked++;
      });
    });
    expect(checked).toBeGreaterThan(0);
    expect(worst).toBeLessThan(1e-6);
  });

  it('rejects an unknown option by its name', async () => {
    const options = { weightBits: 4, activationBits: 4, rows: 3 } as never;
    await expect(quantizeAdaLog(model, recognizeViT(model), [], options)).rejects.toThrow(
      InputError,
    );
  });
});

describe('AdaLog on the ViT-Tiny', () => {
  it.each([
    ['opset 17', vitTiny.opset17],
    ['opset 13', vitTiny.opset13],
  ])('quantizes the %s graph, which runs and gives finite logits', async (_, path) => {
    const model = await loadModel(path);
    const images = await holdBatches(await fixtureImages(path, imagenetVal, 0, 2), 2);
    const result = await quantizeAdaLog(model, recognizeViT(model), images, {
      weightBits: 4,
      activationBits: 4,
      ...quick,
    });
    expect(result.report.adalog.softmax).toHaveLength(12);
    expect(result.report.adalog.gelu).toHaveLength(12);
    const predicted = await predictions(result.model, images);
    expect(predicted).toHaveLength(2);
    expect(predicted.every((p) => p >= 0 && p < 1000)).toBe(true);
  });
});
