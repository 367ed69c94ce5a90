/** A model loaded for a command: the proto, its structure map and facts about its file. */
import { createHash } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { ModelProto } from 'onnx-buf';
import { loadModel } from '../onnx/model-io.js';
import { recognizeViT } from '../vit/index.js';
import type { ViTStructure } from '../vit/types.js';
import { InputError, UnsupportedModelError } from '../errors.js';

export interface LoadedModel {
  path: string;
  model: ModelProto;
  structure: ViTStructure;
  fileBytes: number;
}

export async function openModel(path: string): Promise<LoadedModel> {
  const model = await loadModel(path);
  let structure: ViTStructure;
  try {
    structure = recognizeViT(model);
  } catch (error) {
    if (error instanceof UnsupportedModelError || error instanceof InputError) {
      throw new UnsupportedModelError(`${path}: ${error.message}`, path);
    }
    throw error;
  }
  return { path, model, structure, fileBytes: (await stat(path)).size };
}

/**
 * A model to evaluate: recognised as a ViT when possible, else loaded as it is (an exported
 * quantized graph is no longer a ViT of plain MatMuls, but it is still a classifier to measure).
 */
export async function openAnyModel(path: string): Promise<
  Omit<LoadedModel, 'structure'> & {
    structure?: ViTStructure;
    counts?: RecordedCounts;
  }
> {
  const model = await loadModel(path);
  const fileBytes = (await stat(path)).size;
  try {
    return { path, model, structure: recognizeViT(model), fileBytes };
  } catch (error) {
    if (!(error instanceof UnsupportedModelError)) throw error;
    const counts = await recordedCounts(path);
    return { path, model, fileBytes, ...(counts ? { counts } : {}) };
  }
}

/** Parameters and MACs a vitslim report recorded for the model file it describes. */
export interface RecordedCounts {
  parameters: number;
  macs: number;
  /** The report they come from. */
  source: string;
}

/**
 * The counts of an exported model are those of the ViT it was made from, which its report.json
 * records; they are used only when the report's checksum is that of this very file.
 */
async function recordedCounts(path: string): Promise<RecordedCounts | undefined> {
  const source = join(dirname(path), 'report.json');
  let output: { sha256?: unknown; parameters?: unknown; macs?: unknown } | undefined;
  try {
    output = (JSON.parse(await readFile(source, 'utf8')) as { output?: typeof output }).output;
  } catch {
    return undefined;
  }
  if (typeof output?.parameters !== 'number' || typeof output.macs !== 'number') return undefined;
  const digest = createHash('sha256')
    .update(await readFile(path))
    .digest('hex');
  if (output.sha256 !== digest) return undefined;
  return { parameters: output.parameters, macs: output.macs, source };
}
