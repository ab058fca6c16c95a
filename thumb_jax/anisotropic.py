"""Per-class errors for general class covariances (THEORY.md, "General class covariances").

Model: x | y = k ~ N(mu_k, Sigma_k), k in {+, -}, any positive (semi-)definite Sigma_k,
which need not commute. Estimator: the class-weighted ridge least-squares last layer of
`thumb_jax.lls` with (c_+, c_-) = (weight, 1) and penalty ridge * n * |w|^2.

Three ways to evaluate the deterministic equivalents, all through `class_errors`:

  * `CovarianceMixture` (general path): dense matrices; every fixed-point step is a
    Cholesky factorization plus triangular solves, O(d^3).
  * `Diagonalized` (fast path (a)): the covariances are diagonal in a shared basis and
    the mixture is given by eigenvalues and the means' coordinates; O(d) per step.
  * `prepare(mixture)` (fast path (b)): one-time decomposition into a `Diagonalized`.
    If the covariances commute it finds their common orthonormal eigenbasis and every
    ridge is exact. Otherwise it uses the generalized eigenbasis V of the pencil
    (Sigma_+, Sigma_-), V' Sigma_- V = I, V' Sigma_+ V = diag(lam): then
        Qbar = (a_+ Sigma_+ + a_- Sigma_-)^-1 = V diag(1 / (a_+ lam + a_-)) V'
    exactly, so every trace and quadratic form of THEORY.md is a sum over the
    coordinates u -> V'u. With ridge > 0 the extra term ridge I becomes
    ridge V'V, which is diagonal only if the covariances commute: the generalized
    basis is then exact for ridge = 0 only, and `class_errors` refuses ridge > 0 on it
    (NaN under jit); use the `CovarianceMixture` for that.

Estimated mixtures plug in with one call:
    class_errors(prepare(from_samples(x, y, shrinkage=None)), n=..., weight=...).

Nothing here is jitted; callers apply `jax.jit` / `jax.vmap`, e.g.
    errs = jax.jit(jax.vmap(lambda w: class_errors(form, n=n, weight=w)))(weights).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular
from jax.scipy.special import log_ndtr, ndtr

from thumb_jax import _checks, metrics
from thumb_jax import mixture as iso_mixture
from thumb_jax.lls import LastLayer
from thumb_jax.metrics import ClassErrors
from thumb_jax.theory import OptimalWeight, search_log_weight

# ---------------------------------------------------------------------------------------
# Specs.


class CovarianceMixture(NamedTuple):
  """Two-class Gaussian mixture with full class covariances (a pytree).

  Attributes:
    pi_plus: prior of the minority class +1, in (0, 1).
    mean_plus: mu_+ [d].
    mean_minus: mu_- [d].
    cov_plus: Sigma_+ [d, d], symmetric positive semi-definite.
    cov_minus: Sigma_- [d, d], symmetric positive semi-definite.
  """
  pi_plus: float
  mean_plus: jax.Array
  mean_minus: jax.Array
  cov_plus: jax.Array
  cov_minus: jax.Array

  @property
  def dim(self) -> int:
    return int(np.shape(self.mean_plus)[-1])

  def validate(self) -> "CovarianceMixture":
    """Raises ValueError naming the field if a concrete value is invalid."""
    _checks.open_interval("pi_plus", self.pi_plus, 0.0, 1.0)
    _checks.shape("mean_plus", self.mean_plus, (None,), "[d]")
    d = np.shape(self.mean_plus)[0]
    _checks.shape("mean_minus", self.mean_minus, (d,), f"[{d}] (as mean_plus)")
    for name in ("cov_plus", "cov_minus"):
      cov = getattr(self, name)
      _checks.shape(name, cov, (d, d), f"[{d}, {d}] (d from mean_plus)")
      _check_psd(name, cov)
    return self


class Diagonalized(NamedTuple):
  """The mixture in coordinates V that make Sigma_+ and Sigma_- diagonal.

  With u -> V'u applied to the means, V' Sigma_k V = diag(var_k). If V is orthonormal
  (a shared eigenbasis U of commuting covariances: fast path (a), `from_eigenbasis`, or
  `prepare` when they commute) then
      (ridge I + a_+ Sigma_+ + a_- Sigma_-)^-1 = V diag(1 / (ridge + a_+ var_plus
                                                           + a_- var_minus)) V'
  for every ridge. The generalized eigenbasis of non-commuting covariances has V'V not
  diagonal, and the identity holds for ridge = 0 only (ridge_exact False).

  Attributes:
    pi_plus: prior of class +1.
    mean_plus: V' mu_+ [d].
    mean_minus: V' mu_- [d].
    var_plus: diag(V' Sigma_+ V) [d] >= 0.
    var_minus: diag(V' Sigma_- V) [d] >= 0.
    ridge_exact: bool []; False when V is not orthonormal (generalized eigenbasis of
      non-commuting covariances): then only ridge = 0 is exact.
  """
  pi_plus: float
  mean_plus: jax.Array
  mean_minus: jax.Array
  var_plus: jax.Array
  var_minus: jax.Array
  ridge_exact: jax.Array

  @property
  def dim(self) -> int:
    return int(np.shape(self.var_plus)[-1])

  def validate(self) -> "Diagonalized":
    """Raises ValueError naming the field if a concrete value is invalid."""
    _checks.open_interval("pi_plus", self.pi_plus, 0.0, 1.0)
    _checks.shape("var_plus", self.var_plus, (None,), "[d]")
    d = np.shape(self.var_plus)[0]
    for name in ("mean_plus", "mean_minus", "var_minus"):
      _checks.shape(name, getattr(self, name), (d,), f"[{d}] (as var_plus)")
    for name in ("var_plus", "var_minus"):
      _checks.nonnegative(name, getattr(self, name))
    _checks.shape("ridge_exact", self.ridge_exact, (), "[] (a boolean)")
    return self


def from_eigenbasis(*, pi_plus, eig_plus, eig_minus, mean_plus, mean_minus) -> Diagonalized:
  """Fast path (a): Sigma_k = U diag(eig_k) U' with one orthonormal U.

  Args:
    pi_plus: prior of class +1.
    eig_plus, eig_minus: eigenvalues of Sigma_+, Sigma_- in the shared basis [d].
    mean_plus, mean_minus: U' mu_+, U' mu_- [d] (the means in that basis).

  Returns:
    Diagonalized (every ridge exact).
  """
  dtype = jnp.result_type(float)
  eig_plus = jnp.asarray(eig_plus, dtype)
  return Diagonalized(pi_plus, jnp.asarray(mean_plus, dtype), jnp.asarray(mean_minus, dtype),
                      eig_plus, jnp.asarray(eig_minus, dtype), jnp.asarray(True)).validate()


def _check_psd(name: str, cov) -> None:
  """Symmetric and positive semi-definite, up to float32-level rounding."""
  if not _checks.is_concrete(cov):
    return
  c = np.asarray(cov, np.float64)
  scale = max(np.abs(c).max(), np.finfo(np.float64).tiny)
  if not np.all(np.isfinite(c)):
    raise ValueError(f"{name}: expected finite entries")
  if np.abs(c - c.T).max() > 1e-5 * scale:
    raise ValueError(f"{name}: expected a symmetric matrix, max |C - C'| = "
                     f"{np.abs(c - c.T).max():.3g}")
  low = np.linalg.eigvalsh(0.5 * (c + c.T))[0]
  if low < -1e-5 * scale:
    raise ValueError(f"{name}: expected a positive semi-definite matrix, smallest "
                     f"eigenvalue {low:.3g}")


# ---------------------------------------------------------------------------------------
# Sampling, exact errors of a given layer, plug-in estimates.


def sample(key: jax.Array, mixture: CovarianceMixture, *, n: int,
           fixed_counts: bool = True) -> tuple[jax.Array, jax.Array]:
  """Draws n labelled points x = mu_y + L_y z, Sigma_y = L_y L_y' (Cholesky).

  With fixed_counts the first n_+ = round(pi_plus n) rows are class +1 and the rest -1
  (as `thumb_jax.mixture.sample`); otherwise labels are Bernoulli(pi_plus). The
  covariances must be positive definite (NaN rows otherwise).

  Args:
    key: PRNG key.
    mixture: CovarianceMixture (pi_plus a Python float when fixed_counts).
    n: number of samples (static).
    fixed_counts: deterministic class counts if True.

  Returns:
    (x [n, d], y [n]) with y in {+1., -1.}.
  """
  key_y, key_z = jax.random.split(key)
  dtype = jnp.result_type(float)
  mean_p, mean_m, cov_p, cov_m = (jnp.asarray(v, dtype) for v in mixture[1:])
  d = mean_p.shape[0]
  z = jax.random.normal(key_z, (n, d), dtype)
  chol_p, chol_m = jnp.linalg.cholesky(cov_p), jnp.linalg.cholesky(cov_m)
  if fixed_counts:
    if not isinstance(mixture.pi_plus, (int, float)):
      raise ValueError("pi_plus: fixed_counts=True needs a Python float pi_plus "
                       "(class counts are static shapes); use fixed_counts=False to trace it")
    n_plus, _ = iso_mixture.class_counts(n, mixture.pi_plus)
    y = jnp.where(jnp.arange(n) < n_plus, 1.0, -1.0).astype(dtype)
    x = jnp.concatenate([mean_p + z[:n_plus] @ chol_p.T, mean_m + z[n_plus:] @ chol_m.T])
  else:
    y = jnp.where(jax.random.bernoulli(key_y, mixture.pi_plus, (n,)), 1.0, -1.0).astype(dtype)
    x = jnp.where((y > 0)[:, None], mean_p + z @ chol_p.T, mean_m + z @ chol_m.T)
  return x, y


def layer_class_errors(layer: LastLayer, mixture: CovarianceMixture) -> ClassErrors:
  """Exact test errors of sign(w.x + b) under x | y = k ~ N(mu_k, Sigma_k).

      err_+ = Phi(-(w.mu_+ + b) / sqrt(w' Sigma_+ w)),
      err_- = Phi( (w.mu_- + b) / sqrt(w' Sigma_- w)).

  Args:
    layer: LastLayer with w [..., d], b [...].
    mixture: CovarianceMixture.

  Returns:
    ClassErrors with shapes [...].
  """
  w = layer.w
  sd_p = jnp.sqrt(jnp.einsum("...i,ij,...j->...", w, mixture.cov_plus, w))
  sd_m = jnp.sqrt(jnp.einsum("...i,ij,...j->...", w, mixture.cov_minus, w))
  err_p = ndtr(-(w @ mixture.mean_plus + layer.b) / sd_p)
  err_m = ndtr((w @ mixture.mean_minus + layer.b) / sd_m)
  return ClassErrors(err_p, err_m)


class ShrunkCovariance(NamedTuple):
  """Shrinkage covariance estimate (1 - s) S + s (tr S / d) I."""
  cov: jax.Array        # [d, d]
  shrinkage: jax.Array  # s in [0, 1]


def shrunk_covariance(x: jax.Array, *, shrinkage=None) -> ShrunkCovariance:
  """Ledoit-Wolf shrinkage of the sample covariance towards a multiple of I.

  S = Xc' Xc / n (Xc: centred rows, 1/n normalization as scikit-learn), target
  mu I with mu = tr S / d. Without `shrinkage` the Ledoit-Wolf (2004) estimate
      s = min(b2, d2) / d2,  d2 = |S - mu I|_F^2 / d,
      b2 = (1 / (d n^2)) sum_i |xc_i xc_i' - S|_F^2
         = (1 / (d n)) ((1/n) sum_i |xc_i|^4 - |S|_F^2),
  the same as `sklearn.covariance.ledoit_wolf`.

  Args:
    x: samples [n, d] (n >= 2).
    shrinkage: fixed s in [0, 1], or None for Ledoit-Wolf.

  Returns:
    ShrunkCovariance(cov [d, d], shrinkage []).
  """
  _checks.shape("x", x, (None, None), "[n, d]")
  n, d = np.shape(x)
  if n < 2:
    raise ValueError(f"x: expected at least 2 rows, got {n}")
  if shrinkage is not None:
    _checks.nonnegative("shrinkage", shrinkage)
    if _checks.is_concrete(shrinkage) and np.any(np.asarray(shrinkage) > 1):
      raise ValueError(f"shrinkage: expected a value in [0, 1], got {shrinkage}")
  x = jnp.asarray(x, jnp.result_type(float))
  xc = x - jnp.mean(x, axis=0)
  emp = xc.T @ xc / n
  mu = jnp.trace(emp) / d
  if shrinkage is None:
    frob2 = jnp.sum(emp ** 2)
    d2 = (frob2 - 2 * mu * jnp.trace(emp) + d * mu ** 2) / d
    b2 = (jnp.sum(jnp.sum(xc ** 2, axis=1) ** 2) / n - frob2) / (d * n)
    b2 = jnp.minimum(b2, d2)
    shrinkage = jnp.where(d2 > 0, b2 / jnp.where(d2 > 0, d2, 1.0), 0.0)
  shrinkage = jnp.asarray(shrinkage, x.dtype)
  cov = (1 - shrinkage) * emp + shrinkage * mu * jnp.eye(d, dtype=x.dtype)
  return ShrunkCovariance(cov, shrinkage)


def from_samples(x: jax.Array, y: jax.Array, *, shrinkage=None) -> CovarianceMixture:
  """Plug-in CovarianceMixture: class frequencies, class means, shrunk class covariances.

  Args:
    x: features [n, d] (concrete).
    y: labels [n] in {+1, -1} (concrete), both classes present (at least 2 rows each).
    shrinkage: passed to `shrunk_covariance` (None: Ledoit-Wolf per class).

  Returns:
    CovarianceMixture with a Python-float pi_plus.
  """
  _checks.shape("x", x, (None, None), "[n, d]")
  _checks.shape("y", y, (np.shape(x)[0],), f"[{np.shape(x)[0]}]")
  _checks.labels("y", y)
  y = np.asarray(y)
  x = jnp.asarray(x, jnp.result_type(float))
  plus, minus = x[y > 0], x[y < 0]
  return CovarianceMixture(
      float(np.mean(y > 0)), jnp.mean(plus, 0), jnp.mean(minus, 0),
      shrunk_covariance(plus, shrinkage=shrinkage).cov,
      shrunk_covariance(minus, shrinkage=shrinkage).cov)


# ---------------------------------------------------------------------------------------
# One-time decomposition (fast path (b)).


def prepare(mixture: CovarianceMixture, *, commute_tol=None) -> Diagonalized:
  """Simultaneous diagonalization of (Sigma_+, Sigma_-); O(d^3) once.

  1. Common eigenbasis: U from eigh(Sigma_- / t_- + phi Sigma_+ / t_+) with t_k = tr Sigma_k
     and phi the golden ratio (a generic combination: its eigenvectors are common
     eigenvectors whenever the covariances commute, barring exact coincidences). If
     U' Sigma_k U is diagonal up to `commute_tol` (relative Frobenius norm of the
     off-diagonal part), return the orthonormal form: every ridge is exact.
  2. Otherwise the generalized eigenbasis: Sigma_- = L L' (Cholesky; needs Sigma_-
     positive definite), L^-1 Sigma_+ L^-T = W diag(lam) W', V = L^-T W, so that
     V' Sigma_- V = I, V' Sigma_+ V = diag(lam). Exact for ridge = 0 only
     (ridge_exact = False), since V'V is then not diagonal.

  Args:
    mixture: CovarianceMixture.
    commute_tol: tolerance of the commutation test; default 1e-4 (float32) or
      1e-9 (float64).

  Returns:
    Diagonalized.
  """
  mixture.validate()
  dtype = jnp.result_type(float)
  mean_p, mean_m, cov_p, cov_m = (jnp.asarray(v, dtype) for v in mixture[1:])
  if commute_tol is None:
    commute_tol = 1e-4 if dtype == jnp.float32 else 1e-9
  cov_p = 0.5 * (cov_p + cov_p.T)
  cov_m = 0.5 * (cov_m + cov_m.T)

  # 1. Common orthonormal eigenbasis.
  golden = 0.5 * (1.0 + np.sqrt(5.0))
  combo = cov_m / jnp.trace(cov_m) + golden * cov_p / jnp.trace(cov_p)
  _, basis = jnp.linalg.eigh(combo)
  rot_p = basis.T @ cov_p @ basis
  rot_m = basis.T @ cov_m @ basis

  def off_diagonal(a):
    return jnp.linalg.norm(a - jnp.diag(jnp.diag(a))) / jnp.linalg.norm(a)

  commuting = jnp.maximum(off_diagonal(rot_p), off_diagonal(rot_m)) <= commute_tol

  def orthonormal():
    return (basis.T @ mean_p, basis.T @ mean_m, jnp.clip(jnp.diag(rot_p), 0.0),
            jnp.clip(jnp.diag(rot_m), 0.0))

  def generalized():
    # 2. Generalized eigenbasis of the pencil (Sigma_+, Sigma_-).
    chol = jnp.linalg.cholesky(cov_m)
    whitened = _sandwich(chol, cov_p)                                 # L^-1 Sigma_+ L^-T
    lam, w = jnp.linalg.eigh(0.5 * (whitened + whitened.T))
    gen = solve_triangular(chol.T, w, lower=False)                    # V = L^-T W
    return gen.T @ mean_p, gen.T @ mean_m, jnp.clip(lam, 0.0), jnp.ones_like(lam)

  # Only the basis that applies is computed (both under vmap, where cond becomes select).
  return Diagonalized(mixture.pi_plus, *jax.lax.cond(commuting, orthonormal, generalized),
                      commuting)


# ---------------------------------------------------------------------------------------
# Deterministic equivalents.


class GeneralErrors(NamedTuple):
  """Per-class asymptotic errors with the diagnostics of the fixed point."""
  err_plus: jax.Array
  err_minus: jax.Array
  iterations: jax.Array   # fixed-point steps taken
  residual: jax.Array     # max_k |e_k - F_k(e)| / F_k(e) at the returned e
  converged: jax.Array    # bool; errors are NaN where False
  log_err_plus: jax.Array   # log err_+, finite where err_+ underflows to 0
  log_err_minus: jax.Array  # log err_-

  worst = metrics.ClassErrors.worst
  balanced = metrics.ClassErrors.balanced


class _Traces(NamedTuple):
  """Normalized traces at Qbar = (ridge I + a_+ Sigma_+ + a_- Sigma_-)^-1."""
  e: jax.Array       # [2]: (1/n) tr(Sigma_k Qbar)
  t2: jax.Array      # [2, 2]: (1/n) tr(Sigma_j Qbar Sigma_l Qbar)


class _MeanTerms(NamedTuple):
  """Quadratic forms of the means at Qbar (dmu = mu_+ - mu_-)."""
  d_q_mu: jax.Array    # [2]: dmu' Qbar mu_k
  d_q_s_q_d: jax.Array  # [2]: dmu' Qbar Sigma_k Qbar dmu


def _traces(e_plus, e_minus, pp, pm, mm, n) -> _Traces:
  return _Traces(jnp.stack([e_plus, e_minus]) / n,
                 jnp.stack([jnp.stack([pp, pm]), jnp.stack([pm, mm])]) / n)


# Each `_*_terms` returns (_Traces, _MeanTerms) from one factorization at a; the fixed
# point uses the traces only (under jit the mean terms are dead code and never computed).
#
# Diagonal form: Qbar = V diag(q) V', q = 1 / (ridge + a_+ v_+ + a_- v_-), so
# tr(Sigma_k Qbar) = sum v_k q, tr(Sigma_j Qbar Sigma_l Qbar) = sum v_j v_l q^2,
# u' Qbar w = sum (V'u)(V'w) q, u' Qbar Sigma_k Qbar w = sum (V'u)(V'w) v_k q^2.


def _diag_terms(form: Diagonalized, a, ridge, n) -> tuple[_Traces, _MeanTerms]:
  q = 1.0 / (ridge + a[0] * form.var_plus + a[1] * form.var_minus)
  vq_p, vq_m = form.var_plus * q, form.var_minus * q
  traces = _traces(jnp.sum(vq_p), jnp.sum(vq_m), jnp.sum(vq_p * vq_p), jnp.sum(vq_p * vq_m),
                   jnp.sum(vq_m * vq_m), n)
  dq = (form.mean_plus - form.mean_minus) * q
  d_q_mu = jnp.stack([dq @ form.mean_plus, dq @ form.mean_minus])
  d_q_s_q_d = jnp.stack([dq @ (form.var_plus * dq), dq @ (form.var_minus * dq)])
  return traces, _MeanTerms(d_q_mu, d_q_s_q_d)


# Dense form: Qbar^-1 = L L' (Cholesky), W_k = L^-1 Sigma_k L^-T, so
# tr(Sigma_k Qbar) = tr W_k, tr(Sigma_j Qbar Sigma_l Qbar) = sum(W_j * W_l),
# u' Qbar w = (L^-1 u).(L^-1 w), u' Qbar Sigma_k Qbar u = (L^-1 u)' W_k (L^-1 u).


def _sandwich(chol, cov):
  """L^-1 cov L^-T."""
  half = solve_triangular(chol, cov, lower=True)
  return solve_triangular(chol, half.T, lower=True)


def _dense_terms(mix: CovarianceMixture, a, ridge, n) -> tuple[_Traces, _MeanTerms]:
  d = mix.cov_plus.shape[0]
  chol = jnp.linalg.cholesky(ridge * jnp.eye(d, dtype=mix.cov_plus.dtype)
                             + a[0] * mix.cov_plus + a[1] * mix.cov_minus)
  w_p, w_m = _sandwich(chol, mix.cov_plus), _sandwich(chol, mix.cov_minus)
  traces = _traces(jnp.trace(w_p), jnp.trace(w_m), jnp.sum(w_p * w_p), jnp.sum(w_p * w_m),
                   jnp.sum(w_m * w_m), n)
  u = solve_triangular(chol, mix.mean_plus - mix.mean_minus, lower=True)
  v = solve_triangular(chol, jnp.stack([mix.mean_plus, mix.mean_minus], 1), lower=True)
  return traces, _MeanTerms(u @ v, jnp.stack([u @ w_p @ u, u @ w_m @ u]))


def _solve2(m, r):
  """m^-1 r for a 2 x 2 matrix m and r [2] or [2, k] (closed form, vmap-cheap)."""
  det = m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]
  inv = jnp.stack([jnp.stack([m[1, 1], -m[0, 1]]), jnp.stack([-m[1, 0], m[0, 0]])]) / det
  return inv @ r


def _fixed_point(traces: Callable, coeffs: Callable, *, max_iter: int, tol, damping):
  """Solves e = F(e), F_k(e) = (1/n) tr(Sigma_k Qbar(a(e))) (THEORY.md step 1).

  The Jacobian of F is exactly the matrix Omega of step 4:
      dF_k/de_l = (1/n) tr(Sigma_k Qbar Sigma_l Qbar) * b_l,  b_l = -da_l/de_l
                = pi_l c_l^2 / (1 + c_l e_l)^2,
  and its traces are computed alongside F anyway, so each step is a damped Newton step
      e <- e + damping * ((I - Omega)^-1 (F(e) - e)),
  which falls back to the damped plain step e <- e + damping (F(e) - e) whenever
  Newton would leave e > 0. Plain iteration converges only at the rate of the
  spectral radius of Omega, which tends to 1 as delta -> 1 without ridge (and for
  small ridge with delta > 1); Newton takes a handful of steps everywhere.
  Started at e = 0 (F(0) is finite for ridge > 0, or ridge 0 with positive
  definite covariances). Stops when max_k |e_k - F_k| / F_k <= tol.

  Returns:
    (e [2] with NaN where not converged, [iterations, residual, converged] as floats).
  """

  def evaluate(e):
    t = traces(e)
    omega = t.t2 * coeffs(e)[None, :]
    residual = jnp.max(jnp.abs(e - t.e) / t.e)
    return t.e, omega, jnp.where(jnp.isnan(residual), jnp.inf, residual)

  def cond(state):
    it, _, _, _, residual = state
    return (it < max_iter) & (residual > tol)

  def body(state):
    it, e, f, omega, _ = state
    newton = e + _solve2(jnp.eye(2, dtype=e.dtype) - omega, f - e)
    ok = jnp.all(newton > 0) & jnp.all(jnp.isfinite(newton))
    target = jnp.where(ok, newton, f)
    e = e + damping * (target - e)
    return (it + 1, e, *evaluate(e))

  e0 = jnp.zeros((2,), coeffs(jnp.zeros((2,))).dtype)
  it, e, _, _, residual = jax.lax.while_loop(cond, body, (jnp.asarray(0), e0, *evaluate(e0)))
  converged = residual <= tol
  # Diagnostics travel as floats: custom_root's JVP rule wants float tangents for aux.
  diagnostics = jnp.stack([it.astype(e.dtype), residual, converged.astype(e.dtype)])
  return jnp.where(converged, e, jnp.nan), diagnostics


def _class_errors(form, n, weight, ridge, *, max_iter, tol, damping) -> GeneralErrors:
  """THEORY.md steps 1-5 without argument checks (NaN for invalid input)."""
  dense = isinstance(form, CovarianceMixture)
  dtype = jnp.result_type(float)
  form = jax.tree_util.tree_map(lambda v: jnp.asarray(v, dtype) if v.dtype != bool else v,
                                jax.tree_util.tree_map(jnp.asarray, form))
  n, weight, ridge = (jnp.asarray(v, dtype) for v in (n, weight, ridge))
  d = form.mean_plus.shape[0]
  pi = jnp.stack([form.pi_plus, 1.0 - form.pi_plus])
  c = jnp.stack([weight, jnp.ones_like(weight)])
  bad = ((form.pi_plus <= 0) | (form.pi_plus >= 1) | (weight <= 0) | (ridge < 0) | (n <= 0)
         | ((ridge == 0) & (n <= d)))
  if not dense:
    bad = bad | ((ridge > 0) & ~form.ridge_exact)
  terms_at = _dense_terms if dense else _diag_terms
  traces_at = lambda a: terms_at(form, a, ridge, n)[0]

  def a_of(e):                       # a_k = pi_k c_k / (1 + c_k e_k)
    return pi * c / (1.0 + c * e)

  def b_of(e):                       # b_k = pi_k c_k^2 / (1 + c_k e_k)^2 = -da_k/de_k
    return pi * c ** 2 / (1.0 + c * e) ** 2

  def residual_fn(e):
    return e - traces_at(a_of(e)).e

  def solve(_, e_init):
    del e_init
    return _fixed_point(lambda e: traces_at(a_of(e)), b_of,
                        max_iter=max_iter, tol=tol, damping=damping)

  # Implicit differentiation through the fixed point: de = (I - Omega)^-1 dF|_e fixed.
  e, diagnostics = jax.lax.custom_root(
      residual_fn, jnp.zeros((2,), dtype), solve,
      lambda g, y: jnp.linalg.solve(jax.jacobian(g)(y), y), has_aux=True)
  diagnostics = jax.lax.stop_gradient(diagnostics)
  iterations = diagnostics[0].astype(jnp.int32)
  residual, converged = diagnostics[1], diagnostics[2] > 0

  # Steps 2-5 at the fixed point.
  a = a_of(e)
  tr, mt = terms_at(form, a, ridge, n)
  d_q_d = mt.d_q_mu[0] - mt.d_q_mu[1]                       # dmu' Qbar dmu
  cbar = jnp.sum(pi * c)
  p = pi[0] * c[0] / cbar
  beta = cbar * p * (1 - p)
  spread = d_q_d + jnp.sum(e / pi)                          # T
  gain = 2 * beta / (1 + beta * spread)                     # K
  r = -p * (mt.d_q_mu[0] + e[0] / pi[0]) - (1 - p) * (mt.d_q_mu[1] - e[1] / pi[1])
  score = (2 * p - 1) + gain * (mt.d_q_mu + r)              # S_k
  b = b_of(e)
  omega = tr.t2 * b[None, :]
  g = _solve2(jnp.eye(2, dtype=dtype) - omega, tr.t2)       # column k: g_k = (I - Omega)^-1 h_k
  # dmu' E_k dmu = dmu' Qbar Sigma_k Qbar dmu + sum_l b_l g_k[l] dmu' Qbar Sigma_l Qbar dmu.
  d_e_d = mt.d_q_s_q_d + (b * mt.d_q_s_q_d) @ g
  var = gain ** 2 * (d_e_d + g[0] / pi[0] + g[1] / pi[1])   # V_k
  z_p, z_m = -score[0] / jnp.sqrt(var[0]), score[1] / jnp.sqrt(var[1])   # err_k = Phi(z_k)
  ok = converged & ~bad
  nan = jnp.asarray(jnp.nan, dtype)
  keep = lambda v: jnp.where(ok, v, nan)
  return GeneralErrors(keep(ndtr(z_p)), keep(ndtr(z_m)), iterations, residual, ok,
                       keep(log_ndtr(z_p)), keep(log_ndtr(z_m)))


def _check_args(mixture, *, n, weight, ridge, max_iter=1, damping=1.0) -> None:
  """ValueError naming the argument for invalid concrete inputs of `class_errors`."""
  if not isinstance(mixture, (CovarianceMixture, Diagonalized)):
    raise ValueError(f"mixture: expected a CovarianceMixture or Diagonalized, "
                     f"got {type(mixture).__name__}")
  mixture.validate()
  _checks.positive("weight", weight)
  _checks.nonnegative("ridge", ridge)
  _checks.positive("n", n)
  if not 0 < damping <= 1:
    raise ValueError(f"damping: expected a value in (0, 1], got {damping}")
  if max_iter < 1:
    raise ValueError(f"max_iter: expected an integer >= 1, got {max_iter}")
  d = mixture.dim
  if _checks.is_concrete(n, ridge) and np.any((np.asarray(ridge) == 0) & (np.asarray(n) <= d)):
    raise ValueError(f"n: expected n > d = {d} when ridge = 0 (the ridgeless fit interpolates), "
                     f"got n={np.asarray(n).tolist()}")
  if (isinstance(mixture, Diagonalized) and _checks.is_concrete(ridge, mixture.ridge_exact)
      and not bool(mixture.ridge_exact) and np.any(np.asarray(ridge) > 0)):
    raise ValueError("ridge: this Diagonalized comes from the generalized eigenbasis of "
                     "non-commuting covariances, exact for ridge = 0 only; pass the "
                     f"CovarianceMixture for ridge > 0 (got ridge={ridge})")


def class_errors(mixture: CovarianceMixture | Diagonalized, *, n, weight, ridge=0.0,
                 max_iter: int = 100, tol=None, damping=1.0) -> GeneralErrors:
  """Deterministic-equivalent per-class errors (THEORY.md "General class covariances").

  Scalars in, scalars out: vmap over n, weight or ridge for sweeps. Differentiable in
  every argument (implicit differentiation at the fixed point).

  Args:
    mixture: CovarianceMixture (general path, O(d^3) per step) or Diagonalized (from
      `prepare` or `from_eigenbasis`, O(d) per step).
    n: number of retraining samples (> d when ridge = 0); need not be an integer.
    weight: minority class weight c_+ > 0 (c_- = 1).
    ridge: ridge >= 0 (penalty ridge * n * |w|^2). On a Diagonalized with
      ridge_exact False only ridge = 0 is allowed.
    max_iter: cap on fixed-point steps.
    tol: relative residual that counts as converged; default 1e-5 (float32) or
      1e-10 (float64).
    damping: step size in (0, 1] of the damped Newton iteration (see `_fixed_point`).

  Returns:
    GeneralErrors (err_plus, err_minus NaN where the iteration did not converge or an
    argument is invalid under jit).

  Raises:
    ValueError (concrete inputs): invalid mixture, weight <= 0, ridge < 0, n <= 0,
    n <= d with ridge = 0, ridge > 0 on an inexact Diagonalized.
  """
  _check_args(mixture, n=n, weight=weight, ridge=ridge, max_iter=max_iter, damping=damping)
  if tol is None:
    tol = 1e-5 if jnp.result_type(float) == jnp.float32 else 1e-10
  return _class_errors(mixture, n, weight, ridge, max_iter=max_iter, tol=tol, damping=damping)


# ---------------------------------------------------------------------------------------
# Optimal weight and the isotropic plug-in.


def optimal_weight(mixture: CovarianceMixture | Diagonalized, *, n, ridge=0.0,
                   objective: str = "worst", log10_range: tuple[float, float] = (-2.0, 4.0),
                   grid_size: int = 256, refine_size: int = 32, refine_rounds: int = 2,
                   max_iter: int = 100, tol=None) -> OptimalWeight:
  """argmin over weight of the worst-class (or balanced) error, general covariances.

  `thumb_jax.theory.search_log_weight` (a dense log grid, robust to the non-convexity in
  the weight, then `refine_rounds` local grids) on the log objective, as
  `thumb_jax.theory.optimal_weight`; broadcasts over n and ridge (one search per pair).

  Returns:
    OptimalWeight with the broadcast shape of (n, ridge); NaN where every grid point is
    NaN (no converged fixed point, or invalid input under jit).
  """
  if objective not in metrics.OBJECTIVES:
    raise ValueError(f"objective: expected one of {list(metrics.OBJECTIVES)}, got {objective!r}")
  _check_args(mixture, n=n, weight=1.0, ridge=ridge, max_iter=max_iter)
  if tol is None:
    tol = 1e-5 if jnp.result_type(float) == jnp.float32 else 1e-10
  errors_at = lambda n, weight, ridge: _class_errors(mixture, n, weight, ridge,
                                                     max_iter=max_iter, tol=tol, damping=1.0)

  def log_objective(errs):
    # Searched in log space (metrics.log_objective): the same argmin, no underflow.
    return metrics.log_objective(ClassErrors(errs.log_err_plus, errs.log_err_minus), objective)

  def one(n, ridge):
    best = search_log_weight(
        lambda log_w: log_objective(jax.vmap(lambda w: errors_at(n, w, ridge))(10.0 ** log_w)),
        log10_range=log10_range, grid_size=grid_size, refine_size=refine_size,
        refine_rounds=refine_rounds)
    errs = errors_at(n, 10.0 ** best, ridge)
    weight = jnp.where(jnp.isfinite(log_objective(errs)), 10.0 ** best, jnp.nan)
    return OptimalWeight(weight, errs.err_plus, errs.err_minus, metrics.objective(errs, objective))

  dtype = jnp.result_type(float)
  # jnp.vectorize can return a plain tuple (when a broadcast axis has size 1 in every input).
  return OptimalWeight(*jnp.vectorize(one)(jnp.asarray(n, dtype), jnp.asarray(ridge, dtype)))


class IsotropicPlugIn(NamedTuple):
  """An isotropic stand-in for a CovarianceMixture (see `isotropic_plug_in`)."""
  mixture: iso_mixture.GaussianMixture
  d_eff: jax.Array            # participation ratio of the pooled covariance


def isotropic_plug_in(mixture: CovarianceMixture) -> IsotropicPlugIn:
  """The isotropic mixture that reproduces the population limit of the general one.

  Pooled within-class covariance Sigma = pi_+ Sigma_+ + pi_- Sigma_-, effective dimension
  d_eff = (tr Sigma)^2 / tr(Sigma^2), noise scale s^2 = tr Sigma / d_eff = tr(Sigma^2) / tr Sigma
  (the eigenvalue average weighted by the eigenvalues).

  Matching rule: with delta -> 0, weight 1 and ridge 0 the general theory has
  Qbar = Sigma^-1 (e = 0), the mean scores depend on Delta^2 = dmu' Sigma^-1 dmu only and the
  score variances are K^2 v_k with v_k = dmu' Sigma^-1 Sigma_k Sigma^-1 dmu, sum_k pi_k v_k = Delta^2.
  The isotropic theory has Qbar = I / s^2 (pooled s^2 = sum pi_k s_k^2), mean scores in
  D2 / s^2 and score variances K^2 D2 s_k^2 / s^4. Equating both,
      D2 = s^2 Delta^2,   s_k^2 = s^2 v_k / Delta^2,
  so the plug-in has exactly the general mixture's population per-class errors (and its
  Mahalanobis signal-to-noise Delta^2), the noise scale s^2 sets the size of the ridge
  relative to the features, and the finite-sample correction is the isotropic one at
  delta_eff = d_eff / n. The means are placed symmetrically (mu_- = -mu_+, |mu_+|^2 = D2 / 4):
  everything is invariant to a common shift of the means. Using the raw |dmu|^2 instead
  would measure the signal in Euclidean units, which misstates the signal-to-noise
  ratio whenever the mean difference is not spread evenly over the spectrum.

  Returns:
    IsotropicPlugIn(GaussianMixture, d_eff) (float fields; concrete input).
  """
  mixture.validate()
  pi = float(mixture.pi_plus)
  cov_p = np.asarray(mixture.cov_plus, np.float64)
  cov_m = np.asarray(mixture.cov_minus, np.float64)
  dmu = np.asarray(mixture.mean_plus, np.float64) - np.asarray(mixture.mean_minus, np.float64)
  pooled = pi * cov_p + (1 - pi) * cov_m
  d_eff = np.trace(pooled) ** 2 / np.sum(pooled * pooled)
  s2 = np.trace(pooled) / d_eff
  whitened = np.linalg.solve(pooled, dmu)                   # Sigma^-1 dmu
  delta2 = dmu @ whitened
  v_p, v_m = whitened @ cov_p @ whitened, whitened @ cov_m @ whitened
  d2 = s2 * delta2
  iso = iso_mixture.GaussianMixture(pi, d2 / 4, d2 / 4, -d2 / 4,
                                    float(s2 * v_p / delta2), float(s2 * v_m / delta2))
  return IsotropicPlugIn(iso, float(d_eff))
