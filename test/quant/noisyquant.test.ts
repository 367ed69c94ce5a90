import { describe, expect, it } from 'vitest';
import { loadModel } from '../../src/onnx/model-io.js';
import { DataType } from '../../src/onnx/tensor.js';
import { quantizePtq4Vit } from '../../src/quant/methods/ptq4vit.js';
import { searchNoise, uniformNoise } from '../../src/quant/methods/noisyquant.js';
import { gridChain, type OperandGrid } from '../../src/quant/search/operand-grid.js';
import { scoreCandidates } from '../../src/quant/search/product-search.js';
import { fakeQuantize, intRange } from '../../src/quant/uniform.js';
import { recognizeViT } from '../../src/vit/index.js';
import { mnistDir, noiseInput, vitMnist } from '../fixtures.js';
import { agreement, fixtureImages, holdBatches, labelsOf, predictions } from './helpers.js';
import { buildModel, runModel } from './tiny-graph.js';

/** Q(x + N) − N by hand: float32 adds around uniform.ts's symmetric signed grid. */
function noisyByHand(
  x: Float32Array,
  width: number,
  noise: Float32Array,
  step: number,
  bits: number,
) {
  const shifted = x.map((v, i) => v + noise[i % width]!);
  const q = fakeQuantize(shifted, [{ scale: step, zeroPoint: 0 }], intRange(bits, true));
  return q.map((v, i) => v - noise[i % width]!);
}

/** Heavy-tailed rows: most values small, a few channels large. */
function heavyRows(rows: number, width: number, seed: number): Float32Array {
  const n = noiseInput(rows * width, seed);
  return n.map((v, i) => (i % width === 3 ? 8 * v : v * v * v));
}

describe('NoisyQuant noise', () => {
  it('draws a fixed noise within ±Δ/2, the same for the same seed', () => {
    const a = uniformNoise(500, 0.2, 7);
    expect(Array.from(a)).toEqual(Array.from(uniformNoise(500, 0.2, 7)));
    expect(Array.from(a)).not.toEqual(Array.from(uniformNoise(500, 0.2, 8)));
    for (const v of a) expect(Math.abs(v)).toBeLessThanOrEqual(0.1);
    // spread over the interval: its mean near 0, its variance near Δ²/12
    const mean = a.reduce((s, v) => s + v, 0) / a.length;
    const variance = a.reduce((s, v) => s + (v - mean) ** 2, 0) / a.length;
    expect(Math.abs(mean)).toBeLessThan(0.01);
    expect(variance).toBeGreaterThan(0.8 * (0.04 / 12));
    expect(variance).toBeLessThan(1.2 * (0.04 / 12));
  });

  it('is written as Add → quantizer → Sub, equal bit for bit to Q(x + N) − N', async () => {
    const width = 6;
    const x = heavyRows(50, width, 1);
    const noise = uniformNoise(width, 0.25, 3);
    const grid: OperandGrid = {
      kind: 'noisy',
      base: { kind: 'uniform', bits: 4, scales: Float32Array.of(0.25) },
      noise,
    };
    const { commands, output } = gridChain('x', 'nq', [grid], 2);
    const model = buildModel([50, width], commands, { [output]: DataType.FLOAT }, 13);
    const got = (await runModel(model, x, [50, width]))[output] as Float32Array;
    expect(Array.from(got)).toEqual(Array.from(noisyByHand(x, width, noise, 0.25, 4)));
  });

  it('is scored by the engine as the same products computed by hand', async () => {
    const x = { data: heavyRows(40, 8, 2), dims: [40, 8] };
    const w = { data: noiseInput(8 * 3, 4), dims: [8, 3] };
    const base: OperandGrid = { kind: 'uniform', bits: 3, scales: Float32Array.of(0.3) };
    const unit = uniformNoise(8, 0.3, 5);
    const amplitudes = [0, 0.5, 1];
    const candidates = amplitudes.map((t): OperandGrid => ({
      kind: 'noisy',
      base,
      noise: unit.map((u) => u * t),
    }));
    const scores = await scoreCandidates(x, w, {
      side: 'a',
      candidates,
      other: { kind: 'float' },
      metric: 'mse',
    });
    amplitudes.forEach((t, i) => {
      const xq = noisyByHand(
        x.data,
        8,
        unit.map((u) => u * t),
        0.3,
        3,
      );
      let error = 0;
      for (let r = 0; r < 40; r++) {
        for (let o = 0; o < 3; o++) {
          let y = 0;
          let yq = 0;
          for (let k = 0; k < 8; k++) {
            y += x.data[r * 8 + k]! * w.data[k * 3 + o]!;
            yq += xq[r * 8 + k]! * w.data[k * 3 + o]!;
          }
          error += (y - yq) ** 2;
        }
      }
      expect(scores[0]![i]).toBeCloseTo(error, 3);
    });
  });

  it('chooses an amplitude no worse than no noise, and no noise for a grid without one step', async () => {
    const x = { data: heavyRows(200, 16, 6), dims: [200, 16] };
    const w = { data: noiseInput(16 * 4, 7), dims: [16, 4] };
    const base: OperandGrid = { kind: 'uniform', bits: 3, scales: Float32Array.of(0.4) };
    const options = { metric: 'mse', amplitudes: 9, maxAmplitude: 2, seed: 1 } as const;
    const choice = await searchNoise(x, w, base, { kind: 'float' }, options);
    const score = async (g: OperandGrid) =>
      (
        await scoreCandidates(x, w, {
          side: 'a',
          candidates: [g],
          other: { kind: 'float' },
          metric: 'mse',
        })
      )[0]![0]!;
    expect(await score(choice.grid)).toBeLessThanOrEqual(await score(base));
    expect(choice.amplitude === 0).toBe(choice.grid === base);
    const perHead: OperandGrid = { ...base, scales: Float32Array.of(0.4, 0.5), groupAxis: 1 };
    expect((await searchNoise(x, w, perHead, { kind: 'float' }, options)).amplitude).toBe(0);
  });
});

describe('NoisyQuant on PTQ4ViT (MNIST ViT)', () => {
  it('adds a searched noise to the post-GELU inputs and keeps W4A4 accuracy', async () => {
    const model = await loadModel(vitMnist);
    const structure = recognizeViT(model);
    const calib = await fixtureImages(vitMnist, mnistDir, 1000, 16);
    const { model: q, report } = await quantizePtq4Vit(model, structure, calib.batches(16), {
      weightBits: 4,
      activationBits: 4,
      rounds: 1,
      candidates: 10,
      noisyQuant: 'post-gelu',
      threads: 2,
    });
    const gelu = report.activations.filter((a) => a.kind === 'twin-gelu');
    expect(gelu.length).toBe(structure.blocks.length + 1);
    expect(gelu.every((a) => a.noiseAmplitude !== undefined)).toBe(true);
    expect(report.activations.filter((a) => a.noiseAmplitude !== undefined).length).toBe(
      gelu.length,
    );
    const noisy = gelu.filter((a) => a.noiseAmplitude! > 0).length;
    const subs = q.graph!.node.filter((n) => n.name.endsWith('/Sub')).length;
    expect(subs).toBe(noisy);
    const digits = await holdBatches(await fixtureImages(vitMnist, mnistDir, 0, 300), 300);
    const labels = labelsOf(digits);
    const fp32 = agreement(await predictions(model, digits), labels);
    expect(agreement(await predictions(q, digits), labels)).toBeGreaterThan(fp32 - 0.04);
  });
});
