/**
 * The options of every command, validated in one place. CLI flags, recipe files and API calls
 * go through these schemas, so an unknown key or a bad value fails the same way everywhere:
 * every problem reported together, each with its option path.
 */
import { z } from 'zod';
import { InputError } from './errors.js';

const positiveInt = z.coerce.number().int().positive();
const numberList = z.union([
  z.array(z.coerce.number()),
  z.string().transform((s, ctx) => {
    const values = s.split(',').map((v) => Number(v.trim()));
    if (values.some((v) => !Number.isFinite(v))) {
      ctx.addIssue({ code: 'custom', message: `expected comma-separated numbers, got "${s}"` });
    }
    return values;
  }),
]);

export const preprocessOptionsSchema = z
  .object({
    mean: numberList.optional(),
    std: numberList.optional(),
    resize: positiveInt.optional(),
    crop: positiveInt.optional(),
    interpolation: z.enum(['bicubic', 'bilinear', 'nearest', 'lanczos']).optional(),
  })
  .strict();

export const runOptionsSchema = z
  .object({
    threads: positiveInt.optional(),
    batch: positiveInt.default(16),
    strict: z.boolean().default(false),
    classes: z.string().optional(),
  })
  .strict();

export const recipeNames = ['w8a8', 'dynamic-int8', 'int4-weights'] as const;
export type RecipeName = (typeof recipeNames)[number];

export const quantizeOptionsSchema = z
  .object({
    recipe: z.enum(recipeNames).optional(),
    bits: z
      .string()
      .regex(/^w[2-8]a[2-8]$/i, 'expected WxAy with x and y in 2..8, e.g. w4a4')
      .transform((s) => s.toLowerCase())
      .optional(),
    observer: z.enum(['minmax', 'percentile', 'mse', 'omse']).default('minmax'),
    weightObserver: z.enum(['minmax', 'percentile', 'mse', 'omse']).default('minmax'),
    percentile: z.coerce.number().gt(50).lt(100).default(99.99),
    calib: z.string().optional(),
    calibCount: positiveInt.default(32),
    seed: z.coerce.number().int().nonnegative().default(0),
    keepFloat: z.array(z.string()).default([]),
    blockSize: z.coerce
      .number()
      .int()
      .refine(
        (n) => n >= 16 && n <= 256 && (n & (n - 1)) === 0,
        'block size must be 16, 32, 64, 128 or 256 (what MatMulNBits supports)',
      )
      .default(32),
    data: z.string().optional(),
    limit: positiveInt.optional(),
  })
  .strict()
  .refine((o) => (o.recipe === undefined) !== (o.bits === undefined), {
    message: 'give exactly one of --recipe (deployable) or --bits (simulated)',
    path: ['recipe'],
  });

export type QuantizeOptions = z.infer<typeof quantizeOptionsSchema>;
export type PreprocessOptions = z.infer<typeof preprocessOptionsSchema>;
export type RunOptions = z.infer<typeof runOptionsSchema>;

/** Parses `value` with `schema`, turning every problem into one InputError line. */
export function parseOptions<T extends z.ZodType>(
  schema: T,
  value: unknown,
  source = 'options',
): z.infer<T> {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const problems = result.error.issues.map((issue) => {
    const path = issue.path.length ? issue.path.join('.') : '(root)';
    return `${path}: ${issue.message}`;
  });
  throw new InputError(`invalid ${source}: ${problems.join('; ')}`);
}
