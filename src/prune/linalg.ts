/**
 * Dense symmetric positive-definite linear algebra on row-major Float64Array matrices, for the
 * ridge solves of compensation and the greedy reconstruction criterion. Plain loops over typed
 * arrays rather than ml-matrix: measured here, the Cholesky factor of a 768 × 768 covariance
 * takes about 0.13 s and its inverse 0.5 s, where ml-matrix's Cholesky of a smaller
 * 540 × 540 matrix took 0.7 s (its matrices are arrays of arrays of boxed numbers).
 */

/**
 * The lower Cholesky factor L of `a` (n × n, symmetric; only its lower triangle is read), so
 * that a = L·Lᵀ; undefined when `a` is not positive definite.
 */
export function cholesky(a: Float64Array, n: number): Float64Array | undefined {
  const l = new Float64Array(n * n);
  for (let j = 0; j < n; j++) {
    let d = a[j * n + j]!;
    const rowJ = j * n;
    for (let k = 0; k < j; k++) d -= l[rowJ + k]! * l[rowJ + k]!;
    if (!(d > 0)) return undefined;
    const ljj = Math.sqrt(d);
    l[rowJ + j] = ljj;
    for (let i = j + 1; i < n; i++) {
      const rowI = i * n;
      let s = a[rowI + j]!;
      for (let k = 0; k < j; k++) s -= l[rowI + k]! * l[rowJ + k]!;
      l[rowI + j] = s / ljj;
    }
  }
  return l;
}

/**
 * The inverse of a symmetric positive-definite matrix through its Cholesky factor:
 * a⁻¹ = L⁻ᵀ·L⁻¹. Undefined when `a` is not positive definite.
 *
 * Worked example: [[4, 2], [2, 3]] has L = [[2, 0], [1, √2]] and inverse
 * [[3/8, −1/4], [−1/4, 1/2]].
 */
export function spdInverse(a: Float64Array, n: number): Float64Array | undefined {
  const l = cholesky(a, n);
  if (!l) return undefined;
  // m = L⁻¹, lower triangular, row by row: row i = (eᵢ − Σ_{k<i} L[i][k]·row k) / L[i][i]
  const m = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    const rowI = i * n;
    m[rowI + i] = 1;
    for (let k = 0; k < i; k++) {
      const f = l[rowI + k]!;
      if (f === 0) continue;
      const rowK = k * n;
      for (let j = 0; j <= k; j++) m[rowI + j] = m[rowI + j]! - f * m[rowK + j]!;
    }
    const d = l[rowI + i]!;
    for (let j = 0; j <= i; j++) m[rowI + j] = m[rowI + j]! / d;
  }
  // a⁻¹ = Mᵀ·M, accumulated row by row of M so that every read is contiguous
  const out = new Float64Array(n * n);
  for (let k = 0; k < n; k++) {
    const rowK = k * n;
    for (let i = 0; i <= k; i++) {
      const f = m[rowK + i]!;
      if (f === 0) continue;
      const rowI = i * n;
      for (let j = 0; j <= i; j++) out[rowI + j] = out[rowI + j]! + f * m[rowK + j]!;
    }
  }
  for (let i = 0; i < n; i++) for (let j = 0; j < i; j++) out[j * n + i] = out[i * n + j]!;
  return out;
}

/**
 * Solves a·x = b for symmetric positive-definite `a` (n × n) and `b` with `m` columns
 * (row-major n × m), through the Cholesky factor. Undefined when `a` is not positive definite.
 */
export function spdSolve(
  a: Float64Array,
  n: number,
  b: Float64Array,
  m: number,
): Float64Array | undefined {
  const l = cholesky(a, n);
  if (!l) return undefined;
  // forward: L·y = b, then backward: Lᵀ·x = y, row operations over the m columns
  const x = Float64Array.from(b);
  for (let i = 0; i < n; i++) {
    const rowI = i * m;
    for (let k = 0; k < i; k++) {
      const f = l[i * n + k]!;
      if (f === 0) continue;
      const rowK = k * m;
      for (let j = 0; j < m; j++) x[rowI + j] = x[rowI + j]! - f * x[rowK + j]!;
    }
    const d = l[i * n + i]!;
    for (let j = 0; j < m; j++) x[rowI + j] = x[rowI + j]! / d;
  }
  for (let i = n - 1; i >= 0; i--) {
    const rowI = i * m;
    for (let k = i + 1; k < n; k++) {
      const f = l[k * n + i]!;
      if (f === 0) continue;
      const rowK = k * m;
      for (let j = 0; j < m; j++) x[rowI + j] = x[rowI + j]! - f * x[rowK + j]!;
    }
    const d = l[i * n + i]!;
    for (let j = 0; j < m; j++) x[rowI + j] = x[rowI + j]! / d;
  }
  return x;
}

/**
 * f(a + λI) for the first λ in λ, 10λ, 100λ, … (eight tries) where a + λI is positive definite.
 * Covariances summed in float32 can be a rounding error away from singular (a dead or constant
 * channel); raising the ridge a little is the least change that makes them solvable.
 */
export function withShift<T>(
  a: Float64Array,
  n: number,
  lambda: number,
  f: (shifted: Float64Array) => T | undefined,
): T | undefined {
  for (let attempt = 0, l = lambda; attempt < 8; attempt++, l *= 10) {
    const shifted = Float64Array.from(a);
    for (let i = 0; i < n; i++) shifted[i * n + i] = shifted[i * n + i]! + l;
    const result = f(shifted);
    if (result) return result;
  }
  return undefined;
}
