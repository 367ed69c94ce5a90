/**
 * Class lists: `imagenet_classes.tsv` (columns index, synset, names). The index of a class is
 * its line in the file, which for ImageNet is the synset's position in sorted order, as in
 * every ImageNet loader. It is never the position among the folders present: a validation
 * subset holds only some of the classes.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { InputError } from '../errors.js';

export const classFileName = 'imagenet_classes.tsv';

export interface ClassList {
  /** The file the list was read from. */
  source: string;
  /** Synset (or other identifier) per class index. */
  ids: string[];
  /** Human-readable names per class index (the `names` column). */
  names: string[];
  /** Index of an identifier or of any of its comma-separated names, lower-case. */
  lookup: Map<string, number>;
}

/** Reads and checks a class list; throws InputError naming the file and line on a bad row. */
export async function readClassList(path: string): Promise<ClassList> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    throw new InputError(`cannot read class list ${path}: ${(error as Error).message}`, path);
  }
  const lines = text.split(/\r?\n/).filter((line) => line.trim() !== '');
  if (lines[0]?.toLowerCase().startsWith('index\t')) lines.shift();
  const list: ClassList = { source: path, ids: [], names: [], lookup: new Map() };
  lines.forEach((line, i) => addClass(list, line, i));
  if (list.ids.length === 0) throw new InputError(`class list ${path} is empty`, path);
  return list;
}

function addClass(list: ClassList, line: string, position: number): void {
  const [index, id, names = ''] = line.split('\t');
  if (Number(index) !== position || !id) {
    throw new InputError(
      `bad row in ${list.source}: expected "${position}<TAB>id<TAB>names", got "${line}"`,
      list.source,
    );
  }
  if (list.lookup.get(id.toLowerCase()) !== undefined) {
    throw new InputError(`class ${id} appears twice in ${list.source}`, list.source);
  }
  list.ids.push(id);
  list.names.push(names);
  list.lookup.set(id.toLowerCase(), position);
  for (const name of names.split(',')) {
    const key = name.trim().toLowerCase();
    // a name shared by two classes ("crane", "maillot") stays bound to the first
    if (key && !list.lookup.has(key)) list.lookup.set(key, position);
  }
}

/** The class index of an identifier or name, or undefined. */
export function classIndex(list: ClassList, label: string): number | undefined {
  return list.lookup.get(label.trim().toLowerCase());
}

/**
 * Finds the class list for a dataset: the explicit path when given, else
 * `imagenet_classes.tsv` in the dataset folder or its parent. Undefined when there is none.
 */
export function findClassList(root: string, explicit?: string): string | undefined {
  if (explicit !== undefined) {
    if (!existsSync(explicit)) throw new InputError(`class list not found: ${explicit}`, explicit);
    return explicit;
  }
  const here = resolve(root);
  return [join(here, classFileName), join(dirname(here), classFileName)].find((p) => existsSync(p));
}
