/**
 * The output folder of every command that writes a model: `model.onnx`, `report.json` and
 * `report.md`. Everything is written into a temporary sibling folder first and renamed into
 * place at the end, so a failure at any step leaves no partial output behind; an existing
 * output is refused unless `force` is set.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join, resolve, sep } from 'node:path';
import type { PreprocessConfig } from '../data/index.js';
import { InputError } from '../errors.js';
import { versions } from '../version.js';

export interface OutputFile {
  name: string;
  contents: Uint8Array | string;
}

/** Fails early, before any work, when the output exists and `force` is not set. */
export async function checkOutputFree(out: string, force: boolean): Promise<void> {
  const info = await stat(out).catch(() => undefined);
  if (!info) return;
  if (!info.isDirectory()) throw new InputError(`${out}: exists and is not a folder`, out);
  if (force) return;
  if ((await readdir(out)).length > 0) {
    throw new InputError(`${out}: output folder exists and is not empty (pass --force)`, out);
  }
}

/**
 * Refuses an output folder that holds any input (model, images) at any depth, or the current
 * folder: replacing it with --force would delete them.
 */
export function checkNotInputFolder(out: string, inputs: readonly string[]): void {
  const target = resolve(out);
  const inside = (path: string) => path === target || path.startsWith(target + sep);
  if (inside(process.cwd())) {
    throw new InputError(`${out}: the output folder holds the current folder; choose a new one`);
  }
  for (const input of inputs) {
    if (inside(resolve(input)) || inside(resolve(dirname(input)))) {
      throw new InputError(`${out}: the output folder holds the input ${input}`, out);
    }
  }
}

/** Writes all files into a fresh folder and moves it to `out` in one rename. */
export async function writeOutputFolder(
  out: string,
  files: readonly OutputFile[],
  force: boolean,
): Promise<void> {
  await checkOutputFree(out, force);
  const parent = dirname(resolve(out));
  await mkdir(parent, { recursive: true });
  const staging = join(parent, `.${basename(out)}.${randomBytes(4).toString('hex')}.tmp`);
  try {
    await mkdir(staging);
    for (const file of files) await writeFile(join(staging, file.name), file.contents);
    const old = (await stat(out).catch(() => undefined))
      ? join(parent, `.${basename(out)}.${randomBytes(4).toString('hex')}.old`)
      : undefined;
    if (old) await rename(out, old);
    await rename(staging, out);
    if (old) await rm(old, { recursive: true, force: true });
  } catch (error) {
    await rm(staging, { recursive: true, force: true });
    throw error;
  }
}

/**
 * A timm-style config.json describing the preprocessing the model expects, so that
 * `vitslim eval OUT/model.onnx` needs no flags.
 */
export function modelConfig(p: PreprocessConfig): string {
  const config = {
    input_size: [p.channels, p.height, p.width],
    mean: p.mean,
    std: p.std,
    interpolation: p.interpolation,
    // timm reads resize = floor(crop / crop_pct); the half pixel keeps that floor exact
    ...(p.resize && p.crop ? { crop_pct: p.crop / (p.resize + 0.5) } : {}),
  };
  return `${JSON.stringify(config, null, 2)}\n`;
}

/**
 * report.json of a model-writing command: the tool, command and versions, the input, the
 * options and preprocessing it ran with, then the command's own report.
 */
export function reportJson(
  command: string,
  report: object,
  context: { input: unknown; options: unknown; preprocess: PreprocessConfig },
): string {
  const document = {
    tool: 'vitslim',
    command,
    versions: versions(),
    input: context.input,
    options: context.options,
    preprocess: context.preprocess,
    ...report,
  };
  return `${JSON.stringify(document, null, 2)}\n`;
}
