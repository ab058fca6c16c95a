"""Theory-guided class weights for any embeddings: a plug-in isotropic Gaussian surrogate.

Given a binary retraining set (features, labels), `recommend_weight` estimates from the data
itself the statistics that the isotropic theory of THEORY.md needs (`plug_in_stats`), builds
the isotropic model standing in for the data (`surrogate`) and returns the weight that
minimizes the predicted worst-class (or balanced) test error of the weighted least-squares
last layer (`thumb_jax.lls.fit`) at that n. The surrogate keeps each class's noise energy
and an unbiased squared mean difference, with d_eff the debiased participation ratio of the
within-class covariance by default; "whitened" maps the data instead (exact for a ridgeless
fit with equal class covariances). Derivations: THEORY.md, "Derivations: the plug-in
isotropic surrogate".

Labels may be any two values; the less frequent one becomes class +1 (a tie: the larger in
sorted order, scikit-learn's positive class). The weight is c_+ for that class with c_- = 1;
with ridge > 0 the scale matters and this is the convention (objective
sum_i c_i (y_i - w.x_i - b)^2 + ridge * n * |w|^2, n = number of samples).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from thumb_jax import _checks, lls, metrics, theory
from thumb_jax.metrics import ClassErrors
from thumb_jax.mixture import GaussianMixture
from thumb_jax.plug_in import DIMENSIONS, plug_in_stats, surrogate, surrogate_weight


class RecommendationUndefined(ValueError):
  """The data admit no meaningful recommendation (no detectable signal, or the fit interpolates)."""


class LabelMap(NamedTuple):
  """Which original label became class +1 (the minority) and which class -1."""
  plus: Any
  minus: Any


class Recommendation(NamedTuple):
  """The theory-guided weight with what it rests on.

  Attributes:
    weight: recommended minority weight c_+ (c_- = 1).
    at_search_limit: True when `weight` sits at an end of the searched range (within 0.05
      decades): the predicted objective keeps improving beyond it (for large delta the
      theory can prefer an ever larger, or a tiny, weight), so read it as ">= weight" / "<= weight".
    errors: predicted ClassErrors at `weight` (class +1 = the minority).
    mixture: the plug-in isotropic GaussianMixture (midpoint frame, see `plug_in.surrogate`).
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
    """Summary of Python numbers and lists (NaN where undefined: `io.dumps` writes null)."""
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
        "labels": {"plus (minority)": self.labels.plus, "minus (majority)": self.labels.minus},
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
  names = values.tolist()                            # NumPy scalars -> Python values
  mapping = LabelMap(plus=names[plus], minus=names[1 - plus])
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
    if dimension not in DIMENSIONS:
      raise ValueError(f"dimension: expected one of {list(DIMENSIONS)} or a positive number, "
                       f"got {dimension!r}")
  elif isinstance(dimension, bool) or not isinstance(dimension, (int, float, np.number)) \
      or not dimension > 0:
    raise ValueError(f"dimension: expected one of {list(DIMENSIONS)} or a positive number, "
                     f"got {dimension!r}")


def encode_inputs(features, labels) -> tuple[np.ndarray, np.ndarray, LabelMap]:
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

  # Pad to whole batches (repeating the first keys) so that one loop body is compiled.
  num = keys.shape[0]
  padded = jnp.concatenate([keys, keys[:-num % batch_size]])
  return jax.lax.map(one, padded, batch_size=batch_size)[:num]


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
    ValueError naming the problem for bad inputs (see `encode_inputs`), and
    RecommendationUndefined (a ValueError) when the debiased squared mean difference
    is <= 0 (no detectable signal) or, with ridge = 0, when the fit interpolates
    (d >= n - 1, where every weight gives the same last layer) or delta_eff >= 1.
  """
  if objective not in metrics.OBJECTIVES:
    raise ValueError(f"objective: expected one of {list(metrics.OBJECTIVES)}, got {objective!r}")
  _check_dimension(dimension)
  if isinstance(ridge, bool) or np.ndim(ridge) != 0:
    raise ValueError(f"ridge: expected a finite number >= 0, got {ridge!r}")
  _checks.finite("ridge", ridge)
  _checks.nonnegative("ridge", ridge)
  if isinstance(bootstrap, bool) or not isinstance(bootstrap, (int, np.integer)) or bootstrap < 0:
    raise ValueError(f"bootstrap: expected an integer >= 0, got {bootstrap!r}")
  if not 0 < level < 1:
    raise ValueError(f"level: expected a value in (0, 1), got {level!r}")
  x64, y, mapping = encode_inputs(features, labels)
  n_rows, d = x64.shape
  if ridge == 0 and d >= n_rows - 1:
    raise RecommendationUndefined(
        f"ridge: with ridge=0 and d={d} >= n-1={n_rows - 1} the least-squares fit "
        "interpolates the retraining set and the class weight has no effect; pass ridge > 0")

  # Translation invariant, and x / s with ridge / s^2 is the same problem (s a power of two:
  # exact): centring and scaling in float64 keeps float32 from losing digits or overflowing.
  centred = x64 - x64.mean(axis=0)
  scale = lls.host_scale(centred)
  dtype = jnp.result_type(float)
  x = jnp.asarray(centred / scale, dtype)
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
        f"is {float(sur.signal) * scale ** 2:.3g} <= 0; the optimal weight is undefined")
  mixture, delta, d_eff = _to_float_mixture(sur.mixture), float(sur.delta), float(sur.dimension)
  ridge_theory = float(ridge / scale ** 2 * sur.ridge_scale)     # in the scaled units
  if ridge == 0 and delta >= 1:
    raise RecommendationUndefined(
        f"dimension: delta_eff = d_eff / n = {delta:.3g} >= 1 with ridge=0: the isotropic "
        "theory predicts an interpolating fit that ignores the weight; pass ridge > 0")
  prior_weight = float(stats.count_minus / stats.count_plus)
  mixture.validate()
  best, prior_errors = _predict_jit(mixture, delta, ridge_theory, prior_weight,
                                    objective=objective, log10_range=tuple(log10_range))
  if not np.isfinite(float(best.weight)):
    raise RecommendationUndefined(
        f"ridge: the theory gives no weight at ridge {ridge!r} for these features (the "
        f"theory's ridge, relative to their scale: {ridge_theory:.3g}); try a ridge nearer "
        "the features' variance")
  # Report the model and the ridge in the features' own units.
  mixture = GaussianMixture(mixture.pi_plus, *(v * scale ** 2 for v in mixture[1:]))
  ridge_used = ridge_theory * scale ** 2

  if bootstrap > 0:
    index_plus = jnp.asarray(np.flatnonzero(y > 0))
    index_minus = jnp.asarray(np.flatnonzero(y < 0))
    keys = jax.random.split(jax.random.key(seed), bootstrap)
    boot = np.asarray(_bootstrap_weights_jit(
        keys, x, is_plus, index_plus, index_minus, dimension=dimension,
        ridge=float(ridge / scale ** 2),
        objective=objective, log10_range=tuple(log10_range),
        batch_size=min(batch_size, bootstrap)), np.float64)
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
