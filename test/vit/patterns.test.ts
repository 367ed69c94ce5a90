import { describe, expect, it } from 'vitest';
import { UnsupportedModelError } from '../../src/errors.js';
import { createSession, runSingle } from '../../src/runtime/session.js';
import { describeStructure, linearLayers, recognizeViT } from '../../src/vit/index.js';
import { noiseInput } from '../fixtures.js';
import { tiny, tinyViT, type TinyViTOptions } from './tiny-models.js';

const variants: TinyViTOptions[] = [
  { qkv: 'fused', norm: 'op', pooling: 'class-token' },
  { qkv: 'separate', norm: 'decomposed', pooling: 'mean' },
  { qkv: 'separate', norm: 'op', pooling: 'class-token' },
  { qkv: 'fused', norm: 'decomposed', pooling: 'mean' },
];

/** MACs of the tiny ViT by hand, for `tokens` tokens per image. */
function tinyMacs(tokens: number): number {
  const { width: d, mlp, heads, headDim, depth, classes, channels, patch } = tiny;
  const patches = (tiny.image / patch) ** 2;
  const block = tokens * d * 3 * d + tokens * d * d + 2 * tokens * d * mlp;
  const attention = 2 * heads * tokens * tokens * headDim;
  return patches * channels * patch * patch * d + depth * (block + attention) + d * classes;
}

describe.each(variants)('a tiny ViT with $qkv q/k/v, $norm norms and $pooling pooling', (v) => {
  const model = tinyViT(v);

  it('is a graph onnxruntime runs', async () => {
    const session = await createSession(model, { threads: 1 });
    const input = noiseInput(tiny.channels * tiny.image * tiny.image);
    const out = await runSingle(session, input, [1, tiny.channels, tiny.image, tiny.image]);
    expect(Object.values(out)[0]!.dims).toEqual([1, tiny.classes]);
    await session.release();
  });

  it('is recognised with the widths, heads and tokens it was built with', () => {
    const s = recognizeViT(model);
    const tokens = (tiny.image / tiny.patch) ** 2 + (v.pooling === 'class-token' ? 1 : 0);
    expect(s.counts).toMatchObject({
      depth: tiny.depth,
      width: tiny.width,
      heads: tiny.heads,
      headDim: tiny.headDim,
      mlpWidth: tiny.mlp,
      tokens,
      numClasses: tiny.classes,
      macs: tinyMacs(tokens),
    });
    expect(s.pooling?.kind).toBe(v.pooling);
    expect(Boolean(s.classToken)).toBe(v.pooling === 'class-token');
    expect(s.finalNorm?.epsilon).toBe(Math.fround(tiny.epsilon));
    expect(s.blocks[0]!.norm1.form).toBe(v.norm === 'op' ? 'LayerNormalization' : 'decomposed');
    expect(s.blocks[0]!.mlp.activation.kind).toBe('relu');
    expect(s.head).toMatchObject({ opType: 'Gemm', weightLayout: 'out-in', weight: 'head.weight' });
  });

  it('tells queries, keys and values apart by where they flow', () => {
    const a = recognizeViT(model).blocks[1]!.attention;
    if (v.qkv === 'fused') {
      expect(a.qkv?.weight).toBe('blocks.1.attn.qkv.weight');
      expect(a.scale?.factor).toBe(0.5);
    } else {
      const weights = [a.q?.weight, a.k?.weight, a.v?.weight];
      expect(weights).toEqual(['query', 'key', 'value'].map((n) => `blocks.1.attn.${n}.weight`));
      // the scores are divided by √headDim = 2
      expect(a.scale?.factor).toBe(0.5);
    }
  });

  it('lists each linear layer once, in graph order', () => {
    const roles = linearLayers(recognizeViT(model)).map((l) => l.role);
    expect(new Set(roles).size).toBe(roles.length);
    expect(roles[0]).toBe('patch_embed');
    expect(roles[roles.length - 1]).toBe('head');
  });
});

describe('describeStructure', () => {
  it('names the blocks, heads, MLP and head of the map, one block per row', () => {
    const text = describeStructure(
      recognizeViT(tinyViT({ qkv: 'fused', norm: 'op', pooling: 'class-token' })),
      { layers: true },
    );
    expect(text).toMatch(/^model +ViT, 2 blocks, width 8, 2 heads × 4, MLP 16$/m);
    expect(text).toMatch(/^head +Gemm 8 → 5 \(gemm\d+\), 5 classes$/m);
    expect(text).toMatch(/^1 +LayerNormalization +fused qkv 8 → 24 +2 × 4 +16 +relu/m);
    expect(text).toMatch(/^blocks\.0\.attn\.scores +MatMul +2 heads/m);
    expect(text.split('\n').every((line) => line === line.trimEnd())).toBe(true);
  });
});

describe('recognizeViT on a block that breaks the pattern', () => {
  it('refuses a block whose MLP adds to the block input instead of the attention residual', () => {
    const model = tinyViT({ qkv: 'fused', norm: 'op', pooling: 'class-token' });
    const block = recognizeViT(model).blocks[0]!;
    const add = model.graph!.node.find((n) => n.name === block.residual2.node)!;
    add.input[add.input.indexOf(block.residual1.output)] = block.input;
    expect(() => recognizeViT(model)).toThrow(UnsupportedModelError);
    expect(() => recognizeViT(model)).toThrow(
      `block 0: the MLP's second linear layer ${block.mlp.fc2.node} does not feed a residual Add`,
    );
  });
});
