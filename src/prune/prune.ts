/**
 * Width pruning of a ViT, end to end: dependency groups from the structure map, importance
 * scores (from weights, or from one calibration pass over dense-model activations), selection
 * of the units to keep, compensation of what the removed units contributed, and the surgery.
 * The input model is never modified.
 */
import type { ModelProto } from 'onnx-buf';
import { GraphIndex } from '../graph/graph.js';
import { InputError } from '../errors.js';
import { silentLogger, type Reporting } from '../log.js';
import type { CaptureBatch } from '../runtime/capture.js';
import type { SessionOptions } from '../runtime/session.js';
import type { ViTStructure } from '../vit/types.js';
import { compensationUpdates } from './compensate.js';
import { headDimGroup, headGroup, mlpGroup, traceContext } from './groups.js';
import { ablationScores } from './ablation.js';
import { viewFactor, viewsOf, withViews, type CalibrationView } from './augment.js';
import { compensatedAblation, sensitivitySelect } from './allocation.js';
import { createImportance, type Importance, type ImportanceInputs } from './importance.js';
import { roundKept, selectInBlocks, selectUnits } from './selection.js';
import { sequentialCompensation, type SequentialOptions } from './sequential.js';
import { channelStatistics, type StatisticsRequest } from './statistics.js';
import { applyPruning, type WeightUpdates } from './surgery.js';
import type {
  CompensationMethod,
  CriterionName,
  DependencyGroup,
  GroupSelection,
  HeadsOption,
  PruneReport,
  PruningScope,
} from './types.js';

export interface PruneOptions extends Reporting, SessionOptions {
  /** Fraction of every block's MLP hidden channels to remove, in [0, 1). */
  mlp?: number;
  /** Heads to remove: a fraction per block, or `count` heads in some blocks. */
  heads?: HeadsOption;
  /** Fraction of the head dimensions to remove (the same in every head); not with `heads`. */
  headDims?: number;
  /**
   * Default with calibration images: `reconstruction` when MLP channels are pruned (in that
   * pass), `wanda` otherwise; `l2` without.
   */
  criterion?: CriterionName;
  /** Default `global` with calibration images when MLP channels are pruned, `local` otherwise. */
  scope?: PruningScope;
  /**
   * Global and isomorphic scopes: the largest fraction of one group removed (default twice the
   * ratio, at most 0.9).
   */
  maxRatio?: number;
  /** Kept MLP channels and head dimensions are multiples of this (default 8). */
  roundTo?: number;
  /** Default `ridge` with calibration images, `none` without. */
  compensation?: CompensationMethod;
  /**
   * Ridge strength relative to the kept channels' mean variance, for compensation and the
   * reconstruction criterion (default 1e-2).
   */
  ridgeAlpha?: number;
  /**
   * Ridge compensation block after block on the activations of the model pruned so far
   * (default false: on the ViT-Tiny it measured within 0.2 points of one-shot, for three more
   * passes; see sequential.ts), rather than in one pass from the dense model's. The
   * calibration images are then held in memory.
   */
  sequential?: boolean;
  /** Sequential compensation: what each refitted layer reproduces (default `local`). */
  fitTarget?: SequentialOptions['target'];
  /** Sequential compensation: refit the layers reading pruned channels, or every proj and fc2. */
  refit?: SequentialOptions['refit'];
  /** Sequential compensation: how tokens are weighted in the fit (default `none`). */
  tokenWeighting?: SequentialOptions['weighting'];
  /**
   * Images the `ablation` criterion runs per unit and the `sensitivity` scope per measured width
   * (default 32, the first calibration ones).
   */
  ablationImages?: number;
  /** The `sensitivity` scope: widths measured per group (default 6, up to `maxRatio`). */
  sensitivityPoints?: number;
  /**
   * Transformed copies of each calibration batch (augment.ts) added to the statistics of the
   * criteria and of the compensation, one-shot or sequential: `flip` (mirror image) and
   * `{ shift: pixels }` (moved both ways). The sensitivity and ablation measurements use the
   * images themselves. Default none.
   */
  views?: readonly CalibrationView[];
  /** Calibration images (another split than the evaluation images); read once. */
  calibration?: AsyncIterable<CaptureBatch> | Iterable<CaptureBatch>;
}

export interface PruneResult {
  model: ModelProto;
  structure: ViTStructure;
  selections: GroupSelection[];
  report: PruneReport;
}

function checkFraction(name: string, value: number | undefined): void {
  if (value !== undefined && !(value >= 0 && value < 1)) {
    throw new RangeError(`${name} must be a fraction in [0, 1), got ${value}`);
  }
}

function checkOptions(structure: ViTStructure, o: PruneOptions): void {
  checkFraction('mlp', o.mlp);
  checkFraction('headDims', o.headDims);
  if (typeof o.heads === 'number') checkFraction('heads', o.heads);
  else if (o.heads) {
    const depth = structure.blocks.length;
    const { count, blocks } = o.heads;
    if (!Number.isInteger(count) || count < 0) {
      throw new RangeError(`heads.count must be an integer ≥ 0, got ${count}`);
    }
    const bad =
      typeof blocks === 'number'
        ? [blocks].filter((b) => !(Number.isInteger(b) && b >= 0 && b <= depth))
        : blocks.filter((b) => !(Number.isInteger(b) && b >= 0 && b < depth));
    if (bad.length > 0) {
      throw new RangeError(
        `heads.blocks must be block indices in [0, ${depth}) or a count ≤ ${depth}, got ${JSON.stringify(blocks)}`,
      );
    }
  }
  if (o.heads !== undefined && o.headDims !== undefined) {
    throw new RangeError('heads and headDims cannot be pruned in the same pass: choose one');
  }
}

/** The groups the options ask to prune, by kind. */
function groupsFor(model: ModelProto, structure: ViTStructure, o: PruneOptions) {
  const mlp = o.mlp ? structure.blocks.map((b) => mlpGroup(b)) : [];
  const wantsHeads = typeof o.heads === 'number' ? o.heads > 0 : o.heads !== undefined;
  const ctx = wantsHeads || o.headDims ? traceContext(model) : undefined;
  const heads = wantsHeads ? structure.blocks.map((b) => headGroup(ctx!, b)) : [];
  const headDims = o.headDims ? structure.blocks.map((b) => headDimGroup(ctx!, b)) : [];
  return { mlp, heads, headDims };
}

/** What `pruneModel` decided from the options. */
interface Settings {
  criterion: CriterionName;
  compensation: CompensationMethod;
  scope: PruningScope;
  importance: Importance;
  /** Whether activation statistics are needed, with Gram matrices. */
  statistics: boolean;
  gram: boolean;
  /** Ridge compensation fitted block by block (sequential.ts). */
  sequential: boolean;
}

function settingsFor(o: PruneOptions, groups: readonly DependencyGroup[]): Settings {
  const hasCalibration = o.calibration !== undefined;
  // MLP channels: the greedy reconstruction order ranked across blocks measured best with ridge
  // compensation on the ViT-Tiny (78.8 % against 74.8 % for Wanda per block, MLP −30 %)
  const mlpDefaults = hasCalibration && (o.mlp ?? 0) > 0;
  const criterion =
    o.criterion ?? (mlpDefaults ? 'reconstruction' : hasCalibration ? 'wanda' : 'l2');
  const compensation = o.compensation ?? (hasCalibration ? 'ridge' : 'none');
  const importance = createImportance(criterion, o.ridgeAlpha);
  const statistics = groups.length > 0 && (importance.needsActivations || compensation !== 'none');
  if ((statistics || criterion === 'ablation') && !hasCalibration) {
    throw new InputError(
      `criterion ${criterion} with compensation ${compensation} needs calibration images`,
    );
  }
  const sequential = statistics && compensation === 'ridge' && (o.sequential ?? false);
  return {
    criterion,
    compensation,
    scope: o.scope ?? (mlpDefaults ? 'global' : 'local'),
    importance,
    statistics,
    // sequential compensation collects its own Gram matrices on the pruned prefix
    gram: (compensation === 'ridge' && !sequential) || criterion === 'reconstruction',
    sequential,
  };
}

/**
 * Prunes MLP channels and heads (or head dimensions) of `model`. With calibration images, one
 * pass of dense-model statistics serves the importance and the compensation of every block.
 */
export async function pruneModel(
  model: ModelProto,
  structure: ViTStructure,
  options: PruneOptions = {},
): Promise<PruneResult> {
  checkOptions(structure, options);
  const views = options.views ?? [];
  const logger = options.logger ?? silentLogger;
  const groups = groupsFor(model, structure, options);
  const all = [...groups.mlp, ...groups.heads, ...groups.headDims];
  const settings = settingsFor(options, all);
  const inputs: ImportanceInputs = { index: new GraphIndex(model) };
  let images = 0;
  const held: CaptureBatch[] = [];
  const hold =
    settings.sequential || settings.criterion === 'ablation' || settings.scope === 'sensitivity';

  if (settings.statistics) {
    const requests = statisticsRequests(all, settings.gram);
    const source = hold ? holding(options.calibration!, held) : options.calibration!;
    const stats = await channelStatistics(model, requests, withViews(source, views), options);
    inputs.moments = stats.moments;
    images = stats.images / viewFactor(views);
  } else if (hold) {
    for await (const _ of holding(options.calibration!, held)) images += _.dims[0] ?? 0;
  }
  const few = held.slice(0, Math.ceil((options.ablationImages ?? 32) / (held[0]?.dims[0] ?? 1)));
  if (settings.criterion === 'ablation') {
    inputs.ablation = await ablationScores(model, all, few, options);
  }
  const compensate = (chosen: readonly GroupSelection[]) =>
    compensationUpdates(inputs.index, chosen, inputs.moments ?? new Map(), {
      method: settings.compensation,
      alpha: options.ridgeAlpha,
    });
  const measure = { model, images: few, compensate };
  const selections = await selectAll(groups, inputs, settings, options, measure);
  const updates = settings.sequential
    ? await sequentialUpdates(
        model,
        structure,
        selections,
        held.flatMap((b) => [b, ...viewsOf(b, views)]),
        options,
      )
    : compensate(selections);
  const pruned = { ...applyPruning(model, structure, selections, updates), selections };
  logger.info(`pruned ${pruned.selections.length} groups (${images} calibration images)`);
  return { ...pruned, report: reportOf(structure, pruned.structure, settings, images) };
}

/** The batches of `source`, copied into `held` as they pass (batch buffers may be reused). */
async function* holding(
  source: AsyncIterable<CaptureBatch> | Iterable<CaptureBatch>,
  held: CaptureBatch[],
): AsyncIterable<CaptureBatch> {
  for await (const batch of source) {
    held.push({ data: batch.data.slice(), dims: [...batch.dims] });
    yield batch;
  }
}

async function sequentialUpdates(
  model: ModelProto,
  structure: ViTStructure,
  selections: readonly GroupSelection[],
  held: readonly CaptureBatch[],
  o: PruneOptions,
) {
  const { updates } = await sequentialCompensation(model, structure, selections, held, {
    ...(o.threads ? { threads: o.threads } : {}),
    alpha: o.ridgeAlpha,
    target: o.fitTarget,
    refit: o.refit,
    weighting: o.tokenWeighting,
  });
  return updates;
}

function reportOf(
  before: ViTStructure,
  after: ViTStructure,
  settings: Settings,
  images: number,
): PruneReport {
  return {
    criterion: settings.criterion,
    scope: settings.scope,
    compensation: settings.compensation,
    calibrationImages: images,
    blocks: before.blocks.map((b, i) => {
      const a = after.blocks[i]!;
      return {
        mlp: [b.mlp.fc1.outFeatures, a.mlp.fc1.outFeatures],
        heads: [b.attention.heads, a.attention.heads],
        headDim: [b.attention.headDim, a.attention.headDim],
      };
    }),
    parameters: [before.counts.parameters, after.counts.parameters],
    macs: [before.counts.macs, after.counts.macs],
  };
}

/** The input of every layer reading a group's channels. */
function statisticsRequests(groups: readonly DependencyGroup[], gram: boolean) {
  const values = new Set<string>();
  for (const g of groups) {
    for (const m of g.members)
      if (m.role === 'consumer-weight' && m.layer) values.add(m.layer.input);
  }
  return [...values].map((value): StatisticsRequest => ({ value, gram }));
}

/** What the `sensitivity` scope measures with: the dense model, images and compensation. */
interface Measure {
  model: ModelProto;
  images: readonly CaptureBatch[];
  compensate: (selections: readonly GroupSelection[]) => WeightUpdates;
}

async function selectAll(
  groups: ReturnType<typeof groupsFor>,
  inputs: ImportanceInputs,
  { importance, scope }: Settings,
  o: PruneOptions,
  measure: Measure,
): Promise<GroupSelection[]> {
  const roundTo = o.roundTo ?? 8;
  const comparable = importance.comparable;
  const maxRatio = (ratio: number) => o.maxRatio ?? Math.min(0.9, 2 * ratio);
  // the most a selection can remove from a group: its share after rounding (local), the count
  // (in some blocks), or the cap (global); criteria may stop there
  const scoresFor = (list: DependencyGroup[], ratio: number, round: number) =>
    list.map((g) => {
      const local = g.units - roundKept(g.units * (1 - ratio), g.units, round);
      const removable = scope === 'local' ? local / g.units : maxRatio(ratio);
      return importance.score(g, { ...inputs, removable });
    });
  const options = (ratio: number, round: number) => ({
    ratio,
    scope,
    roundTo: round,
    comparable,
    maxRatio: maxRatio(ratio),
  });
  // the sensitivity scope measures each group pruned alone; other scopes rank scores
  const select = async (list: DependencyGroup[], ratio: number, round: number) => {
    const s = scoresFor(list, ratio, round);
    if (scope !== 'sensitivity') return selectUnits(list, s, options(ratio, round));
    const { model, images, compensate } = measure;
    return sensitivitySelect(model, list, s, images, compensate, {
      ratio,
      roundTo: round,
      maxRatio: maxRatio(ratio),
      points: o.sensitivityPoints,
      threads: o.threads,
    });
  };
  const selections: GroupSelection[] = [];
  if (groups.mlp.length > 0) selections.push(...(await select(groups.mlp, o.mlp!, roundTo)));
  if (groups.heads.length > 0) {
    if (typeof o.heads === 'number') {
      selections.push(...(await select(groups.heads, o.heads, 1)));
    } else {
      const { count, blocks } = o.heads!;
      const { model, images, compensate } = measure;
      // under the sensitivity scope the heads of a block are ranked by their compensated
      // removal's output KL; the criterion ranks them otherwise
      const s =
        scope === 'sensitivity'
          ? await compensatedAblation(model, groups.heads, images, compensate, {
              threads: o.threads,
            })
          : groups.heads.map((g) => importance.score(g, { ...inputs, removable: count / g.units }));
      if (scope === 'sensitivity' && typeof blocks === 'number' && count > 0) {
        // which blocks lose `count` heads: those whose output changes least when they do
        const units = groups.heads.reduce((sum, g) => sum + g.units, 0);
        const chosen = await sensitivitySelect(model, groups.heads, s, images, compensate, {
          ratio: (count * blocks) / units,
          roundTo: count,
          maxRatio: Math.min(0.99, count / groups.heads[0]!.units),
          points: 1,
          threads: o.threads,
        });
        selections.push(...chosen);
      } else {
        selections.push(...selectInBlocks(groups.heads, s, count, blocks, comparable));
      }
    }
  }
  if (groups.headDims.length > 0) {
    // head sizes below 32 are kept to any size: rounding 8 or 16 to a multiple of 8 prunes nothing
    const round = Math.min(...groups.headDims.map((g) => (g.units >= 32 ? roundTo : 1)));
    const s = scoresFor(groups.headDims, o.headDims!, round);
    // removing a head dimension also changes the attention logits, which zeroing rows of the
    // output projection (what the sensitivity probe does) does not show: ranked globally
    const dims = {
      ...options(o.headDims!, round),
      scope: scope === 'sensitivity' ? 'global' : scope,
    };
    selections.push(...selectUnits(groups.headDims, s, dims));
  }
  return selections.filter((s) => s.keep.length < s.group.units);
}
