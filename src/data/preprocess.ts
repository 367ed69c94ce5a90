/**
 * The preprocessing a model expects: channels, size, resize, crop, interpolation, mean and std.
 * It comes from the `config.json` beside the model (timm's fields) and from explicit overrides;
 * a wrong mean or std costs a ViT tens of points of accuracy without any error, so nothing is
 * guessed: without a config, the caller must say what to use.
 */
import { readFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { z } from 'zod';
import { InputError } from '../errors.js';

export const interpolations = ['bicubic', 'bilinear', 'nearest', 'lanczos'] as const;
export type Interpolation = (typeof interpolations)[number];

/**
 * How an image becomes a model input, in the order of torchvision's eval transform:
 * Resize(resize) → CenterCrop(crop) → ToTensor → Normalize(mean, std).
 */
export interface PreprocessConfig {
  channels: 1 | 3;
  /** Per channel, in [0, 1] units (after the division by 255). */
  mean: number[];
  std: number[];
  /**
   * Shorter side after resizing, aspect ratio kept; null: no resize when `crop` is set, else
   * the image is resized to width×height.
   */
  resize: number | null;
  /** Side of the centre-cropped square; null: centre crop to height×width. */
  crop: number | null;
  interpolation: Interpolation;
  /** Model input height and width. */
  height: number;
  width: number;
}

const side = z
  .number()
  .int('expected a whole number of pixels')
  .positive('expected a whole number of pixels ≥ 1')
  .max(16384, 'expected at most 16384 pixels');

/** The override keys that are CLI flags of the same name: a bad value is named by its flag. */
const sizeFlags = ['resize', 'crop'] as const;

/** Every field of a preprocessing config; also the schema of overrides (all optional). */
export const preprocessConfigSchema = z.strictObject({
  channels: z.union([z.literal(1), z.literal(3)]),
  mean: z.array(z.number().finite()).min(1).max(3),
  std: z.array(z.number().finite().positive()).min(1).max(3),
  resize: side.nullable(),
  crop: side.nullable(),
  interpolation: z.enum(interpolations),
  height: side,
  width: side,
});

export const preprocessOverridesSchema = preprocessConfigSchema.partial();

/** The fields of a timm `config.json` that decide preprocessing; other fields are ignored. */
const timmConfigSchema = z.looseObject({
  input_size: z.tuple([z.union([z.literal(1), z.literal(3)]), side, side]),
  crop_pct: z.number().positive().max(2).optional(),
  interpolation: z.enum(interpolations).optional(),
  mean: z.array(z.number().finite()).min(1).max(3).optional(),
  std: z.array(z.number().finite().positive()).min(1).max(3).optional(),
});

const flagHint = 'pass --mean, --std, --resize, --crop and --interpolation';

/**
 * The preprocessing for the model at `modelPath`: `config.json` beside it when present, with
 * `overrides` on top. Throws InputError when neither gives mean and std, or the result is
 * inconsistent.
 */
export async function resolvePreprocess(
  modelPath: string,
  overrides: Partial<PreprocessConfig> = {},
): Promise<PreprocessConfig> {
  const given = parseOrThrow(
    preprocessOverridesSchema,
    overrides,
    'preprocessing overrides',
    sizeFlags,
  );
  const configPath = join(dirname(modelPath), 'config.json');
  const fromConfig = await readTimmConfig(configPath);
  if (!fromConfig && Object.keys(given).length === 0) {
    throw new InputError(
      `no preprocessing known for ${modelPath}: there is no config.json beside it; ${flagHint}`,
      modelPath,
    );
  }
  const source = fromConfig ? configPath : modelPath;
  const config = completeConfig({ ...fromConfig, ...given }, source);
  checkChannelValues(config, given, source);
  checkConsistent(config, given, source);
  return config;
}

/** Reads a timm config; undefined when the file does not exist. */
async function readTimmConfig(path: string): Promise<Partial<PreprocessConfig> | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new InputError(`cannot read ${path}: ${(error as Error).message}`, path);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new InputError(`${path} is not valid JSON: ${(error as Error).message}`, path);
  }
  return fromTimm(parseOrThrow(timmConfigSchema, json, path));
}

/**
 * timm's eval transform: crop = input size, resize = floor(crop / crop_pct). Without crop_pct
 * the image is taken at the input size as it is (the MNIST ViT's config says so).
 */
function fromTimm(config: z.infer<typeof timmConfigSchema>): Partial<PreprocessConfig> {
  const [channels, height, width] = config.input_size;
  const square = height === width;
  const out: Partial<PreprocessConfig> = { channels, height, width, resize: null, crop: null };
  if (config.crop_pct !== undefined && square) {
    out.crop = height;
    out.resize = Math.floor(height / config.crop_pct);
  }
  if (config.interpolation) out.interpolation = config.interpolation;
  if (config.mean) out.mean = config.mean;
  if (config.std) out.std = config.std;
  return out;
}

/** Fills defaults, broadcasts one-value mean/std, and checks the fields agree. */
function completeConfig(partial: Partial<PreprocessConfig>, source: string): PreprocessConfig {
  const missing = (['mean', 'std'] as const).filter((k) => partial[k] === undefined);
  if (missing.length > 0) {
    throw new InputError(`no ${missing.join(' or ')} known for ${source}; ${flagHint}`, source);
  }
  const channels = partial.channels ?? 3;
  const resize = partial.resize ?? null;
  const crop = partial.crop ?? null;
  const fallbackSide = crop ?? resize;
  const config = {
    channels,
    mean: broadcast(partial.mean ?? [], channels),
    std: broadcast(partial.std ?? [], channels),
    resize,
    crop,
    interpolation: partial.interpolation ?? 'bicubic',
    height: partial.height ?? fallbackSide,
    width: partial.width ?? fallbackSide,
  };
  if (config.height === null || config.width === null) {
    throw new InputError(`no input size known for ${source}; pass --crop or --resize`, source);
  }
  return parseOrThrow(preprocessConfigSchema, config, source);
}

/**
 * A --mean or --std whose count does not fit the model's channels is the flag's fault: it is
 * named with the values given, not as a problem of the config file the channels came from.
 */
function checkChannelValues(
  config: PreprocessConfig,
  given: Partial<PreprocessConfig>,
  source: string,
): void {
  const { channels } = config;
  const expected = channels === 1 ? '1 value' : `1 value or ${channels}`;
  const input = `the input of ${source} has ${channels} channel${channels === 1 ? '' : 's'}`;
  const problems: string[] = [];
  for (const key of ['mean', 'std'] as const) {
    const values = given[key];
    if (values === undefined || config[key].length === channels) continue;
    problems.push(`--${key}: expected ${expected} (${input}), got "${values.join(',')}"`);
  }
  if (problems.length > 0) throw new InputError(problems.join('; '), source);
}

/** A single value stands for every channel, as in torchvision's Normalize. */
function broadcast(values: number[], channels: number): number[] {
  return values.length === 1 ? Array.from({ length: channels }, () => values[0]!) : values;
}

/**
 * The mean and std have a value per channel, the crop is the input size and fits in the resized
 * image. A --crop or --resize that does not fit is named with the value given (the config file
 * only supplied the rest); a problem of the config file's own fields names the file.
 */
function checkConsistent(
  config: PreprocessConfig,
  given: Partial<PreprocessConfig>,
  source: string,
): void {
  const problems: string[] = [];
  for (const key of ['mean', 'std'] as const) {
    if (config[key].length !== config.channels) {
      problems.push(`${key} has ${config[key].length} values for ${config.channels} channels`);
    }
  }
  const flagged = sizeProblems(config, given, source);
  problems.push(...flagged.filter((p) => !p.startsWith('--')));
  const named = flagged.filter((p) => p.startsWith('--'));
  if (problems.length > 0) named.push(`bad preprocessing for ${source}: ${problems.join('; ')}`);
  if (named.length > 0) throw new InputError(named.join('; '), source);
}

/**
 * What does not fit between crop, resize and input size; a problem a flag caused starts with
 * the flag. A --crop that is not the input size is the only one named for it: whether it also
 * exceeds the resize is moot until it is the input size.
 */
function sizeProblems(
  config: PreprocessConfig,
  given: Partial<PreprocessConfig>,
  source: string,
): string[] {
  const { crop, resize, height, width } = config;
  if (crop === null) return [];
  const problems: string[] = [];
  if (crop !== height || crop !== width) {
    if (given.crop !== undefined) {
      const input = `the input of ${source} is ${height}×${width}`;
      const expected = height === width ? `${height} (${input})` : `none (${input}, not a square)`;
      return [`--crop: expected ${expected}, got "${given.crop}"`];
    }
    problems.push(`crop ${crop} differs from the input size ${height}×${width}`);
  }
  if (resize !== null && crop > resize) {
    const from = given.crop === undefined ? source : '--crop';
    problems.push(
      given.resize === undefined
        ? `crop ${crop} is larger than the resized shorter side ${resize}`
        : `--resize: expected at least the crop, ${crop} (from ${from}), got "${given.resize}"`,
    );
  }
  return problems;
}

/** Parses with zod and reports every problem with its path in one InputError. */
function parseOrThrow<T extends z.ZodType>(
  schema: T,
  value: unknown,
  source: string,
  flags: readonly string[] = [],
): z.output<T> {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const named: string[] = [];
  const problems: string[] = [];
  for (const issue of result.error.issues) {
    const [key] = issue.path;
    if (issue.path.length === 1 && typeof key === 'string' && flags.includes(key)) {
      const given = String((value as Record<string, unknown>)[key]);
      named.push(`--${key}: ${issue.message}, got "${given}"`);
      continue;
    }
    const path = issue.path.length > 0 ? issue.path.join('.') : basename(source);
    problems.push(`${path}: ${issue.message}`);
  }
  if (problems.length > 0) named.push(`bad preprocessing in ${source}: ${problems.join('; ')}`);
  throw new InputError(named.join('; '), source);
}
