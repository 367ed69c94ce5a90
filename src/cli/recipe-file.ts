/** Reading a recipe file: JSON holding the same options as the flags (camelCase keys). */
import { readFile } from 'node:fs/promises';
import { InputError } from '../errors.js';

export async function readRecipeFile(path: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    throw new InputError(`${path}: cannot read the recipe file`, path);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new InputError(`${path}: not valid JSON (${(error as Error).message})`, path);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new InputError(`${path}: a recipe file holds one JSON object of options`, path);
  }
  return value as Record<string, unknown>;
}
