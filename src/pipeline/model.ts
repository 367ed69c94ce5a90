/** A model loaded for a command: the proto, its structure map and facts about its file. */
import { stat } from 'node:fs/promises';
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
