/**
 * The options of every command, validated in one place. CLI flags, recipe files and API calls
 * go through these schemas, so an unknown key or a bad value fails the same way everywhere:
 * every problem reported together, each with its option path.
 */
import { z } from 'zod';
import { InputError } from './errors.js';
import { parseTokenSchedule } from './prune/tokens/schedule.js';
import type { CompensationMethod, CriterionName } from './prune/types.js';
import { defaultWeightRange, type WeightRange } from './quant/deploy/types.js';

const wholeNumber = 'expected a whole number ≥ 1';
const positiveInt = z.coerce.number(wholeNumber).int(wholeNumber).positive(wholeNumber);
/** `0.5,0.5,0.5` or a JSON list; one transform, so a bad value gets the syntax in its message. */
const numberList = z.unknown().transform((value, ctx) => {
  const items = typeof value === 'string' ? value.split(',') : value;
  const values = Array.isArray(items) ? items.map((v) => (v === '' ? NaN : Number(v))) : [];
  if (values.length === 0 || values.some((v) => !Number.isFinite(v))) {
    const got = JSON.stringify(value);
    ctx.addIssue({ code: 'custom', message: `expected comma-separated numbers, got ${got}` });
    return z.NEVER;
  }
  return values;
});

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

/** The flags of evaluation that eval, quantize, prune and compress share. */
export const evaluationFlagsSchema = z
  .object({
    limit: positiveInt.optional(),
    latencyRuns: z.coerce
      .number('expected a whole number ≥ 0 (0 skips latency)')
      .int('expected a whole number ≥ 0 (0 skips latency)')
      .nonnegative('expected a whole number ≥ 0 (0 skips latency)')
      .default(20),
  })
  .strict();

export const deployableRecipes = ['w8a8', 'dynamic-int8', 'int4-weights'] as const;

/**
 * Recipes below 8 bits, simulated (no onnxruntime kernel runs them): each the combination that
 * measured best on the ViT-Tiny (README, "Float formats, AdaLog and I&S-ViT") — AdaLog's
 * quantizers with ERQ's weights at every width measured: W6A6 82.4 % (E3M2 floats 81.6 %,
 * RepQ-ViT with ERQ 80.6 %), W4A8 77.0 %, W4A4 68.6 % (AdaLog alone 62.2 %, RepQ-ViT with ERQ
 * 41.2 %), W3A3 1.8 % (every method below 2 %: no recipe is usable at that width yet).
 */
export const simulatedRecipes = {
  w6a6: { bits: 'w6a6', method: 'adalog', weights: 'erq' },
  w4a8: { bits: 'w4a8', method: 'adalog', weights: 'erq' },
  w4a4: { bits: 'w4a4', method: 'adalog', weights: 'erq' },
  w3a3: { bits: 'w3a3', method: 'adalog', weights: 'erq' },
} as const;

export const recipeNames = [
  ...deployableRecipes,
  ...(Object.keys(simulatedRecipes) as (keyof typeof simulatedRecipes)[]),
] as const;
export type RecipeName = (typeof recipeNames)[number];

/**
 * Simulated quantization methods: `baseline` rounds every point with the chosen observers'
 * ranges; `repq` is RepQ-ViT (arXiv:2212.08254), `ptq4vit` PTQ4ViT (arXiv:2111.12293),
 * `fqvit` FQ-ViT (arXiv:2111.13824), `fp` LLM-FP4's floating-point formats (arXiv:2310.16836),
 * `adalog` AdaLog (arXiv:2407.12951) and `isvit` I&S-ViT's softmax quantizer (arXiv:2311.10126),
 * both on RepQ-ViT's calibration.
 */
export const methodNames = [
  'baseline',
  'repq',
  'ptq4vit',
  'fqvit',
  'fp',
  'adalog',
  'isvit',
] as const;
/**
 * How the weights of the RepQ-ViT-based methods (repq, adalog, isvit) are set on their grids:
 * to nearest, GPTQ (arXiv:2210.17323) or ERQ (arXiv:2407.06794).
 */
export const weightMethodNames = ['rtn', 'gptq', 'erq'] as const;
export type MethodName = (typeof methodNames)[number];

/** Float formats of `--method fp` and their bit widths (sign, exponent, mantissa). */
export const fpFormatBits = { e4m3: 8, e5m2: 8, e3m2: 6, e2m1: 4 } as const;
export type FpFormatName = keyof typeof fpFormatBits;
/** The format `--method fp` uses at each bit width unless `--fp-format` names one. */
export const defaultFpFormats: Readonly<Record<number, FpFormatName>> = {
  8: 'e4m3',
  6: 'e3m2',
  4: 'e2m1',
};
const fpFormatNames = Object.keys(fpFormatBits) as FpFormatName[];

/** `--fp-format <f>` (weights and activations) or `<weights>,<activations>`. */
const fpFormatFlag = z
  .string()
  .transform((s) =>
    s
      .toLowerCase()
      .split(',')
      .map((f) => f.trim()),
  )
  .refine((fs) => fs.length <= 2 && fs.every((f) => f in fpFormatBits), {
    message: `expected a format or <weights>,<activations> among ${fpFormatNames.join(', ')}`,
  })
  .transform((fs) => ({
    weights: fs[0] as FpFormatName,
    activations: (fs[1] ?? fs[0]) as FpFormatName,
  }));

/**
 * The weight and activation formats of `--method fp`: `--fp-format` when given, otherwise the
 * default of each bit width; a message naming the flag when a width has no format or the format
 * has another width.
 */
export function fpFormats(
  bits: string,
  flag?: { weights: FpFormatName; activations: FpFormatName },
): { weights: FpFormatName; activations: FpFormatName } | string {
  const [w, a] = bits.slice(1).split('a').map(Number) as [number, number];
  const weights = flag?.weights ?? defaultFpFormats[w];
  const activations = flag?.activations ?? defaultFpFormats[a];
  if (!weights || !activations) {
    return `--method fp has float formats for 4, 6 and 8 bits (e2m1, e3m2, e4m3/e5m2), got ${bits}`;
  }
  for (const [format, width, what] of [
    [weights, w, 'weights'],
    [activations, a, 'activations'],
  ] as const) {
    if (fpFormatBits[format] !== width) {
      return `${format} is ${fpFormatBits[format]} bits but --bits ${bits} gives the ${what} ${width}`;
    }
  }
  return { weights, activations };
}
export type WeightMethodName = (typeof weightMethodNames)[number];

const observerKind = z.enum(['minmax', 'percentile', 'mse', 'omse']);
const bitWidthMessage = 'expected a bit width from 2 to 8';
const bitWidth = z.coerce
  .number(bitWidthMessage)
  .int(bitWidthMessage)
  .min(2, bitWidthMessage)
  .max(8, bitWidthMessage);

const overrideObject = z.strictObject({
  select: z.string().min(1),
  weightBits: bitWidth.optional(),
  activationBits: bitWidth.optional(),
  observer: observerKind.optional(),
  weightObserver: observerKind.optional(),
  percentile: z.coerce.number().gt(50).lt(100).optional(),
});

/**
 * A per-layer override as a flag gives it: `<selector>=<setting>[,<setting>…]` where a setting
 * is `w<bits>`, `a<bits>`, `w<bits>a<bits>`, `observer:<kind>`, `weight-observer:<kind>` or
 * `percentile:<p>`; e.g. `blocks.*.mlp.fc2=a8`, `head=w8a8,observer:mse`.
 */
const overrideText = z.unknown().transform((text, ctx) => {
  if (typeof text !== 'string') return text;
  const at = text.lastIndexOf('=');
  const fail = (why: string) => {
    ctx.addIssue({ code: 'custom', message: `"${text}": ${why}` });
    return z.NEVER;
  };
  if (at <= 0) return fail('expected <selector>=<settings>, e.g. blocks.*.mlp.fc2=a8');
  const out: Record<string, unknown> = { select: text.slice(0, at) };
  for (const item of text.slice(at + 1).split(',')) {
    const setting = item.trim();
    const bits = /^(?:w(\d))?(?:a(\d))?$/i.exec(setting);
    const keyed = /^(observer|weight-observer|percentile):(.+)$/.exec(setting);
    if (bits && (bits[1] || bits[2])) {
      if (bits[1]) out.weightBits = bits[1];
      if (bits[2]) out.activationBits = bits[2];
    } else if (keyed) {
      const key = keyed[1] === 'weight-observer' ? 'weightObserver' : keyed[1]!;
      out[key] = keyed[2];
    } else {
      return fail(`unknown setting "${setting}" (w<bits>, a<bits>, observer:<kind>, …)`);
    }
  }
  return out;
});

export const quantizeOptionsSchema = z
  .object({
    recipe: z.enum(recipeNames).optional(),
    method: z.enum(methodNames).default('baseline'),
    weights: z.enum(weightMethodNames).default('rtn'),
    noisyQuant: z.boolean().default(false),
    fpFormat: fpFormatFlag.optional(),
    bits: z
      .string()
      .regex(/^w[2-8]a[2-8]$/i, 'expected WxAy with x and y in 2..8, e.g. w4a4')
      .transform((s) => s.toLowerCase())
      .optional(),
    /** Left unset here so that a flag the run would not consult can be refused; see below. */
    observer: observerKind.optional(),
    weightObserver: observerKind.optional(),
    percentile: z.coerce.number().gt(50).lt(100).optional(),
    calib: z.string().optional(),
    calibCount: positiveInt.default(32),
    seed: z.coerce.number().int().nonnegative().default(0),
    keepFloat: z.array(z.string()).default([]),
    overrides: z.array(overrideText.pipe(overrideObject)).default([]),
    blockSize: z.coerce
      .number()
      .int()
      .refine(
        (n) => n >= 16 && n <= 256 && (n & (n - 1)) === 0,
        'block size must be 16, 32, 64, 128 or 256 (what MatMulNBits supports)',
      )
      .default(32),
    /**
     * Grid of the int8 weights of the deployable recipes: `reduced` (default, |q| ≤ 64, exact
     * on every x86 CPU) or `full` (8 bits, for CPUs with VNNI); see quant/deploy/types.ts.
     */
    weightRange: z.enum(['reduced', 'full']).optional(),
    data: z.string().optional(),
    limit: positiveInt.optional(),
  })
  .strict()
  .refine((o) => (o.recipe === undefined) !== (o.bits === undefined), {
    message: 'give exactly one of --recipe (deployable) or --bits (simulated)',
    path: ['recipe'],
  })
  .refine((o) => o.overrides.length === 0 || (o.bits !== undefined && o.method === 'baseline'), {
    message: 'per-layer overrides apply to simulated baseline quantization (--bits WxAy)',
    path: ['overrides'],
  })
  .superRefine((o, ctx) => {
    const used = observersUsed(o);
    for (const key of ['observer', 'weightObserver', 'percentile'] as const) {
      if (o[key] === undefined || used.has(key)) continue;
      const why =
        o.recipe === undefined
          ? `--method ${o.method} (it calibrates its own ranges)`
          : o.recipe === 'w8a8'
            ? '--recipe w8a8 (its weights are per-channel min-max)'
            : `--recipe ${o.recipe} (it sets its own ranges)`;
      ctx.addIssue({
        code: 'custom',
        path: [key],
        message: `not used by ${why}; observers apply to --bits with --method baseline`,
      });
    }
  })
  .refine((o) => o.weights !== 'erq' || o.recipe !== 'int4-weights', {
    message:
      'int4-weights takes --weights rtn or gptq (ERQ corrects for activation quantization, ' +
      'which int4-weights does not do)',
    path: ['weights'],
  })
  .refine((o) => o.weights === 'rtn' || repqBased(o.method) || o.recipe === 'int4-weights', {
    message:
      'GPTQ and ERQ weights run on a RepQ-ViT calibration: add --method repq, adalog or ' +
      'isvit (or use --recipe int4-weights --weights gptq)',
    path: ['weights'],
  })
  .refine((o) => o.method !== 'repq' || !deployable(o.recipe) || o.recipe === 'w8a8', {
    message:
      'RepQ-ViT deploys with --recipe w8a8 (integer activations); dynamic-int8 needs no ' +
      'calibration and int4-weights keeps activations float',
    path: ['method'],
  })
  .refine((o) => !deployable(o.recipe) || ['baseline', 'repq'].includes(o.method), {
    message:
      'only --method repq has a deployable form (with --recipe w8a8); give --bits WxAy for a ' +
      'simulated ptq4vit or fqvit model',
    path: ['method'],
  })
  .refine((o) => o.weightRange === undefined || storesInt8Weights(o.recipe), {
    message:
      'only --recipe w8a8 or dynamic-int8 stores int8 weights on a grid (int4-weights ' +
      'stores 4-bit blocks; a --bits run is simulated)',
    path: ['weightRange'],
  })
  .refine((o) => !o.noisyQuant || o.method === 'ptq4vit', {
    message: 'NoisyQuant runs with PTQ4ViT here: add --method ptq4vit',
    path: ['noisyQuant'],
  })
  .refine((o) => o.method === 'baseline' || o.bits !== undefined || deployable(o.recipe), {
    message: 'a method other than baseline needs --bits WxAy (simulated) or --recipe w8a8',
    path: ['method'],
  })
  .refine((o) => o.fpFormat === undefined || o.method === 'fp', {
    message: 'float formats are chosen for --method fp: add --method fp',
    path: ['fpFormat'],
  })
  .superRefine((o, ctx) => {
    if (o.method !== 'fp' || o.bits === undefined) return;
    const formats = fpFormats(o.bits, o.fpFormat);
    const path = [o.fpFormat ? 'fpFormat' : 'bits'];
    if (typeof formats === 'string') ctx.addIssue({ code: 'custom', message: formats, path });
  })
  .transform((given) => {
    const o = {
      ...given,
      observer: given.observer ?? ('minmax' as const),
      weightObserver: given.weightObserver ?? ('minmax' as const),
      percentile: given.percentile ?? 99.99,
    };
    if (o.recipe === undefined || !(o.recipe in simulatedRecipes)) return o;
    const { recipe, ...rest } = o;
    return { ...rest, ...simulatedRecipes[recipe as keyof typeof simulatedRecipes] };
  });

/**
 * The observer options a run consults: all three for simulated baseline quantization
 * (`--bits` with `--method baseline`), the activation observer (and its percentile) for the
 * w8a8 recipe, none otherwise (the other methods and recipes set their ranges their own way).
 */
function observersUsed(o: { recipe?: string | undefined; method: MethodName }): Set<string> {
  if (o.recipe === undefined && o.method === 'baseline') {
    return new Set(['observer', 'weightObserver', 'percentile']);
  }
  return new Set(o.recipe === 'w8a8' ? ['observer', 'percentile'] : []);
}

/**
 * The options as the run used them, for a report: the observers are left out where they were
 * not consulted (a method other than baseline calibrates its quantizers its own way, which the
 * report's calibration names; w8a8 takes only the activation observer, its weights being
 * per-channel min-max; dynamic-int8 and int4-weights calibrate nothing), so a report never
 * shows an observer that did not run; the int8 weight grid is written out even when it was
 * left at its default, so a report says which grid its model holds. Parsing the result gives
 * the same run.
 */
export function optionsInEffect(options: QuantizeOptions): Partial<QuantizeOptions> {
  const used = observersUsed(options);
  const unused = ['observer', 'weightObserver', 'percentile'].filter((key) => !used.has(key));
  const kept = Object.fromEntries(Object.entries(options).filter(([key]) => !unused.includes(key)));
  const grid = weightGridInEffect(options);
  return grid === undefined ? kept : { ...kept, weightRange: grid };
}

/**
 * The grid of the int8 weights of the recipes that store them (w8a8 and dynamic-int8):
 * `--weight-range`, or the default when it was not given; undefined for the other runs.
 */
export function weightGridInEffect(options: QuantizeOptions): WeightRange | undefined {
  if (!storesInt8Weights(options.recipe)) return undefined;
  return options.weightRange ?? defaultWeightRange;
}

/**
 * The recipes whose linear layers hold int8 weights on a `--weight-range` grid. int4-weights is
 * not one: its MatMuls hold 4-bit blocks and its Conv's int8 weight only feeds a float Conv, so
 * no integer kernel sums its products and the grid would change nothing that saturates.
 */
function storesInt8Weights(recipe: string | undefined): boolean {
  return recipe === 'w8a8' || recipe === 'dynamic-int8';
}

/** The methods built on RepQ-ViT's calibration, whose weights GPTQ or ERQ can set. */
export const repqBasedMethods: readonly MethodName[] = ['repq', 'adalog', 'isvit'];

function repqBased(method: MethodName): boolean {
  return repqBasedMethods.includes(method);
}

function deployable(recipe: string | undefined): boolean {
  return (deployableRecipes as readonly (string | undefined)[]).includes(recipe);
}

export type QuantizeOptions = z.infer<typeof quantizeOptionsSchema>;
export type PreprocessOptions = z.infer<typeof preprocessOptionsSchema>;
export type RunOptions = z.infer<typeof runOptionsSchema>;

/**
 * Parses `value` with `schema`, turning every problem into one InputError line that names the
 * flag, what it expects and, for a malformed value, the value given.
 */
export function parseOptions<T extends z.ZodType>(
  schema: T,
  value: unknown,
  source = 'options',
): z.infer<T> {
  const result = schema.safeParse(value, { error: plainMessage });
  if (result.success) return result.data;
  const problems = result.error.issues.map((issue) => {
    const given = valueCodes.has(issue.code) ? givenValue(value, issue.path) : undefined;
    const got = given === undefined || issue.message.includes(given) ? '' : `, got ${given}`;
    const name = issue.path.length > 0 ? `${optionName(issue.path, value)}: ` : '';
    return `${name}${issue.message}${got}`;
  });
  throw new InputError(`invalid ${source}: ${problems.join('; ')}`);
}

/** Issues about the value itself (not about a combination of options): the value is quoted. */
const valueCodes = new Set([
  'invalid_type',
  'invalid_value',
  'invalid_format',
  'too_small',
  'too_big',
]);

/** Zod's messages about numbers in words, where the schema did not give its own. */
function plainMessage(issue: z.core.$ZodRawIssue): string | undefined {
  if (issue.code === 'invalid_type' && issue.expected === 'number') return 'expected a number';
  if (issue.code === 'invalid_type' && issue.expected === 'int') return 'expected a whole number';
  if (issue.code === 'invalid_type')
    return `expected ${typeNames[issue.expected] ?? issue.expected}`;
  if (issue.code === 'invalid_value' && issue.values.length > 1) {
    return `expected one of ${issue.values.map(String).join(', ')}`;
  }
  if (issue.code === 'unrecognized_keys') {
    return `unknown option ${issue.keys.map((k) => JSON.stringify(k)).join(', ')}`;
  }
  if ((issue.code === 'too_small' || issue.code === 'too_big') && issue.origin === 'number') {
    const small = issue.code === 'too_small';
    const bound = small ? issue.minimum : issue.maximum;
    const sign = small ? (issue.inclusive ? '≥' : '>') : issue.inclusive ? '≤' : '<';
    return `expected a number ${sign} ${String(bound)}`;
  }
  return undefined;
}

const typeNames: Record<string, string> = {
  array: 'a list',
  string: 'a text',
  boolean: 'true or false',
  object: 'an object',
};

/** The raw value at `path` of the parsed input, quoted, when it is a plain value. */
function givenValue(value: unknown, path: readonly PropertyKey[]): string | undefined {
  let at = value;
  for (const key of path) {
    if (typeof at !== 'object' || at === null) return undefined;
    at = (at as Record<PropertyKey, unknown>)[key];
  }
  const plain = ['string', 'number', 'boolean'].includes(typeof at);
  return plain ? JSON.stringify(at) : undefined;
}

/** The settings of an --override in the syntax of the flag. */
const overrideSettings: Record<string, string> = {
  weightBits: 'w<bits>',
  activationBits: 'a<bits>',
  observer: 'observer:',
  weightObserver: 'weight-observer:',
  percentile: 'percentile:',
};

/** Options whose flag is not their key in kebab case. */
const flagAliases: Record<string, string> = { overrides: 'override' };

/** An option path as the user typed it: `calibCount` is the flag `--calib-count`. */
function optionName(path: readonly PropertyKey[], value: unknown): string {
  const [first, ...rest] = path;
  // a setting of an --override given as text: named as it was typed
  const text = first === 'overrides' ? givenValue(value, path.slice(0, 2)) : undefined;
  if (text?.startsWith('"') && rest.length === 2) {
    return `--override ${text} (${overrideSettings[String(rest[1])] ?? String(rest[1])})`;
  }
  const key = String(first);
  const flag = `--${flagAliases[key] ?? key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
  return [flag, ...rest.map(String)].join('.');
}

/** Width-pruning criteria (importance of a channel or head), in the names of src/prune. */
export const criterionNames = [
  'l1',
  'l2',
  'wanda',
  'variance',
  'reconstruction',
  'ablation',
] as const satisfies readonly CriterionName[];
export const pruningScopes = ['local', 'global', 'isomorphic', 'sensitivity'] as const;
export const compensationNames = [
  'none',
  'mean',
  'ridge',
] as const satisfies readonly CompensationMethod[];

const fractionMessage = 'must be in [0, 1)';
/** A share of units to remove: 0 removes nothing, 1 would remove everything. */
const removedFraction = z.coerce.number().min(0, fractionMessage).lt(1, fractionMessage);

/**
 * Heads to remove, as `pruneModel` takes them, except `blocks: 'all'` (every block), which only
 * the model's depth can turn into a number.
 */
export type HeadsFlag = number | { count: number; blocks: number[] | number | 'all' };

const headsSyntax =
  'expected a fraction in [0, 1) or COUNT@BLOCKS: 1@6 (one head in 6 blocks), 1@0,2,4 or ' +
  '1@[6] (in those blocks), 1@all (in every block)';

/** Reads `--heads`: `0.25`, `1@6`, `1@0,2,4`, `1@[6]` or `1@all`; undefined when malformed. */
export function parseHeadsFlag(text: string): HeadsFlag | undefined {
  const s = text.trim();
  if (!s.includes('@')) {
    const fraction = s === '' ? NaN : Number(s);
    return fraction >= 0 && fraction < 1 ? fraction : undefined;
  }
  const [countText = '', where = ''] = s.split('@', 2);
  const count = /^\d+$/.test(countText) ? Number(countText) : NaN;
  if (!Number.isInteger(count)) return undefined;
  if (where === 'all') return { count, blocks: 'all' };
  const listed = where.startsWith('[') || where.includes(',');
  const items = where.replace(/^\[|\]$/g, '').split(',');
  if (items.some((item) => !/^\d+$/.test(item.trim()))) return undefined;
  const numbers = items.map(Number);
  return { count, blocks: listed ? numbers : numbers[0]! };
}

const headsCountSchema = z
  .object({
    count: z.number().int().nonnegative(),
    blocks: z.union([
      z.array(z.number().int().nonnegative()),
      z.number().int().positive(),
      z.literal('all'),
    ]),
  })
  .strict();

/** One transform rather than a union, so a bad value gets the syntax, not "Invalid input". */
const headsFlag = z.unknown().transform((value, ctx): HeadsFlag => {
  let heads: HeadsFlag | undefined;
  if (typeof value === 'string') heads = parseHeadsFlag(value);
  else if (typeof value === 'number') heads = value >= 0 && value < 1 ? value : undefined;
  else heads = headsCountSchema.safeParse(value).data;
  if (heads === undefined) {
    ctx.addIssue({ code: 'custom', message: `${headsSyntax}; got ${JSON.stringify(value)}` });
    return z.NEVER;
  }
  return heads;
});

/** A token schedule as `parseTokenSchedule` reads it; kept as text so reports reproduce it. */
const tokenScheduleFlag = z.string().superRefine((text, ctx) => {
  try {
    parseTokenSchedule(text);
  } catch (error) {
    ctx.addIssue({ code: 'custom', message: (error as Error).message });
  }
});

/** `unstructured`, `2:4` or any `n:m` with 1 ≤ n < m. */
const sparsityPatternFlag = z
  .string()
  .regex(/^(unstructured|\d+:\d+)$/, 'expected unstructured, 2:4 or n:m (e.g. 4:8)')
  .refine((s) => {
    const [n, m] = s.split(':').map(Number);
    return s === 'unstructured' || (n! >= 1 && n! < m!);
  }, 'an n:m pattern keeps n of every m weights: 1 ≤ n < m');

/** What a prune (or the pruning half of compress) removes, and how it chooses and repairs. */
export const pruneOptionsSchema = z
  .object({
    mlp: removedFraction.optional(),
    heads: headsFlag.optional(),
    headDims: removedFraction.optional(),
    criterion: z.enum(criterionNames).optional(),
    scope: z.enum(pruningScopes).optional(),
    compensation: z.enum(compensationNames).optional(),
    maxRatio: z.coerce.number().gt(0, 'must be in (0, 1)').lt(1, 'must be in (0, 1)').optional(),
    roundTo: positiveInt.default(8),
    ridgeAlpha: z.coerce.number().positive().optional(),
    rank: z.coerce.number().gt(0, 'must be in (0, 1]').max(1, 'must be in (0, 1]').optional(),
    rankMethod: z.enum(['svd', 'whitened']).optional(),
    rankLayers: z.array(z.string()).optional(),
    tokens: tokenScheduleFlag.optional(),
    sparsity: removedFraction.optional(),
    sparsityPattern: sparsityPatternFlag.default('unstructured'),
    sparsityMethod: z.enum(['magnitude', 'wanda', 'sparsegpt']).optional(),
    calib: z.string().optional(),
    /** Default 256 with `mlp` (pruneCalibrationCount), 32 otherwise. */
    calibCount: positiveInt.optional(),
    seed: z.coerce.number().int().nonnegative().default(0),
    data: z.string().optional(),
    limit: positiveInt.optional(),
  })
  .strict()
  .refine((o) => structuralChange(o) || sparse(o), {
    message: 'nothing to prune: give --mlp, --heads, --head-dims, --rank, --tokens or --sparsity',
    path: ['mlp'],
  })
  .refine((o) => !(sparse(o) && structuralChange(o)), {
    message:
      'sparsity is applied alone: it only zeroes weights (smaller compressed file, no speed-up), ' +
      'while the other options change the graph',
    path: ['sparsity'],
  })
  .refine((o) => o.sparsityPattern !== 'unstructured' || o.sparsity !== 0, {
    message: 'give a sparsity above 0 or an n:m --sparsity-pattern',
    path: ['sparsity'],
  });

function structuralChange(o: {
  mlp?: number;
  heads?: HeadsFlag;
  headDims?: number;
  rank?: number;
  tokens?: string;
}): boolean {
  return (
    Boolean(o.mlp) ||
    isSomeHeads(o.heads) ||
    Boolean(o.headDims) ||
    o.rank !== undefined ||
    o.tokens !== undefined
  );
}

function sparse(o: { sparsity?: number; sparsityPattern: string }): boolean {
  return Boolean(o.sparsity) || o.sparsityPattern !== 'unstructured';
}

function isSomeHeads(heads: HeadsFlag | undefined): boolean {
  if (heads === undefined) return false;
  return typeof heads === 'number' ? heads > 0 : heads.count > 0;
}

export type PruneFlags = z.infer<typeof pruneOptionsSchema>;
