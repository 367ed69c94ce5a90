/** Small helpers to render report tables as Markdown. */

export type Cell = string | number | null | undefined;

/** A Markdown table; numbers are shown as given, null/undefined as an en dash. */
export function markdownTable(header: readonly string[], rows: readonly Cell[][]): string {
  const show = (c: Cell) => (c === null || c === undefined ? '–' : String(c));
  const lines = [
    `| ${header.join(' | ')} |`,
    `| ${header.map(() => '---').join(' | ')} |`,
    ...rows.map((r) => `| ${r.map(show).join(' | ')} |`),
  ];
  return lines.join('\n');
}

/** A fraction as a percentage with one decimal, e.g. 0.8312 → "83.1 %". */
export function percent(x: number | null | undefined, digits = 1): string {
  return x === null || x === undefined ? '–' : `${(x * 100).toFixed(digits)} %`;
}

export function megabytes(bytes: number): string {
  return `${(bytes / 1e6).toFixed(2)} MB`;
}

export function ratio(x: number | null | undefined): string {
  return x === null || x === undefined || !Number.isFinite(x) ? '–' : `${x.toFixed(2)}×`;
}
