import { describe, expect, it } from 'vitest';
import { InputError } from '../../src/errors.js';
import { loadModel } from '../../src/onnx/model-io.js';
import {
  excludePoints,
  parseLayerSelector,
  quantPoints,
  selects,
  type ActivationPoint,
} from '../../src/quant/quant-points.js';
import { recognizeViT } from '../../src/vit/index.js';
import { vitMnist } from '../fixtures.js';

const mnistPoints = async () => quantPoints(recognizeViT(await loadModel(vitMnist)));

function point(role: string, node = 'n', producer?: string): ActivationPoint {
  return { role, value: 'v', node, kind: 'linear-input', ...(producer ? { producer } : {}) };
}

describe('quantPoints', () => {
  it('lists every linear input and both operands of both attention matmuls, in graph order', async () => {
    const { activations, weights } = await mnistPoints();
    // the MNIST ViT: 6 blocks with a fused qkv, so 8 points a block, plus the patch embedding
    // and a two-layer head (a hidden pre-logits layer, then the classifier)
    expect(activations.length).toBe(3 + 6 * 8);
    expect(weights.length).toBe(3 + 6 * 4);
    expect(activations.slice(0, 10).map((p) => p.role)).toEqual([
      'patch_embed.input',
      'blocks.0.attn.qkv.input',
      'blocks.0.attn.query',
      'blocks.0.attn.key',
      'blocks.0.attn.softmax',
      'blocks.0.attn.value',
      'blocks.0.attn.proj.input',
      'blocks.0.mlp.fc1.input',
      'blocks.0.mlp.fc2.input',
      'blocks.1.attn.qkv.input',
    ]);
    expect(activations.at(-2)!.role).toBe('pre_logits.input');
    expect(activations.at(-1)!.role).toBe('head.input');
    expect(weights.map((w) => w.role).slice(0, 3)).toEqual([
      'patch_embed.weight',
      'blocks.0.attn.qkv.weight',
      'blocks.0.attn.proj.weight',
    ]);
  });

  it('quantizes the softmax output where the context matmul reads it', async () => {
    const { activations } = await mnistPoints();
    const softmax = activations.find((p) => p.role === 'blocks.2.attn.softmax')!;
    expect(softmax).toMatchObject({
      value: '/blocks.2/Softmax_output_0',
      node: '/blocks.2/MatMul_1',
      producer: '/blocks.2/Softmax',
      kind: 'matmul-operand',
    });
    const query = activations.find((p) => p.role === 'blocks.2.attn.query')!;
    expect(query.node).toBe('/blocks.2/MatMul');
  });
});

describe('layer selectors', () => {
  it('select a role and everything under it at a dot boundary', () => {
    const head = parseLayerSelector('head');
    expect(selects(head, point('head.input'))).toBe(true);
    expect(selects(head, point('header.input'))).toBe(false);
    const block = parseLayerSelector('blocks.3');
    expect(selects(block, point('blocks.3.mlp.fc2.input'))).toBe(true);
    expect(selects(block, point('blocks.31.mlp.fc2.input'))).toBe(false);
  });

  it('match one segment with * and any number of segments with **', () => {
    const softmax = parseLayerSelector('blocks.*.attn.softmax');
    expect(selects(softmax, point('blocks.11.attn.softmax'))).toBe(true);
    expect(selects(softmax, point('blocks.11.attn.value'))).toBe(false);
    const teens = parseLayerSelector('blocks.1*');
    expect(selects(teens, point('blocks.10.attn.query'))).toBe(true);
    expect(selects(teens, point('blocks.2.attn.query'))).toBe(false);
    const weights = parseLayerSelector('**.weight');
    expect(selects(weights, point('blocks.0.mlp.fc1.weight'))).toBe(true);
    expect(selects(weights, point('blocks.0.mlp.fc1.input'))).toBe(false);
  });

  it('match node names by regex, the producer included', () => {
    expect(selects(parseLayerSelector('/fc2\\/MatMul$/'), point('x', '/blocks.0/fc2/MatMul'))).toBe(
      true,
    );
    const byProducer = parseLayerSelector('node:Softmax');
    expect(selects(byProducer, point('blocks.0.attn.softmax', 'MatMul_1', 'Softmax'))).toBe(true);
    expect(selects(parseLayerSelector('/softmax/i'), point('r', 'a', 'Softmax'))).toBe(true);
  });

  it('refuse an empty selector, a bad regex and a glob with other characters', () => {
    expect(() => parseLayerSelector(' ')).toThrow(InputError);
    expect(() => parseLayerSelector('node:(')).toThrow(/not a valid regular expression/);
    expect(() => parseLayerSelector('blocks[0]')).toThrow(/neither a role glob/);
  });

  it('keep selected points in float and name a selector that matches nothing', async () => {
    const points = await mnistPoints();
    const { points: left, kept } = excludePoints(points, ['head', 'blocks.*.attn.softmax']);
    expect(left.activations.length).toBe(51 - 1 - 6);
    expect(left.weights.length).toBe(27 - 1);
    expect(kept.find((k) => k.role === 'head.weight')).toEqual({
      role: 'head.weight',
      selector: 'head',
    });
    expect(() => excludePoints(points, ['blocks.12'])).toThrow(/"blocks.12" matches no/);
  });
});
