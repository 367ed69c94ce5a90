/**
 * Labels files of flat image folders: `labels.txt` or `labels.csv`, one `file<TAB or ,>label`
 * a line, the label a class index, a synset or a class name. An optional header line
 * (`file,label`) and `#` comments are skipped.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { InputError } from '../errors.js';
import { classIndex, type ClassList } from './classes.js';

export const labelFileNames = ['labels.txt', 'labels.csv', 'labels.tsv'];

/** A raw label of one file, with the line it came from (for messages). */
interface RawLabel {
  label: string;
  line: number;
}

export interface ResolvedLabels {
  /** Class index per file name. */
  byFile: Map<string, number>;
  numClasses: number;
  classNames?: string[];
}

/** The labels file in `root`, if any. */
export function findLabelFile(root: string): string | undefined {
  return labelFileNames.map((name) => join(root, name)).find((p) => existsSync(p));
}

const headerWords = new Set(['file', 'filename', 'image', 'path', 'name']);

/** Reads `file → label` pairs; throws InputError naming the file and line on a bad one. */
export async function readLabelFile(path: string): Promise<Map<string, RawLabel>> {
  const text = await readFile(path, 'utf8');
  const out = new Map<string, RawLabel>();
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const match = /^([^\t,]+?)\s*[\t,]\s*(.+)$/.exec(line);
    if (!match) {
      throw new InputError(`${path} line ${i + 1}: expected "file<TAB>label", got "${line}"`, path);
    }
    const [, file, label] = match as unknown as [string, string, string];
    if (i === 0 && headerWords.has(file.toLowerCase())) return;
    if (out.has(file)) throw new InputError(`${path} line ${i + 1}: ${file} is listed twice`, path);
    out.set(file, { label, line: i + 1 });
  });
  return out;
}

/**
 * Turns raw labels into class indices. Integers are indices; other labels are looked up in
 * the class list; without a class list, the distinct labels in sorted order are the classes
 * (torchvision's ImageFolder convention).
 */
export function resolveLabels(
  raw: Map<string, RawLabel>,
  classes: ClassList | undefined,
  source: string,
): ResolvedLabels {
  if (classes) return listedLabels(raw, classes, source);
  const labels = [...raw.values()].map((r) => r.label);
  if (labels.every((l) => isIndex(l))) {
    let largest = 0;
    for (const l of labels) largest = Math.max(largest, Number(l));
    const byFile = new Map([...raw].map(([file, r]) => [file, Number(r.label)]));
    return { byFile, numClasses: largest + 1 };
  }
  const synset = labels.find((l) => /^n\d{8}$/.test(l));
  if (synset !== undefined) {
    // sorted-label numbering would give a subset of ImageNet the wrong class indices
    throw new InputError(
      `${source} labels images with synsets (${synset}) but no imagenet_classes.tsv was found ` +
        'beside it or in its parent; pass the class list (--classes)',
      source,
    );
  }
  const names = [...new Set(labels)].sort();
  const index = new Map(names.map((name, i) => [name, i]));
  const byFile = new Map([...raw].map(([file, r]) => [file, index.get(r.label)!]));
  return { byFile, numClasses: names.length, classNames: names };
}

function isIndex(label: string): boolean {
  return /^\d+$/.test(label);
}

/** Each label an index into the class list or one of its identifiers or names. */
function listedLabels(
  raw: Map<string, RawLabel>,
  classes: ClassList,
  source: string,
): ResolvedLabels {
  const byFile = new Map<string, number>();
  for (const [file, r] of raw) {
    const index = isIndex(r.label) ? Number(r.label) : classIndex(classes, r.label);
    if (index === undefined || index >= classes.ids.length) {
      throw new InputError(
        `${source} line ${r.line}: label "${r.label}" of ${file} is not one of the ` +
          `${classes.ids.length} classes of ${classes.source}`,
        source,
      );
    }
    byFile.set(file, index);
  }
  return { byFile, numClasses: classes.ids.length, classNames: classes.names };
}
