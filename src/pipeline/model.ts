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

/**
 * A model to evaluate: recognised as a ViT when possible, else loaded as it is (an exported
 * quantized graph is no longer a ViT of plain MatMuls, but it is still a classifier to measure).
 */
export async function openAnyModel(path: string): Promise<
  Omit<LoadedModel, 'structure'> & {
    structure?: ViTStructure;
  }
> {
  const model = await loadModel(path);
  const fileBytes = (await stat(path)).size;
  try {
    return { path, model, structure: recognizeViT(model), fileBytes };
  } catch (error) {
    if (error instanceof UnsupportedModelError) return { path, model, fileBytes };
    throw error;
  }
}
