/**
 * Rewriting the target of a Reshape whose output axes change size (the heads axis after heads
 * are removed, the merged heads × headDim axis before the output projection). Exporters give
 * the target as a constant, or build it at run time with Shape → Gather → Unsqueeze → Concat
 * where some parts are constants and some computed (timm's head size is `C / heads`, computed
 * from the input width: after removing a head, rewriting the divisor would make it wrong).
 * So the rewrite works on the element of the target, wherever it comes from:
 *
 * - a constant target gets a fresh constant with the element changed;
 * - a Concat target gets a copy of the Concat in which the part holding the element is replaced
 *   by a fresh constant. A computed part may be replaced only when the graph computes the same
 *   value for a batch of 1 and a batch of 2, so that no batch-dependent dimension is frozen.
 *
 * Elements equal to −1 are inferred by the Reshape and left alone. Fresh constants and copies
 * are used because exporters share constants between blocks that may be pruned differently.
 */
import type { NodeProto } from 'onnx-buf';
import type { Command } from '../graph/commands.js';
import { makeNode } from '../graph/attributes.js';
import { int64Tensor } from '../onnx/tensor.js';
import { nodeLabel, unsupported, type TraceContext } from '../vit/trace.js';
import type { NameAllocator } from './tensors.js';

/** An output axis of a Reshape whose size changes from `from` to `to`. */
export interface AxisChange {
  axis: number;
  from: number;
  to: number;
}

/** Shapes of the same graph for one image and for two, to tell batch-dependent values apart. */
export interface ShapeContexts {
  one: TraceContext;
  two: TraceContext;
}

/** Commands making `reshape` produce the changed sizes. */
export function reshapeTargetCommands(
  shapes: ShapeContexts,
  reshape: NodeProto,
  changes: readonly AxisChange[],
  names: NameAllocator,
): Command[] {
  const target = reshape.input[1]!;
  const values = shapes.one.shapes.get(target).values;
  const at = nodeLabel(reshape);
  if (!values) unsupported(`${at}: the values of its shape input ${target} are unknown`, target);
  const edits = new Map<number, number>();
  for (const change of changes) {
    const element = values[change.axis];
    if (element === -1) continue;
    if (element !== change.from) {
      unsupported(
        `${at}: expected element ${change.axis} of its shape ${target} to be ${change.from}, found ${element}`,
        reshape.name,
      );
    }
    edits.set(change.axis, change.to);
  }
  if (edits.size === 0) return [];

  const ctx = shapes.one;
  if (ctx.index.isConstant(target)) {
    const edited = values.map((v, i) => edits.get(i) ?? v);
    const name = names.name(`${target}_pruned`);
    return [
      { kind: 'addInitializer', tensor: int64Tensor(name, [edited.length], edited) },
      { kind: 'setNodeInput', node: reshape.name, index: 1, value: name },
    ];
  }
  const concat = ctx.index.producer.get(target);
  if (concat?.opType !== 'Concat') {
    unsupported(
      `${at}: its shape ${target} is neither a constant nor a Concat of parts; cannot change element ${[...edits.keys()].join(', ')}`,
      reshape.name,
    );
  }
  return concatCommands(shapes, reshape, concat, edits, names);
}

/** A copy of the target's Concat with the parts holding the edited elements replaced. */
function concatCommands(
  shapes: ShapeContexts,
  reshape: NodeProto,
  concat: NodeProto,
  edits: Map<number, number>,
  names: NameAllocator,
): Command[] {
  const commands: Command[] = [];
  const inputs = [...concat.input];
  let offset = 0;
  concat.input.forEach((part, p) => {
    const facts = shapes.one.shapes.get(part);
    const length = facts.shape?.length === 1 ? facts.shape[0]! : undefined;
    if (length === undefined) {
      unsupported(`${nodeLabel(concat)}: the length of its part ${part} is unknown`, concat.name);
    }
    const inPart = [...edits].filter(([axis]) => axis >= offset && axis < offset + length);
    if (inPart.length > 0) {
      const values = partValues(shapes, concat, part, facts.values);
      const edited = values.map((v, i) => edits.get(offset + i) ?? v);
      const name = names.name(`${part}_pruned`);
      commands.push({ kind: 'addInitializer', tensor: int64Tensor(name, [length], edited) });
      inputs[p] = name;
    }
    offset += length;
  });
  const name = names.name(`${concat.name}_pruned`);
  const output = names.name(`${concat.output[0]!}_pruned`);
  const copy = makeNode({
    name,
    opType: 'Concat',
    inputs,
    outputs: [output],
    attributes: { axis: 0 },
  });
  commands.push({ kind: 'addNode', node: copy });
  commands.push({ kind: 'setNodeInput', node: reshape.name, index: 1, value: output });
  return commands;
}

/** The values of a Concat part, checked not to depend on the batch size when computed. */
function partValues(
  shapes: ShapeContexts,
  concat: NodeProto,
  part: string,
  values: number[] | undefined,
): number[] {
  if (!values) unsupported(`${nodeLabel(concat)}: the values of ${part} are unknown`, part);
  if (shapes.one.index.isConstant(part)) return values;
  const two = shapes.two.shapes.get(part).values;
  const same =
    two !== undefined && two.length === values.length && two.every((v, i) => v === values[i]);
  if (!same) {
    unsupported(
      `${nodeLabel(concat)}: its part ${part} depends on the batch size and holds a dimension that pruning changes`,
      part,
    );
  }
  return values;
}
