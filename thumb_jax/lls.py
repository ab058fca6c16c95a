"""Weighted least-squares last layers in closed form.

The retrained last layer of THEORY.md ("Estimator"):

    (w, b) = argmin_{w, b}  sum_i c_i (y_i - w.x_i - b)^2 + ridge * n * |w|^2,

with per-sample weights c_i >= 0, the intercept b unpenalized and n the number of
rows with c_i > 0. Class weights are (c_+, c_-) = (weight, 1). A row with c_i = 0 is
a row left out, so one fixed-shape design plus a 0/1 mask serves every sample size.

Two ways to serve many class weights from one factorization (THEORY.md, "Fast sweep"):
`factor` / `solve_factored` (behind `fit_sweep`) eigendecompose the whitened minority
scatter in full, r x r; `factor_low_rank` / `solve_low_rank` use that the minority scatter
has rank below n_+ and eigendecompose a P x P matrix instead (P >= n_+; faster when
n_+ < r, used by `thumb_jax.retrain`'s sweeps; r x r as `factor` when P >= r).

Nothing here is jitted; callers apply `jax.jit` / `jax.vmap`, e.g.
`jax.jit(jax.vmap(fit_sweep, in_axes=(0, 0, None)))` over seeds.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
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


def _psd_solve(a: jax.Array, rhs: jax.Array) -> jax.Array:
  """Minimum-norm solution of a x = rhs for symmetric PSD a (pseudo-inverse via eigh).

  Eigenvalues below max(a.shape) * eps * largest are treated as zero, so a singular
  system (ridge 0 and fewer samples than features) gives the minimum-norm solution.
  """
  evals, evecs = jnp.linalg.eigh(a)
  tol = a.shape[-1] * jnp.finfo(a.dtype).eps * jnp.max(jnp.abs(evals))
  inv = jnp.where(evals > tol, 1.0 / jnp.where(evals > tol, evals, 1.0), 0.0)
  return evecs @ (inv * (evecs.T @ rhs))


def _validate(x, y, sample_weight_or_weight, ridge, mask, *, weight_name):
  _checks.shape("x", x, (None, None), "[n, d]")
  n = x.shape[0]
  _checks.shape("y", y, (n,), f"[{n}] (one label per row of x)")
  if mask is not None:
    _checks.shape("mask", mask, (n,), f"[{n}]")
  _checks.labels("y", y if mask is None or not _checks.is_concrete(mask)
                 else jnp.asarray(y)[jnp.asarray(mask) > 0])
  _checks.nonnegative("ridge", ridge)
  if weight_name == "weight":
    _checks.positive("weight", sample_weight_or_weight)
  else:
    _checks.shape(weight_name, sample_weight_or_weight, (n,), f"[{n}]")
    _checks.nonnegative(weight_name, sample_weight_or_weight)


def fit_weighted(x: jax.Array, y: jax.Array, sample_weight: jax.Array, *,
                 ridge=0.0) -> LastLayer:
  """Weighted ridge least squares with per-sample weights, one direct solve.

  Eliminating the unpenalized intercept: with weighted means xbar = sum c x / sum c,
  ybar likewise, b = ybar - xbar.w and w solves the centred weighted ridge problem
      (Xc' C Xc + ridge n I) w = Xc' C yc            (primal, d <= n rows), or
      w = B' (B B' + ridge n I)^+ C^{1/2} yc,  B = C^{1/2} Xc   (dual, d > n rows).
  With ridge 0 and a rank-deficient system the pseudo-inverse returns the
  minimum-norm interpolator (the ridge -> 0+ limit), not NaN.

  Args:
    x: features [n, d].
    y: targets [n] (labels +1 / -1 for classification).
    sample_weight: c [n] >= 0; rows with c = 0 are left out.
    ridge: penalty; the objective adds ridge * (number of rows with c > 0) * |w|^2.

  Returns:
    LastLayer(w [d], b []).
  """
  n_rows, d = x.shape
  c = sample_weight.astype(x.dtype)
  n_eff = jnp.sum(c > 0)
  total = jnp.sum(c)
  xbar = c @ x / total
  ybar = c @ y / total
  xc, yc = x - xbar, y - ybar
  if d <= n_rows:
    gram = xc.T @ (c[:, None] * xc) + ridge * n_eff * jnp.eye(d, dtype=x.dtype)
    w = _psd_solve(gram, xc.T @ (c * yc))
  else:
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
    ValueError (concrete inputs only): bad shapes, labels not in {+1, -1}, a class
    absent, weight <= 0, ridge < 0.
  """
  _validate(x, y, weight, ridge, mask, weight_name="weight")
  return fit_weighted(x, y, class_sample_weights(y, weight, mask), ridge=ridge)


class SweepFactors(NamedTuple):
  """One factorization of a retraining set that serves every class weight.

  Notation (per masked class k in {+, -}): counts n_k, means xbar_k, within-class
  scatters S_k = sum_{i in k} (x_i - xbar_k)(x_i - xbar_k)'. In the coordinates
  `basis` (identity when d <= n rows, an orthonormal basis of the row space otherwise)
  R = S_+ + S_- + ridge n I = L L',  L^-1 S_+ L^-T = U diag(s) U',  T = L^-T U.
  """
  transform: jax.Array      # T [r, r]
  spectrum: jax.Array       # s [r], in [0, 1]
  proj_diff: jax.Array      # T' dbar [r]
  mean_plus: jax.Array      # xbar_+ [d]
  mean_minus: jax.Array     # xbar_- [d]
  count_plus: jax.Array     # n_+ []
  count_minus: jax.Array    # n_- []
  basis: jax.Array | None   # Q [d, r] or None (r = d)
  interpolator: LastLayer | None  # ridge-0 minimum-norm interpolator (None: ruled out statically)
  use_interpolator: jax.Array     # bool []: R singular, every weight gives the interpolator


def factor(x: jax.Array, y: jax.Array, *, ridge=0.0,
           mask: jax.Array | None = None) -> SweepFactors:
  """O(d^3) (or O(d n^2) when d > n) factorization for `solve_factored`.

  Derivation (THEORY.md "Why it holds", specialized to class-constant labels): the
  intercept eliminates to weighted centring; with c_+ = omega, c_- = 1 the weighted
  scatter is A(omega) + beta dbar dbar', A(omega) = omega S_+ + S_- + ridge n I,
  beta = omega n_+ n_- / (omega n_+ + n_-), dbar = xbar_+ - xbar_-, and
  X_c' C y_c = 2 beta dbar. Sherman-Morrison then gives
      w(omega) = 2 beta A^-1 dbar / (1 + beta dbar' A^-1 dbar).
  A(omega) = R + (omega - 1) S_+ with R = A(1) = L L', so
      A(omega)^-1 = T diag(1 / (1 + (omega - 1) s)) T',  s in [0, 1],
  which is positive for every omega > 0 whenever R is (ridge > 0, or n - 2 >= d).
  With ridge 0 and R singular every weight gives the minimum-norm interpolator.

  Args:
    x: features [n, d]; y: labels [n] in {+1, -1}; ridge >= 0; mask: optional 0/1 [n].

  Returns:
    SweepFactors.
  """
  _validate(x, y, 1.0, ridge, mask, weight_name="weight")
  n_rows, d = x.shape
  no_mask = mask is None
  mask = jnp.ones((n_rows,), x.dtype) if no_mask else mask.astype(x.dtype)
  m_plus = jnp.where(y > 0, mask, 0.0)
  m_minus = jnp.where(y > 0, 0.0, mask)
  n_plus, n_minus = jnp.sum(m_plus), jnp.sum(m_minus)
  n_eff = n_plus + n_minus
  mean_plus = m_plus @ x / n_plus
  mean_minus = m_minus @ x / n_minus

  basis = None
  z = x
  if d > n_rows:
    # Every vector in the solution lies in the row space of x: w = Q v.
    basis, _ = jnp.linalg.qr(x.T)                      # [d, n_rows]
    z = x @ basis
  r = z.shape[1]
  zbar_plus, zbar_minus = m_plus @ z / n_plus, m_minus @ z / n_minus
  zc_plus = (z - zbar_plus) * m_plus[:, None]
  zc_minus = (z - zbar_minus) * m_minus[:, None]
  scatter_plus = zc_plus.T @ zc_plus
  scatter_ref = scatter_plus + zc_minus.T @ zc_minus + ridge * n_eff * jnp.eye(r, dtype=x.dtype)
  chol = jnp.linalg.cholesky(scatter_ref)
  half = solve_triangular(chol, scatter_plus, lower=True)          # L^-1 S_+
  whitened = solve_triangular(chol, half.T, lower=True)            # L^-1 S_+ L^-T
  spectrum, evecs = jnp.linalg.eigh(0.5 * (whitened + whitened.T))
  transform = solve_triangular(chol.T, evecs, lower=False)         # L^-T U
  proj_diff = transform.T @ (zbar_plus - zbar_minus)

  # R is singular only with ridge 0 and fewer than d + 2 rows kept. When that is ruled out
  # statically (concrete ridge > 0, or no mask and enough rows) the interpolator branch is
  # not even traced; otherwise lax.cond picks it (under vmap both branches run).
  if _checks.is_concrete(ridge) and (float(ridge) > 0 or (no_mask and n_rows - 2 >= r)):
    interp, use_interp = None, jnp.asarray(False)
  else:
    use_interp = (jnp.asarray(ridge) == 0) & (n_eff - 2 < r)
    interp = jax.lax.cond(
        use_interp,
        lambda: fit_weighted(x, y, mask, ridge=0.0),
        lambda: LastLayer(jnp.zeros((d,), x.dtype), jnp.zeros((), x.dtype)))
  return SweepFactors(transform, jnp.clip(spectrum, 0.0, 1.0), proj_diff, mean_plus,
                      mean_minus, n_plus, n_minus, basis, interp, use_interp)


def solve_factored(factors: SweepFactors, weights: jax.Array) -> LastLayer:
  """Last layers for K class weights from one factorization, O(d^2 K).

  Args:
    factors: from `factor`.
    weights: omega [K] > 0 (NaN for omega <= 0 under jit).

  Returns:
    LastLayer(w [K, d], b [K]).
  """
  weights = jnp.asarray(weights, factors.transform.dtype)
  _checks.positive("weights", weights)
  f = factors
  denom = 1.0 + (weights[:, None] - 1.0) * f.spectrum                               # [K, r]
  g = f.proj_diff / denom                                                            # [K, r]
  quad = jnp.sum(f.proj_diff * g, axis=-1)                                           # dbar'A^-1 dbar
  return _finish(f, weights, g @ f.transform.T, quad)


def _finish(f, weights: jax.Array, direction: jax.Array, quad: jax.Array) -> LastLayer:
  """Last layers from A^-1 dbar [K, r] and dbar' A^-1 dbar [K] (both sweeps; see `factor`).

  w = 2 beta A^-1 dbar / (1 + beta dbar' A^-1 dbar), mapped back by the basis; NaN for
  weights <= 0; the interpolator where it applies; b = ybar - xbar.w with weighted means,
  ybar = (omega n_+ - n_-) / (omega n_+ + n_-).
  """
  total_plus = weights * f.count_plus
  total = total_plus + f.count_minus
  beta = total_plus * f.count_minus / total                                          # [K]
  v = (2.0 * beta / (1.0 + beta * quad))[:, None] * direction                       # [K, r]
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

  Equal to `fit(x, y, weights[k], ridge=ridge, mask=mask)` for every k, at the cost
  of one factorization plus O(d^2) per weight (see `factor`).

  Args:
    x: features [n, d]; y: labels [n] in {+1, -1}; weights: omega [K] > 0;
    ridge >= 0; mask: optional 0/1 [n].

  Returns:
    LastLayer(w [K, d], b [K]).
  """
  return solve_factored(factor(x, y, ridge=ridge, mask=mask), weights)


class LowRankFactors(NamedTuple):
  """One factorization of a subsample serving every class weight (`factor_low_rank`).

  In the coordinates `basis` (identity when d <= rows, else an orthonormal basis of the
  rows), with the within-class scatter R = S_+ + S_- + ridge n I = L L', the minority's
  centred rows Z_+ [P, r] (S_+ = Z_+' Z_+), W = L^-1 Z_+' and W'W = V diag(s) V'.
  Below, P' = P, or r when P >= r (then the r x r form: see `factor_low_rank`).
  """
  base: jax.Array          # R^-1 dbar [r]
  base_quad: jax.Array     # dbar' R^-1 dbar []
  transform: jax.Array     # L^-T W V [r, P']
  spectrum: jax.Array      # s [P'], in [0, 1]
  proj: jax.Array          # V' W' L^-1 dbar [P']
  mean_plus: jax.Array     # xbar_+ [d]
  mean_minus: jax.Array    # xbar_- [d]
  count_plus: jax.Array    # n_+ []
  count_minus: jax.Array   # n_- []
  basis: jax.Array | None  # Q [d, r] or None (r = d)
  interpolator: LastLayer | None  # ridge 0: the minimum-norm interpolator (else None)
  use_interpolator: jax.Array         # bool []: ridge 0 and R singular (n - 2 < r)
  within: jax.Array        # S_+ + S_- [r, r], the within-class scatter (reusable by plug-ins)


def factor_low_rank(x: jax.Array, is_plus: jax.Array, mask: jax.Array, *, ridge: float,
                    plus_rows: int) -> LowRankFactors:
  """`factor` using the minority's low rank (pure; jit at the call site).

  Derivation. As in `factor`, w(omega) = 2 beta A^-1 dbar / (1 + beta dbar' A^-1 dbar),
  beta = omega n_+ n_- / (omega n_+ + n_-), A(omega) = R + (omega - 1) S_+ with
  R = S_+ + S_- + ridge n I = L L'. S_+ = Z_+' Z_+ has rank < n_+ <= P (P = `plus_rows`,
  much smaller than d under imbalance), so instead of an r x r eigendecomposition of
  L^-1 S_+ L^-T take W = L^-1 Z_+' [r, P] and the P x P eigendecomposition
  W'W = V diag(s) V' (s in [0, 1], since S_+ <= R). With c = omega - 1, the push-through
  identity gives
      (I + c W W')^-1 = I - W V diag(c / (1 + c s)) V' W',
  so with e = L^-1 dbar, q = V'W'e and T = L^-T W V [r, P]:
      A^-1 dbar = R^-1 dbar - T (c q / (1 + c s)),  dbar' A^-1 dbar = |e|^2 - sum c q^2 / (1 + c s).
  c / (1 + c s) stays finite for every omega > 0 and s in [0, 1] (also at s = 0, the
  directions of masked or collinear rows, which then contribute nothing). Cost: one Gram
  O(B r^2), one Cholesky O(r^3 / 3), two triangular solves O(r^2 P) and an O(P^3)
  eigendecomposition, against `factor`'s two Grams, three r x r triangular solves and
  an r x r eigendecomposition. When P >= r there is nothing to gain and the r x r
  eigendecomposition of L^-1 S_+ L^-T is used instead (same fields, see the code). With
  ridge 0 and R singular (fewer than r + 2 rows kept) every weight gives the minimum-norm
  interpolator, as in `factor`.

  Args:
    x: rows [B, d] (a subsample's kept rows plus masked filler).
    is_plus: bool [B]; mask: 0/1 [B].
    ridge: Python float >= 0 (objective ... + ridge * n * |w|^2, n = rows kept).
    plus_rows: P >= the number of kept minority rows (static); 0 skips the minority part
      (then only weight 1 is solved correctly: a balanced or unweighted fit).

  Returns:
    LowRankFactors.
  """
  if not isinstance(ridge, (int, float)) or ridge < 0:
    raise ValueError(f"ridge: expected a Python float >= 0 (static), got {ridge!r}")
  n_rows, d = x.shape
  mask = mask.astype(x.dtype)
  m_plus = jnp.where(is_plus, mask, 0.0)
  m_minus = jnp.where(is_plus, 0.0, mask)
  n_plus, n_minus = jnp.sum(m_plus), jnp.sum(m_minus)
  mean_plus, mean_minus = m_plus @ x / n_plus, m_minus @ x / n_minus
  basis, z = None, x
  if d > n_rows:
    basis, _ = jnp.linalg.qr(x.T)                                  # [d, B]: w = Q v
    z = x @ basis
  zbar_plus = mean_plus if basis is None else mean_plus @ basis
  zbar_minus = mean_minus if basis is None else mean_minus @ basis
  r = z.shape[1]
  centred = (z - jnp.where(is_plus[:, None], zbar_plus, zbar_minus)) * mask[:, None]
  within = centred.T @ centred
  chol = jnp.linalg.cholesky(within + ridge * (n_plus + n_minus) * jnp.eye(r, dtype=x.dtype))
  e = solve_triangular(chol, zbar_plus - zbar_minus, lower=True)
  base = solve_triangular(chol, e, lower=True, trans=1)
  if plus_rows >= r:
    # No saving from the minority's rank: eigendecompose the r x r L^-1 S_+ L^-T = U diag(s) U'
    # (as `factor`). Its W = U diag(sqrt s) V' gives W V = U diag(sqrt s), so the same
    # fields are T = L^-T U diag(sqrt s) and q = diag(sqrt s) U' e.
    rows_plus = centred * m_plus[:, None]
    whitened = solve_triangular(chol, solve_triangular(chol, rows_plus.T @ rows_plus,
                                                       lower=True).T, lower=True)
    spectrum, evecs = jnp.linalg.eigh(0.5 * (whitened + whitened.T))
    root = jnp.sqrt(jnp.clip(spectrum, 0.0, 1.0))
    transform = solve_triangular(chol, evecs * root, lower=True, trans=1)
    proj = root * (evecs.T @ e)
  elif plus_rows:
    keep = jnp.argsort(-m_plus, stable=True)[:plus_rows]           # minority rows first
    rows_plus = centred[keep] * m_plus[keep, None]                 # Z_+ [P, r]
    half = solve_triangular(chol, rows_plus.T, lower=True)         # W [r, P]
    gram = half.T @ half
    spectrum, evecs = jnp.linalg.eigh(0.5 * (gram + gram.T))
    transform = solve_triangular(chol, half @ evecs, lower=True, trans=1)
    proj = evecs.T @ (half.T @ e)
  else:
    transform = jnp.zeros((r, 0), x.dtype)
    spectrum = proj = jnp.zeros((0,), x.dtype)
  if ridge > 0:
    interp, use_interp = None, jnp.asarray(False)
  else:
    # Ridge 0 with fewer than r + 2 rows: R is singular and every weight gives the
    # minimum-norm interpolator (as in `factor`); lax.cond runs it only then.
    use_interp = n_plus + n_minus - 2 < r
    y = jnp.where(is_plus, 1.0, -1.0).astype(x.dtype)
    interp = jax.lax.cond(
        use_interp, lambda: fit_weighted(x, y, mask, ridge=0.0),
        lambda: LastLayer(jnp.zeros((d,), x.dtype), jnp.zeros((), x.dtype)))
  return LowRankFactors(base, e @ e, transform, jnp.clip(spectrum, 0.0, 1.0), proj, mean_plus,
                        mean_minus, n_plus, n_minus, basis, interp, use_interp, within)


def solve_low_rank(factors: LowRankFactors, weights: jax.Array) -> LastLayer:
  """Last layers for K weights from `factor_low_rank`, O(r P K) (see its derivation).

  Args:
    factors: from `factor_low_rank`.
    weights: omega [K] > 0 (NaN for omega <= 0 under jit).

  Returns:
    LastLayer(w [K, d], b [K]).
  """
  f = factors
  weights = jnp.asarray(weights, f.base.dtype)
  _checks.positive("weights", weights)
  c = weights[:, None] - 1.0
  coef = c / (1.0 + c * f.spectrum)                                               # [K, P]
  direction = f.base - (coef * f.proj) @ f.transform.T                            # A^-1 dbar
  quad = f.base_quad - jnp.sum(coef * f.proj ** 2, axis=-1)                       # [K]
  return _finish(f, weights, direction, quad)
