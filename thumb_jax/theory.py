"""Asymptotic per-class errors of the weighted least-squares last layer (THEORY.md).

Proportional limit n, d -> infinity with d / n -> delta, x | y ~ N(mu_y, s_y^2 I),
class weights (c_+, c_-) = (weight, 1), objective
    sum_i c_i (y_i - w.x_i - b)^2 + ridge * n * |w|^2.

Every function broadcasts over array arguments (delta, weight, ridge). With concrete
values invalid arguments raise ValueError naming the argument; inside jit they give
NaN (never a plausible wrong number): delta >= 1 with ridge = 0, weight <= 0,
ridge < 0, pi_plus outside (0, 1).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from thumb_jax import _checks, metrics, weight_search
from thumb_jax.metrics import ClassErrors
from thumb_jax.mixture import CovarianceMixture, GaussianMixture
from thumb_jax.weight_search import OptimalWeight


class Asymptotics(NamedTuple):
  """Deterministic limits behind the per-class errors (THEORY.md steps 1-4)."""
  m: jax.Array        # lim (1/d) tr (A/n + ridge I)^-1
  m2: jax.Array       # lim (1/d) tr (A/n + ridge I)^-2
  gain: jax.Array     # K
  score_plus: jax.Array   # S_+: mean score of class +1
  score_minus: jax.Array  # S_-: mean score of class -1
  norm: jax.Array     # nu = lim |w|
  errors: ClassErrors
  log_errors: ClassErrors   # log err_k, finite where err_k underflows to 0


def resolvent(delta, tau_plus, tau_minus, pi_plus, ridge, *, newton_steps: int = 40):
  """m > 0 solving 1/m = ridge + sum_k pi_k tau_k / (1 + tau_k delta m).

  Generalized Marchenko-Pastur at z = -ridge. Written h(m) = ridge m + g(m) - 1 with
  g(m) = sum_k pi_k tau_k m / (1 + tau_k delta m), h is increasing and concave, so
  Newton started left of the root (m0 = 1 / (ridge + sum pi_k tau_k), where
  g(m0) <= m0 sum pi_k tau_k gives h(m0) <= 0) climbs monotonically to it.
  With ridge = 0 it is the quadratic
      A m^2 + B m - 1 = 0,  A = tau_+ tau_- delta (1 - delta),
      B = pi_+ tau_+ + pi_- tau_- - (tau_+ + tau_-) delta,
  whose positive root we use in closed form (NaN for delta >= 1).
  """
  pi_minus = 1.0 - pi_plus
  # Closed form (ridge = 0).
  qa = tau_plus * tau_minus * delta * (1.0 - delta)
  qb = pi_plus * tau_plus + pi_minus * tau_minus - (tau_plus + tau_minus) * delta
  # The root without cancellation: 2 / (B + sqrt) for B >= 0, (sqrt - B) / (2A) for B < 0.
  root = jnp.sqrt(qb ** 2 + 4.0 * qa)
  m_ridgeless = jnp.where(qb >= 0, 2.0 / (qb + root), (root - qb) / (2.0 * qa))
  m_ridgeless = jnp.where(delta < 1.0, m_ridgeless, jnp.nan)

  # Newton (ridge > 0); the ridge-0 entries are masked to a harmless ridge.
  lam = jnp.where(ridge > 0, ridge, 1.0)

  def newton(_, m):
    d_p = 1.0 + tau_plus * delta * m
    d_m = 1.0 + tau_minus * delta * m
    h = lam * m + pi_plus * tau_plus * m / d_p + pi_minus * tau_minus * m / d_m - 1.0
    dh = lam + pi_plus * tau_plus / d_p ** 2 + pi_minus * tau_minus / d_m ** 2
    return m - h / dh

  m0 = 1.0 / (lam + pi_plus * tau_plus + pi_minus * tau_minus)
  m_ridge = jax.lax.fori_loop(0, newton_steps, newton, m0 * jnp.ones_like(qa))
  return jnp.where(ridge > 0, m_ridge, m_ridgeless)


def _asymptotics(mixture: GaussianMixture, delta, weight, ridge, *,
                 interpolator: bool = False) -> Asymptotics:
  """THEORY.md steps 1-4 without argument checks (NaN for invalid input)."""
  dtype = jnp.result_type(float)
  delta, weight, ridge = (jnp.asarray(v, dtype) for v in (delta, weight, ridge))
  pi_p = jnp.asarray(mixture.pi_plus, dtype)
  pi_m = 1.0 - pi_p
  s2_p, s2_m = mixture.var_plus, mixture.var_minus
  a_p, a_m, d2 = mixture.align_plus, mixture.align_minus, mixture.mean_diff_sq
  bad = (pi_p <= 0) | (pi_p >= 1) | (weight <= 0) | (ridge < 0) | (delta <= 0)

  c_p, c_m = weight, 1.0
  tau_p, tau_m = c_p * s2_p, c_m * s2_m
  # p = pi_+ c_+ / cbar, 1 - p and 2p - 1 each from the class masses: 1 - p computed as a
  # difference would round to 0 for weights near 1e8 in float32.
  mass_p, mass_m = pi_p * c_p, pi_m * c_m
  cbar = mass_p + mass_m
  p, p_m = mass_p / cbar, mass_m / cbar
  offset = (mass_p - mass_m) / cbar                                        # 2p - 1
  spread = d2 + delta * (s2_p / pi_p + s2_m / pi_m)                       # L
  q_terms = (p * a_p, p_m * a_m, p * delta * s2_p / pi_p, p_m * delta * s2_m / pi_m)
  q = -q_terms[0] - q_terms[1] - q_terms[2] + q_terms[3]
  if interpolator:
    # ridge -> 0+ with delta > 1: m -> infinity, K -> 2 / L and m2 / m^2 -> delta / (delta - 1)
    # (each tau_k^2 m^2 / (1 + tau_k delta m)^2 -> 1 / delta^2). The mean scores S_k are then
    # independent of p (d/dp [(2p - 1) + 2 (a_k + q) / L] = 2 - 2 (D2 + delta sum s^2/pi) / L = 0),
    # so weighting has no effect.
    m = jnp.full_like(delta, jnp.inf)
    m2 = m
    gain = 2.0 / spread
    ratio = jnp.where(delta > 1, delta / (delta - 1.0), jnp.nan)           # m2 / m^2
  else:
    m = resolvent(delta, tau_p, tau_m, pi_p, ridge)
    # m2 / m^2 = 1 / (1 - delta sum_k pi_k (tau_k m / (1 + tau_k delta m))^2)
    #          = delta / (delta - 1 + sum_k pi_k v_k (2 - v_k)),  v_k = 1 / (1 + tau_k delta m):
    # no m^2 (it underflows for ridges near 1e20 in float32), and less cancellation near
    # delta = 1 than 1 - (a sum near 1).
    v_p, v_m = 1.0 / (1.0 + tau_p * delta * m), 1.0 / (1.0 + tau_m * delta * m)
    ratio = delta / (delta - 1.0 + pi_p * v_p * (2.0 - v_p) + pi_m * v_m * (2.0 - v_m))
    m2 = ratio * m ** 2
    beta = mass_p * mass_m / cbar                                          # cbar p (1 - p)
    gain = 2.0 * beta * m / (1.0 + beta * m * spread)
  norm = gain * jnp.sqrt(ratio * spread)
  score_p = offset + gain * (a_p + q)
  score_m = offset + gain * (a_m + q)
  z_p = -score_p / (jnp.sqrt(s2_p) * norm)          # err_+ = Phi(z_+)
  z_m = score_m / (jnp.sqrt(s2_m) * norm)           # err_- = Phi(z_-)
  # Rounding bound on z_k: the score is a sum of terms that can cancel (2p - 1 against
  # K (a_k + q) at a large ridge, where K ~ 1 / ridge), so its error is eps times the sum of
  # their sizes; the norm's relative error grows as m2 / m^2 (the factor 1 / (1 - ...)).
  eps = 8.0 * jnp.finfo(dtype).eps
  size = 1.0 + gain * sum(jnp.abs(t) for t in q_terms)
  slack_p = eps * ((size + gain * jnp.abs(a_p)) / (jnp.sqrt(s2_p) * norm) + ratio * jnp.abs(z_p))
  slack_m = eps * ((size + gain * jnp.abs(a_m)) / (jnp.sqrt(s2_m) * norm) + ratio * jnp.abs(z_m))
  errors, log_errors = metrics.normal_tail_errors(z_p, z_m, slack_p, slack_m)
  errors = ClassErrors(*(jnp.where(bad, jnp.nan, e) for e in errors))
  log_errors = ClassErrors(*(jnp.where(bad, jnp.nan, e) for e in log_errors))
  return Asymptotics(m, m2, gain, score_p, score_m, norm, errors, log_errors)


def _check(mixture, delta, weight, ridge):
  mixture.validate()
  for name, value in (("delta", delta), ("weight", weight), ("ridge", ridge)):
    _checks.finite(name, value)
  _checks.positive("delta", delta)
  _checks.positive("weight", weight)
  _checks.nonnegative("ridge", ridge)


def asymptotics(mixture: GaussianMixture, delta, weight, ridge=0.0) -> Asymptotics:
  """All deterministic limits (m, m2, K, S_+, S_-, nu, errors); see `class_errors`."""
  _check(mixture, delta, weight, ridge)
  if _checks.is_concrete(delta, ridge):
    ridgeless_interp = (np.asarray(ridge) == 0) & (np.asarray(delta) >= 1)
    if np.any(ridgeless_interp):
      raise ValueError(
          "delta: expected delta < 1 when ridge = 0 (with d >= n the ridgeless fit "
          "interpolates; use interpolator_class_errors for that limit), got "
          f"delta={np.asarray(delta).tolist()} with ridge={np.asarray(ridge).tolist()}")
  return _asymptotics(mixture, delta, weight, ridge)


def class_errors(mixture: GaussianMixture, delta, weight, ridge=0.0) -> ClassErrors:
  """Asymptotic per-class test errors (err_+, err_-) of the retrained last layer.

  Args:
    mixture: GaussianMixture (scalar fields).
    delta: d / n > 0 (< 1 when ridge = 0).
    weight: minority class weight c_+ > 0 (c_- = 1).
    ridge: ridge >= 0, penalty ridge * n * |w|^2.

  Returns:
    ClassErrors broadcast over (delta, weight, ridge). Extreme weights and ridges are
    computed in a form that neither overflows nor underflows; NaN where rounding in the
    current precision could move an error by more than `metrics.ROUNDING_TOL` (e.g. float32
    at a ridge near 1e8 with the weight near the ratio of priors, where 2p - 1 cancels
    against a ~1 / ridge term), never a confident wrong number.
  """
  return asymptotics(mixture, delta, weight, ridge).errors


def interpolator_class_errors(mixture: GaussianMixture, delta) -> ClassErrors:
  """Per-class errors of the minimum-norm interpolator (ridge -> 0+, delta > 1).

  The same for every class weight (see the derivation in `_asymptotics`).
  """
  mixture.validate()
  _checks.positive("delta", delta)
  if _checks.is_concrete(delta) and np.any(np.asarray(delta) <= 1):
    raise ValueError(f"delta: expected delta > 1 for the interpolator, got "
                     f"{np.asarray(delta).tolist()}")
  return _asymptotics(mixture, delta, 1.0, 0.0, interpolator=True).errors


def _errors_any_regime(mixture, delta, weight, ridge) -> ClassErrors:
  """class_errors, switching to the interpolator limit where ridge = 0 and delta > 1."""
  regular = _asymptotics(mixture, delta, weight, ridge).errors
  interp = _asymptotics(mixture, delta, weight, ridge, interpolator=True).errors
  use = (jnp.asarray(ridge) == 0) & (jnp.asarray(delta) > 1)
  return ClassErrors(jnp.where(use, interp.err_plus, regular.err_plus),
                     jnp.where(use, interp.err_minus, regular.err_minus))


def downsampled_class_errors(mixture: GaussianMixture, delta, ridge=0.0) -> ClassErrors:
  """Per-class errors after downsampling the majority to balance, weights equal.

  Keeping all n_+ = pi_+ n minority rows and as many majority rows leaves
  n' = 2 pi_+ n samples: delta' = delta / (2 pi_+), pi' = 1/2, weight 1. Where
  ridge = 0 and delta' > 1 the downsampled fit interpolates and the limit
  of `interpolator_class_errors` applies.
  """
  _check(mixture, delta, 1.0, ridge)
  balanced = mixture._replace(pi_plus=0.5)
  return _errors_any_regime(balanced, jnp.asarray(delta) / (2.0 * mixture.pi_plus), 1.0, ridge)


def prior_ratio(pi_plus):
  """The classical weight pi_- / pi_+ (scikit-learn's class_weight='balanced')."""
  _checks.open_interval("pi_plus", pi_plus, 0.0, 1.0)
  return (1.0 - jnp.asarray(pi_plus)) / jnp.asarray(pi_plus)


def optimal_weight(mixture: GaussianMixture, delta, ridge=0.0, objective: str = "worst", *,
                   log10_range: tuple[float, float] = (-2.0, 4.0), grid_size: int = 512,
                   refine_size: int = 64, refine_rounds: int = 2) -> OptimalWeight:
  """argmin over weight > 0 of the worst-class (or balanced) asymptotic error.

  The objective can be non-convex in the weight (the minority error is U-shaped:
  too much weight inflates variance), so the search is global on a dense log grid
  and then refines around the best grid point (twice by default, each round a
  `refine_size` grid between the neighbours), vectorized over delta and ridge.
  The search range is `log10_range` (weights 1e-2 to 1e4 by default).

  Args:
    mixture: GaussianMixture.
    delta: d / n, any shape (broadcast with ridge).
    ridge: ridge >= 0.
    objective: "worst" (max of the per-class errors) or "balanced" (their mean).

  Returns:
    OptimalWeight with the broadcast shape of (delta, ridge). NaN where the theory
    is undefined (ridge = 0 with delta >= 1 under jit).
  """
  metrics.check_objective(objective)
  weight_search.check_search(log10_range=log10_range, grid_size=grid_size,
                             refine_size=refine_size, refine_rounds=refine_rounds)
  _check(mixture, delta, 1.0, ridge)
  if _checks.is_concrete(delta, ridge) and np.any(
      (np.asarray(ridge) == 0) & (np.asarray(delta) >= 1)):
    raise ValueError("delta: expected delta < 1 when ridge = 0 (the ridgeless interpolator "
                     f"ignores the weight), got delta={np.asarray(delta).tolist()}")

  def one(delta, ridge):
    def errors_fn(weights):
      asym = _asymptotics(mixture, delta, weights, ridge)
      return asym.errors, asym.log_errors
    return weight_search.best_weight(errors_fn, objective=objective, log10_range=log10_range,
                                     grid_size=grid_size, refine_size=refine_size,
                                     refine_rounds=refine_rounds)

  return weight_search.vectorized(one, delta, ridge)


def equal_error_weight(mixture: GaussianMixture, delta, ridge=0.0, *,
                       log10_range: tuple[float, float] = (-2.0, 4.0), grid_size: int = 512,
                       bisection_steps: int = 50) -> OptimalWeight:
  """The weight where err_+ = err_-, or NaN where none exists in `log10_range`.

  err_+ - err_- is positive for small weights; the first sign change on a dense
  log grid is refined by bisection. For large delta the minority error can stay
  above the majority error for every weight (it is U-shaped in the weight), and
  then no equal-error weight exists: the result is NaN ("none").

  Returns:
    OptimalWeight (value = the common error), broadcast over (delta, ridge).
  """
  _check(mixture, delta, 1.0, ridge)
  weight_search.check_search(log10_range=log10_range, grid_size=grid_size)
  lo, hi = log10_range

  def one(delta, ridge):
    def gap(log_w):
      # log err_+ - log err_-: the sign of err_+ - err_-, also where both underflow.
      e = _asymptotics(mixture, delta, 10.0 ** log_w, ridge).log_errors
      return e.err_plus - e.err_minus

    grid = jnp.linspace(lo, hi, grid_size)
    g = gap(grid)
    crossing = (g[:-1] > 0) & (g[1:] <= 0)
    exists = jnp.any(crossing)
    i = jnp.argmax(crossing)

    def bisect(_, bracket):
      left, right = bracket
      mid = 0.5 * (left + right)
      pos = gap(mid) > 0
      return jnp.where(pos, mid, left), jnp.where(pos, right, mid)

    left, right = jax.lax.fori_loop(0, bisection_steps, bisect, (grid[i], grid[i + 1]))
    log_w = 0.5 * (left + right)
    e = _asymptotics(mixture, delta, 10.0 ** log_w, ridge).errors
    nan = jnp.nan
    return OptimalWeight(jnp.where(exists, 10.0 ** log_w, nan),
                         jnp.where(exists, e.err_plus, nan), jnp.where(exists, e.err_minus, nan),
                         jnp.where(exists, 0.5 * (e.err_plus + e.err_minus), nan))

  return weight_search.vectorized(one, delta, ridge)


class IsotropicPlugIn(NamedTuple):
  """An isotropic stand-in for a CovarianceMixture (see `isotropic_plug_in`)."""
  mixture: GaussianMixture
  d_eff: jax.Array            # participation ratio of the pooled covariance


def isotropic_plug_in(mixture: CovarianceMixture) -> IsotropicPlugIn:
  """The isotropic mixture with the general one's population per-class errors.

  Pooled within-class covariance Sigma = pi_+ Sigma_+ + pi_- Sigma_-, effective dimension
  d_eff = (tr Sigma)^2 / tr(Sigma^2) (its participation ratio), noise scale s^2 = tr Sigma / d_eff,
  D2 = s^2 dmu' Sigma^-1 dmu and per-class variances matched to the score variances
  (THEORY.md, "Derivations: general covariances").

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
  iso = GaussianMixture(pi, d2 / 4, d2 / 4, -d2 / 4,
                                    float(s2 * v_p / delta2), float(s2 * v_m / delta2))
  return IsotropicPlugIn(iso, float(d_eff))
