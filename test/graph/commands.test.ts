import { describe, expect, it } from 'vitest';
import { InternalError } from '../../src/errors.js';
import { makeNode } from '../../src/graph/attributes.js';
import { applyCommands } from '../../src/graph/commands.js';
import { GraphIndex } from '../../src/graph/graph.js';
import { loadModel } from '../../src/onnx/model-io.js';
import { floatTensor } from '../../src/onnx/tensor.js';
import { createSession, runSingle } from '../../src/runtime/session.js';
import { noiseInput, vitMnist } from '../fixtures.js';

describe('graph commands', () => {
  it('apply to a copy and leave the input model untouched', async () => {
    const model = await loadModel(vitMnist);
    const before = model.graph!.node.length;
    const last = model.graph!.output[0]!.name;
    const scaled = applyCommands(model, [
      { kind: 'addInitializer', tensor: floatTensor('two', [], Float32Array.of(2)) },
      {
        kind: 'addNode',
        node: makeNode({ name: 'double', opType: 'Mul', inputs: [last, 'two'], outputs: ['y2'] }),
      },
      { kind: 'removeOutput', name: last },
      { kind: 'addOutput', name: 'y2' },
    ]);
    expect(model.graph!.node.length).toBe(before);
    expect(scaled.graph!.node.length).toBe(before + 1);

    const input = noiseInput(28 * 28);
    const a = await createSession(model, { threads: 1 });
    const b = await createSession(scaled, { threads: 1 });
    const y = (await runSingle(a, input, [1, 1, 28, 28]))[last]!.data as Float32Array;
    const y2 = (await runSingle(b, input, [1, 1, 28, 28]))['y2']!.data as Float32Array;
    expect(Array.from(y2)).toEqual(Array.from(y).map((v) => Math.fround(v * 2)));
  });

  it('restore topological order when a node is added at the end of the list', async () => {
    const model = await loadModel(vitMnist);
    const index = new GraphIndex(model);
    const input = index.inputs[0]!.name;
    const first = index.consumersOf(input)[0]!;
    const rewritten = applyCommands(model, [
      {
        kind: 'addNode',
        node: makeNode({ name: 'id', opType: 'Identity', inputs: [input], outputs: ['x_id'] }),
      },
      { kind: 'replaceUses', from: input, to: 'x_id', exceptNodes: ['id'] },
    ]);
    const order = rewritten.graph!.node.map((n) => n.name);
    expect(order.indexOf('id')).toBeLessThan(order.indexOf(first.name));
  });

  it('reject a rewrite that leaves a dangling input or a duplicate producer', async () => {
    const model = await loadModel(vitMnist);
    const some = model.graph!.node.find((n) => n.opType === 'MatMul')!;
    expect(() =>
      applyCommands(model, [{ kind: 'setNodeInput', node: some.name, index: 0, value: 'nowhere' }]),
    ).toThrow(/reads nowhere/);
    expect(() =>
      applyCommands(model, [
        {
          kind: 'addNode',
          node: makeNode({
            name: 'dup',
            opType: 'Identity',
            inputs: ['input'],
            outputs: some.output,
          }),
        },
      ]),
    ).toThrow(InternalError);
  });

  it('detect a cycle', async () => {
    const model = await loadModel(vitMnist);
    const index = new GraphIndex(model);
    const [a, b] = index.topologicalOrder().filter((n) => n.opType === 'MatMul');
    expect(() =>
      applyCommands(model, [
        { kind: 'setNodeInput', node: a!.name, index: 0, value: b!.output[0]! },
      ]),
    ).toThrow(/cycle/);
  });
});
