/**
 * Loading and saving ONNX models with the current ONNX schema (int4, uint4, float8, float4
 * types included). External data is read into memory on load and can be written on save; every
 * file is written atomically (temporary file, then rename) so a failure never leaves a partial
 * model behind.
 */
import { clone, create, fromBinary, toBinary } from '@bufbuild/protobuf';
import {
  ModelProtoSchema,
  StringStringEntryProtoSchema,
  TensorProto_DataLocation as DataLocation,
  type GraphProto,
  type ModelProto,
  type TensorProto,
} from 'onnx-buf';
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, readSync, fstatSync } from 'node:fs';
import { readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { InputError } from '../errors.js';
import { toSafeNumber } from './tensor.js';

export type { ModelProto, GraphProto, TensorProto };

/** Decodes ONNX bytes; `source` names the file in error messages. */
export function parseModel(bytes: Uint8Array, source = 'model'): ModelProto {
  let model: ModelProto;
  try {
    model = fromBinary(ModelProtoSchema, bytes);
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw new InputError(`${source}: not a readable ONNX model (${reason})`, source);
  }
  if (!model.graph || model.graph.node.length === 0 || model.opsetImport.length === 0) {
    throw new InputError(`${source}: not an ONNX model (no graph, nodes or opset)`, source);
  }
  nameUnnamedNodes(model.graph);
  return model;
}

/**
 * Reads a model file, resolving external data relative to the model's folder. The file on disk
 * is never touched again after reading.
 */
export async function loadModel(path: string): Promise<ModelProto> {
  const info = await stat(path).catch(() => undefined);
  if (!info) throw new InputError(`${path}: no such file`, path);
  if (!info.isFile()) throw new InputError(`${path}: not a file`, path);
  const model = parseModel(await readFile(path), path);
  loadExternalData(model, dirname(resolve(path)), path);
  return model;
}

/** Serialises a model to bytes (all tensor data inline). */
export function serializeModel(model: ModelProto): Uint8Array {
  return toBinary(ModelProtoSchema, model);
}

/** A deep copy, so that rewrites never touch the caller's model. */
export function cloneModel(model: ModelProto): ModelProto {
  return clone(ModelProtoSchema, model);
}

export interface SaveOptions {
  /** Write tensors at least this large (bytes) to `<name>.data` beside the model. */
  externalDataThreshold?: number;
}

/** Writes a model atomically; with `externalDataThreshold`, large tensors go to a data file. */
export async function saveModel(
  model: ModelProto,
  path: string,
  options: SaveOptions = {},
): Promise<void> {
  const threshold = options.externalDataThreshold;
  if (threshold === undefined) {
    await writeAtomic(path, serializeModel(model));
    return;
  }
  const { inline, data } = splitExternalData(model, `${basename(path)}.data`, threshold);
  await writeAtomic(join(dirname(path), `${basename(path)}.data`), data);
  await writeAtomic(path, serializeModel(inline));
}

/** Writes bytes to a temporary file beside `path`, then renames it into place. */
export async function writeAtomic(path: string, bytes: Uint8Array | string): Promise<void> {
  const temporary = join(dirname(path), `.${basename(path)}.${randomBytes(4).toString('hex')}.tmp`);
  try {
    await writeFile(temporary, bytes);
    await rename(temporary, path);
  } catch (error) {
    await rm(temporary, { force: true });
    throw error;
  }
}

function* allTensors(graph: GraphProto): Generator<TensorProto> {
  yield* graph.initializer;
  for (const node of graph.node) {
    for (const attribute of node.attribute) {
      if (attribute.t) yield attribute.t;
      yield* attribute.tensors;
      if (attribute.g) yield* allTensors(attribute.g);
      for (const sub of attribute.graphs) yield* allTensors(sub);
    }
  }
}

function externalEntry(tensor: TensorProto, key: string): string | undefined {
  return tensor.externalData.find((entry) => entry.key === key)?.value;
}

function loadExternalData(model: ModelProto, folder: string, source: string): void {
  if (!model.graph) return;
  const handles = new Map<string, number>();
  try {
    for (const tensor of allTensors(model.graph)) {
      if (tensor.dataLocation !== DataLocation.EXTERNAL) continue;
      tensor.rawData = readExternal(tensor, folder, source, handles);
      tensor.externalData = [];
      tensor.dataLocation = DataLocation.DEFAULT;
    }
  } finally {
    for (const fd of handles.values()) closeSync(fd);
  }
}

function readExternal(
  tensor: TensorProto,
  folder: string,
  source: string,
  handles: Map<string, number>,
): Uint8Array<ArrayBuffer> {
  const location = externalEntry(tensor, 'location');
  if (!location) throw new InputError(`${source}: tensor ${tensor.name} has no data location`);
  const file = resolve(folder, location);
  if (!file.startsWith(folder)) {
    throw new InputError(`${source}: external data of ${tensor.name} points outside its folder`);
  }
  let fd = handles.get(file);
  if (fd === undefined) {
    try {
      fd = openSync(file, 'r');
    } catch {
      throw new InputError(`${file}: external data of ${tensor.name} not found`, file);
    }
    handles.set(file, fd);
  }
  const offset = Number(externalEntry(tensor, 'offset') ?? '0');
  const size = fstatSync(fd).size;
  const length = Number(externalEntry(tensor, 'length') ?? String(size - offset));
  if (offset + length > size) {
    throw new InputError(`${file}: external data of ${tensor.name} is truncated`, file);
  }
  const bytes = new Uint8Array(length);
  readSync(fd, bytes, 0, length, offset);
  return bytes;
}

function splitExternalData(model: ModelProto, location: string, threshold: number) {
  const inline = cloneModel(model);
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const tensor of inline.graph ? inline.graph.initializer : []) {
    const length = tensor.rawData.byteLength;
    if (length < threshold) continue;
    // ONNX aligns external tensors so that they can be memory-mapped.
    const padding = (4096 - (offset % 4096)) % 4096;
    if (padding) chunks.push(new Uint8Array(padding));
    offset += padding;
    chunks.push(tensor.rawData);
    tensor.externalData = [
      ['location', location],
      ['offset', String(offset)],
      ['length', String(length)],
    ].map(([key, value]) => create(StringStringEntryProtoSchema, { key, value }));
    tensor.dataLocation = DataLocation.EXTERNAL;
    tensor.rawData = new Uint8Array(0);
    offset += length;
  }
  return { inline, data: Buffer.concat(chunks) };
}

/** Gives every unnamed node a unique name, so that rewrites can refer to nodes by name. */
function nameUnnamedNodes(graph: GraphProto): void {
  const taken = new Set(graph.node.map((node) => node.name).filter((name) => name !== ''));
  graph.node.forEach((node, index) => {
    if (node.name !== '') return;
    let name = `${node.opType}_${index}`;
    while (taken.has(name)) name = `${name}_`;
    node.name = name;
    taken.add(name);
  });
}

/** Opset version of a domain ('' or 'ai.onnx' for the default domain), or undefined. */
export function opsetVersion(model: ModelProto, domain = ''): number | undefined {
  const entry = model.opsetImport.find(
    (o) => o.domain === domain || (domain === '' && o.domain === 'ai.onnx'),
  );
  return entry ? toSafeNumber(entry.version) : undefined;
}
