/**
 * Structural checks run after every rewrite: unique node names, one producer per value, every
 * input resolved, every output produced, no cycle. Problems are collected and reported together.
 */
import type { ModelProto } from 'onnx-buf';
import { InternalError } from '../errors.js';
import { topologicalSort } from './graph.js';

export function graphProblems(model: ModelProto): string[] {
  const graph = model.graph;
  if (!graph) return ['the model has no graph'];
  const problems: string[] = [];
  const names = new Set<string>();
  const defined = new Map<string, string>();
  const define = (value: string, by: string) => {
    const previous = defined.get(value);
    if (previous !== undefined)
      problems.push(`value ${value} is produced by ${previous} and ${by}`);
    defined.set(value, by);
  };
  for (const input of graph.input) define(input.name, 'graph input');
  for (const tensor of graph.initializer) {
    if (!defined.has(tensor.name)) define(tensor.name, `initializer`);
    else if (defined.get(tensor.name) !== 'graph input') define(tensor.name, 'initializer');
  }
  for (const node of graph.node) {
    if (node.name === '') problems.push(`a ${node.opType} node has no name`);
    else if (names.has(node.name)) problems.push(`node name ${node.name} is used twice`);
    names.add(node.name);
    for (const output of node.output) if (output) define(output, `node ${node.name}`);
  }
  for (const node of graph.node) {
    for (const input of node.input) {
      if (input && !defined.has(input)) {
        problems.push(`node ${node.name} reads ${input}, which nothing produces`);
      }
    }
  }
  for (const output of graph.output) {
    if (!defined.has(output.name)) problems.push(`graph output ${output.name} is never produced`);
  }
  if (problems.length === 0) {
    try {
      topologicalSort(graph.node, new Set(defined.keys()));
    } catch (error) {
      problems.push(error instanceof Error ? error.message : String(error));
    }
  }
  return problems;
}

/** Throws InternalError listing every problem; a rewrite that fails this is a vitslim bug. */
export function validateGraph(model: ModelProto, context = 'graph'): void {
  const problems = graphProblems(model);
  if (problems.length === 0) return;
  const shown = problems.slice(0, 5).join('; ');
  const more = problems.length > 5 ? ` (and ${problems.length - 5} more)` : '';
  throw new InternalError(`${context} is invalid: ${shown}${more}`);
}
