"""Per-class test errors: exact under the Gaussian model, empirical from scores.

Worst-class error = max(err_+, err_-); balanced error = (err_+ + err_-) / 2.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr, ndtr
from scipy import stats

from thumb_jax.lls import LastLayer


class ClassErrors(NamedTuple):
  """Per-class error rates (any matching shapes)."""
  err_plus: jax.Array
  err_minus: jax.Array

  @property
  def worst(self):
    return worst_class_error(self)

  @property
  def balanced(self):
    return balanced_error(self)


def worst_class_error(errors: ClassErrors):
  return jnp.maximum(errors.err_plus, errors.err_minus)


def balanced_error(errors: ClassErrors):
  return 0.5 * (errors.err_plus + errors.err_minus)


OBJECTIVES = ("worst", "balanced")


def check_objective(objective) -> str:
  """Returns `objective` if it is one of OBJECTIVES, else raises ValueError naming it."""
  if not isinstance(objective, str) or objective not in OBJECTIVES:
    raise ValueError(f"objective: expected one of {list(OBJECTIVES)}, got {objective!r}")
  return objective


def objective(errors: ClassErrors, objective: str):
  """The worst-class or balanced error (`objective`, one of OBJECTIVES)."""
  if check_objective(objective) == "worst":
    return worst_class_error(errors)
  return balanced_error(errors)


def log_objective(log_errors: ClassErrors, objective: str):
  """log of the worst-class or balanced error, from per-class log errors.

  A monotone transform of the objective, so it has the same minimizers, but it keeps
  ranking weights where the errors themselves underflow (float32 Phi(z) is 0 below
  z ~ -13, and a flat zero objective would make a search pick the end of its grid).

  Args:
    log_errors: ClassErrors of log error rates (e.g. `jax.scipy.special.log_ndtr`).
    objective: "worst" (max of the two) or "balanced" (their mean).

  Returns:
    log worst-class error or log balanced error, broadcast shape.
  """
  if check_objective(objective) == "worst":
    return jnp.maximum(log_errors.err_plus, log_errors.err_minus)
  return jnp.logaddexp(log_errors.err_plus, log_errors.err_minus) - jnp.log(2.0)


def gaussian_class_errors(layer: LastLayer, mu_plus: jax.Array, mu_minus: jax.Array, *,
                          var_plus=1.0, var_minus=1.0, cov_plus: jax.Array | None = None,
                          cov_minus: jax.Array | None = None) -> ClassErrors:
  """Exact test errors of sign(w.x + b) under x | y = k ~ N(mu_k, Sigma_k) (THEORY.md).

      err_+ = Phi(-(w.mu_+ + b) / sqrt(w' Sigma_+ w)),
      err_- = Phi( (w.mu_- + b) / sqrt(w' Sigma_- w)).

  Sigma_k is s_k^2 I (var_k a scalar, THEORY.md's model), diag(var_k) (var_k [d]), or the
  full cov_k [d, d] when given (for a `mixture.CovarianceMixture` m:
  `gaussian_class_errors(layer, m.mean_plus, m.mean_minus, cov_plus=m.cov_plus,
  cov_minus=m.cov_minus)`).

  Args:
    layer: LastLayer with w [..., d], b [...].
    mu_plus, mu_minus: class means [d].
    var_plus, var_minus: class variances, scalars or [d] (ignored where cov_k is given).
    cov_plus, cov_minus: optional full class covariances [d, d].

  Returns:
    ClassErrors with shapes [...].
  """
  w = layer.w

  def spread(var, cov):
    if cov is not None:
      return jnp.sqrt(jnp.einsum("...i,ij,...j->...", w, cov, w))
    return jnp.sqrt(jnp.sum(w * w * var, axis=-1))

  err_plus = ndtr(-(w @ mu_plus + layer.b) / spread(var_plus, cov_plus))
  err_minus = ndtr((w @ mu_minus + layer.b) / spread(var_minus, cov_minus))
  return ClassErrors(err_plus, err_minus)


def empirical_class_errors(scores: jax.Array, labels: jax.Array,
                           mask: jax.Array | None = None) -> ClassErrors:
  """Per-class error of the rule predict +1 iff score > 0 (a NaN score is an error).

  Args:
    scores: [..., n].
    labels: [n] in {+1, -1}.
    mask: optional 0/1 [n] selecting the evaluated rows.

  Returns:
    ClassErrors with shapes [...] (NaN for a class with no evaluated rows).
  """
  keep = jnp.ones(labels.shape) if mask is None else mask
  plus = (labels > 0) * keep
  minus = (labels < 0) * keep
  # A NaN score predicts nothing, so it is an error for both classes (never "correct").
  wrong_plus = jnp.sum(~(scores > 0) * plus, axis=-1) / jnp.sum(plus)
  wrong_minus = jnp.sum(~(scores <= 0) * minus, axis=-1) / jnp.sum(minus)
  return ClassErrors(wrong_plus, wrong_minus)


ROUNDING_TOL = 1e-3


def normal_tail_errors(z_plus, z_minus, slack_plus, slack_minus, *,
                       tol=ROUNDING_TOL) -> tuple[ClassErrors, ClassErrors]:
  """Errors Phi(z_k) and log Phi(z_k), NaN where rounding could move an error by more than tol.

  Args:
    z_plus, z_minus: err_k = Phi(z_k), any matching shapes.
    slack_plus, slack_minus: bounds on the rounding error of z_k (>= 0). Phi is increasing,
      so an error is trusted where Phi(z_k + slack_k) - Phi(z_k - slack_k) <= tol.
    tol: the largest error change that rounding may cause.

  Returns:
    (ClassErrors of Phi(z_k), ClassErrors of log Phi(z_k)), NaN where untrusted.
  """
  def one(z, slack):
    trusted = ndtr(z + slack) - ndtr(z - slack) <= tol
    return jnp.where(trusted, ndtr(z), jnp.nan), jnp.where(trusted, log_ndtr(z), jnp.nan)

  (e_p, log_p), (e_m, log_m) = one(z_plus, slack_plus), one(z_minus, slack_minus)
  return ClassErrors(e_p, e_m), ClassErrors(log_p, log_m)


class MeanCI(NamedTuple):
  """Mean with a two-sided confidence interval (Student t over repeats)."""
  mean: np.ndarray
  low: np.ndarray
  high: np.ndarray
  half_width: np.ndarray   # t quantile * standard_error
  standard_error: np.ndarray  # std / sqrt(count)


def mean_ci(values, *, axis: int = 0, level: float = 0.95) -> MeanCI:
  """Mean and t-interval over `axis` (the repeats axis). NaN entries are ignored.

  Args:
    values: array with repeats along `axis`.
    axis: repeats axis.
    level: confidence level in (0, 1).

  Returns:
    MeanCI with `axis` reduced.
  """
  if not 0 < level < 1:
    raise ValueError(f"level: expected a value in (0, 1), got {level}")
  v = np.asarray(values, dtype=np.float64)
  count = np.sum(~np.isnan(v), axis=axis)
  mean = np.nanmean(v, axis=axis)
  std = np.nanstd(v, axis=axis, ddof=1) if v.shape[axis] > 1 else np.zeros_like(mean)
  with np.errstate(invalid="ignore", divide="ignore"):
    t = stats.t.ppf(0.5 + level / 2, np.maximum(count - 1, 1))
    se = np.where(count > 1, std / np.sqrt(count), np.nan)
  half = t * se
  return MeanCI(mean, mean - half, mean + half, half, se)
