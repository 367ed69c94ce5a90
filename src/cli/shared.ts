/** Flag definitions and conversions shared by the commands. */
import type { Command } from 'commander';
import type { PreprocessConfig } from '../data/index.js';
import { evaluationFlagsSchema, parseOptions, preprocessOptionsSchema } from '../options.js';

export function addPreprocessFlags(command: Command): Command {
  return command
    .option('--mean <list>', 'per-channel mean in [0,1] units, e.g. 0.485,0.456,0.406')
    .option('--std <list>', 'per-channel std in [0,1] units')
    .option('--resize <n>', 'resize the shorter side to n pixels')
    .option('--crop <n>', 'centre-crop an n×n square')
    .option('--interpolation <kind>', 'bicubic | bilinear | nearest | lanczos');
}

export function addRunFlags(command: Command): Command {
  return command
    .option('--threads <n>', 'onnxruntime intra-op threads (default: all cores)')
    .option('--batch <n>', 'images per batch', '16')
    .option('--strict', 'fail on an unreadable image instead of skipping it')
    .option('--classes <file>', 'class list (imagenet_classes.tsv) for an ImageNet-layout folder');
}

const preprocessKeys = ['mean', 'std', 'resize', 'crop', 'interpolation'] as const;

/** The preprocessing overrides among the parsed flags. */
export function preprocessOverrides(flags: Record<string, unknown>): Partial<PreprocessConfig> {
  const picked: Record<string, unknown> = {};
  for (const key of preprocessKeys) if (flags[key] !== undefined) picked[key] = flags[key];
  return parseOptions(preprocessOptionsSchema, picked, 'preprocessing flags');
}

/** Splits flags into the keys a schema knows (the rest belong to other schemas). */
export function pick(flags: Record<string, unknown>, keys: readonly string[]) {
  const out: Record<string, unknown> = {};
  for (const key of keys) if (flags[key] !== undefined) out[key] = flags[key];
  return out;
}

/** `--latency-runs` (and eval's `--limit`), checked like every other flag. */
export function evaluationFlags(flags: Record<string, unknown>, keys = ['latencyRuns']) {
  return parseOptions(evaluationFlagsSchema, pick(flags, keys), 'flags');
}
