/**
 * A layer on which onnxruntime's u8×s8 kernel for x86 CPUs without VNNI gives a wrong sum with
 * full-range int8 weights: it adds two u8·s8 products in a saturating int16, and 255 · 127 · 2 =
 * 64770 does not fit. Inputs at the top of their range (uint8 code 255) meet weights at their
 * channel maximum (code 127 on the full grid, 64 on the reduced one, where 255 · 64 · 2 = 32640
 * fits).
 *
 *   x [2, 8]: row 0 all 2.55; row 1 [2.55, 2.55, 1, 1, 0, 0.5, 2.55, 2.55] (sum 12.7)
 *   W [8, 2]: column 0 all 1.27, column 1 all −0.635
 *
 * x spans [0, 2.55], so uint8 activations get scale 0.01 and zero point 0 and take the codes
 * 255, 100, 50 and 0 exactly; each column's maximum is a grid point on both weight grids. The
 * quantized layer must therefore give the float product to float32 precision, by hand:
 * y = [[8 · 2.55 · 1.27, −8 · 2.55 · 0.635], [12.7 · 1.27, −12.7 · 0.635]]
 *   = [[25.908, −12.954], [16.129, −8.0645]].
 */
import { TinyGraph, bareMatMulLayer } from './tiny.js';

export function saturationCase() {
  const g = new TinyGraph();
  const w = Array.from({ length: 8 }, () => [1.27, -0.635]).flat();
  g.floats('W', [8, 2], w);
  g.op('MatMul', ['x', 'W'], 'y');
  const x = Float32Array.of(
    ...Array.from({ length: 8 }, () => 2.55),
    ...[2.55, 2.55, 1, 1, 0, 0.5, 2.55, 2.55],
  );
  return {
    model: g.model(['N', 8]),
    x,
    dims: [2, 8],
    expected: Float32Array.of(25.908, -12.954, 16.129, -8.0645),
  };
}

/** The layer of `saturationCase`, and the calibrated range of its input. */
saturationCase.layers = [bareMatMulLayer('fc', 'x', 'W', 'y', [8, 2])];
saturationCase.ranges = new Map([['x', { min: 0, max: 2.55 }]]);
