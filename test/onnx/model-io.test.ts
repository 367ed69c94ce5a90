import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { InputError } from '../../src/errors.js';
import { loadModel, saveModel } from '../../src/onnx/model-io.js';
import { DataType, makeTensor, readTensor } from '../../src/onnx/tensor.js';
import { createSession, runSingle } from '../../src/runtime/session.js';
import { noiseInput, vitMnist, vitTiny } from '../fixtures.js';

async function logits(pathOrModel: string, input: Float32Array, dims: number[]) {
  const session = await createSession(await readFile(pathOrModel), { threads: 2 });
  const out = await runSingle(session, input, dims);
  return out[session.outputNames[0]!]!.data as Float32Array;
}

describe('model io', () => {
  it('saves an unchanged ViT-Tiny that gives identical outputs in onnxruntime', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vitslim-io-'));
    const copy = join(dir, 'copy.onnx');
    await saveModel(await loadModel(vitTiny.opset17), copy);
    const input = noiseInput(2 * 3 * 224 * 224);
    const a = await logits(vitTiny.opset17, input, [2, 3, 224, 224]);
    const b = await logits(copy, input, [2, 3, 224, 224]);
    expect(Array.from(b)).toEqual(Array.from(a));
  });

  it('writes large tensors as external data and reads them back to the same outputs', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vitslim-ext-'));
    const path = join(dir, 'external.onnx');
    await saveModel(await loadModel(vitMnist), path, { externalDataThreshold: 1024 });
    expect((await readFile(path)).byteLength).toBeLessThan(200_000);
    expect((await readFile(`${path}.data`)).byteLength).toBeGreaterThan(600_000);
    const input = noiseInput(28 * 28);
    const direct = await logits(vitMnist, input, [1, 1, 28, 28]);
    // onnxruntime resolves the external file itself; our loader must agree with it
    const session = await createSession(await loadModel(path), { threads: 1 });
    const reloaded = (await runSingle(session, input, [1, 1, 28, 28]))[session.outputNames[0]!]!;
    expect(Array.from(reloaded.data as Float32Array)).toEqual(Array.from(direct));
  });

  it('rejects a truncated file and a file that is not ONNX, naming the file', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vitslim-bad-'));
    const truncated = join(dir, 'truncated.onnx');
    await writeFile(truncated, (await readFile(vitMnist)).subarray(0, 5000));
    await expect(loadModel(truncated)).rejects.toThrow(InputError);
    await expect(loadModel(truncated)).rejects.toThrow(truncated);
    const text = join(dir, 'notes.onnx');
    await writeFile(text, 'this is not a model\n');
    await expect(loadModel(text)).rejects.toThrow(/not .*ONNX/);
    await expect(loadModel(join(dir, 'missing.onnx'))).rejects.toThrow(/no such file/);
  });

  it('packs int4 two per byte with the low nibble first, as the ONNX spec lays it out', () => {
    const tensor = makeTensor('w', DataType.INT4, [3], Int8Array.from([-8, 7, -1]));
    // -8 -> 0x8 (low), 7 -> 0x7 (high) => 0x78; -1 -> 0xF in the low nibble of byte 2
    expect(Array.from(tensor.rawData)).toEqual([0x78, 0x0f]);
    expect(Array.from(readTensor(tensor) as Int8Array)).toEqual([-8, 7, -1]);
  });
});
