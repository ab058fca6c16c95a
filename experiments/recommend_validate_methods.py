"""recommend_validate, the methods compared: theory weights, cross-validation, baselines, timing.

`pool_outputs` evaluates every method on one pool and K nested masks (sizes) in one traced
function; `sklearn_layer` is scikit-learn's RidgeClassifier with class_weight="balanced"
(scored on the host); `general_layers` runs `recommend_weight(model="general")` as a user
would (host loop, one call per retraining set); `time_methods` times one call of each method
on one retraining set.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from experiments import report
from thumb_jax import lls, recommend
from thumb_jax.metrics import ClassErrors

THEORY = ("theory", "theory_ambient", "theory_erank", "theory_whitened")
THEORY_DIMS = ("participation", "ambient", "effective_rank", "whitened")
SKLEARN = ("sklearn", "sklearn_same_ridge")
# recommend_weight(model="general"): at the fixed ridge (weighting), and the joint choice
# (ridge="auto", weighting or downsampling); run on the host (`general_layers`).
GENERAL = ("theory_general", "theory_joint")
METHODS = (GENERAL + THEORY + ("oracle", "priors", "unweighted") + SKLEARN
           + ("cv", "cv_ridge", "downsample"))
# Weights solved on the full retraining set after the grid (order of `pool_outputs` outputs).
FIXED = ("unweighted", "priors") + THEORY + ("cv",)
METHOD_NOTES = {
    "sklearn": "RidgeClassifier(class_weight='balanced', alpha=ridge * n), as a user would "
               "call it: the balanced weights n / (2 n_k) scale the loss so its effective "
               "ridge is ridge * 2 n_- / n (about 1.8 x ridge at pi_+ = 0.1) at weight "
               "n_- / n_+",
    "sklearn_same_ridge": "RidgeClassifier(class_weight='balanced', alpha=ridge * n^2 / "
                          "(2 n_-)): the same effective ridge as the other methods (equal to "
                          "'priors' up to solver precision)",
    "theory_general": "recommend_weight(model='general') at the fixed ridge: the general "
                      "covariance theory with means and Ledoit-Wolf covariances estimated on "
                      "the retraining set (pinched form), weighting",
    "theory_joint": "recommend_weight(model='general', ridge='auto'): weight, ridge (grid "
                    "recommend.RIDGE_GRID x the set's mean within-class variance) and "
                    "weighting or downsampling, all by the predicted objective",
    "cv": "stratified k-fold cross-validation of the weight over the grid at the fixed ridge",
    "cv_ridge": "stratified k-fold cross-validation over weight grid x ridge grid "
                "(recommend.RIDGE_GRID x the pool's mean within-class variance), refit on all n",
}


def fold_ids(y: np.ndarray, masks: np.ndarray, folds: int, order: np.ndarray | None = None):
  """Stratified fold of every masked row [K, N] (-1 outside the mask): the row's rank
  within its class (in `order`) modulo `folds`."""
  order = np.arange(y.shape[0]) if order is None else order
  out = -np.ones(masks.shape, np.int32)
  for k, mask in enumerate(masks):
    for sign in (1.0, -1.0):
      rows = [i for i in order if mask[i] > 0 and y[i] == sign]
      out[k, rows] = np.arange(len(rows)) % folds
  return out


def _middle_argmin(values: jax.Array) -> jax.Array:
  """Index of the middle one of the (tied) minima of a 1-D array."""
  is_min = values <= jnp.min(values) + 1e-9
  rank = jnp.cumsum(is_min)
  target = (jnp.sum(is_min) + 1) // 2
  return jnp.argmax(is_min & (rank >= target))


def _pooled_cv_errors(x, y, mask, folds_of_rows, grid, ridge, folds: int) -> ClassErrors:
  """Per-class held-out errors [G] of every grid weight, pooled over the k folds
  (wrong counts / class counts). A Python-float ridge takes lls's Cholesky path, a traced
  one its eigh path."""
  def one_fold(f):
    train = mask * (folds_of_rows != f)
    held = (mask * (folds_of_rows == f)).astype(x.dtype)
    layer = lls.fit_sweep(x, y, grid, ridge=ridge, mask=train)
    wrong = lls.scores(layer, x) * y <= 0                                   # [G, N]
    return (jnp.sum(wrong * (held * (y > 0)), -1), jnp.sum(wrong * (held * (y < 0)), -1),
            jnp.sum(held * (y > 0)), jnp.sum(held * (y < 0)))

  wp, wm, np_, nm = jax.vmap(one_fold)(jnp.arange(folds))
  return ClassErrors(jnp.sum(wp, 0) / jnp.sum(np_), jnp.sum(wm, 0) / jnp.sum(nm))


def cv_weight(x, y, mask, folds_of_rows, grid, *, ridge, objective, folds):
  """Weight of the grid with the best pooled k-fold validation objective.

  Per-class held-out errors are pooled over folds (`_pooled_cv_errors`); ties, common with
  small held-out sets, are broken by the other objective and then by the middle of the
  tied range.
  """
  errs = _pooled_cv_errors(x, y, mask, folds_of_rows, grid, ridge, folds)
  main, other = (errs.worst, errs.balanced) if objective == "worst" else (errs.balanced,
                                                                           errs.worst)
  return grid[_middle_argmin(main + 1e-3 * other)]


def cv_weight_ridge(x, y, mask, folds_of_rows, grid, ridges, *, objective, folds):
  """(weight, ridge) of grid x ridges [R] with the best pooled k-fold validation objective.

  As `cv_weight` at every ridge (vmapped: a traced ridge takes lls's eigh path), ties broken
  by the other objective, then the middle of the tied range in (ridge, weight) order.
  """
  at_ridge = lambda ridge: _pooled_cv_errors(x, y, mask, folds_of_rows, grid, ridge, folds)
  errs = jax.vmap(at_ridge)(ridges)                                         # [R, G]
  main, other = (errs.worst, errs.balanced) if objective == "worst" else (errs.balanced,
                                                                           errs.worst)
  best = _middle_argmin((main + 1e-3 * other).reshape(-1))
  return grid[best % grid.shape[0]], ridges[best // grid.shape[0]]


class PoolOutput(NamedTuple):
  errors: ClassErrors      # [K, G + len(FIXED) + 2]: grid, FIXED, cv_ridge, downsample
  weights: jax.Array       # [K, len(FIXED) + 1] (FIXED, cv_ridge)
  cv_ridge: jax.Array      # [K] the ridge cv_ridge chose
  predicted: ClassErrors   # [K, 4] the theory variants' predicted errors at their weights
  d_eff: jax.Array         # [K, 4]
  fallback: jax.Array      # [K, 4] True where the theory weight was undefined (priors used)


def theory_weights(x, y, mask, *, ridge, objective, log10_range):
  """The recommend_weight variants (THEORY_DIMS) on a masked retraining set (traceable)."""
  d = x.shape[1]
  stats = recommend.plug_in_stats(x, y > 0, mask, effective_rank=True, whitened=True)
  surs = [recommend.surrogate(stats, dim, d) for dim in THEORY_DIMS]
  sur = jax.tree_util.tree_map(lambda *v: jnp.stack(v), *surs)
  best, ok = jax.vmap(lambda s: recommend.surrogate_weight(s, ridge, objective,
                                                           log10_range=log10_range))(sur)
  return best, ok, sur.dimension, stats.count_minus / stats.count_plus


def pool_outputs(x, y, masks, down_masks, folds_of_rows, eval_data, *, grid, ridge, objective,
                 folds, errors_fn, ridges) -> PoolOutput:
  """Every method on one pool x [N, d] and K masks (sizes) [K, N], sizes under lax.map.

  Returns:
    PoolOutput with a leading size axis [K].
  """
  log10_range = (-2.0, 4.0)

  def one_size(args):
    mask, down, fold_rows = args
    best, ok, d_effs, prior = theory_weights(x, y, mask, ridge=ridge, objective=objective,
                                             log10_range=log10_range)
    theory_w = jnp.where(ok, best.weight, prior)
    cv = cv_weight(x, y, mask, fold_rows, grid, ridge=ridge, objective=objective, folds=folds)
    fixed = jnp.concatenate([jnp.stack([jnp.ones_like(prior), prior]), theory_w, cv[None]])
    layers = lls.solve(lls.factor(x, y, ridge=ridge, mask=mask), jnp.concatenate([grid, fixed]))
    cv_w, cv_r = cv_weight_ridge(x, y, mask, fold_rows, grid, ridges, objective=objective,
                                 folds=folds)
    cv_layer = lls.solve(lls.factor(x, y, ridge=cv_r, mask=mask), cv_w[None])
    down_layer = lls.solve(lls.factor(x, y, ridge=ridge, mask=down), jnp.ones((1,)))
    both = lls.LastLayer(jnp.concatenate([layers.w, cv_layer.w, down_layer.w]),
                         jnp.concatenate([layers.b, cv_layer.b, down_layer.b]))
    return PoolOutput(errors_fn(both, eval_data), jnp.concatenate([fixed, cv_w[None]]), cv_r,
                      ClassErrors(best.err_plus, best.err_minus), d_effs, ~ok)

  return jax.lax.map(one_size, (masks, down_masks, folds_of_rows))


def sklearn_alpha(y: np.ndarray, ridge: float, *, same_ridge: bool) -> float:
  """RidgeClassifier's alpha for `ridge` (the penalty ridge * n |w|^2 of `lls`).

  class_weight="balanced" weighs class k by n / (2 n_k); dividing the loss by the majority's
  n / (2 n_-) leaves weight n_- / n_+ on the minority and the penalty alpha 2 n_- / n.
  As a user would call it (alpha = ridge * n) the effective ridge is thus ridge * 2 n_- / n;
  `same_ridge` scales alpha to ridge * n^2 / (2 n_-) so that it is `ridge` itself.
  """
  n, n_minus = y.shape[0], int(np.sum(y < 0))
  return ridge * n * n / (2 * n_minus) if same_ridge else ridge * n


def sklearn_layer(x: np.ndarray, y: np.ndarray, ridge: float, *,
                  same_ridge: bool = False) -> lls.LastLayer:
  """RidgeClassifier(class_weight='balanced', alpha=`sklearn_alpha`); y in {+1, -1}."""
  from sklearn.linear_model import RidgeClassifier
  alpha = sklearn_alpha(y, ridge, same_ridge=same_ridge)
  clf = RidgeClassifier(alpha=alpha, class_weight="balanced").fit(x, y)
  return lls.LastLayer(jnp.asarray(np.ravel(clf.coef_)), jnp.asarray(np.ravel(clf.intercept_)[0]))


class GeneralResult(NamedTuple):
  """One GENERAL method on one retraining set (host numbers)."""
  errors: ClassErrors      # measured test errors
  weight: float            # the weight fitted with (1 for downsampling)
  ridge: float             # the ridge fitted with
  downsample: bool         # the method chose downsampling
  predicted_worst: float   # the predicted objective of that choice (NaN on fallback)
  fallback: bool           # RecommendationUndefined: the ratio of priors at `ridge` instead


_fit_masked = jax.jit(lls.fit)


def general_layers(x, y, mask: np.ndarray, down: np.ndarray, eval_data, *, ridge: float,
                   objective: str, errors_fn) -> dict:
  """GENERAL methods on one retraining set (rows with mask > 0 of the pool x [N, d]).

  Each calls `recommend_weight` on the retraining set as a user would, then fits (on the
  pool with the 0/1 mask: one compilation for every size) and scores the layer.

  Returns:
    {name: GeneralResult}.
  """
  dtype = jnp.result_type(float)
  rows = mask > 0
  xr, yr = np.asarray(x)[rows], np.asarray(y)[rows]
  xj, yj = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
  errors_jit = jax.jit(errors_fn)
  out = {}
  for name, kwargs in (("theory_general", {"ridge": ridge}), ("theory_joint", {"ridge": "auto"})):
    try:
      rec = recommend.recommend_weight(xr, yr, model="general", objective=objective, **kwargs)
      method, weight, fit_ridge = rec.choice
      down_chosen, value, fallback = method == "downsampling", float(
          rec.chosen_errors.worst if objective == "worst" else rec.chosen_errors.balanced), False
    except recommend.RecommendationUndefined:
      weight = float(np.sum(yr < 0) / np.sum(yr > 0))
      fit_ridge, down_chosen, value, fallback = ridge, False, float("nan"), True
    layer = _fit_masked(xj, yj, weight, ridge=jnp.asarray(fit_ridge, dtype),
                        mask=jnp.asarray(down if down_chosen else mask, dtype))
    e = errors_jit(layer, eval_data)
    out[name] = GeneralResult(ClassErrors(float(e.err_plus), float(e.err_minus)), float(weight),
                              float(fit_ridge), bool(down_chosen), value, fallback)
  return out


def time_methods(x: np.ndarray, y: np.ndarray, *, ridge: float, cfg, grid,
                 errors_fn, eval_data, ridges=None) -> dict:
  """Wall time (s) of one call of each method on one retraining set (after compilation)."""
  dtype = jnp.result_type(float)
  xj, yj = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
  fit = jax.jit(functools.partial(lls.fit, ridge=ridge))
  plus = np.flatnonzero(y > 0)
  minus = np.flatnonzero(y < 0)[:plus.shape[0]]
  xd, yd = xj[np.r_[plus, minus]], yj[np.r_[plus, minus]]
  ones = jnp.ones((x.shape[0],), dtype)
  folds_rows = jnp.asarray(fold_ids(y, np.ones((1, y.shape[0])), cfg.folds)[0])
  cv = jax.jit(functools.partial(cv_weight, ridge=ridge, objective=cfg.objective,
                                 folds=cfg.folds))
  sweep_errors = jax.jit(lambda xj, yj, grid, data: errors_fn(
      lls.fit_sweep(xj, yj, grid, ridge=ridge), data))
  reps = cfg.timing_repeats

  def median_time(fn) -> float:
    return report.time_calls(fn, repeats=reps).median_s

  fit_time = median_time(lambda: fit(xj, yj, 2.0))

  def theory_call(dim):
    return lambda: recommend.recommend_weight(x, y, ridge=ridge, objective=cfg.objective,
                                              dimension=dim).weight

  times = {"unweighted": fit_time, "priors": fit_time,
           "downsample": median_time(lambda: fit(xd, yd, 1.0)),
           "sklearn": median_time(lambda: sklearn_layer(x, y, ridge).w),
           "cv": median_time(lambda: cv(xj, yj, ones, folds_rows, grid)) + fit_time,
           "cv_ridge": float("nan"),
           "oracle": median_time(lambda: sweep_errors(xj, yj, grid, eval_data))}
  times["sklearn_same_ridge"] = times["sklearn"]
  if ridges is not None:
    cv_ridge = jax.jit(functools.partial(cv_weight_ridge, objective=cfg.objective,
                                         folds=cfg.folds))
    ridges = jnp.asarray(ridges, dtype)
    times["cv_ridge"] = median_time(lambda: cv_ridge(xj, yj, ones, folds_rows, grid,
                                                     ridges)) + fit_time
  for name, dim in zip(THEORY, THEORY_DIMS):
    try:
      times[name] = median_time(theory_call(dim)) + fit_time
    except ValueError:        # undefined here (e.g. "whitened" with n <= d + 3)
      times[name] = float("nan")
  for name, ridge_arg in zip(GENERAL, (ridge, "auto")):
    try:
      times[name] = median_time(lambda r=ridge_arg: recommend.recommend_weight(
          x, y, ridge=r, objective=cfg.objective, model="general").weight) + fit_time
    except ValueError:
      times[name] = float("nan")
  return times
