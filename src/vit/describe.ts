/**
 * A plain-text account of a structure map, for `vitslim inspect` and for reports: a summary of
 * what was recognised, one row per block and, on request, one row per layer. Returned as a
 * string; the caller decides where it goes.
 */
import type { BlockMap, LinearLayer, ViTStructure } from './types.js';

export interface DescribeOptions {
  /** Add a table of every linear layer and attention MatMul with its node, shape and MACs. */
  layers?: boolean;
}

/** The structure map as text: summary, blocks table and (optionally) layers table. */
export function describeStructure(structure: ViTStructure, options: DescribeOptions = {}): string {
  const sections = [summary(structure), blocksTable(structure)];
  if (options.layers) sections.push(layersTable(structure));
  return sections.join('\n\n') + '\n';
}

/** 1,234,567 */
export function formatCount(n: number): string {
  return Math.round(n).toLocaleString('en-US');
}

/** 1.254 G, 3.62 M, 8.19 K */
export function formatMacs(n: number): string {
  const units: [number, string][] = [
    [1e9, 'G'],
    [1e6, 'M'],
    [1e3, 'K'],
  ];
  const [scale, unit] = units.find(([s]) => n >= s) ?? [1, ''];
  return `${(n / scale).toPrecision(4)}${unit ? ` ${unit}` : ''}`;
}

function linearText(layer: LinearLayer): string {
  return `${layer.opType} ${layer.inFeatures} → ${layer.outFeatures} (${layer.node})`;
}

function summary(s: ViTStructure): string {
  const c = s.counts;
  const e = s.patchEmbed;
  const rows: [string, string][] = [
    [
      'model',
      `ViT, ${c.depth} blocks, width ${c.width}, ${c.heads} heads × ${c.headDim}, MLP ${c.mlpWidth}`,
    ],
    ['input', `${s.input} [${c.imageSize.join(', ')}]`],
    [
      'patch embedding',
      `${e.form} ${e.patchSize}×${e.patchSize} → ${c.patches} patches × ${c.width} (${e.linear.node})`,
    ],
    ['class token', s.classToken ? `${s.classToken.initializer} (${s.classToken.concat})` : 'none'],
    [
      'position embedding',
      s.positionEmbedding
        ? `${s.positionEmbedding.initializer} (${s.positionEmbedding.add})`
        : 'none',
    ],
    ['tokens', String(c.tokens)],
    [
      'final norm',
      s.finalNorm ? `${s.finalNorm.form}, ε ${s.finalNorm.epsilon.toExponential(0)}` : 'none',
    ],
    ['pooling', s.pooling ? `${s.pooling.kind} (${s.pooling.node})` : 'none'],
  ];
  if (s.preLogits) {
    const { linear, activation } = s.preLogits;
    rows.push(['pre-logits', `${linearText(linear)}, ${activation.kind}`]);
  }
  rows.push(
    ['head', `${linearText(s.head)}, ${c.numClasses} classes`],
    ['output', s.output],
    ['parameters', formatCount(c.parameters)],
    ['MACs per image', formatMacs(c.macs)],
  );
  const width = Math.max(...rows.map(([k]) => k.length));
  return rows.map(([k, v]) => `${k.padEnd(width)}  ${v}`).join('\n');
}

function blockMacs(s: ViTStructure, block: BlockMap): number {
  const prefix = `blocks.${block.index}.`;
  const entries = Object.entries(s.counts.macsByRole ?? {});
  return entries.reduce((sum, [role, m]) => (role.startsWith(prefix) ? sum + m : sum), 0);
}

function blockRow(s: ViTStructure, b: BlockMap): string[] {
  const a = b.attention;
  const projections = a.qkv ? `fused qkv ${a.qkv.inFeatures} → ${a.qkv.outFeatures}` : 'q, k, v';
  const norms = b.norm1.form === b.norm2.form ? b.norm1.form : `${b.norm1.form}/${b.norm2.form}`;
  return [
    String(b.index),
    norms,
    projections,
    `${a.heads} × ${a.headDim}`,
    String(b.mlp.fc1.outFeatures),
    b.mlp.activation.kind,
    formatMacs(blockMacs(s, b)),
  ];
}

function blocksTable(s: ViTStructure): string {
  const header = ['block', 'norms', 'attention', 'heads', 'mlp', 'activation', 'MACs'];
  return table(
    header,
    s.blocks.map((b) => blockRow(s, b)),
  );
}

function layerRows(s: ViTStructure): string[][] {
  const macs = s.counts.macsByRole ?? {};
  const row = (l: LinearLayer) => [
    l.role,
    l.opType,
    `${l.inFeatures} → ${l.outFeatures}`,
    l.weightLayout,
    l.node,
    formatMacs(macs[l.role] ?? 0),
  ];
  const rows = [row(s.patchEmbed.linear)];
  for (const b of s.blocks) {
    const a = b.attention;
    for (const l of [a.qkv, a.q, a.k, a.v]) if (l) rows.push(row(l));
    for (const [name, node] of [
      ['scores', a.scores.node],
      ['context', a.context.node],
    ] as const) {
      const role = `blocks.${b.index}.attn.${name}`;
      rows.push([role, 'MatMul', `${a.heads} heads`, '', node, formatMacs(macs[role] ?? 0)]);
    }
    rows.push(row(a.proj), row(b.mlp.fc1), row(b.mlp.fc2));
  }
  if (s.preLogits) rows.push(row(s.preLogits.linear));
  rows.push(row(s.head));
  return rows;
}

function layersTable(s: ViTStructure): string {
  return table(['role', 'op', 'features', 'weight', 'node', 'MACs'], layerRows(s));
}

function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((cell, i) => cell.padEnd(widths[i] ?? 0))
      .join('  ')
      .trimEnd();
  return [line(header), ...rows.map(line)].join('\n');
}
