/**
 * Token schedules as text and as counts: the parser the CLI uses (`--tokens tome:8`), the label
 * written back into reports, and the tokens each block sees under a schedule, which fix every
 * constant of the inserted subgraphs (the image size is fixed, so the counts are too).
 */
import { InputError } from '../../errors.js';
import type { BlockTokens, TokenSchedule } from './types.js';

/** EViT's drop locations for a 12-block model (youweiliang/evit, `drop_loc=(3, 6, 9)`). */
export const defaultEvitBlocks = [3, 6, 9] as const;

const forms =
  'tome:<r> or tome:<r0>,<r1>,… (one per block) [:noprop], evit:<keep>[@<block>,…] [:nofuse], single:<r>@<block>';

/**
 * Reads a schedule: `tome:8`, `tome:16,16,8,8,…`, `tome:8:noprop`, `evit:0.7@3,6,9`,
 * `evit:0.5:nofuse`, `single:60@4`. Throws InputError naming the allowed forms.
 */
export function parseTokenSchedule(text: string): TokenSchedule {
  const bad = (why: string): never => {
    throw new InputError(`token schedule "${text}": ${why}; expected ${forms}`, text);
  };
  const [method, body, flag, ...rest] = text.trim().split(':');
  if (body === undefined || body === '' || rest.length > 0) bad('wrong number of parts');
  const [amount, where] = body!.split('@') as [string, string | undefined];
  const numbers = (list: string, what: string) =>
    list.split(',').map((part) => {
      const value = Number(part);
      if (part.trim() === '' || !Number.isFinite(value)) bad(`${what} "${part}" is not a number`);
      return value;
    });
  switch (method) {
    case 'tome': {
      if (where !== undefined) bad('ToMe merges in every block; give one r per block instead of @');
      if (flag !== undefined && flag !== 'noprop') bad(`unknown flag "${flag}"`);
      const r = numbers(amount, 'r');
      return {
        kind: 'tome',
        r: r.length === 1 ? r[0]! : r,
        ...(flag ? { propAttention: false } : {}),
      };
    }
    case 'evit': {
      if (flag !== undefined && flag !== 'nofuse') bad(`unknown flag "${flag}"`);
      const keep = numbers(amount, 'keep rate');
      if (keep.length !== 1) bad('one keep rate');
      const blocks = where === undefined ? [...defaultEvitBlocks] : numbers(where, 'block');
      return { kind: 'evit', keep: keep[0]!, blocks, ...(flag ? { fuse: false } : {}) };
    }
    case 'single': {
      if (flag !== undefined) bad(`unknown flag "${flag}"`);
      if (where === undefined) bad('the block is missing (single:<r>@<block>)');
      const [r, block] = [numbers(amount, 'r'), numbers(where!, 'block')];
      if (r.length !== 1 || block.length !== 1) bad('one r and one block');
      return { kind: 'single', r: r[0]!, block: block[0]! };
    }
    default:
      return bad(`unknown method "${method}"`);
  }
}

/** The schedule written the way `parseTokenSchedule` reads it. */
export function scheduleLabel(schedule: TokenSchedule): string {
  switch (schedule.kind) {
    case 'tome': {
      const r = typeof schedule.r === 'number' ? `${schedule.r}` : schedule.r.join(',');
      return `tome:${r}${schedule.propAttention === false ? ':noprop' : ''}`;
    }
    case 'evit':
      return `evit:${schedule.keep}@${schedule.blocks.join(',')}${schedule.fuse === false ? ':nofuse' : ''}`;
    case 'single':
      return `single:${schedule.r}@${schedule.block}`;
  }
}

/** What a schedule does to one block: tokens it merges or removes after attention. */
export interface BlockPlan extends BlockTokens {
  /** ToMe: tokens merged; EViT: patch tokens kept; single: tokens removed. 0: block untouched. */
  amount: number;
}

/**
 * The tokens entering each block's attention and MLP under `schedule`, for a model of `depth`
 * blocks taking `tokens` tokens (class token included, at index 0). ToMe's r is capped per block
 * at ⌊(N − 1) / 2⌋ as ToMe does (the class token is never merged). Throws RangeError for values
 * outside their intervals.
 */
export function planTokens(schedule: TokenSchedule, tokens: number, depth: number): BlockPlan[] {
  checkSchedule(schedule, depth);
  const plans: BlockPlan[] = [];
  let n = tokens;
  for (let block = 0; block < depth; block++) {
    const amount = blockAmount(schedule, block, n);
    const removed = tokensRemoved(schedule, amount, n);
    plans.push({ block, attention: n, mlp: n - removed, amount });
    n -= removed;
  }
  return plans;
}

function blockAmount(schedule: TokenSchedule, block: number, n: number): number {
  switch (schedule.kind) {
    case 'tome': {
      const r = typeof schedule.r === 'number' ? schedule.r : (schedule.r[block] ?? 0);
      return Math.min(r, Math.floor((n - 1) / 2));
    }
    case 'evit': {
      if (!schedule.blocks.includes(block)) return 0;
      // a tiny margin so that 0.3 · 10 keeps 3 tokens, not 4
      const kept = Math.max(1, Math.ceil(schedule.keep * (n - 1) - 1e-9));
      return kept < n - 1 ? kept : 0;
    }
    case 'single':
      if (block !== schedule.block) return 0;
      if (schedule.r > n - 3) {
        throw new RangeError(
          `single: r must be in [0, ${n - 3}] at block ${block}, which sees ${n} tokens; got ${schedule.r}`,
        );
      }
      return schedule.r;
  }
}

function tokensRemoved(schedule: TokenSchedule, amount: number, n: number): number {
  if (amount === 0) return 0;
  if (schedule.kind !== 'evit') return amount;
  return n - 1 - amount - (schedule.fuse === false ? 0 : 1);
}

function checkSchedule(schedule: TokenSchedule, depth: number): void {
  const isCount = (v: number) => Number.isInteger(v) && v >= 0;
  const inBlocks = (b: number) => Number.isInteger(b) && b >= 0 && b < depth;
  switch (schedule.kind) {
    case 'tome': {
      const list = typeof schedule.r === 'number' ? [schedule.r] : schedule.r;
      if (!list.every(isCount)) throw new RangeError(`tome: r must be integers ≥ 0, got ${list}`);
      if (typeof schedule.r !== 'number' && list.length !== depth) {
        throw new RangeError(`tome: one r per block: ${depth} values expected, got ${list.length}`);
      }
      return;
    }
    case 'evit':
      if (!(schedule.keep > 0 && schedule.keep <= 1)) {
        throw new RangeError(`evit: keep must be in (0, 1], got ${schedule.keep}`);
      }
      if (schedule.blocks.length === 0 || !schedule.blocks.every(inBlocks)) {
        throw new RangeError(
          `evit: blocks must be integers in [0, ${depth - 1}], got ${schedule.blocks.join(', ')}`,
        );
      }
      return;
    case 'single':
      if (!inBlocks(schedule.block)) {
        throw new RangeError(`single: block must be in [0, ${depth - 1}], got ${schedule.block}`);
      }
      if (!isCount(schedule.r)) throw new RangeError(`single: r must be an integer ≥ 0`);
      return;
  }
}
