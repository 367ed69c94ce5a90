/**
 * Reading and writing ONNX TensorProto data as typed arrays. int64 stays in BigInt64Array and
 * is narrowed only through a checked helper; 4-bit types are packed two per byte, low nibble
 * first, as the ONNX spec lays them out.
 */
import { create } from '@bufbuild/protobuf';
import { TensorProtoSchema, TensorProto_DataType as DataType, type TensorProto } from 'onnx-buf';
import { InputError } from '../errors.js';

export { DataType };

export type TensorData =
  | Float32Array
  | Float64Array
  | Int8Array
  | Uint8Array
  | Int16Array
  | Uint16Array
  | Int32Array
  | BigInt64Array;

/** Bytes per element of a data type; 0.5 for the packed 4-bit types. */
export function bytesPerElement(dataType: number): number {
  switch (dataType) {
    case DataType.FLOAT:
    case DataType.INT32:
    case DataType.UINT32:
      return 4;
    case DataType.DOUBLE:
    case DataType.INT64:
    case DataType.UINT64:
      return 8;
    case DataType.FLOAT16:
    case DataType.BFLOAT16:
    case DataType.INT16:
    case DataType.UINT16:
      return 2;
    case DataType.INT8:
    case DataType.UINT8:
    case DataType.BOOL:
    case DataType.FLOAT8E4M3FN:
    case DataType.FLOAT8E4M3FNUZ:
    case DataType.FLOAT8E5M2:
    case DataType.FLOAT8E5M2FNUZ:
      return 1;
    case DataType.INT4:
    case DataType.UINT4:
    case DataType.FLOAT4E2M1:
      return 0.5;
    default:
      throw new InputError(`unsupported tensor data type ${dataTypeName(dataType)}`);
  }
}

export function dataTypeName(dataType: number): string {
  return DataType[dataType] ?? `#${dataType}`;
}

/** Converts an int64 to a JS number, failing loudly where it would lose precision. */
export function toSafeNumber(value: bigint, what = 'int64 value'): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER) || value < BigInt(Number.MIN_SAFE_INTEGER)) {
    throw new InputError(`${what} ${value} does not fit in a double`);
  }
  return Number(value);
}

export function tensorDims(tensor: TensorProto): number[] {
  return tensor.dims.map((d) => toSafeNumber(d, `dimension of ${tensor.name}`));
}

export function elementCount(dims: readonly number[]): number {
  let n = 1;
  for (const d of dims) n *= d;
  return n;
}

/** Copies raw little-endian bytes into a fresh, aligned typed array. */
function fromRaw<T extends TensorData>(
  raw: Uint8Array,
  Ctor: { new (buffer: ArrayBuffer): T; BYTES_PER_ELEMENT: number },
): T {
  const copy = new Uint8Array(raw.byteLength);
  copy.set(raw);
  return new Ctor(copy.buffer);
}

/** Unpacks 4-bit values (two per byte, low nibble first), sign-extending for INT4. */
function unpack4(raw: Uint8Array, count: number, signed: boolean): Int8Array | Uint8Array {
  const out = signed ? new Int8Array(count) : new Uint8Array(count);
  for (let i = 0; i < count; i++) {
    const byte = raw[i >> 1] ?? 0;
    const nibble = i & 1 ? byte >> 4 : byte & 0x0f;
    out[i] = signed && nibble > 7 ? nibble - 16 : nibble;
  }
  return out;
}

/**
 * The values of a tensor as a typed array: Float32Array for FLOAT, Int8Array for INT8 and INT4
 * (unpacked), Uint8Array for UINT8, UINT4 and BOOL, Int32Array for INT32, BigInt64Array for
 * INT64, Float64Array for DOUBLE. Raw data is copied, so the result never aliases the model.
 */
export function readTensor(tensor: TensorProto): TensorData {
  const count = elementCount(tensorDims(tensor));
  const raw = tensor.rawData;
  const hasRaw = raw.byteLength > 0;
  switch (tensor.dataType) {
    case DataType.FLOAT:
      return hasRaw ? fromRaw(raw, Float32Array) : Float32Array.from(tensor.floatData);
    case DataType.DOUBLE:
      return hasRaw ? fromRaw(raw, Float64Array) : Float64Array.from(tensor.doubleData);
    case DataType.INT32:
      return hasRaw ? fromRaw(raw, Int32Array) : Int32Array.from(tensor.int32Data);
    case DataType.INT64:
      return hasRaw ? fromRaw(raw, BigInt64Array) : BigInt64Array.from(tensor.int64Data);
    case DataType.INT8:
      return hasRaw ? fromRaw(raw, Int8Array) : Int8Array.from(tensor.int32Data);
    case DataType.UINT8:
    case DataType.BOOL:
      return hasRaw ? fromRaw(raw, Uint8Array) : Uint8Array.from(tensor.int32Data);
    case DataType.INT16:
      return hasRaw ? fromRaw(raw, Int16Array) : Int16Array.from(tensor.int32Data);
    case DataType.UINT16:
    case DataType.FLOAT16:
      return hasRaw ? fromRaw(raw, Uint16Array) : Uint16Array.from(tensor.int32Data);
    case DataType.INT4:
    case DataType.UINT4: {
      const packed = hasRaw ? raw : Uint8Array.from(tensor.int32Data);
      return unpack4(packed, count, tensor.dataType === DataType.INT4);
    }
    default:
      throw new InputError(
        `cannot read tensor ${tensor.name}: data type ${dataTypeName(tensor.dataType)}`,
        tensor.name,
      );
  }
}

/** The values of a numeric tensor as float32 (int64 checked), for statistics and math. */
export function readFloat32(tensor: TensorProto): Float32Array {
  const data = readTensor(tensor);
  if (data instanceof Float32Array) return data;
  const out = new Float32Array(data.length);
  if (data instanceof BigInt64Array) {
    for (let i = 0; i < data.length; i++) out[i] = toSafeNumber(data[i] ?? 0n);
  } else {
    for (let i = 0; i < data.length; i++) out[i] = data[i] ?? 0;
  }
  return out;
}

/** Packs 4-bit values two per byte, low nibble first. */
function pack4(values: Int8Array | Uint8Array): Uint8Array {
  const out = new Uint8Array(Math.ceil(values.length / 2));
  for (let i = 0; i < values.length; i++) {
    const nibble = (values[i] ?? 0) & 0x0f;
    out[i >> 1] = (out[i >> 1] ?? 0) | (i & 1 ? nibble << 4 : nibble);
  }
  return out;
}

/**
 * Builds a TensorProto holding `data` as raw little-endian bytes. For INT4/UINT4 `data` holds
 * one value per element (Int8Array/Uint8Array) and is packed here.
 */
export function makeTensor(
  name: string,
  dataType: number,
  dims: readonly number[],
  data: TensorData,
): TensorProto {
  const count = elementCount(dims);
  if (data.length !== count) {
    throw new RangeError(
      `tensor ${name}: ${data.length} values for dims [${dims.join(', ')}] (${count} expected)`,
    );
  }
  let raw: Uint8Array;
  if (dataType === DataType.INT4 || dataType === DataType.UINT4) {
    if (!(data instanceof Int8Array || data instanceof Uint8Array)) {
      throw new TypeError(`tensor ${name}: 4-bit data must be an Int8Array or Uint8Array`);
    }
    raw = pack4(data);
  } else {
    raw = new Uint8Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength));
  }
  return create(TensorProtoSchema, {
    name,
    dataType,
    dims: dims.map((d) => BigInt(d)),
    rawData: raw as Uint8Array<ArrayBuffer>,
  });
}

/** A float32 tensor from values. */
export function floatTensor(name: string, dims: readonly number[], values: Float32Array) {
  return makeTensor(name, DataType.FLOAT, dims, values);
}

/** An int64 tensor from JS numbers (shape constants, axes). */
export function int64Tensor(name: string, dims: readonly number[], values: readonly number[]) {
  return makeTensor(name, DataType.INT64, dims, BigInt64Array.from(values.map((v) => BigInt(v))));
}
