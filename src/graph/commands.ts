/**
 * Graph rewrites as data. Passes never edit a model: they return a list of commands, and
 * `applyCommands` makes the changes on a copy, restores topological order and validates the
 * result. Nodes are referred to by name (every loaded model has unique node names).
 */
import { create } from '@bufbuild/protobuf';
import {
  OperatorSetIdProtoSchema,
  TypeProto_TensorSchema,
  TypeProtoSchema,
  ValueInfoProtoSchema,
  type AttributeProto,
  type ModelProto,
  type NodeProto,
  type TensorProto,
} from 'onnx-buf';
import { assertNever, InternalError } from '../errors.js';
import { cloneModel } from '../onnx/model-io.js';
import { DataType } from '../onnx/tensor.js';
import { topologicalSort } from './graph.js';
import { validateGraph } from './validate.js';

export type Command =
  | { kind: 'addNode'; node: NodeProto }
  | { kind: 'removeNode'; name: string }
  | { kind: 'setNodeInput'; node: string; index: number; value: string }
  | { kind: 'setAttribute'; node: string; attribute: AttributeProto }
  | { kind: 'addInitializer'; tensor: TensorProto }
  | { kind: 'replaceInitializer'; tensor: TensorProto }
  | { kind: 'removeInitializer'; name: string }
  /** Makes every consumer of `from` (and the graph output, if it is one) read `to` instead. */
  | { kind: 'replaceUses'; from: string; to: string; exceptNodes?: string[] }
  | { kind: 'addOutput'; name: string; elemType?: number; shape?: (number | string)[] }
  | { kind: 'removeOutput'; name: string }
  | { kind: 'addOpset'; domain: string; version: number };

export interface ApplyOptions {
  /** Drop initializers and nodes no longer reachable from any graph output. */
  removeUnused?: boolean;
  /** What the rewrite was, for error messages. */
  context?: string;
}

/** Applies commands to a copy of `model`; the input model is never modified. */
export function applyCommands(
  model: ModelProto,
  commands: readonly Command[],
  options: ApplyOptions = {},
): ModelProto {
  const result = cloneModel(model);
  for (const command of commands) applyOne(result, command);
  if (options.removeUnused) removeUnused(result);
  sortNodes(result);
  validateGraph(result, options.context ?? 'rewritten graph');
  return result;
}

function applyOne(model: ModelProto, command: Command): void {
  const graph = model.graph!;
  switch (command.kind) {
    case 'addNode':
      if (graph.node.some((n) => n.name === command.node.name)) {
        throw new InternalError(`cannot add node ${command.node.name}: the name is taken`);
      }
      graph.node.push(command.node);
      return;
    case 'removeNode':
      graph.node.splice(nodeIndex(model, command.name), 1);
      return;
    case 'setNodeInput': {
      const node = graph.node[nodeIndex(model, command.node)]!;
      if (command.index >= node.input.length) {
        throw new InternalError(`node ${node.name} has no input #${command.index}`);
      }
      node.input[command.index] = command.value;
      return;
    }
    case 'setAttribute': {
      const node = graph.node[nodeIndex(model, command.node)]!;
      const kept = node.attribute.filter((a) => a.name !== command.attribute.name);
      node.attribute = [...kept, command.attribute];
      return;
    }
    case 'addInitializer':
      if (graph.initializer.some((t) => t.name === command.tensor.name)) {
        throw new InternalError(`cannot add initializer ${command.tensor.name}: the name is taken`);
      }
      graph.initializer.push(command.tensor);
      return;
    case 'replaceInitializer': {
      const i = graph.initializer.findIndex((t) => t.name === command.tensor.name);
      if (i < 0) throw new InternalError(`no initializer named ${command.tensor.name}`);
      graph.initializer[i] = command.tensor;
      return;
    }
    case 'removeInitializer':
      graph.initializer = graph.initializer.filter((t) => t.name !== command.name);
      graph.input = graph.input.filter((v) => v.name !== command.name);
      return;
    case 'replaceUses':
      replaceUses(model, command.from, command.to, new Set(command.exceptNodes ?? []));
      return;
    case 'addOutput':
      graph.output.push(valueInfo(command.name, command.elemType, command.shape));
      return;
    case 'removeOutput':
      graph.output = graph.output.filter((v) => v.name !== command.name);
      return;
    case 'addOpset':
      setOpset(model, command.domain, command.version);
      return;
    default:
      assertNever(command, 'graph command');
  }
}

function nodeIndex(model: ModelProto, name: string): number {
  const i = model.graph!.node.findIndex((n) => n.name === name);
  if (i < 0) throw new InternalError(`no node named ${name}`);
  return i;
}

function replaceUses(model: ModelProto, from: string, to: string, except: Set<string>): void {
  const graph = model.graph!;
  for (const node of graph.node) {
    if (except.has(node.name)) continue;
    node.input = node.input.map((v) => (v === from ? to : v));
  }
  for (const output of graph.output) if (output.name === from) output.name = to;
}

/** A tensor value-info; element type float by default, shape dims numbers or symbolic names. */
export function valueInfo(name: string, elemType = DataType.FLOAT, shape?: (number | string)[]) {
  const dims = shape?.map((d) =>
    typeof d === 'number'
      ? { value: { case: 'dimValue' as const, value: BigInt(d) } }
      : { value: { case: 'dimParam' as const, value: d } },
  );
  return create(ValueInfoProtoSchema, {
    name,
    type: create(TypeProtoSchema, {
      value: {
        case: 'tensorType',
        value: create(TypeProto_TensorSchema, {
          elemType,
          shape: dims ? { dim: dims } : undefined,
        }),
      },
    }),
  });
}

function setOpset(model: ModelProto, domain: string, version: number): void {
  const existing = model.opsetImport.find((o) => o.domain === domain);
  if (existing) {
    if (existing.version < BigInt(version)) existing.version = BigInt(version);
    return;
  }
  model.opsetImport.push(create(OperatorSetIdProtoSchema, { domain, version: BigInt(version) }));
}

function sortNodes(model: ModelProto): void {
  const graph = model.graph!;
  const available = new Set([
    ...graph.input.map((v) => v.name),
    ...graph.initializer.map((t) => t.name),
  ]);
  const defined = new Set(available);
  for (const node of graph.node) for (const o of node.output) defined.add(o);
  // dangling inputs are left for validation to report with the node's name
  const missing = graph.node.flatMap((n) => n.input.filter((v) => v && !defined.has(v)));
  if (missing.length === 0) graph.node = topologicalSort(graph.node, available);
}

/** Removes nodes and initializers that no graph output depends on. */
function removeUnused(model: ModelProto): void {
  const graph = model.graph!;
  const producer = new Map<string, NodeProto>();
  for (const node of graph.node) for (const o of node.output) producer.set(o, node);
  const needed = new Set<string>();
  const live = new Set<NodeProto>();
  const stack = graph.output.map((o) => o.name);
  while (stack.length) {
    const value = stack.pop()!;
    if (needed.has(value)) continue;
    needed.add(value);
    const node = producer.get(value);
    if (node && !live.has(node)) {
      live.add(node);
      stack.push(...node.input.filter((v) => v));
    }
  }
  graph.node = graph.node.filter((n) => live.has(n));
  graph.initializer = graph.initializer.filter((t) => needed.has(t.name));
}
