/**
 * The IDX format of the MNIST files (http://yann.lecun.com/exdb/mnist/): a big-endian header
 * (two zero bytes, a type code, the number of dimensions, then each dimension as uint32) and
 * the values in row-major order. Only unsigned bytes (type 0x08) occur in MNIST.
 */
import { readFile } from 'node:fs/promises';
import { gunzipSync } from 'node:zlib';
import { InputError } from '../errors.js';

export interface IdxArray {
  dims: number[];
  data: Uint8Array;
}

const ubyte = 0x08;

/** Reads an IDX file, gzip-compressed or not; InputError naming the file when malformed. */
export async function readIdx(path: string): Promise<IdxArray> {
  let bytes: Uint8Array = await readFile(path);
  if (bytes[0] === 0x1f && bytes[1] === 0x8b) {
    try {
      bytes = gunzipSync(bytes);
    } catch (error) {
      throw new InputError(`cannot decompress ${path}: ${(error as Error).message}`, path);
    }
  }
  return parseIdx(bytes, path);
}

/** Parses IDX bytes; `source` names them in errors. */
export function parseIdx(bytes: Uint8Array, source: string): IdxArray {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length < 4 || view.getUint16(0) !== 0 || bytes[2] !== ubyte) {
    throw new InputError(`${source} is not an unsigned-byte IDX file`, source);
  }
  const rank = bytes[3]!;
  const header = 4 + 4 * rank;
  if (rank === 0 || bytes.length < header) {
    throw new InputError(`${source}: IDX header truncated`, source);
  }
  const dims = Array.from({ length: rank }, (_, i) => view.getUint32(4 + 4 * i));
  const count = dims.reduce((a, b) => a * b, 1);
  if (bytes.length !== header + count) {
    throw new InputError(
      `${source}: IDX header announces ${count} values (${dims.join('×')}) ` +
        `but the file holds ${bytes.length - header}`,
      source,
    );
  }
  return { dims, data: bytes.subarray(header) };
}

/** Writes IDX bytes (unsigned bytes), the inverse of `parseIdx`. */
export function formatIdx(array: IdxArray): Uint8Array {
  const header = 4 + 4 * array.dims.length;
  const out = new Uint8Array(header + array.data.length);
  const view = new DataView(out.buffer);
  out[2] = ubyte;
  out[3] = array.dims.length;
  array.dims.forEach((d, i) => view.setUint32(4 + 4 * i, d));
  out.set(array.data, header);
  return out;
}
