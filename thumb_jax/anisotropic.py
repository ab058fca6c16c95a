"""Per-class errors for general class covariances (THEORY.md, "General class covariances").

Model: x | y = k ~ N(mu_k, Sigma_k), k in {+, -}, any positive (semi-)definite Sigma_k
(`thumb_jax.mixture.CovarianceMixture`). Estimator: the class-weighted ridge least-squares
last layer of `thumb_jax.lls` with (c_+, c_-) = (weight, 1) and penalty ridge * n * |w|^2.

`class_errors` evaluates the deterministic equivalents on one of two forms:
  * `CovarianceMixture`: dense matrices, O(d^3) per fixed-point step (every ridge);
  * `Diagonalized` (from `prepare`, or `from_eigenbasis` for covariances given in a shared
    eigenbasis): O(d) per step. `prepare` finds a common orthonormal eigenbasis when the
    covariances commute (every ridge exact), else the generalized eigenbasis of the pencil
    (Sigma_+, Sigma_-), exact for ridge 0 only (THEORY.md, "Derivations: general covariances").
Estimated mixtures plug in with one call:
    class_errors(prepare(from_samples(x, y, shrinkage=None)), n=..., weight=...).

Nothing here is jitted; callers apply `jax.jit` / `jax.vmap`, e.g.
    errs = jax.jit(jax.vmap(lambda w: class_errors(form, n=n, weight=w)))(weights).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular

from thumb_jax import _checks, metrics, weight_search
from thumb_jax.metrics import ClassErrors
from thumb_jax.mixture import CovarianceMixture, ShrunkCovariance, from_samples, shrunk_covariance
from thumb_jax.theory import IsotropicPlugIn, isotropic_plug_in
from thumb_jax.weight_search import OptimalWeight

# Public names (some live in mixture / theory and stay reachable here).
__all__ = ["CovarianceMixture", "Diagonalized", "GeneralErrors", "IsotropicPlugIn",
           "OptimalWeight", "ShrunkCovariance", "class_errors", "from_eigenbasis", "from_samples",
           "isotropic_plug_in", "optimal_weight", "prepare", "shrunk_covariance"]

# ---------------------------------------------------------------------------------------
# Specs.


class Diagonalized(NamedTuple):
  """The mixture in coordinates V with V' Sigma_k V = diag(var_k) (means mapped u -> V'u).

  Exact for every ridge when V is orthonormal, for ridge 0 only otherwise (THEORY.md,
  "Derivations: general covariances").

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

  def validate(self) -> Diagonalized:
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
  """Sigma_k = U diag(eig_k) U' with one orthonormal U, given in that basis.

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


# ---------------------------------------------------------------------------------------
# One-time decomposition.


def prepare(mixture: CovarianceMixture, *, commute_tol=None) -> Diagonalized:
  """Simultaneous diagonalization of (Sigma_+, Sigma_-); O(d^3) once.

  A common orthonormal eigenbasis when the covariances commute (up to `commute_tol`, the
  relative Frobenius norm of the off-diagonal part; every ridge exact), else the generalized
  eigenbasis of the pencil (needs Sigma_- positive definite; ridge 0 only, ridge_exact False).
  THEORY.md, "Derivations: general covariances".

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
  converged: jax.Array    # bool: converged and trusted (see class_errors); else errors NaN
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
  # One triangular solve per stage, all right-hand sides together: independent batched
  # solves side by side can hang jaxlib 0.10's CPU LAPACK pool (thumb_jax/platform.py).
  means = jnp.stack([mix.mean_plus - mix.mean_minus, mix.mean_plus, mix.mean_minus], 1)
  half = solve_triangular(chol, jnp.concatenate([mix.cov_plus, mix.cov_minus, means], 1),
                          lower=True)                                  # L^-1 [S+, S-, means]
  both = solve_triangular(chol, jnp.concatenate([half[:, :d].T, half[:, d:2 * d].T], 1),
                          lower=True)                                  # [W_+, W_-]
  w_p, w_m = both[:, :d], both[:, d:]
  traces = _traces(jnp.trace(w_p), jnp.trace(w_m), jnp.sum(w_p * w_p), jnp.sum(w_p * w_m),
                   jnp.sum(w_m * w_m), n)
  u, v = half[:, 2 * d], half[:, 2 * d + 1:]
  return traces, _MeanTerms(u @ v, jnp.stack([u @ w_p @ u, u @ w_m @ u]))


def _solve2(m, r):
  """m^-1 r for a 2 x 2 matrix m and r [2] or [2, k] (closed form, vmap-cheap)."""
  det = m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]
  inv = jnp.stack([jnp.stack([m[1, 1], -m[0, 1]]), jnp.stack([-m[1, 0], m[0, 0]])]) / det
  return inv @ r


def _fixed_point(traces: Callable, coeffs: Callable, *, max_iter: int, tol, damping):
  """Solves e = F(e), F_k(e) = (1/n) tr(Sigma_k Qbar(a(e))) (THEORY.md step 1).

  Damped Newton from e = 0 with the Jacobian Omega that the traces give for free, falling
  back to a damped plain step where Newton would leave e > 0; stops when
  max_k |e_k - F_k| / F_k <= tol (THEORY.md, "Derivations: general covariances").

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

  # Steps 2-5 at the fixed point, on sigma Qbar = (ridge / sigma I + (a / sigma) . Sigma)^-1
  # with sigma = ridge + a . (mean variances): the traces and quadratic forms are then O(1)
  # (t2 ~ 1 / ridge^2 underflows for ridges near 1e20 in float32). Suffix _s: times sigma
  # (e, T, r, the scores) or sigma^2 (t2, g, the variances); z_k is unchanged.
  a = a_of(e)
  sigma = ridge + a[0] * _mean_variance(form, 0) + a[1] * _mean_variance(form, 1)
  tr, mt = terms_at(form, a / sigma, ridge / sigma, n)
  e_s = tr.e
  mass = pi * c
  cbar = jnp.sum(mass)
  p, p_m = mass[0] / cbar, mass[1] / cbar                  # p and 1 - p, no cancellation
  offset = (mass[0] - mass[1]) / cbar                        # 2p - 1
  beta = mass[0] * mass[1] / cbar                            # cbar p (1 - p)
  spread_s = mt.d_q_mu[0] - mt.d_q_mu[1] + jnp.sum(e_s / pi)     # sigma T
  gain = 2 * beta / (1 + beta * spread_s / sigma)           # K
  r_terms = jnp.stack([p * mt.d_q_mu[0], p * e_s[0] / pi[0], p_m * mt.d_q_mu[1],
                       p_m * e_s[1] / pi[1]])
  r_s = -r_terms[0] - r_terms[1] - r_terms[2] + r_terms[3]
  score_s = sigma * offset + gain * (mt.d_q_mu + r_s)       # sigma S_k
  b = b_of(e)
  omega = tr.t2 * b[None, :] / sigma / sigma
  g_s = _solve2(jnp.eye(2, dtype=dtype) - omega, tr.t2)     # column k: g_k = (I - Omega)^-1 h_k
  # dmu' E_k dmu = dmu' Qbar Sigma_k Qbar dmu + sum_l b_l g_k[l] dmu' Qbar Sigma_l Qbar dmu.
  d_e_d_s = mt.d_q_s_q_d + (b * mt.d_q_s_q_d) @ g_s / sigma / sigma
  var_s = gain ** 2 * (d_e_d_s + g_s[0] / pi[0] + g_s[1] / pi[1])   # sigma^2 V_k
  root = jnp.sqrt(var_s)
  z_p, z_m = -score_s[0] / root[0], score_s[1] / root[1]    # err_k = Phi(z_k)
  # Rounding bound on z_k: 2p - 1 and K (dmu' Qbar mu_k + r) can cancel (at a large ridge
  # K ~ 1 / ridge), so the score's error is eps times the sum of the sizes of its terms.
  eps = 8.0 * jnp.finfo(dtype).eps
  size = sigma + gain * (jnp.abs(mt.d_q_mu) + jnp.sum(jnp.abs(r_terms)))
  slack = eps * (size / root + jnp.abs(jnp.stack([z_p, z_m])))
  errors, log_errors = metrics.normal_tail_errors(z_p, z_m, slack[0], slack[1])
  ok = converged & ~bad & ~jnp.isnan(errors.err_plus) & ~jnp.isnan(errors.err_minus)
  nan = jnp.asarray(jnp.nan, dtype)
  keep = lambda v: jnp.where(ok, v, nan)
  return GeneralErrors(keep(errors.err_plus), keep(errors.err_minus), iterations, residual, ok,
                       keep(log_errors.err_plus), keep(log_errors.err_minus))


def _mean_variance(form, k: int):
  """tr(Sigma_k) / d of either form (k = 0: class +1, 1: class -1)."""
  if isinstance(form, CovarianceMixture):
    return jnp.trace(form.cov_plus if k == 0 else form.cov_minus) / form.cov_plus.shape[0]
  return jnp.mean(form.var_plus if k == 0 else form.var_minus)


def _default_tol():
  return 1e-5 if jnp.result_type(float) == jnp.float32 else 1e-10


def _check_args(mixture, *, n, weight, ridge, max_iter=1, damping=1.0, scalar=True) -> None:
  """ValueError naming the argument for invalid concrete inputs of `class_errors`."""
  if not isinstance(mixture, (CovarianceMixture, Diagonalized)):
    raise ValueError(f"mixture: expected a CovarianceMixture or Diagonalized, "
                     f"got {type(mixture).__name__}")
  mixture.validate()
  for name, value in (("n", n), ("weight", weight), ("ridge", ridge)):
    if scalar and np.ndim(value) != 0:
      # An array would broadcast against the class axis [2] of the fixed point.
      raise ValueError(f"{name}: expected a scalar, got shape {np.shape(value)}; vmap "
                       f"class_errors over {name} for a sweep")
    _checks.finite(name, value)
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
    GeneralErrors (err_plus, err_minus NaN and converged False where the iteration did not
    converge, an argument is invalid under jit, or rounding in the current precision could
    move an error by more than `metrics.ROUNDING_TOL`, e.g. float32 at a ridge near 1e8 with
    the weight near the ratio of priors, where 2p - 1 cancels against a ~1 / ridge term).
    Extreme ridges and weights are computed in rescaled form (no underflow).

  Raises:
    ValueError: n, weight or ridge not a scalar; (concrete inputs) invalid mixture, a
    non-finite n, weight or ridge, weight <= 0, ridge < 0, n <= 0, n <= d with ridge = 0,
    ridge > 0 on an inexact Diagonalized.
  """
  _check_args(mixture, n=n, weight=weight, ridge=ridge, max_iter=max_iter, damping=damping)
  tol = _default_tol() if tol is None else tol
  return _class_errors(mixture, n, weight, ridge, max_iter=max_iter, tol=tol, damping=damping)


# ---------------------------------------------------------------------------------------
# Optimal weight.


def optimal_weight(mixture: CovarianceMixture | Diagonalized, *, n, ridge=0.0,
                   objective: str = "worst", log10_range: tuple[float, float] = (-2.0, 4.0),
                   grid_size: int = 256, refine_size: int = 32, refine_rounds: int = 2,
                   max_iter: int = 100, tol=None) -> OptimalWeight:
  """argmin over weight of the worst-class (or balanced) error, general covariances.

  The search of `thumb_jax.weight_search.best_weight` (as `thumb_jax.theory.optimal_weight`),
  broadcast over n and ridge (one search per pair).

  Returns:
    OptimalWeight with the broadcast shape of (n, ridge); NaN where every grid point is
    NaN (no converged fixed point, or invalid input under jit).
  """
  metrics.check_objective(objective)
  weight_search.check_search(log10_range=log10_range, grid_size=grid_size,
                             refine_size=refine_size, refine_rounds=refine_rounds)
  _check_args(mixture, n=n, weight=1.0, ridge=ridge, max_iter=max_iter, scalar=False)
  tol = _default_tol() if tol is None else tol

  def one(n, ridge):
    def errors_fn(weights):
      errs = jax.vmap(lambda w: _class_errors(mixture, n, w, ridge, max_iter=max_iter, tol=tol,
                                              damping=1.0))(weights)
      return (ClassErrors(errs.err_plus, errs.err_minus),
              ClassErrors(errs.log_err_plus, errs.log_err_minus))
    return weight_search.best_weight(errors_fn, objective=objective, log10_range=log10_range,
                                     grid_size=grid_size, refine_size=refine_size,
                                     refine_rounds=refine_rounds)

  return weight_search.vectorized(one, n, ridge)
