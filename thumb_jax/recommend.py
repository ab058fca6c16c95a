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

`model="general"` replaces the isotropic surrogate by the general-covariance theory
(`thumb_jax.anisotropic`) fed with class means and Ledoit-Wolf-shrunk class covariances
estimated on the retraining set itself (`thumb_jax.general_plug_in`; THEORY.md, "Derivations:
the general-covariance recommendation"). Either model also predicts balanced downsampling and,
with `ridge="auto"`, every ridge of a grid; the recommendation is the option (method, weight,
ridge) with the lowest predicted objective, with the predicted errors of all of them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from thumb_jax import _checks, devices, general_plug_in, lls, metrics, platform, theory
from thumb_jax.general_plug_in import METHODS, Choice, Options, choose, option_values  # noqa: F401
from thumb_jax.metrics import ClassErrors
from thumb_jax.mixture import GaussianMixture

# surrogate_weight and Choice are re-exported (experiments.recommend_validate_methods uses them).
from thumb_jax.plug_in import (  # noqa: F401
  DIMENSIONS,
  Surrogate,
  plug_in_stats,
  surrogate,
  surrogate_weight,
)

MODELS = ("isotropic", "general")
# ridge="auto": ridges searched, relative to the mean within-class variance per feature
# tr(S_w) / d of the retraining set (0 is skipped where the ridgeless fit interpolates).
RIDGE_GRID = (0.0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)


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
    model: "isotropic" or "general" (then `mixture`, `dimension` and `delta` describe the
      isotropic participation-ratio surrogate for reference only; `general` what was used).
    method: the recommended method, "weighting" (fit with `weight`) or "downsampling" (drop
      majority rows at random down to n_+, weight 1), by the predicted objective.
    options: Options [R]: the predicted per-class errors of every option (weighting at its
      optimal weight, downsampling, the ratio of priors) at each ridge considered (R = 1
      unless ridge="auto"), ridges in the features' units.
    ridge_auto: True when the ridge was chosen from a grid (`ridge` is then the chosen one).
    chosen_errors: predicted ClassErrors of the recommended (method, weight, ridge).
    bootstrap_ridges: [B] the ridge each resample would choose (NaN where undefined).
    bootstrap_downsample: [B] 1.0 where a resample would choose downsampling (NaN undefined).
    bootstrap_values: [B] each resample's predicted objective of the recommended (method,
      ridge) at its own best weight.
    ridge_interval, value_interval: percentile intervals of those at `level`.
    downsample_share: share of defined resamples choosing downsampling (NaN without bootstrap).
    general: GeneralSummary of the general plug-in (None for the isotropic model).
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
  model: str = "isotropic"
  method: str = "weighting"
  options: Options | None = None
  ridge_auto: bool = False
  chosen_errors: ClassErrors | None = None
  bootstrap_ridges: np.ndarray = np.zeros((0,))
  bootstrap_downsample: np.ndarray = np.zeros((0,))
  bootstrap_values: np.ndarray = np.zeros((0,))
  ridge_interval: tuple[float, float] = (float("nan"), float("nan"))
  value_interval: tuple[float, float] = (float("nan"), float("nan"))
  downsample_share: float = float("nan")
  general: GeneralSummary | None = None

  @property
  def choice(self) -> tuple[str, float, float]:
    """(method, weight, ridge) to fit with: weight 1 for downsampling."""
    return (self.method, 1.0 if self.method == "downsampling" else self.weight, self.ridge)

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
                      "weights": [float(v) for v in self.bootstrap_weights],
                      "ridge_interval": [float(v) for v in self.ridge_interval],
                      "predicted_objective_interval": [float(v) for v in self.value_interval],
                      "downsample_share": float(self.downsample_share),
                      "ridges": [float(v) for v in self.bootstrap_ridges],
                      "downsample": [float(v) for v in self.bootstrap_downsample],
                      "predicted_objective": [float(v) for v in self.bootstrap_values]},
        "model": self.model,
        "choice": dict(zip(("method", "weight", "ridge"), self.choice)),
        "ridge_auto": self.ridge_auto,
        "chosen_predicted_errors": (errs(self.chosen_errors) if self.chosen_errors is not None
                                    else None),
        "options": None if self.options is None else [
            {"ridge": float(self.options.ridges[r]),
             "weighting": {"weight": float(self.options.weight[r]),
                           **errs(_at(self.options.weighting, r))},
             "downsampling": errs(_at(self.options.downsampling, r)),
             "prior_ratio": errs(_at(self.options.prior, r))}
            for r in range(len(self.options.ridges))],
        "general": None if self.general is None else self.general._asdict(),
    }


def _at(errors: ClassErrors, r: int) -> ClassErrors:
  return ClassErrors(errors.err_plus[r], errors.err_minus[r])


class GeneralSummary(NamedTuple):
  """What the general model estimated (Python numbers).

  span_dim: r, the rank of the centred retraining set (the theory's dimension).
  shrinkage_plus, shrinkage_minus: Ledoit-Wolf shrinkage of each class covariance.
  commute_gap: relative off-diagonal size of the class covariances in the eigenbasis of
    (Sigma_+ + Sigma_-) / 2 (0: the pinched form is exact; see THEORY.md, "Derivations: the
    general-covariance recommendation").
  signal: debiased |mu_+ - mu_-|^2 in the features' units.
  """
  span_dim: int
  shrinkage_plus: float
  shrinkage_minus: float
  commute_gap: float
  signal: float


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


def _isotropic_options(sur: Surrogate, count_plus, count_minus, ridges, *, objective,
                       log10_range) -> Options:
  """The isotropic surrogate's options on a ridge grid [R] (traceable)."""
  theory_ridges = ridges * sur.ridge_scale
  best = theory.optimal_weight(sur.mixture, sur.delta, theory_ridges, objective,
                               log10_range=log10_range)
  down = theory.downsampled_class_errors(sur.mixture, sur.delta, theory_ridges)
  prior = theory.class_errors(sur.mixture, sur.delta, count_minus / count_plus, theory_ridges)
  defined = (ridges > 0) | (sur.delta < 1)
  nan = jnp.full_like(best.weight, jnp.nan)
  keep = lambda v: jnp.where(defined, v, nan)
  return Options(ridges, keep(best.weight), ClassErrors(keep(best.err_plus), keep(best.err_minus)),
                 down, ClassErrors(keep(prior.err_plus), keep(prior.err_minus)))


def _options(x, is_plus, counts, ridges, *, model, dimension, objective, log10_range):
  """(Options [R], defined []) of one (resampled) retraining set (traceable).

  x: [n, d] centred, scaled features (the model "general": in `span_basis` coordinates).
  """
  if model == "general":
    stats = general_plug_in.general_stats(x, is_plus, counts)
    opts = general_plug_in.options(stats.form, stats.count_plus, stats.count_minus, ridges,
                                   objective=objective, log10_range=log10_range)
    return opts, stats.signal > 0
  stats = plug_in_stats(x, is_plus, counts, effective_rank=dimension == "effective_rank",
                        whitened=dimension == "whitened")
  sur = surrogate(stats, dimension, x.shape[1])
  opts = _isotropic_options(sur, stats.count_plus, stats.count_minus, ridges,
                            objective=objective, log10_range=log10_range)
  return opts, sur.signal > 0


# Jitted at their only use sites. The theory's options take the surrogate's scalars (or the
# pinched form [r]), so they compile once per number of ridges (and r), not once per data shape.
_isotropic_options_jit = jax.jit(_isotropic_options, static_argnames=("objective", "log10_range"))
_general_options_jit = jax.jit(general_plug_in.options, static_argnames=("objective",
                                                                         "log10_range"))
_plug_in_stats_jit = jax.jit(plug_in_stats, static_argnames=("effective_rank", "whitened"))
_general_stats_jit = jax.jit(general_plug_in.general_stats)
_choose_jit = jax.jit(choose, static_argnames="objective")


class _Resampled(NamedTuple):
  """Per bootstrap resample [B] (NaN where the resample admits no recommendation)."""
  weight: jax.Array      # weighting's optimal weight at the recommended ridge
  ridge: jax.Array       # the ridge the resample would choose
  downsample: jax.Array  # 1.0 where it would choose downsampling
  value: jax.Array       # its predicted objective of the recommended (method, ridge)


def _bootstrap(keys, x, is_plus, index_plus, index_minus, ridges, method_index, ridge_index, *,
               model, dimension, objective, log10_range, batch_size) -> _Resampled:
  """The recommendation on each within-class bootstrap resample (see `_Resampled`)."""
  n_rows = x.shape[0]

  def one(key):
    counts = _resample_counts(key, index_plus, index_minus, n_rows).astype(x.dtype)
    opts, defined = _options(x, is_plus, counts, ridges, model=model, dimension=dimension,
                             objective=objective, log10_range=log10_range)
    pick = choose(opts, objective)
    values = option_values(opts, objective)
    ok = defined & jnp.isfinite(pick.value)
    nan = jnp.full((), jnp.nan, x.dtype)
    weight = jnp.where(defined & jnp.isfinite(opts.weight[ridge_index]),
                       opts.weight[ridge_index], nan)
    value = values[method_index, ridge_index]
    return _Resampled(weight, jnp.where(ok, pick.ridge, nan),
                      jnp.where(ok, (pick.method_index == 1).astype(x.dtype), nan),
                      jnp.where(defined & jnp.isfinite(value), value, nan))

  # Pad to whole batches (repeating the first keys) so that one loop body is compiled.
  num = keys.shape[0]
  padded = jnp.concatenate([keys, keys[:-num % batch_size]])
  out = jax.lax.map(one, padded, batch_size=batch_size)
  return jax.tree.map(lambda v: v[:num], out)


_BOOTSTRAP_STATIC = ("model", "dimension", "objective", "log10_range", "batch_size")
_bootstrap_jit = jax.jit(_bootstrap, static_argnames=_BOOTSTRAP_STATIC)


@functools.cache
def _bootstrap_on_mesh() -> Callable:
  """`_bootstrap` with the keys [B'] split over `devices.mesh()` (`devices.sharded_map`):
  each device runs it, with its lax.map in batches, on its own slice of the resamples; the
  other inputs are replicated. The resamples are independent, so every one's math is that
  of one device."""
  return devices.sharded_map(_bootstrap, in_axes=(0,) + (None,) * 7,
                             static_argnames=_BOOTSTRAP_STATIC)


def _bootstrap_sharded(keys, *shared, batch_size, **static) -> _Resampled:
  """`_bootstrap_jit` with the B resamples sharded over every device of `devices.mesh()`.

  B is padded to a device multiple (the last key repeated) and the padding dropped; each
  device batches its share by min(batch_size, share). Across processes every process
  passes the same inputs.

  Returns:
    _Resampled [B] (jax arrays, replicated).
  """
  count = jax.device_count()
  per_device = devices.padded_size(keys.shape[0], count) // count
  return _bootstrap_on_mesh()(keys, *shared, batch_size=min(batch_size, per_device), **static)


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
  finite = values[np.isfinite(values)]
  tail = 50.0 * (1.0 - level)
  return ((float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail)))
          if finite.size else (float("nan"), float("nan")))


# ------------------------------------------------------------------------------- API


def _check_ridge(ridge) -> None:
  if isinstance(ridge, str):
    if ridge != "auto":
      raise ValueError(f"ridge: expected a finite number >= 0 or 'auto', got {ridge!r}")
    return
  if isinstance(ridge, bool) or np.ndim(ridge) != 0:
    raise ValueError(f"ridge: expected a finite number >= 0 or 'auto', got {ridge!r}")
  _checks.finite("ridge", ridge)
  _checks.nonnegative("ridge", ridge)


def _check_ridge_grid(ridge_grid) -> np.ndarray:
  grid = _checks.real("ridge_grid", ridge_grid).astype(np.float64)
  if grid.ndim != 1 or grid.size == 0 or not np.all(np.isfinite(grid)) or np.any(grid < 0):
    raise ValueError(f"ridge_grid: expected a non-empty 1-D sequence of finite numbers >= 0, "
                     f"got {ridge_grid!r}")
  return np.unique(grid)                     # ascending: ties in `choose` go to the smaller


def _one_blas_thread(fn):
  """Runs fn with one BLAS thread: OpenBLAS's threads (behind NumPy's SVD and jaxlib's CPU
  eigh) compete with XLA's pool, and on a busy machine a 320 x 128 SVD then takes seconds
  instead of milliseconds (thumb_jax/platform.py)."""
  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    with platform.single_threaded_blas():
      return fn(*args, **kwargs)
  return wrapper


@_one_blas_thread
def recommend_weight(features, labels, *, ridge: float | str = 0.0, objective: str = "worst",
                     dimension="participation", model: str = "isotropic",
                     ridge_grid=RIDGE_GRID, bootstrap: int = 0, seed: int = 0,
                     level: float = 0.95, log10_range: tuple[float, float] = (-2.0, 4.0),
                     batch_size: int = 16) -> Recommendation:
  """Theory-guided minority class weight (and ridge, and weighting vs downsampling).

  Plug-in estimates from the retraining set itself (module docstring) feed the isotropic
  theory at delta_eff = d_eff / n (`model="isotropic"`) or the general-covariance theory
  (`model="general"`); both also predict balanced downsampling, and the recommended
  `method` is the option with the lowest predicted objective.

  Args:
    features: [n, d] embeddings of the retraining set (any real array; finite).
    labels: [n] two distinct values; the less frequent becomes class +1.
    ridge: ridge >= 0 of the last layer, objective ... + ridge * n * |w|^2; or "auto": the
      ridge of `ridge_grid` with the lowest predicted objective.
    objective: "worst" (worst-class error) or "balanced" (mean of the class errors).
    dimension: (isotropic model) "participation" (default), "effective_rank", "ambient",
      "whitened" (for a ridge near 0 and n > d + 3) or a positive number.
    model: "isotropic" (default) or "general" (needs at least 4 rows per class).
    ridge_grid: ridge="auto" only: ridges relative to the mean within-class variance per
      feature, tr(S_w) / d (default `RIDGE_GRID`; 0 skipped when d >= n - 1).
    bootstrap: number B >= 0 of within-class bootstrap resamples for intervals.
    seed: seed of the bootstrap.
    level: level of the percentile intervals, in (0, 1).
    log10_range: weights searched, 10**lo to 10**hi.
    batch_size: resamples evaluated together (memory ~ batch_size * n * d); with several
      devices the B resamples are split over them and each device batches its own share.

  Returns:
    Recommendation.

  Raises:
    ValueError naming the problem for bad inputs (see `encode_inputs`; model "general" also
    with fewer than 4 rows in a class), and RecommendationUndefined (a ValueError) when the
    debiased squared mean difference is <= 0 (no detectable signal) or, with ridge = 0, when
    the fit interpolates (d >= n - 1, where every weight gives the same last layer) or
    delta_eff >= 1.
  """
  if objective not in metrics.OBJECTIVES:
    raise ValueError(f"objective: expected one of {list(metrics.OBJECTIVES)}, got {objective!r}")
  if model not in MODELS:
    raise ValueError(f"model: expected one of {list(MODELS)}, got {model!r}")
  _check_dimension(dimension)
  _check_ridge(ridge)
  auto = isinstance(ridge, str)
  grid = _check_ridge_grid(ridge_grid) if auto else None
  if isinstance(bootstrap, bool) or not isinstance(bootstrap, (int, np.integer)) or bootstrap < 0:
    raise ValueError(f"bootstrap: expected an integer >= 0, got {bootstrap!r}")
  if not 0 < level < 1:
    raise ValueError(f"level: expected a value in (0, 1), got {level!r}")
  x64, y, mapping = encode_inputs(features, labels)
  n_rows, d = x64.shape
  if model == "general":
    for name, value in (("+1 (minority)", mapping.plus), ("-1 (majority)", mapping.minus)):
      count = int(np.sum(np.asarray(labels) == value))
      if count < 4:
        raise ValueError(f"labels: class {value!r} (mapped to {name}) has {count} samples; "
                         "model='general' needs at least 4 per class to estimate its "
                         "covariance")
  if not auto and ridge == 0 and d >= n_rows - 1:
    raise RecommendationUndefined(
        f"ridge: with ridge=0 and d={d} >= n-1={n_rows - 1} the least-squares fit "
        "interpolates the retraining set and the class weight has no effect; pass ridge > 0 "
        "or ridge='auto'")

  # Translation invariant, and x / s with ridge / s^2 is the same problem (s a power of two:
  # exact): centring and scaling in float64 keeps float32 from losing digits or overflowing.
  centred = x64 - x64.mean(axis=0)
  scale = lls.host_scale(centred)
  dtype = jnp.result_type(float)
  x = jnp.asarray(centred / scale, dtype)
  is_plus = jnp.asarray(y > 0)
  if dimension == "whitened" and model == "isotropic" and not n_rows > d + 3:
    raise ValueError(f"dimension: 'whitened' needs n > d + 3 to invert the within-class "
                     f"covariance, got n={n_rows}, d={d}")
  stats = _plug_in_stats_jit(x, is_plus, effective_rank=dimension == "effective_rank",
                             whitened=dimension == "whitened" and model == "isotropic")
  sur = surrogate(stats, dimension if model == "isotropic" else "participation", d)
  if model == "isotropic" and not float(sur.signal) > 0:
    raise RecommendationUndefined(
        "features: no class separation detectable, the debiased squared mean difference "
        f"is {float(sur.signal) * scale ** 2:.3g} <= 0; the optimal weight is undefined")

  # The ridges, in the scaled units.
  if auto:
    within = float(stats.trace_plus * (stats.count_plus - 1)
                   + stats.trace_minus * (stats.count_minus - 1)) / (n_rows - 2) / d
    ridges = grid * within
    if d >= n_rows - 1:
      ridges = ridges[ridges > 0]
    if not ridges.size:
      raise ValueError("ridge_grid: no ridge > 0 in the grid, and ridge 0 interpolates here "
                       f"(d={d} >= n-1={n_rows - 1})")
  else:
    ridges = np.array([ridge / scale ** 2])

  general = None
  feats = x
  if model == "general":
    basis = general_plug_in.span_basis(centred / scale)
    feats = jnp.asarray((centred / scale) @ basis, dtype)
    gstats = _general_stats_jit(feats, is_plus)
    if not float(gstats.signal) > 0:
      raise RecommendationUndefined(
          "features: no class separation detectable, the debiased squared mean difference "
          f"is {float(gstats.signal) * scale ** 2:.3g} <= 0; the optimal weight is undefined")
    general = GeneralSummary(int(basis.shape[1]), float(gstats.shrinkage[0]),
                             float(gstats.shrinkage[1]), float(gstats.commute_gap),
                             float(gstats.signal) * scale ** 2)
    d_eff, delta = float(basis.shape[1]), basis.shape[1] / n_rows
  else:
    d_eff, delta = float(sur.dimension), float(sur.delta)
    if not auto and ridge == 0 and delta >= 1:
      raise RecommendationUndefined(
          f"dimension: delta_eff = d_eff / n = {delta:.3g} >= 1 with ridge=0: the isotropic "
          "theory predicts an interpolating fit that ignores the weight; pass ridge > 0")

  ridges_j = jnp.asarray(ridges, dtype)
  if model == "general":
    opts = _general_options_jit(gstats.form, gstats.count_plus, gstats.count_minus, ridges_j,
                                objective=objective, log10_range=tuple(log10_range))
  else:
    # Padded to whole multiples of len(RIDGE_GRID) (scalar theory: the extra ridges cost
    # microseconds), so that a fixed ridge and ridge="auto" share one compilation.
    size = len(RIDGE_GRID) * -(-len(ridges) // len(RIDGE_GRID))
    padded = jnp.concatenate([ridges_j, jnp.broadcast_to(ridges_j[-1:], (size - len(ridges),))])
    opts = _isotropic_options_jit(sur, stats.count_plus, stats.count_minus, padded,
                                  objective=objective, log10_range=tuple(log10_range))
    opts = jax.tree.map(lambda v: v[:len(ridges)], opts)
  pick = _choose_jit(opts, objective=objective)
  opts = jax.tree.map(lambda v: np.asarray(v, np.float64), opts)
  r_index, m_index = int(pick.ridge_index), int(pick.method_index)
  weight = float(opts.weight[r_index])
  if not np.isfinite(float(pick.value)) or (not auto and not np.isfinite(weight)):
    raise RecommendationUndefined(
        f"ridge: the theory gives no weight at ridge {ridge!r} for these features (the "
        f"ridges tried, relative to their scale: {np.asarray(ridges).tolist()}); try a ridge "
        "nearer the features' variance")
  # Report the model and the ridges in the features' own units.
  mixture = _to_float_mixture(sur.mixture)
  mixture = GaussianMixture(mixture.pi_plus, *(v * scale ** 2 for v in mixture[1:]))
  ridge_scale = float(sur.ridge_scale) if model == "isotropic" else 1.0
  ridge_used = float(ridges[r_index]) * ridge_scale * scale ** 2
  opts = opts._replace(ridges=np.asarray(ridges, np.float64) * scale ** 2)
  chosen_ridge = float(ridge) if not auto else float(opts.ridges[r_index])

  resampled = _Resampled(*(np.zeros((0,)) for _ in _Resampled._fields))
  interval = ridge_interval = value_interval = (float("nan"), float("nan"))
  downsample_share = float("nan")
  if bootstrap > 0:
    index_plus = jnp.asarray(np.flatnonzero(y > 0))
    index_minus = jnp.asarray(np.flatnonzero(y < 0))
    keys = jax.random.split(jax.random.key(seed), bootstrap)
    # With several devices the resamples are split over them (same numbers per resample).
    bootstrap_fn = _bootstrap_sharded if jax.device_count() > 1 else _bootstrap_jit
    resampled = bootstrap_fn(
        keys, feats, is_plus, index_plus, index_minus, ridges_j, m_index, r_index,
        model=model, dimension=dimension if model == "isotropic" else "participation",
        objective=objective, log10_range=tuple(log10_range),
        batch_size=min(batch_size, bootstrap))
    resampled = _Resampled(*(np.asarray(v, np.float64) for v in resampled))
    resampled = resampled._replace(ridge=resampled.ridge * scale ** 2)
    interval = _percentiles(resampled.weight, level)
    ridge_interval = _percentiles(resampled.ridge, level)
    value_interval = _percentiles(resampled.value, level)
    chosen = resampled.downsample[np.isfinite(resampled.downsample)]
    downsample_share = float(np.mean(chosen)) if chosen.size else float("nan")

  log_w = np.log10(weight) if np.isfinite(weight) else np.nan
  errors = _at(opts.weighting, r_index)
  chosen_errors = errors if m_index == 0 else _at(opts.downsampling, r_index)
  return Recommendation(
      weight=weight,
      at_search_limit=bool(min(abs(log_w - log10_range[0]), abs(log_w - log10_range[1])) < 0.05),
      errors=ClassErrors(float(errors.err_plus), float(errors.err_minus)),
      mixture=mixture, dimension=d_eff, delta=delta, ridge_used=ridge_used,
      prior_weight=float(stats.count_minus / stats.count_plus),
      prior_errors=ClassErrors(*(float(v) for v in _at(opts.prior, r_index))),
      labels=mapping, count_plus=int(stats.count_plus), count_minus=int(stats.count_minus),
      ambient_dim=d, ridge=chosen_ridge, objective=objective,
      bootstrap_weights=resampled.weight, interval=interval, level=float(level),
      model=model, method=METHODS[m_index], options=opts, ridge_auto=auto,
      chosen_errors=ClassErrors(*(float(v) for v in chosen_errors)),
      bootstrap_ridges=resampled.ridge, bootstrap_downsample=resampled.downsample,
      bootstrap_values=resampled.value, ridge_interval=ridge_interval,
      value_interval=value_interval, downsample_share=downsample_share, general=general)
