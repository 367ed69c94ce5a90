/**
 * A read-only index over an ONNX graph: nodes by name, the producer and consumers of each
 * value, initializers, constants and a topological order. Rewrites never edit through it; they
 * emit commands (see commands.ts) that are applied to a copy, after which a new index is built.
 */
import type { GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto } from 'onnx-buf';
import { InternalError, UnsupportedModelError } from '../errors.js';
import { readFloat32, readTensor, tensorDims, type TensorData } from '../onnx/tensor.js';
import { attributeTensor } from './attributes.js';

export class GraphIndex {
  readonly model: ModelProto;
  readonly graph: GraphProto;
  readonly nodes: readonly NodeProto[];
  readonly nodeByName = new Map<string, NodeProto>();
  readonly producer = new Map<string, NodeProto>();
  readonly consumers = new Map<string, NodeProto[]>();
  readonly initializers = new Map<string, TensorProto>();
  readonly inputs: readonly ValueInfoProto[];
  readonly outputs: readonly ValueInfoProto[];

  constructor(model: ModelProto) {
    if (!model.graph) throw new UnsupportedModelError('the model has no graph');
    this.model = model;
    this.graph = model.graph;
    this.nodes = model.graph.node;
    for (const tensor of model.graph.initializer) this.initializers.set(tensor.name, tensor);
    const initializerNames = new Set(this.initializers.keys());
    this.inputs = model.graph.input.filter((v) => !initializerNames.has(v.name));
    this.outputs = model.graph.output;
    for (const node of this.nodes) {
      this.nodeByName.set(node.name, node);
      for (const output of node.output) if (output) this.producer.set(output, node);
      for (const input of node.input) {
        if (!input) continue;
        const list = this.consumers.get(input);
        if (list) list.push(node);
        else this.consumers.set(input, [node]);
      }
    }
  }

  node(name: string): NodeProto {
    const node = this.nodeByName.get(name);
    if (!node) throw new InternalError(`no node named ${name}`);
    return node;
  }

  consumersOf(value: string): readonly NodeProto[] {
    return this.consumers.get(value) ?? [];
  }

  /** The single consumer of a value, or undefined when there are none or several. */
  soleConsumer(value: string): NodeProto | undefined {
    const list = this.consumersOf(value);
    return list.length === 1 ? list[0] : undefined;
  }

  isGraphOutput(value: string): boolean {
    return this.outputs.some((o) => o.name === value);
  }

  /** The tensor behind a value that is constant: an initializer or a Constant node's output. */
  constantTensor(value: string): TensorProto | undefined {
    const initializer = this.initializers.get(value);
    if (initializer) return initializer;
    const node = this.producer.get(value);
    if (node?.opType === 'Constant' && node.domain === '') return attributeTensor(node, 'value');
    return undefined;
  }

  isConstant(value: string): boolean {
    return this.constantTensor(value) !== undefined;
  }

  constantValues(value: string): TensorData | undefined {
    const tensor = this.constantTensor(value);
    return tensor ? readTensor(tensor) : undefined;
  }

  constantFloat32(value: string): Float32Array | undefined {
    const tensor = this.constantTensor(value);
    return tensor ? readFloat32(tensor) : undefined;
  }

  constantDims(value: string): number[] | undefined {
    const tensor = this.constantTensor(value);
    return tensor ? tensorDims(tensor) : undefined;
  }

  /** Nodes in an order where every producer comes before its consumers (Kahn's algorithm). */
  topologicalOrder(): NodeProto[] {
    return topologicalSort(this.nodes, this.available());
  }

  /** Values defined before any node runs: graph inputs and initializers. */
  available(): Set<string> {
    return new Set([...this.graph.input.map((v) => v.name), ...this.initializers.keys()]);
  }

  /** Every node whose inputs are computed (transitively) from `value`. */
  downstream(value: string): Set<NodeProto> {
    const seen = new Set<NodeProto>();
    const stack = [...this.consumersOf(value)];
    while (stack.length) {
      const node = stack.pop()!;
      if (seen.has(node)) continue;
      seen.add(node);
      for (const out of node.output) stack.push(...this.consumersOf(out));
    }
    return seen;
  }
}

/**
 * Sorts nodes so that producers precede consumers, keeping the given order where it is already
 * valid. Throws InternalError naming the nodes left over when there is a cycle or a dangling
 * input.
 */
export function topologicalSort(nodes: readonly NodeProto[], available: Set<string>): NodeProto[] {
  const ready = new Set(available);
  ready.add('');
  const producedBy = new Map<string, number>();
  nodes.forEach((node, i) => node.output.forEach((o) => producedBy.set(o, i)));
  const missing = nodes.map(
    (node) => new Set(node.input.filter((v) => !ready.has(v) && producedBy.has(v))).size,
  );
  const waiting = new Map<string, number[]>();
  nodes.forEach((node, i) => {
    for (const v of new Set(node.input)) {
      if (ready.has(v) || !producedBy.has(v)) continue;
      const list = waiting.get(v);
      if (list) list.push(i);
      else waiting.set(v, [i]);
    }
  });
  // a min-heap would be exact; scanning from the smallest ready index keeps the original order
  const order: NodeProto[] = [];
  const queue: number[] = [];
  missing.forEach((m, i) => m === 0 && queue.push(i));
  const done = new Array<boolean>(nodes.length).fill(false);
  while (queue.length) {
    queue.sort((a, b) => b - a);
    const i = queue.pop()!;
    if (done[i]) continue;
    done[i] = true;
    const node = nodes[i]!;
    order.push(node);
    for (const out of node.output) {
      for (const j of waiting.get(out) ?? []) {
        missing[j] = (missing[j] ?? 0) - 1;
        if (missing[j] === 0) queue.push(j);
      }
    }
  }
  if (order.length !== nodes.length) {
    const stuck = nodes.filter((_, i) => !done[i]).map((n) => n.name);
    throw new InternalError(`graph has a cycle through ${stuck.slice(0, 5).join(', ')}`);
  }
  return order;
}
