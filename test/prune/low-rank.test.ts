import { describe, expect, it } from 'vitest';
import { InputError, UnsupportedModelError } from '../../src/errors.js';
import { GraphIndex } from '../../src/graph/graph.js';
import { capture } from '../../src/runtime/capture.js';
import { applyFactorization, factorizeModel, layerSpectrum } from '../../src/prune/low-rank.js';
import {
  allocateRanks,
  breakEvenRank,
  plainSpectrum,
  uniformRanks,
  whitenedSpectrum,
} from '../../src/prune/low-rank-math.js';
import { blockLayers } from '../../src/prune/sparsity-layers.js';
import { countParameters } from '../../src/vit/counts.js';
import { recognizeViT } from '../../src/vit/index.js';
import { noiseInput } from '../fixtures.js';
import { tiny, tinyViT } from '../vit/tiny-models.js';
import { maxAbsDiff, run } from './helpers.js';

/** An orthogonal n × n matrix: a product of Householder reflections I − 2vvᵀ/‖v‖². */
function orthogonal(n: number, seed: number): Float64Array {
  const q = new Float64Array(n * n);
  for (let i = 0; i < n; i++) q[i * n + i] = 1;
  for (let r = 0; r < 3; r++) {
    const v = noiseInput(n, seed + r);
    const norm = v.reduce((s, x) => s + x * x, 0);
    // q ← q·(I − 2vvᵀ/‖v‖²): each row loses twice its projection on v
    for (let i = 0; i < n; i++) {
      let dot = 0;
      for (let j = 0; j < n; j++) dot += q[i * n + j]! * v[j]!;
      for (let j = 0; j < n; j++) q[i * n + j] = q[i * n + j]! - (2 * dot * v[j]!) / norm;
    }
  }
  return q;
}

/** W = Q₁[:, :r]·diag(σ)·Q₂ᵀ, [rows, cols] with r = cols ≤ rows: its singular values are σ. */
function withSingularValues(rows: number, cols: number, sigma: number[]): Float64Array {
  const q1 = orthogonal(rows, 11);
  const q2 = orthogonal(cols, 23);
  const w = new Float64Array(rows * cols);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) {
      let s = 0;
      for (let t = 0; t < cols; t++) s += q1[i * rows + t]! * sigma[t]! * q2[j * cols + t]!;
      w[i * cols + j] = s;
    }
  }
  return w;
}

/** ‖X·(W − A·B)‖²_F / rows of X, all products written out. */
function outputError(
  x: Float64Array,
  samples: number,
  w: Float64Array,
  { a, b }: { a: Float32Array; b: Float32Array },
  dims: { inF: number; outF: number; k: number },
): number {
  const { inF, outF, k } = dims;
  let error = 0;
  for (let s = 0; s < samples; s++) {
    for (let o = 0; o < outF; o++) {
      let exact = 0;
      let approx = 0;
      for (let i = 0; i < inF; i++) {
        let ab = 0;
        for (let t = 0; t < k; t++) ab += a[i * k + t]! * b[t * outF + o]!;
        exact += x[s * inF + i]! * w[i * outF + o]!;
        approx += x[s * inF + i]! * ab;
      }
      error += (exact - approx) ** 2;
    }
  }
  return error / samples;
}

/** Correlated inputs: noise times a fixed mixing matrix, so that whitening matters. */
function correlatedInputs(samples: number, inF: number): Float64Array {
  const noise = noiseInput(samples * inF, 5);
  const mix = noiseInput(inF * inF, 9);
  const x = new Float64Array(samples * inF);
  for (let s = 0; s < samples; s++) {
    for (let j = 0; j < inF; j++) {
      let v = 0;
      for (let i = 0; i < inF; i++) v += noise[s * inF + i]! * mix[i * inF + j]! * (i + 1);
      x[s * inF + j] = v;
    }
  }
  return x;
}

function gramOf(x: Float64Array, samples: number, n: number): Float64Array {
  const g = new Float64Array(n * n);
  for (let s = 0; s < samples; s++) {
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < n; j++) g[i * n + j] = g[i * n + j]! + x[s * n + i]! * x[s * n + j]!;
    }
  }
  return g.map((v) => v / samples);
}

describe('plain SVD factors', () => {
  const sigma = [8, 5, 3, 2, 1, 0.5, 0.25, 0.1];
  const [inF, outF] = [12, 8];
  const w = withSingularValues(inF, outF, sigma);

  it('find the singular values the matrix was built with', () => {
    const spectrum = plainSpectrum(w, inF, outF);
    expect(Array.from(spectrum.values)).toHaveLength(8);
    spectrum.values.forEach((s, i) => expect(s).toBeCloseTo(sigma[i]!, 9));
  });

  it('leave the Eckart–Young error ‖W − W_k‖²_F = Σ_{i>k} σᵢ² at every rank', () => {
    const spectrum = plainSpectrum(w, inF, outF);
    for (let k = 1; k <= 8; k++) {
      const { a, b } = spectrum.factors(k);
      let error = 0;
      for (let i = 0; i < inF; i++) {
        for (let o = 0; o < outF; o++) {
          let ab = 0;
          for (let t = 0; t < k; t++) ab += a[i * k + t]! * b[t * outF + o]!;
          error += (w[i * outF + o]! - ab) ** 2;
        }
      }
      const expected = sigma.slice(k).reduce((s, x) => s + x * x, 0);
      expect(Math.abs(error - expected)).toBeLessThan(1e-5);
    }
  });
});

describe('whitened SVD factors', () => {
  const [inF, outF, samples] = [10, 6, 300];
  const w = Float64Array.from(noiseInput(inF * outF, 3));
  const x = correlatedInputs(samples, inF);
  const gram = gramOf(x, samples, inF);

  it('leave the output error Σ_{i>k} σ̃ᵢ² of the whitened singular values', () => {
    const spectrum = whitenedSpectrum(w, inF, outF, gram, 0);
    for (let k = 1; k <= outF; k++) {
      const { a, b } = spectrum.factors(k);
      const expected = Array.from(spectrum.values.subarray(k)).reduce((s, v) => s + v * v, 0);
      const error = outputError(x, samples, w, { a, b }, { inF, outF, k });
      expect(Math.abs(error - expected)).toBeLessThan(1e-4 * (1 + expected));
    }
  });

  it('leave no more output error than plain SVD at the same rank', () => {
    const whitened = whitenedSpectrum(w, inF, outF, gram, 0);
    const plain = plainSpectrum(w, inF, outF);
    for (let k = 1; k < outF; k++) {
      const dims = { inF, outF, k };
      const ew = outputError(x, samples, w, whitened.factors(k), dims);
      const ep = outputError(x, samples, w, plain.factors(k), dims);
      expect(ew).toBeLessThanOrEqual(ep * (1 + 1e-6));
    }
  });
});

describe('allocateRanks', () => {
  const request = (values: number[]) => ({
    inFeatures: 16,
    outFeatures: 16,
    values: Float64Array.from(values),
  });
  // layer A holds all its energy in one direction, layer B spreads it evenly over 16
  const a = request([3, ...new Array<number>(15).fill(0)]);
  const b = request(new Array<number>(16).fill(1));

  it('gives the steps to the layer with the most relative energy per parameter', () => {
    // both start at rank 1 (2 × 32 parameters); three more steps of 32 all go to B
    expect(allocateRanks([a, b], 64 + 3 * 32, 1)).toEqual([1, 4]);
  });

  it('keeps a layer dense once its rank reaches break-even and the budget allows', () => {
    // 16 × 16 breaks even at rank 8: B climbs to 7, then going dense costs 256 − 224 = 32
    expect(breakEvenRank(16, 16, 1)).toBe(7);
    expect(allocateRanks([a, b], 64 + 7 * 32, 1)).toEqual([1, undefined]);
  });

  it('keeps the same fraction of every layer when asked for uniform ranks', () => {
    // rank·16·16 / 32 = 8·rank: 4 at a half, 7 at 0.9, and 8 at 1 is break-even, so dense
    expect(uniformRanks([a, b], 0.5, 1)).toEqual([4, 4]);
    expect(uniformRanks([a, b], 0.9, 1)).toEqual([7, 7]);
    expect(uniformRanks([a, b], 1, 1)).toEqual([undefined, undefined]);
    expect(uniformRanks([a], 0.5, 8)).toEqual([undefined]);
  });

  it('refuses a budget below the first step of every layer', () => {
    expect(() => allocateRanks([a, b], 63, 1)).toThrow(RangeError);
  });
});

describe('factorizeModel on a tiny ViT', () => {
  const dims = [1, tiny.channels, tiny.image, tiny.image];
  const input = noiseInput(
    dims.reduce((p, d) => p * d, 1),
    4,
  );

  it.each(['fused', 'separate'] as const)(
    'at full rank gives the outputs of the original model (%s qkv, Gemm head)',
    async (qkv) => {
      const model = tinyViT({ qkv, norm: 'op', pooling: 'class-token' });
      const structure = recognizeViT(model);
      const index = new GraphIndex(model);
      const layers = [...blockLayers(structure), structure.head];
      const factors = layers.map((layer) => {
        const rank = Math.min(layer.inFeatures, layer.outFeatures);
        return { layer, rank, ...layerSpectrum(index, layer).factors(rank) };
      });
      const factored = applyFactorization(model, factors);
      const matmuls = (m: typeof model) => m.graph!.node.filter((n) => n.opType === 'MatMul');
      expect(matmuls(factored).length).toBe(matmuls(model).length + layers.length);
      const expected = await run(model, input, dims);
      expect(maxAbsDiff(await run(factored, input, dims), expected)).toBeLessThan(1e-4);
    },
  );

  it('keeps every layer dense at rank 1, with the same outputs', async () => {
    const model = tinyViT({ qkv: 'fused', norm: 'op', pooling: 'class-token' });
    const result = await factorizeModel(model, recognizeViT(model), {
      rank: 1,
      method: 'svd',
      roundTo: 1,
    });
    expect(result.report.layers.every((l) => l.rank === null)).toBe(true);
    expect(await run(result.model, input, dims)).toEqual(await run(model, input, dims));
  });

  it('shares the parameter budget and factors only below break-even', async () => {
    const model = tinyViT({ qkv: 'separate', norm: 'decomposed', pooling: 'mean' });
    const { report, model: factored } = await factorizeModel(model, recognizeViT(model), {
      rank: 0.6,
      method: 'svd',
      layers: ['blocks.*.mlp'],
      roundTo: 1,
    });
    expect(report.layers.map((l) => l.role)).toEqual([
      'blocks.0.mlp.fc1',
      'blocks.0.mlp.fc2',
      'blocks.1.mlp.fc1',
      'blocks.1.mlp.fc2',
    ]);
    const [before, after] = report.layerParameters;
    expect(before).toBe(4 * tiny.width * tiny.mlp);
    expect(after).toBeLessThanOrEqual(0.6 * before);
    for (const l of report.layers.filter((x) => x.rank !== null)) {
      expect(l.rank! * (l.inFeatures + l.outFeatures)).toBeLessThan(l.inFeatures * l.outFeatures);
      expect(l.macs[1]).toBeLessThan(l.macs[0]);
    }
    expect(report.parameters).toEqual([countParameters(model), countParameters(factored)]);
    expect(report.macs[1]).toBeLessThan(report.macs[0]);
    const out = await run(factored, input, dims);
    expect(out.every(Number.isFinite)).toBe(true);
  });

  it('whitens with the Gram matrices of the calibration images', async () => {
    const model = tinyViT({ qkv: 'fused', norm: 'op', pooling: 'class-token' });
    const calibration = [1, 2, 3].map((seed) => ({ data: noiseInput(input.length, seed), dims }));
    const result = await factorizeModel(model, recognizeViT(model), {
      rank: 0.6,
      method: 'whitened',
      layers: ['blocks.*.mlp.fc1'],
      roundTo: 1,
      calibration,
    });
    expect(result.report.calibrationImages).toBe(3);
    expect(result.report.layers.some((l) => l.rank !== null)).toBe(true);
    expect((await run(result.model, input, dims)).every(Number.isFinite)).toBe(true);
  });

  it('keeps the mean output of a whitened layer on the calibration images (centred)', async () => {
    const model = tinyViT({ qkv: 'fused', norm: 'op', pooling: 'class-token' });
    const structure = recognizeViT(model);
    const calibration = [1, 2, 3].map((seed) => ({ data: noiseInput(input.length, seed), dims }));
    const fc1 = structure.blocks[0]!.mlp.fc1;
    const { model: factored, report } = await factorizeModel(model, structure, {
      rank: 0.4,
      method: 'whitened',
      layers: ['blocks.0.mlp.fc1'],
      roundTo: 1,
      centre: true,
      calibration,
    });
    expect(report.layers[0]!.rank).toBe(2);
    // the layer's output value keeps its name; onnxruntime computes both means
    const meanOutput = async (m: typeof model) => {
      const sum = new Float64Array(tiny.mlp);
      let rows = 0;
      await capture(m, [fc1.biasedOutput], calibration, (values) => {
        const data = values.get(fc1.biasedOutput)!.data as Float32Array;
        for (let i = 0; i < data.length; i++) sum[i % tiny.mlp] = sum[i % tiny.mlp]! + data[i]!;
        rows += data.length / tiny.mlp;
      });
      return Float32Array.from(sum, (v) => v / rows);
    };
    const [before, after] = [await meanOutput(model), await meanOutput(factored)];
    expect(maxAbsDiff(before, after)).toBeLessThan(1e-4);
  });

  it('refuses options it cannot honour, naming them', async () => {
    const model = tinyViT({ qkv: 'fused', norm: 'op', pooling: 'class-token' });
    const structure = recognizeViT(model);
    const factor = (o: Partial<Parameters<typeof factorizeModel>[2]>) =>
      factorizeModel(model, structure, { rank: 0.5, method: 'svd', roundTo: 1, ...o });
    await expect(factor({ rank: 0 })).rejects.toThrow(/rank must be a fraction/);
    await expect(factor({ method: 'whitened' })).rejects.toThrow(InputError);
    await expect(factor({ layers: ['blocks.*.mlp.fc3'] })).rejects.toThrow(/matches no linear/);
    await expect(factor({ layers: ['patch_embed'] })).rejects.toThrow(UnsupportedModelError);
  });
});
