/**
 * Where a ViT is quantized, read from its structure map: the input of every linear layer and
 * both operands of both attention matmuls (activations), and the weight of every linear layer.
 * Each point has a role path (`blocks.3.mlp.fc2.input`, `blocks.3.attn.softmax`, `head.weight`)
 * by which recipes select layers to keep in float, alongside regexes over node names.
 */
import { InputError } from '../errors.js';
import type { LinearLayer, ViTStructure } from '../vit/types.js';

/** An activation tensor quantized where a node reads it. */
export interface ActivationPoint {
  /** e.g. `patch_embed.input`, `blocks.3.attn.qkv.input`, `blocks.3.attn.softmax`. */
  role: string;
  /** The graph value quantized. */
  value: string;
  /** The node that reads the quantized value (the quantizer is put on this edge only). */
  node: string;
  /** The node producing the value, where the structure names it (for selection by name). */
  producer?: string;
  kind: 'linear-input' | 'matmul-operand';
}

/** The constant weight of a linear layer. */
export interface WeightPoint {
  /** `<layer role>.weight`, e.g. `blocks.0.mlp.fc1.weight`. */
  role: string;
  layer: LinearLayer;
}

export interface QuantPoints {
  activations: ActivationPoint[];
  weights: WeightPoint[];
}

/** Every quantization point of a ViT, in graph order (patch embedding, blocks, head). */
export function quantPoints(structure: ViTStructure): QuantPoints {
  const activations: ActivationPoint[] = [];
  const weights: WeightPoint[] = [];
  const linear = (layer: LinearLayer) => {
    activations.push({
      role: `${layer.role}.input`,
      value: layer.input,
      node: layer.node,
      kind: 'linear-input',
    });
    weights.push({ role: `${layer.role}.weight`, layer });
  };
  linear(structure.patchEmbed.linear);
  for (const block of structure.blocks) {
    const attn = block.attention;
    const at = `blocks.${block.index}.attn`;
    for (const layer of [attn.qkv, attn.q, attn.k, attn.v]) if (layer) linear(layer);
    const operand = (name: string, value: string, node: string, producer?: string) =>
      activations.push({
        role: `${at}.${name}`,
        value,
        node,
        ...(producer ? { producer } : {}),
        kind: 'matmul-operand',
      });
    operand('query', attn.scores.query, attn.scores.node);
    operand('key', attn.scores.key, attn.scores.node);
    operand('softmax', attn.context.probabilities, attn.context.node, attn.softmax.node);
    operand('value', attn.context.value, attn.context.node);
    linear(attn.proj);
    linear(block.mlp.fc1);
    linear(block.mlp.fc2);
  }
  if (structure.preLogits) linear(structure.preLogits.linear);
  linear(structure.head);
  return { activations, weights };
}

/**
 * A choice of quantization points. Written as text in recipes and on the command line:
 * - a role glob: dot-separated segments, `*` matching within one segment and `**` any number of
 *   segments; it selects every point whose role it matches, or whose role starts with a match
 *   followed by a dot. `head` selects `head.input` and `head.weight`; `blocks.3` everything in
 *   block 3; `blocks.*.attn.softmax` the softmax output of every block;
 * - `node:<regex>` or `/<regex>/<flags>`: points whose node (the reading node, the layer node,
 *   or the producer) has a name matching the regular expression.
 */
export type LayerSelector =
  { kind: 'role'; text: string; pattern: RegExp } | { kind: 'node'; text: string; pattern: RegExp };

const roleGlobSyntax = /^[A-Za-z0-9_\-*]+(\.[A-Za-z0-9_\-*]+)*$/;

export function parseLayerSelector(text: string): LayerSelector {
  const trimmed = text.trim();
  if (trimmed === '') throw new InputError('an empty layer selector selects nothing');
  const slashed = /^\/(.*)\/([a-z]*)$/s.exec(trimmed);
  if (slashed) return nodeSelector(trimmed, slashed[1]!, slashed[2]!);
  if (trimmed.startsWith('node:')) return nodeSelector(trimmed, trimmed.slice(5), '');
  if (!roleGlobSyntax.test(trimmed)) {
    throw new InputError(
      `layer selector "${text}" is neither a role glob (dot-separated names with * or **, e.g. blocks.*.attn.softmax) nor a node-name regex (node:<regex> or /<regex>/)`,
    );
  }
  return { kind: 'role', text: trimmed, pattern: globPattern(trimmed) };
}

function nodeSelector(text: string, source: string, flags: string): LayerSelector {
  try {
    return { kind: 'node', text, pattern: new RegExp(source, flags) };
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw new InputError(`layer selector "${text}" is not a valid regular expression: ${reason}`);
  }
}

/** A role glob as an anchored regex that also accepts a match followed by `.anything`. */
function globPattern(glob: string): RegExp {
  const parts = glob.split('.').map((segment) =>
    segment === '**'
      ? '[^]*'
      : segment
          .split('*')
          .map((s) => s.replace(/[-\\^$+?()[\]{}|]/g, '\\$&'))
          .join('[^.]*'),
  );
  return new RegExp(`^${parts.join('\\.')}(\\..*)?$`);
}

/** Whether a selector chooses a point. */
export function selects(selector: LayerSelector, point: ActivationPoint | WeightPoint): boolean {
  if (selector.kind === 'role') return selector.pattern.test(point.role);
  const nodes = 'layer' in point ? [point.layer.node] : [point.node, point.producer];
  return nodes.some((n) => n !== undefined && selector.pattern.test(n));
}

/** A point kept in float, with the selector that kept it. */
export interface KeptPoint {
  role: string;
  selector: string;
}

/**
 * Splits points into those to quantize and those kept in float. A selector that matches no point
 * is an InputError (most likely a typo, or a recipe written for a different model).
 */
export function excludePoints(
  points: QuantPoints,
  keepFloat: readonly (string | LayerSelector)[],
): { points: QuantPoints; kept: KeptPoint[] } {
  const selectors = keepFloat.map((s) => (typeof s === 'string' ? parseLayerSelector(s) : s));
  const kept: KeptPoint[] = [];
  const used = new Set<LayerSelector>();
  const keep = <P extends ActivationPoint | WeightPoint>(point: P): boolean => {
    const matching = selectors.filter((s) => selects(s, point));
    for (const s of matching) used.add(s);
    if (matching.length === 0) return true;
    kept.push({ role: point.role, selector: matching[0]!.text });
    return false;
  };
  const result = {
    activations: points.activations.filter(keep),
    weights: points.weights.filter(keep),
  };
  const unused = selectors.filter((s) => !used.has(s));
  if (unused.length > 0) {
    const examples = [...points.activations, ...points.weights].slice(0, 4).map((p) => p.role);
    throw new InputError(
      `keep-float selector ${unused.map((s) => `"${s.text}"`).join(', ')} matches no quantization point (roles look like ${examples.join(', ')}, …)`,
    );
  }
  return { points: result, kept };
}
