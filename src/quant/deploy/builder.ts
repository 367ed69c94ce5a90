/**
 * A small helper the exports share: it hands out names no other node, value or initializer of
 * the model uses, and collects the commands (new initializers, new nodes, rewired inputs) that
 * `applyCommands` later makes on a copy of the model.
 */
import type { ModelProto, NodeProto } from 'onnx-buf';
import { makeNode, type AttributeValue } from '../../graph/attributes.js';
import type { Command } from '../../graph/commands.js';
import { DataType, makeTensor, type TensorData } from '../../onnx/tensor.js';
import { CalibrationError } from '../../errors.js';
import { asymmetricParams, intRange, type IntRange, type UniformParams } from '../uniform.js';
import type { ActivationRanges } from '../types.js';
import type { ActivationType } from './types.js';
import type { ChannelQuantizedWeight } from './weights.js';

export class RewriteBuilder {
  readonly commands: Command[] = [];
  private readonly taken = new Set<string>();

  constructor(model: ModelProto) {
    const graph = model.graph!;
    for (const v of [...graph.input, ...graph.output, ...graph.valueInfo]) this.taken.add(v.name);
    for (const t of graph.initializer) this.taken.add(t.name);
    for (const node of graph.node) {
      this.taken.add(node.name);
      for (const value of [...node.input, ...node.output]) this.taken.add(value);
    }
  }

  /** A name based on `base` that nothing in the model or this rewrite uses yet. */
  name(base: string): string {
    let name = base;
    for (let i = 1; this.taken.has(name); i++) name = `${base}_${i}`;
    this.taken.add(name);
    return name;
  }

  /** Adds an initializer under a fresh name and returns that name. */
  initializer(base: string, dataType: number, dims: readonly number[], data: TensorData): string {
    const name = this.name(base);
    this.commands.push({ kind: 'addInitializer', tensor: makeTensor(name, dataType, dims, data) });
    return name;
  }

  /** A float32 scalar or vector initializer. */
  floats(base: string, values: Float32Array, dims: readonly number[] = []): string {
    return this.initializer(base, DataType.FLOAT, dims, values);
  }

  /** Adds a node named after `base` with fresh output names; returns its outputs. */
  node(
    base: string,
    opType: string,
    inputs: string[],
    outputCount = 1,
    attributes?: Record<string, AttributeValue>,
    domain?: string,
  ): string[] {
    const name = this.name(base);
    const outputs = Array.from({ length: outputCount }, (_, i) =>
      this.name(outputCount === 1 ? `${name}_output` : `${name}_output_${i}`),
    );
    this.add(makeNode({ name, opType, inputs, outputs, attributes, domain }));
    return outputs;
  }

  /** Adds a node that writes the existing value name `output` (its old producer is removed). */
  nodeTo(
    base: string,
    opType: string,
    inputs: string[],
    output: string,
    attributes?: Record<string, AttributeValue>,
    domain?: string,
  ): void {
    const name = this.name(base);
    this.add(makeNode({ name, opType, inputs, outputs: [output], attributes, domain }));
  }

  add(node: NodeProto): void {
    this.commands.push({ kind: 'addNode', node });
  }

  push(...commands: Command[]): void {
    this.commands.push(...commands);
  }
}

/** Integer range of an activation element type. */
export function activationRange(type: ActivationType): IntRange {
  return intRange(8, type === 'int8');
}

export function activationDataType(type: ActivationType): number {
  return type === 'int8' ? DataType.INT8 : DataType.UINT8;
}

/**
 * Asymmetric activation parameters for a calibrated value, with the scale rounded to float32
 * (the precision it is stored with, so that every later computation uses the stored value).
 */
export function activationParams(
  ranges: ActivationRanges,
  value: string,
  type: ActivationType,
): UniformParams {
  const range = ranges.get(value);
  if (!range) {
    throw new CalibrationError(`no calibrated range for ${value}, which is quantized`, value);
  }
  if (!Number.isFinite(range.min) || !Number.isFinite(range.max) || range.min > range.max) {
    throw new CalibrationError(
      `the calibrated range of ${value} is [${range.min}, ${range.max}], not a finite interval`,
      value,
    );
  }
  const p = asymmetricParams(range.min, range.max, activationRange(type));
  return { scale: Math.fround(p.scale), zeroPoint: p.zeroPoint };
}

/** The zero point as a one-element tensor of the activation type. */
export function zeroPointData(zeroPoint: number, type: ActivationType): Int8Array | Uint8Array {
  return type === 'int8' ? Int8Array.of(zeroPoint) : Uint8Array.of(zeroPoint);
}

/**
 * An int8 weight with its per-channel scales behind a DequantizeLinear on the output-channel
 * axis; returns the DQ output. The weight's own zero points are stored when it has them, zeros
 * when `zeroPoints` asks for the input anyway.
 */
export function weightDequantize(
  builder: RewriteBuilder,
  name: string,
  weight: ChannelQuantizedWeight,
  zeroPoints: boolean,
): string {
  const channels = weight.scales.length;
  const inputs = [
    builder.initializer(`${name}_quantized`, DataType.INT8, weight.dims, weight.values),
    builder.floats(`${name}_scale`, weight.scales, [channels]),
  ];
  if (zeroPoints || weight.zeroPoints) {
    const zeros = weight.zeroPoints ?? new Int8Array(channels);
    inputs.push(builder.initializer(`${name}_zero_point`, DataType.INT8, [channels], zeros));
  }
  const axis = weight.axis;
  return builder.node(`${name}_DequantizeLinear`, 'DequantizeLinear', inputs, 1, { axis })[0]!;
}
