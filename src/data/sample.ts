/**
 * Seeded sampling of calibration images. The same seed gives the same images in the same order
 * on every machine, so a report's calibration set can be reproduced from its seed.
 */
import type { Dataset } from './dataset.js';

/**
 * mulberry32, Tommy Ettinger's 32-bit generator (public domain): a Weyl sequence step
 * (+0x6d2b79f5) followed by two xorshift-multiply rounds. Period 2³²: not for cryptography or
 * long simulations, ample for choosing and ordering images, and short enough to port exactly
 * (the same seed gives the same sample in any language). Returns floats in [0, 1) with 32 bits.
 *
 * Worked example: mulberry32(0) first gives 0.26642920868471265 (1144304738 / 2³²).
 */
export function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * The first `count` positions of a Fisher–Yates shuffle of 0 … size − 1 driven by mulberry32.
 * Only the first `count` swaps are made, so sampling 32 of a million costs 32 steps after the
 * identity array is built.
 */
export function samplePositions(size: number, count: number, seed: number): number[] {
  const positions = Array.from({ length: size }, (_, i) => i);
  const random = mulberry32(seed);
  const take = Math.min(count, size);
  for (let i = 0; i < take; i++) {
    const j = i + Math.floor(random() * (size - i));
    [positions[i], positions[j]] = [positions[j]!, positions[i]!];
  }
  return positions.slice(0, take);
}

/**
 * A view over `count` images of `dataset` (all of them when it has fewer), chosen and ordered
 * by a seeded shuffle of the dataset's sorted order.
 */
export function sampleDataset(dataset: Dataset, count: number, seed: number): Dataset {
  if (!Number.isInteger(count) || count < 1) {
    throw new RangeError(`sampleDataset: count must be an integer ≥ 1, got ${count}`);
  }
  if (!Number.isInteger(seed)) {
    throw new RangeError(`sampleDataset: seed must be an integer, got ${seed}`);
  }
  const positions = samplePositions(dataset.size, count, seed);
  return dataset.subset(positions, `${dataset.name} (${positions.length} sampled, seed ${seed})`);
}
