/**
 * A writer of the small subgraphs that token reduction inserts: each call adds one node (or a
 * constant) under a common prefix with names that clash with nothing in the graph, and returns
 * the output value. Ops whose signature changed between opsets (the Reduce family takes its axes
 * as an input from opset 18, ReduceSum from 13) are written in the form the model's opset reads.
 */
import type { TensorProto } from 'onnx-buf';
import type { Command } from '../../graph/commands.js';
import { makeNode, type AttributeValue } from '../../graph/attributes.js';
import { floatTensor, int64Tensor } from '../../onnx/tensor.js';
import type { NameAllocator } from '../tensors.js';

export type ReduceOp = 'ReduceMean' | 'ReduceMax' | 'ReduceSum' | 'ReduceL2';

export class SubgraphWriter {
  readonly commands: Command[] = [];
  private readonly constants = new Map<string, string>();

  /** Prefix of the names of the nodes added next (constants are shared across prefixes). */
  prefix = 'tokens';

  constructor(
    private readonly names: NameAllocator,
    readonly opset: number,
  ) {}

  /** Adds a node with `outputs` outputs and returns their names. */
  multi(
    opType: string,
    inputs: string[],
    outputs: number,
    attributes: Record<string, AttributeValue> = {},
  ): string[] {
    const name = this.names.name(`${this.prefix}/${opType}`);
    const results = Array.from({ length: outputs }, (_, i) =>
      this.names.name(`${name}_output_${i}`),
    );
    this.commands.push({
      kind: 'addNode',
      node: makeNode({ name, opType, inputs, outputs: results, attributes }),
    });
    return results;
  }

  /** Adds a node with one output and returns it. */
  op(opType: string, inputs: string[], attributes: Record<string, AttributeValue> = {}): string {
    return this.multi(opType, inputs, 1, attributes)[0]!;
  }

  /** An int64 initializer (shared between calls with the same values and dims). */
  ints(values: readonly number[], dims: readonly number[] = [values.length]): string {
    const key = `i${dims.join('x')}:${values.join(',')}`;
    return this.constant(key, (name) => int64Tensor(name, dims, values));
  }

  /** A float initializer (shared between calls with the same values and dims). */
  floats(values: readonly number[], dims: readonly number[] = [values.length]): string {
    const key = `f${dims.join('x')}:${values.join(',')}`;
    return this.constant(key, (name) => floatTensor(name, dims, Float32Array.from(values)));
  }

  /** `x[start:end:step]` along `axis`. */
  slice(x: string, axis: number, start: number, end: number, step = 1): string {
    const inputs = [x, this.ints([start]), this.ints([end]), this.ints([axis])];
    return this.op('Slice', step === 1 ? inputs : [...inputs, this.ints([step])]);
  }

  reduce(op: ReduceOp, x: string, axes: readonly number[], keepdims: boolean): string {
    const axesAsInput = this.opset >= (op === 'ReduceSum' ? 13 : 18);
    const keep = keepdims ? 1 : 0;
    return axesAsInput
      ? this.op(op, [x, this.ints(axes)], { keepdims: keep })
      : this.op(op, [x], { axes: [...axes], keepdims: keep });
  }

  unsqueeze(x: string, axes: readonly number[]): string {
    return this.op('Unsqueeze', [x, this.ints(axes)]);
  }

  squeeze(x: string, axes: readonly number[]): string {
    return this.op('Squeeze', [x, this.ints(axes)]);
  }

  /** `[B, k, 1]` indices broadcast to `[B, k, width]` for GatherElements along axis 1. */
  expandIndices(indices: string, width: number): string {
    return this.op('Expand', [indices, this.ints([1, 1, width])]);
  }

  /** Rows `indices` ([B, k, 1], int64) of `x` ([B, n, width]) along axis 1: [B, k, width]. */
  gatherRows(x: string, indices: string, width: number): string {
    return this.op('GatherElements', [x, this.expandIndices(indices, width)], { axis: 1 });
  }

  /** TopK along `axis` with a constant k: [values, indices]. */
  topK(x: string, k: number, axis: number, largest: boolean): [string, string] {
    const [values, indices] = this.multi('TopK', [x, this.ints([k])], 2, {
      axis,
      largest: largest ? 1 : 0,
      sorted: 1,
    });
    return [values!, indices!];
  }

  private constant(key: string, make: (name: string) => TensorProto): string {
    const known = this.constants.get(key);
    if (known) return known;
    const name = this.names.name('tokens/const');
    this.commands.push({ kind: 'addInitializer', tensor: make(name) });
    this.constants.set(key, name);
    return name;
  }
}
