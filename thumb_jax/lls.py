"""Weighted least-squares last layers in closed form, one fit or a sweep over class weights.

The retrained last layer of THEORY.md ("Estimator"):

    (w, b) = argmin_{w, b}  sum_i c_i (y_i - w.x_i - b)^2 + ridge * n * |w|^2,

with per-sample weights c_i >= 0, the intercept b unpenalized and n the number of
rows with c_i > 0. Class weights are (c_+, c_-) = (weight, 1). A row with c_i = 0 is
a row left out, so one fixed-shape design plus a 0/1 mask serves every sample size.

`factor` / `solve` serve many class weights from one factorization (THEORY.md,
"Derivations: one factorization"); `fit_sweep` is the two together. Nothing here is
jitted; callers apply `jax.jit` / `jax.vmap`, e.g.
`jax.jit(jax.vmap(fit_sweep, in_axes=(0, 0, None)))` over seeds.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular

from thumb_jax import _checks


class LastLayer(NamedTuple):
  """A linear head: score(x) = x @ w + b. Shapes w [..., d], b [...]."""
  w: jax.Array
  b: jax.Array


def scores(layer: LastLayer, x: jax.Array) -> jax.Array:
  """x [n, d] -> scores [..., n] for a (possibly batched) layer."""
  return jnp.einsum("nd,...d->...n", x, layer.w) + layer.b[..., None]


def class_sample_weights(y: jax.Array, weight, mask: jax.Array | None = None) -> jax.Array:
  """c_i = weight for y_i = +1, 1 for y_i = -1, times the 0/1 mask. Shape [n]."""
  c = jnp.where(y > 0, weight, 1.0)
  return c if mask is None else c * mask


def _pseudo_inverse_tol(evals: jax.Array) -> jax.Array:
  """Eigenvalues at or below this count as zero: size * eps * largest |eigenvalue|."""
  return evals.shape[-1] * jnp.finfo(evals.dtype).eps * jnp.max(jnp.abs(evals))


def _psd_solve(a: jax.Array, rhs: jax.Array) -> jax.Array:
  """Minimum-norm solution of a x = rhs for symmetric PSD a (pseudo-inverse via eigh)."""
  evals, evecs = jnp.linalg.eigh(a)
  keep = evals > _pseudo_inverse_tol(evals)
  inv = jnp.where(keep, 1.0 / jnp.where(keep, evals, 1.0), 0.0)
  return evecs @ (inv * (evecs.T @ rhs))


def _as_float(name: str, x) -> jax.Array:
  """`x` as a float array of at least 32 bits: float16 / bfloat16 are upcast to float32
  (LAPACK has no half-precision solvers), integers and bools to the default float."""
  if not isinstance(x, jax.Array):
    _checks.real(name, x)
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    return x.astype(jnp.result_type(float))
  return x.astype(jnp.float32) if jnp.finfo(x.dtype).bits < 32 else x


def _validate(x, y, weight, ridge, mask):
  _checks.shape("x", x, (None, None), "[n, d]")
  n = x.shape[0]
  _checks.shape("y", y, (n,), f"[{n}] (one label per row of x)")
  if mask is not None:
    _checks.shape("mask", mask, (n,), f"[{n}]")
  _checks.labels("y", y if mask is None or not _checks.is_concrete(mask)
                 else jnp.asarray(y)[jnp.asarray(mask) > 0])
  _checks.finite("ridge", ridge)
  _checks.finite("weight", weight)
  _checks.nonnegative("ridge", ridge)
  _checks.positive("weight", weight)


def _check_weights(weights) -> None:
  if np.ndim(weights) != 1:
    raise ValueError(f"weights: expected shape [K] (1-D), got {np.shape(weights)}")
  _checks.finite("weights", weights)
  _checks.positive("weights", weights)


def fit_weighted(x: jax.Array, y: jax.Array, sample_weight: jax.Array, *,
                 ridge=0.0) -> LastLayer:
  """Weighted ridge least squares with per-sample weights, one direct solve.

  The intercept eliminates to weighted centring (b = ybar - xbar.w); w solves the centred
  problem in primal form (d <= n rows) or dual form (d > n rows). With ridge 0 and a
  rank-deficient system the pseudo-inverse gives the minimum-norm solution (the ridge -> 0+
  limit), not NaN.

  Args:
    x: features [n, d] (half precision is upcast to float32).
    y: targets [n] (labels +1 / -1 for classification).
    sample_weight: c [n] >= 0; rows with c = 0 are left out.
    ridge: penalty; the objective adds ridge * (number of rows with c > 0) * |w|^2.

  Returns:
    LastLayer(w [d], b []).
  """
  x = _as_float("x", x)
  n_rows, d = x.shape
  c = jnp.asarray(sample_weight).astype(x.dtype)
  n_eff = jnp.sum(c > 0)
  total = jnp.sum(c)
  xbar = c @ x / total
  ybar = c @ y / total
  xc, yc = x - xbar, y - ybar
  if d <= n_rows:
    gram = xc.T @ (c[:, None] * xc) + ridge * n_eff * jnp.eye(d, dtype=x.dtype)
    w = _psd_solve(gram, xc.T @ (c * yc))
  else:
    # w = B' (B B' + ridge n I)^+ C^{1/2} yc with B = C^{1/2} Xc.
    root = jnp.sqrt(c)
    bmat = root[:, None] * xc
    kernel = bmat @ bmat.T + ridge * n_eff * jnp.eye(n_rows, dtype=x.dtype)
    w = bmat.T @ _psd_solve(kernel, root * yc)
  return LastLayer(w, ybar - xbar @ w)


def fit(x: jax.Array, y: jax.Array, weight=1.0, *, ridge=0.0,
        mask: jax.Array | None = None) -> LastLayer:
  """Class-weighted ridge least squares: c_+ = weight, c_- = 1 (times the mask).

  Args:
    x: features [n, d].
    y: labels [n] in {+1, -1}.
    weight: minority class weight omega > 0 (scalar).
    ridge: ridge >= 0 (objective: ... + ridge * n * |w|^2, n = rows kept by the mask).
    mask: optional 0/1 [n] selecting a subsample of the rows.

  Returns:
    LastLayer(w [d], b []).

  Raises:
    ValueError (concrete inputs only): bad shapes, non-numeric x, labels not in {+1, -1},
    a class absent, weight or ridge not a finite real number, weight <= 0, ridge < 0.
    Half-precision x (float16, bfloat16) is upcast to float32 (so is the layer).
  """
  x = _as_float("x", x)
  _validate(x, y, weight, ridge, mask)
  return fit_weighted(x, y, class_sample_weights(y, weight, mask), ridge=ridge)


def host_scale(x_centred) -> float:
  """A power of two 2^k near the root mean square of centred features [n, d] (host, float64).

  Dividing features by it (and a ridge by its square) is exact in binary floating point and
  brings any finite scale (1e-30, 1e30) to O(1) before a float32 solve. 1.0 for all-zero x.
  """
  x = np.asarray(x_centred, np.float64)
  peak = float(np.max(np.abs(x))) if x.size else 0.0
  if not 0.0 < peak < np.inf:
    return 1.0
  rms = peak * float(np.sqrt(np.mean((x / peak) ** 2)))
  return float(np.ldexp(1.0, int(np.round(np.log2(rms)))))


class Factors(NamedTuple):
  """One factorization of a (masked) retraining set that serves every class weight.

  Coordinates: `basis` Q [d, r] (an orthonormal basis of the rows when d > rows; None and
  r = d otherwise). R = S_+ + S_- + ridge n I = L L' (L^-1 a pseudo-inverse when R is
  singular), e = L^-1 dbar, and T, s, q as in THEORY.md "Derivations: one factorization"
  (P' = the minority rows P, or r for the full form).
  """
  base: jax.Array          # R^-1 dbar [r]
  base_quad: jax.Array     # dbar' R^-1 dbar = |e|^2 []
  transform: jax.Array     # T [r, P']
  spectrum: jax.Array      # s [P'], in [0, 1]
  proj: jax.Array          # q [P']
  mean_plus: jax.Array     # xbar_+ [d]
  mean_minus: jax.Array    # xbar_- [d]
  count_plus: jax.Array    # n_+ []
  count_minus: jax.Array   # n_- []
  basis: jax.Array | None  # Q [d, r] or None (r = d)
  within: jax.Array        # S_+ + S_- [r, r], the within-class scatter (reusable by plug-ins)
  interpolator: LastLayer | None  # ridge 0: minimum-norm interpolator (None: ridge > 0 known)
  use_interpolator: jax.Array     # bool []: ridge 0 and the classes can be fit exactly


def factor(x: jax.Array, y: jax.Array, *, ridge=0.0, mask: jax.Array | None = None,
           minority_rows: int | None = None) -> Factors:
  """Factor a retraining set once for `solve` at any class weights.

  Cost O(n r^2 + r^3) with r = min(d, n rows). With `minority_rows` = P < r the minority's
  scatter (rank < P) is eigendecomposed as a P x P matrix instead of r x r (THEORY.md,
  "Derivations: one factorization"). With ridge 0 a singular R is detected numerically:
  if the classes can then be fit exactly every weight gives the minimum-norm interpolator,
  otherwise the pseudo-inverse gives the minimum-norm least-squares layer (as `fit`).

  Args:
    x: features [n, d].
    y: labels [n] in {+1, -1}.
    ridge: ridge >= 0. A concrete ridge > 0 uses a Cholesky factor and skips the
      interpolator; otherwise R is factored by eigh.
    mask: optional 0/1 [n].
    minority_rows: None for the full r x r form; a Python int P >= the number of kept
      minority rows (static) for the low-rank form (the r x r form when P >= r). P = 0
      skips the minority part: only weight 1 is then solved correctly.

  Returns:
    Factors.

  Raises:
    ValueError (concrete inputs only): as `fit` (x is upcast as there); minority_rows not
    a nonnegative int, or fewer than the kept minority rows (under jit the extra rows would
    be dropped).
  """
  x = _as_float("x", x)
  _validate(x, y, 1.0, ridge, mask)
  if minority_rows is not None and (not isinstance(minority_rows, (int, np.integer))
                                    or isinstance(minority_rows, bool) or minority_rows < 0):
    raise ValueError(f"minority_rows: expected None or a Python int >= 0, got {minority_rows!r}")
  n_rows, d = x.shape
  dtype = x.dtype
  mask = jnp.ones((n_rows,), dtype) if mask is None else jnp.asarray(mask).astype(dtype)
  is_plus = y > 0
  m_plus = jnp.where(is_plus, mask, 0.0)
  m_minus = jnp.where(is_plus, 0.0, mask)
  if minority_rows and _checks.is_concrete(m_plus):
    kept = int(np.sum(np.asarray(m_plus) > 0))
    if kept > minority_rows:
      raise ValueError(f"minority_rows: {minority_rows} is fewer than the {kept} minority rows "
                       "kept by the mask")
  n_plus, n_minus = jnp.sum(m_plus), jnp.sum(m_minus)
  n_eff = n_plus + n_minus
  mean_plus, mean_minus = m_plus @ x / n_plus, m_minus @ x / n_minus
  basis, z = None, x
  if d > n_rows:
    basis, _ = jnp.linalg.qr(x.T)                                  # [d, rows]: w = Q v
    z = x @ basis
  zbar_plus = mean_plus if basis is None else mean_plus @ basis
  zbar_minus = mean_minus if basis is None else mean_minus @ basis
  r = z.shape[1]
  centred = (z - jnp.where(is_plus[:, None], zbar_plus, zbar_minus)) * mask[:, None]
  within = centred.T @ centred
  reference = within + ridge * n_eff * jnp.eye(r, dtype=dtype)
  diff = zbar_plus - zbar_minus
  ridge_positive = _checks.is_concrete(ridge) and float(ridge) > 0

  if ridge_positive:
    chol = jnp.linalg.cholesky(reference)
    whiten = lambda m: solve_triangular(chol, m, lower=True)             # L^-1 m
    unwhiten = lambda m: solve_triangular(chol, m, lower=True, trans=1)  # L^-T m
  else:
    # L = V diag(sqrt lambda), pseudo-inverted: directions with lambda ~ 0 are dropped.
    evals, evecs = jnp.linalg.eigh(reference)
    in_range = evals > _pseudo_inverse_tol(evals)
    inv_root = jnp.where(in_range, jax.lax.rsqrt(jnp.where(in_range, evals, 1.0)), 0.0)
    whiten = lambda m: (inv_root * (evecs.T @ m).T).T
    unwhiten = lambda m: evecs @ (inv_root * m.T).T
  # Every stage below is one call on all its right-hand sides (a chain, no two LAPACK calls
  # side by side): independent batched solves can hang jaxlib 0.10's CPU pool
  # (thumb_jax/platform.py).
  if minority_rows is None or minority_rows >= r:
    # r x r: L^-1 S_+ L^-T = U diag(s) U'; then W V = U diag(sqrt s).
    rows_plus = centred * m_plus[:, None]
    first = whiten(jnp.concatenate([diff[:, None], rows_plus.T @ rows_plus], 1))
    e = first[:, 0]
    whitened = whiten(first[:, 1:].T)
    spectrum, evecs_s = jnp.linalg.eigh(0.5 * (whitened + whitened.T))
    root = jnp.sqrt(jnp.clip(spectrum, 0.0, 1.0))
    back = unwhiten(jnp.concatenate([e[:, None], evecs_s * root], 1))
    base, transform = back[:, 0], back[:, 1:]
    proj = root * (evecs_s.T @ e)
  elif minority_rows > 0:
    keep = jnp.argsort(-m_plus, stable=True)[:minority_rows]       # minority rows first
    rows_plus = (centred[keep] * m_plus[keep, None]).T             # Z_+' [r, P]
    first = whiten(jnp.concatenate([diff[:, None], rows_plus], 1))
    e, half = first[:, 0], first[:, 1:]                            # W = L^-1 Z_+' [r, P]
    gram = half.T @ half
    spectrum, evecs_s = jnp.linalg.eigh(0.5 * (gram + gram.T))
    back = unwhiten(jnp.concatenate([e[:, None], half @ evecs_s], 1))
    base, transform = back[:, 0], back[:, 1:]
    proj = evecs_s.T @ (half.T @ e)
  else:
    e = whiten(diff)
    base = unwhiten(e)
    transform = jnp.zeros((r, 0), dtype)
    spectrum = proj = jnp.zeros((0,), dtype)

  interp, use_interp = None, jnp.asarray(False)
  if not ridge_positive:
    # The part of dbar outside range(R): nonzero iff some w has no within-class spread and
    # separates the means, i.e. the classes can be fit exactly. The minimum-norm such w
    # (scores +1 / -1) is 2 u / |u|^2 with u that part.
    outside = diff - evecs @ jnp.where(in_range, evecs.T @ diff, 0.0)
    size = outside @ outside
    exact = (n_eff - 2 < r) | (size > jnp.sqrt(jnp.finfo(dtype).eps) * (diff @ diff))
    use_interp = (jnp.asarray(ridge) == 0) & exact
    v = 2.0 * outside / jnp.where(size > 0, size, 1.0)
    w_int = v if basis is None else basis @ v
    interp = LastLayer(w_int, 1.0 - mean_plus @ w_int)
  return Factors(base, e @ e, transform, jnp.clip(spectrum, 0.0, 1.0), proj, mean_plus,
                 mean_minus, n_plus, n_minus, basis, within, interp, use_interp)


def solve(factors: Factors, weights: jax.Array) -> LastLayer:
  """Last layers for K class weights from one factorization, O(r P' K).

  Args:
    factors: from `factor`.
    weights: omega [K] > 0 (1-D; NaN layers for omega <= 0 under jit).

  Returns:
    LastLayer(w [K, d], b [K]).

  Raises:
    ValueError: weights not 1-D; (concrete) a weight <= 0 or not a finite real number.
  """
  _check_weights(weights)
  f = factors
  weights = jnp.asarray(weights, f.base.dtype)
  c = weights[:, None] - 1.0
  coef = c / (1.0 + c * f.spectrum)                                  # [K, P']
  direction = f.base - (coef * f.proj) @ f.transform.T               # A^-1 dbar [K, r]
  quad = f.base_quad - jnp.sum(coef * f.proj ** 2, axis=-1)          # dbar' A^-1 dbar [K]
  # w = 2 beta A^-1 dbar / (1 + beta dbar' A^-1 dbar), beta = omega n_+ n_- / (omega n_+ + n_-);
  # b = ybar - xbar.w with weighted means, ybar = (omega n_+ - n_-) / (omega n_+ + n_-).
  total_plus = weights * f.count_plus
  total = total_plus + f.count_minus
  beta = total_plus * f.count_minus / total
  v = (2.0 * beta / (1.0 + beta * quad))[:, None] * direction
  w = v if f.basis is None else v @ f.basis.T
  w = jnp.where(weights[:, None] > 0, w, jnp.nan)
  ybar = (total_plus - f.count_minus) / total
  b = ybar - (total_plus * (w @ f.mean_plus) + f.count_minus * (w @ f.mean_minus)) / total
  if f.interpolator is not None:
    w = jnp.where(f.use_interpolator, f.interpolator.w, w)
    b = jnp.where(f.use_interpolator, f.interpolator.b, b)
  return LastLayer(w, b)


def fit_sweep(x: jax.Array, y: jax.Array, weights: jax.Array, *, ridge=0.0,
              mask: jax.Array | None = None) -> LastLayer:
  """Class-weighted ridge least squares for K weights on the same data.

  Equal to `fit(x, y, weights[k], ridge=ridge, mask=mask)` for every k, at the cost of one
  factorization plus O(r^2) per weight: `solve(factor(x, y, ridge=ridge, mask=mask), weights)`.

  Args:
    x: features [n, d]; y: labels [n] in {+1, -1}; weights: omega [K] > 0 (1-D);
    ridge >= 0; mask: optional 0/1 [n].

  Returns:
    LastLayer(w [K, d], b [K]).
  """
  _check_weights(weights)
  return solve(factor(x, y, ridge=ridge, mask=mask), weights)
