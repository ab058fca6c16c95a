"""Theory-guided class weights for any embeddings: a plug-in isotropic Gaussian surrogate.

Given a binary retraining set (features, labels), `recommend_weight` estimates the
statistics that the isotropic theory of THEORY.md needs, from the retraining data
itself, and returns the weight that minimizes the predicted worst-class (or balanced)
test error of the weighted least-squares last layer (`thumb_jax.lls.fit`) at that n.

The surrogate (derivation; classes k in {+, -}, n_k rows, sample means xbar_k, unbiased
sample covariances S_k, pooled within-class covariance Sigma_w = sum_k (n_k - 1) Sigma_k / (n - 2)):

  Model to match: x | y = k ~ N(mu_k, s_k^2 I_{d_eff}), n samples, delta = d_eff / n.
  Only D2 = |mu_+ - mu_-|^2 enters the errors, not the position of the means: with an
  unpenalized intercept the fit is translation invariant, and in THEORY.md
  a_+ + q = (1 - p) D2 + ..., a_- + q = -p D2 + ... . So the surrogate is written in the
  midpoint frame mu_+ = -mu_- (mean_plus_sq = mean_minus_sq = -mean_inner = D2 / 4).

  1. Signal. E |xbar_+ - xbar_-|^2 = D2 + tr Sigma_+ / n_+ + tr Sigma_- / n_-, so
       D2_hat = |xbar_+ - xbar_-|^2 - tr S_+ / n_+ - tr S_- / n_-        (unbiased).
     (The same as debiasing |xbar_k|^2 by tr Sigma_k / n_k and using xbar_+ . xbar_- as is.)
  2. Noise energy. Choose s_k^2 = tr Sigma_k / d_eff: the surrogate keeps the total noise
     energy of each class. Then delta s_k^2 / pi_k = tr Sigma_k / n_k for every d_eff, so
     the finite-sample inflation of the sample mean difference (THEORY.md's
     L = D2 + delta (s_+^2 / pi_+ + s_-^2 / pi_-) = E |xbar_+ - xbar_-|^2) is reproduced
     exactly; only the spread of the noise over directions is approximated.
  3. Dimension. d_eff = participation ratio (tr Sigma_w)^2 / tr Sigma_w^2 is the only d for
     which s^2 I_d matches both tr Sigma_w and tr Sigma_w^2. The second moment sets the
     fluctuations: the sample covariance has E tr S^2 = tr Sigma^2 + (tr Sigma)^2 / n' + ...
     (relative inflation d_eff / n' = delta_eff), and the noise in a score along the sample
     mean difference, dbar' Sigma dbar, contains tr Sigma^2 / n_k (= d_eff s^4 / n_k in the
     surrogate). The surrogate's noise along any direction is then
     s^2 = tr Sigma^2 / tr Sigma, the energy-weighted mean eigenvalue.
     We do not match the noise along the mean direction, dmu' Sigma dmu / D2: it is a
     ratio of two noisy estimates (unstable exactly when the SNR is low and delta high,
     where the weight matters most) and it would break step 2.
  Where it loses: the surrogate is exact for isotropic noise. For a ridgeless fit the
  least-squares rule is affine invariant, so its errors depend on the Mahalanobis
  distance dmu' Sigma^-1 dmu over the full ambient dimension instead; with a strongly
  anisotropic spectrum and a tiny ridge the isotropic plug-in misjudges the SNR and the
  dimension (experiments/recommend_validate.py measures how much); dimension="whitened"
  (below) is the exact mapping in that regime. The general-covariance theory (THEORY.md,
  last section) removes the effective-dimension guess for any ridge.

  Debiasing the participation ratio: the sample ratio (tr S)^2 / tr S^2 is biased down
  (for isotropic noise it is about d / (1 + d / n'), half of d at d = n'). Treating
  n' S_w as Wishart(Sigma_w, n'), n' = n - 2 (exact for equal class covariances):
      E tr S^2 = (1 + 1/n') T2 + T1^2 / n',   E (tr S)^2 = T1^2 + 2 T2 / n',
  with T1 = tr Sigma_w, T2 = tr Sigma_w^2, whose solution gives unbiased
      T2_hat = n'^2 / ((n' - 1)(n' + 2)) (tr S^2 - (tr S)^2 / n'),
      T1sq_hat = (tr S)^2 - 2 T2_hat / n',      d_eff = T1sq_hat / T2_hat, clipped to [1, d].

Effective dimension choices: "participation" (above, default), "effective_rank"
(exp of the entropy of the normalized eigenvalues of the sample S_w; not debiased),
"ambient" (the feature width d), an explicit positive number, or "whitened":

  "whitened" maps the data, not only the spectrum. A ridgeless least-squares fit is affine
  invariant (x -> A x + c changes w but not the scores), so with equal class covariances
  its errors are exactly those of the isotropic model after whitening by Sigma_w: d_eff = d,
  s_k^2 = tr(Sigma_w^-1 Sigma_k) / d (both 1 for equal covariances) and the signal is the
  Mahalanobis distance Delta^2 = dmu' Sigma_w^-1 dmu, not |dmu|^2. With n' S_w ~
  Wishart(Sigma_w, n') independent of dbar, E S_w^-1 = n' / (n' - d - 1) Sigma_w^-1 and
  E dbar dbar' = dmu dmu' + (1/n_+ + 1/n_-) Sigma_w, so
      Delta^2_hat = (n' - d - 1) / n' * dbar' S_w^-1 dbar - d (1/n_+ + 1/n_-)   (unbiased),
  s_k^2 = tr(S_w^-1 S_k) / d (their count-weighted mean is exactly 1). It needs n > d + 3.
  A ridge is not affine invariant; it is carried over as ridge * tr(Sigma_w^-1) / d
  (debiased likewise), the mean penalty per whitened direction, so "whitened" is exact
  only as ridge -> 0 and an approximation for a ridge comparable to the small eigenvalues.

Labels may be any two values; the less frequent one becomes class +1 (a tie: the
larger in sorted order, scikit-learn's positive class). The weight is c_+ for that
class with c_- = 1; with ridge > 0 the scale matters and this is the convention
(objective sum_i c_i (y_i - w.x_i - b)^2 + ridge * n * |w|^2, n = number of samples).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from thumb_jax import metrics, theory
from thumb_jax.metrics import ClassErrors
from thumb_jax.mixture import GaussianMixture

_DIMENSIONS = ("participation", "effective_rank", "ambient", "whitened")


class RecommendationUndefined(ValueError):
  """The data admit no meaningful recommendation (no detectable signal, or the fit interpolates)."""


class LabelMap(NamedTuple):
  """Which original label became class +1 (the minority) and which class -1."""
  plus: Any
  minus: Any


class PlugInStats(NamedTuple):
  """Moment estimates from one (possibly resampled) retraining set; scalars.

  count_plus, count_minus: n_+, n_-.
  mean_diff_sq: unbiased |mu_+ - mu_-|^2 (may be <= 0 when the signal is undetectable).
  trace_plus, trace_minus: unbiased tr Sigma_+, tr Sigma_-.
  participation: debiased (tr Sigma_w)^2 / tr Sigma_w^2, clipped to [1, d].
  effective_rank: exp(entropy of the normalized sample spectrum of S_w) (NaN if not computed).
  mahalanobis_sq: unbiased dmu' Sigma_w^-1 dmu (NaN if not computed; see "whitened").
  whitened_var_plus, whitened_var_minus: tr(S_w^-1 S_k) / d (NaN if not computed).
  mean_inverse_eigenvalue: debiased tr(Sigma_w^-1) / d (NaN if not computed).
  """
  count_plus: jax.Array
  count_minus: jax.Array
  mean_diff_sq: jax.Array
  trace_plus: jax.Array
  trace_minus: jax.Array
  participation: jax.Array
  effective_rank: jax.Array
  mahalanobis_sq: jax.Array
  whitened_var_plus: jax.Array
  whitened_var_minus: jax.Array
  mean_inverse_eigenvalue: jax.Array


class Surrogate(NamedTuple):
  """The isotropic model standing in for the data (scalars; fields may be traced)."""
  mixture: GaussianMixture
  dimension: jax.Array      # d_eff
  delta: jax.Array          # d_eff / n
  ridge_scale: jax.Array    # the theory's ridge is ridge * ridge_scale (1 unless "whitened")
  signal: jax.Array         # the debiased squared mean difference the mixture uses (may be <= 0)


class Recommendation(NamedTuple):
  """The theory-guided weight with what it rests on.

  Attributes:
    weight: recommended minority weight c_+ (c_- = 1).
    at_search_limit: True when `weight` sits at an end of the searched range (within 0.05
      decades): the predicted objective keeps improving beyond it (for large delta the
      theory can prefer an ever larger, or a tiny, weight), so read it as ">= weight" / "<= weight".
    errors: predicted ClassErrors at `weight` (class +1 = the minority).
    mixture: the plug-in isotropic GaussianMixture (midpoint frame, see module docstring).
    dimension: the effective dimension d_eff used.
    delta: d_eff / n.
    ridge_used: the ridge given to the theory (= ridge, except for "whitened").
    prior_weight: n_- / n_+ (the ratio of priors, scikit-learn's 'balanced'), for reference.
    prior_errors: predicted ClassErrors at `prior_weight`.
    labels: LabelMap(plus=original minority label, minus=original majority label).
    count_plus, count_minus: n_+, n_-.
    ambient_dim: the feature width d.
    ridge, objective: the inputs the weight is optimal for.
    bootstrap_weights: [B] weights on within-class bootstrap resamples (NaN where a
      resample admits no recommendation); shape [0] without bootstrap.
    interval: (low, high) percentile interval of the weight at `level` (NaN without bootstrap).
      It shows sampling variability; resamples repeat rows, which biases some plug-ins (e.g.
      "whitened" with n not far above d), so it need not be centred on `weight`.
    level: the interval's level.
  """
  weight: float
  at_search_limit: bool
  errors: ClassErrors
  mixture: GaussianMixture
  dimension: float
  delta: float
  ridge_used: float
  prior_weight: float
  prior_errors: ClassErrors
  labels: LabelMap
  count_plus: int
  count_minus: int
  ambient_dim: int
  ridge: float
  objective: str
  bootstrap_weights: np.ndarray
  interval: tuple[float, float]
  level: float

  def as_dict(self) -> dict:
    """Summary of plain Python numbers and lists (NaN where undefined; see cli._strict)."""
    def errs(e):
      p, m = float(e.err_plus), float(e.err_minus)
      return {"err_plus": p, "err_minus": m, "worst": max(p, m), "balanced": 0.5 * (p + m)}

    return {
        "weight": self.weight,
        "at_search_limit": self.at_search_limit,
        "predicted_errors": errs(self.errors),
        "prior_weight": self.prior_weight,
        "prior_predicted_errors": errs(self.prior_errors),
        "effective_dimension": self.dimension,
        "delta_eff": self.delta,
        "ridge_used_by_theory": self.ridge_used,
        "ambient_dim": self.ambient_dim,
        "mixture": {k: float(v) for k, v in self.mixture._asdict().items()},
        "labels": {"plus (minority)": _jsonable(self.labels.plus),
                   "minus (majority)": _jsonable(self.labels.minus)},
        "count_plus": self.count_plus,
        "count_minus": self.count_minus,
        "ridge": self.ridge,
        "objective": self.objective,
        "bootstrap": {"num": int(self.bootstrap_weights.shape[0]),
                      "level": self.level,
                      "interval": [float(v) for v in self.interval],
                      "num_undefined": int(np.sum(~np.isfinite(self.bootstrap_weights))),
                      "weights": [float(v) for v in self.bootstrap_weights]},
    }


def _jsonable(value):
  return value.item() if isinstance(value, np.generic) else value


# ----------------------------------------------------------------------------- inputs


def encode_labels(labels) -> tuple[np.ndarray, LabelMap]:
  """Maps two arbitrary label values to +1 (the less frequent) and -1.

  Args:
    labels: [n] array of any two distinct values.

  Returns:
    (y [n] float in {+1., -1.}, LabelMap).

  Raises:
    ValueError: labels not 1-D, containing NaN, with one class or more than two.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"labels: expected a 1-D array [n], got shape {labels.shape}")
  if labels.dtype.kind in "fc" and not np.all(np.isfinite(labels)):
    raise ValueError("labels: expected finite values, found NaN or inf")
  values, counts = np.unique(labels, return_counts=True)
  if values.shape[0] == 1:
    raise ValueError(f"labels: expected two classes, found only one class ({values[0]!r})")
  if values.shape[0] > 2:
    raise ValueError(f"labels: expected a binary problem, found {values.shape[0]} classes "
                     f"{values[:10].tolist()}; multiclass weighting is not supported "
                     "(apply it one-vs-rest yourself)")
  plus = 1 if counts[1] <= counts[0] else 0          # tie: the larger (sorted-last) label
  mapping = LabelMap(plus=_jsonable(values[plus]), minus=_jsonable(values[1 - plus]))
  return np.where(labels == mapping.plus, 1.0, -1.0), mapping


def _as_features(features) -> np.ndarray:
  try:
    x = np.asarray(features, dtype=np.float64)
  except (TypeError, ValueError) as err:
    raise ValueError(f"features: expected a numeric array [n, d] ({err})") from None
  if x.ndim != 2:
    raise ValueError(f"features: expected shape [n, d], got {x.shape}")
  bad = ~np.isfinite(x)
  if np.any(bad):
    row = int(np.argmax(np.any(bad, axis=1)))
    raise ValueError(f"features: expected finite values, found {int(bad.sum())} NaN/inf "
                     f"entries (first in row {row})")
  return x


def _check_dimension(dimension) -> None:
  if isinstance(dimension, str):
    if dimension not in _DIMENSIONS:
      raise ValueError(f"dimension: expected one of {list(_DIMENSIONS)} or a positive number, "
                       f"got {dimension!r}")
  elif isinstance(dimension, bool) or not isinstance(dimension, (int, float, np.number)) \
      or not dimension > 0:
    raise ValueError(f"dimension: expected one of {list(_DIMENSIONS)} or a positive number, "
                     f"got {dimension!r}")


def prepare(features, labels) -> tuple[np.ndarray, np.ndarray, LabelMap]:
  """Validates a retraining set and maps its labels (see `encode_labels`).

  Returns:
    (x [n, d] float64, y [n] in {+1., -1.}, LabelMap).

  Raises:
    ValueError naming the problem: non-numeric, non-2-D or non-finite features,
    mismatched lengths, labels that are not binary, a class with fewer than 2 rows.
  """
  x = _as_features(features)
  labels = np.asarray(labels)
  if labels.ndim != 1 or labels.shape[0] != x.shape[0]:
    raise ValueError(f"labels: expected shape [{x.shape[0]}] (one label per row of "
                     f"features), got {labels.shape}")
  y, mapping = encode_labels(labels)
  for name, value in (("+1 (minority)", mapping.plus), ("-1 (majority)", mapping.minus)):
    count = int(np.sum(labels == value))
    if count < 2:
      raise ValueError(f"labels: class {value!r} (mapped to {name}) has {count} sample; at "
                       "least 2 per class are needed to estimate its variance")
  return x, y, mapping


# ------------------------------------------------------------------------- statistics


def plug_in_stats(x: jax.Array, is_plus: jax.Array, counts: jax.Array | None = None, *,
                  effective_rank: bool = False, whitened: bool = False,
                  scatter: jax.Array | None = None) -> PlugInStats:
  """Moment estimates for the surrogate (see the module docstring), pure and traceable.

  Args:
    x: features [n, d] (centring them first improves float32 accuracy).
    is_plus: bool [n], True for class +1.
    counts: multiplicities [n] >= 0 (a bootstrap resample), default all ones.
    effective_rank: also compute the entropy-based rank (one eigendecomposition).
    whitened: also compute the whitened statistics (one Cholesky of S_w; needs n > d + 3).
    scatter: optional within-class scatter sum_i c_i (x_i - xbar_y)(x_i - xbar_y)' that the
      caller already has, [d, d] or any matrix with the same nonzero spectrum (its [n, n]
      kernel, or its restriction to an orthonormal basis of the rows); saves its O(n d^2).

  Returns:
    PlugInStats of scalars.
  """
  n_rows, d = x.shape
  counts = jnp.ones((n_rows,), x.dtype) if counts is None else counts.astype(x.dtype)
  c_plus = jnp.where(is_plus, counts, 0.0)
  c_minus = jnp.where(is_plus, 0.0, counts)
  n_plus, n_minus = jnp.sum(c_plus), jnp.sum(c_minus)
  mean_plus, mean_minus = c_plus @ x / n_plus, c_minus @ x / n_minus
  xc = x - jnp.where(is_plus[:, None], mean_plus, mean_minus)
  sq = jnp.sum(xc ** 2, axis=1)
  trace_plus = c_plus @ sq / (n_plus - 1.0)
  trace_minus = c_minus @ sq / (n_minus - 1.0)
  diff = mean_plus - mean_minus
  mean_diff_sq = diff @ diff - trace_plus / n_plus - trace_minus / n_minus

  # Pooled S_w = B'B / n' with B = sqrt(c) * xc; its nonzero spectrum is that of the
  # smaller of B'B [d, d] and BB' [n, n].
  dof = n_plus + n_minus - 2.0
  if scatter is None:
    rows = jnp.sqrt(counts)[:, None] * xc
    gram = rows @ rows.T if n_rows <= d else rows.T @ rows
  else:
    gram = scatter
  tr1 = (counts @ sq) / dof                       # tr S_w
  tr2 = jnp.sum(gram ** 2) / dof ** 2             # tr S_w^2
  t2 = dof ** 2 / ((dof - 1.0) * (dof + 2.0)) * (tr2 - tr1 ** 2 / dof)
  t1sq = tr1 ** 2 - 2.0 * t2 / dof
  participation = jnp.where(t2 > 0, t1sq / jnp.where(t2 > 0, t2, 1.0), d)
  participation = jnp.clip(participation, 1.0, d)

  if effective_rank:
    evals = jnp.clip(jnp.linalg.eigvalsh(gram), 0.0, None)
    prob = evals / jnp.sum(evals)
    entropy = -jnp.sum(jnp.where(prob > 0, prob * jnp.log(jnp.where(prob > 0, prob, 1.0)), 0.0))
    rank = jnp.exp(entropy)
  else:
    rank = jnp.full((), jnp.nan, x.dtype)

  nan = jnp.full((), jnp.nan, x.dtype)
  maha, white_plus, white_minus, inv_mean = nan, nan, nan, nan
  if whitened:
    scatter_plus = (c_plus[:, None] * xc).T @ xc
    scatter_minus = (c_minus[:, None] * xc).T @ xc
    chol = jnp.linalg.cholesky((scatter_plus + scatter_minus) / dof)
    inv = jax.scipy.linalg.cho_solve((chol, True), jnp.eye(d, dtype=x.dtype))     # S_w^-1
    shrink = (dof - d - 1.0) / dof
    maha = shrink * (diff @ inv @ diff) - d * (1.0 / n_plus + 1.0 / n_minus)
    white_plus = jnp.sum(inv * scatter_plus) / (n_plus - 1.0) / d
    white_minus = jnp.sum(inv * scatter_minus) / (n_minus - 1.0) / d
    inv_mean = shrink * jnp.trace(inv) / d
  return PlugInStats(n_plus, n_minus, mean_diff_sq, trace_plus, trace_minus, participation, rank,
                     maha, white_plus, white_minus, inv_mean)


def effective_dimension(stats: PlugInStats, dimension, ambient_dim: int):
  """d_eff from the stats: 'participation', 'effective_rank', 'ambient' / 'whitened' (= d)
  or a number."""
  if dimension == "participation":
    return stats.participation
  if dimension == "effective_rank":
    return stats.effective_rank
  if dimension in ("ambient", "whitened"):
    return jnp.asarray(float(ambient_dim), stats.participation.dtype)
  return jnp.asarray(float(dimension), stats.participation.dtype)


def surrogate(stats: PlugInStats, dimension, ambient_dim: int) -> Surrogate:
  """The isotropic model for the stats (module docstring): steps 1-3, or "whitened".

  The squared mean difference is floored at a tiny positive value so that the mixture
  stays valid under tracing; callers check `Surrogate.signal > 0` themselves.
  """
  n = stats.count_plus + stats.count_minus
  d_eff = effective_dimension(stats, dimension, ambient_dim)
  if dimension == "whitened":
    signal, var_plus, var_minus = (stats.mahalanobis_sq, stats.whitened_var_plus,
                                   stats.whitened_var_minus)
    ridge_scale = stats.mean_inverse_eigenvalue
  else:
    signal, var_plus, var_minus = (stats.mean_diff_sq, stats.trace_plus / d_eff,
                                   stats.trace_minus / d_eff)
    ridge_scale = jnp.ones_like(d_eff)
  d2 = jnp.maximum(signal, 1e-12 * (var_plus + var_minus))
  mixture = GaussianMixture(
      pi_plus=stats.count_plus / n,
      mean_plus_sq=d2 / 4.0, mean_minus_sq=d2 / 4.0, mean_inner=-d2 / 4.0,
      var_plus=var_plus, var_minus=var_minus)
  return Surrogate(mixture, d_eff, d_eff / n, ridge_scale, signal)


def _to_float_mixture(mixture: GaussianMixture) -> GaussianMixture:
  return GaussianMixture(*(float(v) for v in mixture))


# ------------------------------------------------------------------------- bootstrap


def _resample_counts(key: jax.Array, index_plus: jax.Array, index_minus: jax.Array,
                     n_rows: int) -> jax.Array:
  """Multiplicities [n_rows] of a within-class bootstrap resample (class sizes kept)."""
  key_p, key_m = jax.random.split(key)
  pick_p = index_plus[jax.random.randint(key_p, index_plus.shape, 0, index_plus.shape[0])]
  pick_m = index_minus[jax.random.randint(key_m, index_minus.shape, 0, index_minus.shape[0])]
  return jnp.zeros((n_rows,)).at[pick_p].add(1.0).at[pick_m].add(1.0)


def surrogate_weight(sur: Surrogate, ridge, objective: str = "worst", *,
                     log10_range: tuple[float, float] = (-2.0, 4.0)
                     ) -> tuple[theory.OptimalWeight, jax.Array]:
  """`theory.optimal_weight` of a surrogate, and where that weight is defined (traceable).

  Scalar fields; vmap over a stacked Surrogate for many. The theory's ridge is
  ridge * sur.ridge_scale. Defined: the debiased squared mean difference is > 0, the
  theory applies (ridge > 0 or delta < 1) and the search found a weight.

  Returns:
    (OptimalWeight, defined bool).
  """
  best = theory.optimal_weight(sur.mixture, sur.delta, ridge * sur.ridge_scale, objective,
                               log10_range=log10_range)
  defined = (sur.signal > 0) & ((ridge > 0) | (sur.delta < 1)) & jnp.isfinite(best.weight)
  return best, defined


def _predict(mixture, delta, ridge, prior_weight, *, objective, log10_range):
  """Optimal weight and the predicted errors at the prior weight (scalars; jitted once)."""
  best = theory.optimal_weight(mixture, delta, ridge, objective, log10_range=log10_range)
  return best, theory.class_errors(mixture, delta, prior_weight, ridge)


# Jitted here, at their only use site, so that repeated calls (bootstrap, scikit-learn
# fits) compile the scalar theory once per process and the statistics once per shape.
_predict_jit = jax.jit(_predict, static_argnames=("objective", "log10_range"))
_plug_in_stats_jit = jax.jit(plug_in_stats, static_argnames=("effective_rank", "whitened"))


def _bootstrap_weights(keys, x, is_plus, index_plus, index_minus, *, dimension, ridge,
                       objective, log10_range, batch_size):
  """Recommended weight on each resample [B]; NaN where a resample has no signal."""
  n_rows, d = x.shape

  def one(key):
    counts = _resample_counts(key, index_plus, index_minus, n_rows).astype(x.dtype)
    stats = plug_in_stats(x, is_plus, counts, effective_rank=dimension == "effective_rank",
                          whitened=dimension == "whitened")
    best, defined = surrogate_weight(surrogate(stats, dimension, d), ridge, objective,
                                     log10_range=log10_range)
    return jnp.where(defined, best.weight, jnp.nan)

  return jax.lax.map(one, keys, batch_size=batch_size)


_bootstrap_weights_jit = jax.jit(_bootstrap_weights, static_argnames=(
    "dimension", "objective", "log10_range", "batch_size"))


# ------------------------------------------------------------------------------- API


def recommend_weight(features, labels, *, ridge: float = 0.0, objective: str = "worst",
                     dimension="participation", bootstrap: int = 0, seed: int = 0,
                     level: float = 0.95, log10_range: tuple[float, float] = (-2.0, 4.0),
                     batch_size: int = 16) -> Recommendation:
  """Theory-guided minority class weight for weighted least-squares retraining.

  Plug-in estimates from the retraining set itself (module docstring) feed
  `theory.optimal_weight` for the isotropic surrogate with delta_eff = d_eff / n.

  Args:
    features: [n, d] embeddings of the retraining set (any real array; finite).
    labels: [n] two distinct values; the less frequent becomes class +1.
    ridge: ridge >= 0 of the last layer, objective ... + ridge * n * |w|^2.
    objective: "worst" (worst-class error) or "balanced" (mean of the class errors).
    dimension: "participation" (default), "effective_rank", "ambient", "whitened" (for a
      ridge near 0 and n > d + 3) or a positive number.
    bootstrap: number B >= 0 of within-class bootstrap resamples for an interval.
    seed: seed of the bootstrap.
    level: level of the percentile interval, in (0, 1).
    log10_range: weights searched, 10**lo to 10**hi.
    batch_size: resamples evaluated together (memory ~ batch_size * n * d).

  Returns:
    Recommendation.

  Raises:
    ValueError naming the problem for bad inputs (see `prepare`), and
    RecommendationUndefined (a ValueError) when the debiased squared mean difference
    is <= 0 (no detectable signal) or, with ridge = 0, when the fit interpolates
    (d >= n - 1, where every weight gives the same last layer) or delta_eff >= 1.
  """
  if objective not in metrics.OBJECTIVES:
    raise ValueError(f"objective: expected one of {list(metrics.OBJECTIVES)}, got {objective!r}")
  _check_dimension(dimension)
  if not np.isscalar(ridge) or not np.isfinite(ridge) or ridge < 0:
    raise ValueError(f"ridge: expected a finite number >= 0, got {ridge!r}")
  if isinstance(bootstrap, bool) or not isinstance(bootstrap, (int, np.integer)) or bootstrap < 0:
    raise ValueError(f"bootstrap: expected an integer >= 0, got {bootstrap!r}")
  if not 0 < level < 1:
    raise ValueError(f"level: expected a value in (0, 1), got {level!r}")
  x64, y, mapping = prepare(features, labels)
  n_rows, d = x64.shape
  if ridge == 0 and d >= n_rows - 1:
    raise RecommendationUndefined(
        f"ridge: with ridge=0 and d={d} >= n-1={n_rows - 1} the least-squares fit "
        "interpolates the retraining set and the class weight has no effect; pass ridge > 0")

  dtype = jnp.result_type(float)
  x = jnp.asarray(x64 - x64.mean(axis=0), dtype)      # translation invariant; helps float32
  is_plus = jnp.asarray(y > 0)
  if dimension == "whitened" and not n_rows > d + 3:
    raise ValueError(f"dimension: 'whitened' needs n > d + 3 to invert the within-class "
                     f"covariance, got n={n_rows}, d={d}")
  stats = _plug_in_stats_jit(x, is_plus, effective_rank=dimension == "effective_rank",
                             whitened=dimension == "whitened")
  sur = surrogate(stats, dimension, d)
  if not float(sur.signal) > 0:
    raise RecommendationUndefined(
        "features: no class separation detectable, the debiased squared mean difference "
        f"is {float(sur.signal):.3g} <= 0; the optimal weight is undefined")
  mixture, delta, d_eff = _to_float_mixture(sur.mixture), float(sur.delta), float(sur.dimension)
  ridge_used = float(ridge * sur.ridge_scale)
  if ridge == 0 and delta >= 1:
    raise RecommendationUndefined(
        f"dimension: delta_eff = d_eff / n = {delta:.3g} >= 1 with ridge=0: the isotropic "
        "theory predicts an interpolating fit that ignores the weight; pass ridge > 0")
  prior_weight = float(stats.count_minus / stats.count_plus)
  mixture.validate()
  best, prior_errors = _predict_jit(mixture, delta, ridge_used, prior_weight,
                                    objective=objective, log10_range=tuple(log10_range))

  if bootstrap > 0:
    index_plus = jnp.asarray(np.flatnonzero(y > 0))
    index_minus = jnp.asarray(np.flatnonzero(y < 0))
    keys = jax.random.split(jax.random.key(seed), bootstrap)
    # "effective_rank" / "whitened" factor a matrix per resample: resamples then run one at
    # a time, because batched LAPACK calls can deadlock jaxlib 0.10.0-0.10.2's CPU pool.
    batch = (None if dimension in ("effective_rank", "whitened")
             else min(batch_size, bootstrap))
    boot = np.asarray(_bootstrap_weights_jit(
        keys, x, is_plus, index_plus, index_minus, dimension=dimension, ridge=float(ridge),
        objective=objective, log10_range=tuple(log10_range), batch_size=batch), np.float64)
    finite = boot[np.isfinite(boot)]
    tail = 50.0 * (1.0 - level)
    interval = ((float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail)))
                if finite.size else (float("nan"), float("nan")))
  else:
    boot = np.zeros((0,), np.float64)
    interval = (float("nan"), float("nan"))

  log_w = np.log10(float(best.weight))
  return Recommendation(
      weight=float(best.weight),
      at_search_limit=bool(min(abs(log_w - log10_range[0]), abs(log_w - log10_range[1])) < 0.05),
      errors=ClassErrors(float(best.err_plus), float(best.err_minus)),
      mixture=mixture, dimension=d_eff, delta=delta, ridge_used=ridge_used,
      prior_weight=prior_weight,
      prior_errors=ClassErrors(float(prior_errors.err_plus), float(prior_errors.err_minus)),
      labels=mapping, count_plus=int(stats.count_plus), count_minus=int(stats.count_minus),
      ambient_dim=d, ridge=float(ridge), objective=objective,
      bootstrap_weights=boot, interval=interval, level=float(level))
