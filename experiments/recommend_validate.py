"""Does the theory-guided weight (thumb_jax.recommend) pick a good class weight?

    python -m experiments.recommend_validate --out out/recommend [--quick] [--embeddings DIR] \\
        [--set num_seeds=40]

Compares, on the same retraining sets, the per-class test errors (worst-class and
balanced, mean and 95% t-interval over repeats) and the wall time of:

  theory          recommend_weight, d_eff = participation ratio (the default)
  theory_ambient  recommend_weight, d_eff = the feature width
  theory_erank    recommend_weight, d_eff = entropy effective rank
  theory_whitened recommend_weight, dimension="whitened" (Mahalanobis signal, d_eff = d; needs
                  n > d + 3, otherwise it falls back to priors and the fallback is counted)
  oracle          the best weight of a log grid on the test error itself (not a method:
                  a lower bound; the worst-class and balanced columns each take their own best)
  priors          weight n_- / n_+
  unweighted      weight 1
  sklearn         sklearn RidgeClassifier(class_weight="balanced", alpha = ridge * n)
  cv              stratified k-fold cross-validation of the weight over the grid
                  (lls.fit_sweep, one factorization per fold), then a refit on all n
  downsample      drop majority rows to balance, weight 1

Cases:
  isotropic    x | y ~ N(+-dmu/2, I_d), |dmu|^2 = `signal`; the plug-in model is exact.
  anisotropic  x | y ~ N(+-dmu/2, Sigma), eigenvalues lambda_j ~ j^-power (mean 1), dmu a
               random direction scaled to the Mahalanobis distance dmu' Sigma^-1 dmu = `signal`
               (the two cases are equally hard for a ridgeless fit, which is affine invariant).
               The isotropic plug-in sees |dmu|^2 and an energy-weighted noise level instead:
               this is where it loses.
  embeddings   (with --embeddings DIR) retraining subsamples from a validation pool of real
               embeddings, empirical per-class errors on the test split; see `thumb_jax.retrain.load_embedding_splits`.

Gaussian errors are exact (metrics.gaussian_class_errors, no test sampling). Every repeat is
one fresh pool of the largest n; the sizes are nested 0/1 masks of it, and the whole
comparison for all repeats and sizes is one jit(lax.map over repeats (lax.map over sizes)).
Repeats, sizes and folds are sequential lax.maps, not vmaps: under jaxlib 0.10.x a batched
LAPACK call (cholesky / eigh / triangular_solve on a stacked batch) fans its batch out to the
XLA:CPU thread pool and blocks on it, and when the thunk executor runs as many such calls
concurrently as the pool has threads (2 here) the process deadlocks at 0% CPU (observed
with 0.10.2; pyproject.toml excludes 0.10.0-0.10.2). Unbatched factorizations avoid it.
Times are single calls on one retraining set after compilation (median of a few).
Writes results.json (config, platform, all numbers), results.csv, one figure per case and
timing.png, and prints a summary table.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from thumb_jax import lls, metrics, recommend, retrain
from thumb_jax import mixture as mixture_lib
from thumb_jax.metrics import ClassErrors

THEORY = ("theory", "theory_ambient", "theory_erank", "theory_whitened")
THEORY_DIMS = ("participation", "ambient", "effective_rank", "whitened")
METHODS = THEORY + ("oracle", "priors", "unweighted", "sklearn", "cv", "downsample")
# Weights solved on the full retraining set after the grid (order of `pool_outputs` outputs).
FIXED = ("unweighted", "priors") + THEORY + ("cv",)


@dataclasses.dataclass(frozen=True)
class Config:
  d: int = 128
  deltas: tuple[float, ...] = (0.1, 0.2, 0.4, 0.6, 0.8, 1.0)
  pi_plus: float = 0.1
  signal: float = 16.0           # |dmu|^2 (isotropic) = Mahalanobis dmu' Sigma^-1 dmu (anisotropic)
  power: float = 1.0             # anisotropic eigenvalues ~ j^-power
  ridge: float = 1e-3            # penalty ridge * n * |w|^2 (embeddings: times the mean variance)
  objective: str = "worst"
  num_seeds: int = 20
  seed: int = 0
  grid_log10: tuple[float, ...] = (-1.0, 3.5)
  grid_size: int = 46
  folds: int = 5
  timing_repeats: int = 3
  cases: tuple[str, ...] = ("isotropic", "anisotropic")
  embeddings: str = ""           # folder of {split}.npz (or --embeddings DIR)
  embedding_pi_plus: float = 0.0  # minority share of the embedding subsamples; 0: the pool's


def config() -> Config:
  return Config()


def quick(cfg: Config) -> Config:
  return dataclasses.replace(cfg, d=32, deltas=(0.2, 0.5, 1.0), num_seeds=3, grid_size=16,
                             timing_repeats=1, folds=3)


# ----------------------------------------------------------------------------- data

class Case(NamedTuple):
  """One comparison: how to get a pool per repeat and how to score a last layer."""
  name: str
  d: int
  sizes: np.ndarray              # [K] retraining-set sizes n
  pool_labels: np.ndarray        # [N] (Gaussian: shared by all repeats)
  draw: Callable | None          # key -> x [N, d] (Gaussian); None: fixed pool
  pool: np.ndarray | None        # x [N, d] (embeddings)
  errors: Callable               # (LastLayer [..., d], eval_data) -> ClassErrors [...]
  eval_data: tuple               # arrays `errors` needs (passed through jit as arguments)
  ridge: float
  note: str


def power_law(d: int, power: float) -> np.ndarray:
  """Eigenvalues j^-power, j = 1..d, scaled to mean 1."""
  lam = np.arange(1, d + 1, dtype=np.float64) ** -power
  return lam * d / lam.sum()


def gaussian_case(cfg: Config, name: str) -> Case:
  """Isotropic or power-law Gaussian pool; exact errors via a rescaling trick.

  With Sigma = diag(lam) and r = sqrt(lam): w.mu = (r w).(mu / r) and w' Sigma w = |r w|^2,
  so metrics.gaussian_class_errors of LastLayer(r w, b) with means mu / r (unit variances)
  is the exact error under N(mu, Sigma).
  """
  d = cfg.d
  if name == "isotropic":
    lam = np.ones(d)
    direction = np.eye(d)[0]
  else:
    lam = power_law(d, cfg.power)
    direction = np.random.default_rng(cfg.seed + 12345).standard_normal(d)
  # Scale so that dmu' Sigma^-1 dmu = signal (= |dmu|^2 in the isotropic case).
  dmu = direction * np.sqrt(cfg.signal / np.sum(direction ** 2 / lam))
  root = jnp.asarray(np.sqrt(lam), jnp.result_type(float))
  mu_plus = jnp.asarray(dmu / 2, root.dtype)
  sizes = np.array([int(round(d / delta)) for delta in cfg.deltas])
  n_pool = int(sizes.max())
  n_plus, _ = mixture_lib.class_counts(n_pool, cfg.pi_plus)
  labels = np.where(np.arange(n_pool) < n_plus, 1.0, -1.0)

  def draw(key):
    z = jax.random.normal(key, (n_pool, d), root.dtype)
    return jnp.asarray(labels, root.dtype)[:, None] * mu_plus + root * z

  pr = lam.sum() ** 2 / (lam ** 2).sum()
  note = (f"|dmu|^2 = {np.sum(dmu ** 2):.3g}, Mahalanobis = {cfg.signal:.3g}, "
          f"participation ratio = {pr:.1f} of d = {d}")
  return Case(name, d, sizes, labels, draw, None, _gaussian_errors, (root, mu_plus), cfg.ridge,
              note)


def _gaussian_errors(layer: lls.LastLayer, data) -> ClassErrors:
  root, mu_plus = data
  return metrics.gaussian_class_errors(lls.LastLayer(layer.w * root, layer.b),
                                       mu_plus / root, -mu_plus / root)


def _empirical_errors(layer: lls.LastLayer, data) -> ClassErrors:
  x_test, y_test = data
  return metrics.empirical_class_errors(lls.scores(layer, x_test), y_test)


def embedding_case(cfg: Config, directory: str) -> tuple[Case, float]:
  """Retraining subsamples from the val pool, empirical errors on the test split.

  Returns:
    (Case, minority share of the subsamples).
  """
  data = retrain.load_retraining_data(directory)
  x_val, y_pool, x_test, y_test = data.x_pool, data.y_pool, data.x_test, data.y_test
  d = x_val.shape[1]
  pool_pi = float(np.mean(y_pool > 0))
  pi = cfg.embedding_pi_plus or pool_pi
  n_avail = np.array([np.sum(y_pool > 0), np.sum(y_pool < 0)])

  def feasible(n):
    counts = mixture_lib.class_counts(int(n), pi)
    return counts[0] >= 2 and counts[0] <= n_avail[0] and counts[1] <= n_avail[1]

  sizes = [int(round(d / delta)) for delta in cfg.deltas]
  sizes = [n for n in sizes if feasible(n)]
  if not sizes:
    largest = int(min(n_avail[0] / pi, n_avail[1] / (1 - pi)))
    sizes = [s for s in (largest // 8, largest // 4, largest // 2, largest) if feasible(s)]
  if not sizes:
    raise ValueError("--embeddings: the val pool is too small for any retraining subsample")
  centre = x_val.mean(0)
  dtype = jnp.result_type(float)
  xt, yt = jnp.asarray(x_test - centre, dtype), jnp.asarray(y_test, dtype)
  # The ridge is relative to the features' mean within-class variance (the Gaussian cases have 1).
  within = np.concatenate([x_val[y_pool > 0] - x_val[y_pool > 0].mean(0),
                           x_val[y_pool < 0] - x_val[y_pool < 0].mean(0)])
  scale = float(np.mean(within ** 2))

  note = (f"val pool {x_val.shape[0]} (+1 = {data.labels.plus!r}, share {pool_pi:.3f}), "
          f"test {x_test.shape[0]}, d = {d}, subsample minority share {pi:.3f}, "
          f"ridge = {cfg.ridge:g} x mean variance {scale:.3g}")
  case = Case("embeddings", d, np.array(sorted(set(sizes), reverse=True)), y_pool, None,
              x_val - centre, _empirical_errors, (xt, yt), cfg.ridge * scale, note)
  return case, pi


# ----------------------------------------------------------------------------- masks

def random_masks(rng: np.random.Generator, y: np.ndarray, sizes, pi_plus: float) -> np.ndarray:
  """Nested class-count masks [K, N] of a random within-class order of the pool."""
  order = rng.permutation(y.shape[0])
  masks = np.asarray(mixture_lib.nested_masks(y[order], sizes, pi_plus=pi_plus))
  out = np.zeros_like(masks)
  out[:, order] = masks
  return out


def downsample_masks(y: np.ndarray, masks: np.ndarray, order: np.ndarray | None = None):
  """Keep every minority row of each mask and as many majority rows (the first in `order`)."""
  order = np.arange(y.shape[0]) if order is None else order
  out = np.zeros_like(masks)
  for k, mask in enumerate(masks):
    keep = mask > 0
    n_plus = int(np.sum(keep & (y > 0)))
    majority = [i for i in order if keep[i] and y[i] < 0][:n_plus]
    out[k, keep & (y > 0)] = 1.0
    out[k, majority] = 1.0
  return out


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


# ----------------------------------------------------------------------------- one pool

def _middle_argmin(values: jax.Array) -> jax.Array:
  """Index of the middle one of the (tied) minima of a 1-D array."""
  is_min = values <= jnp.min(values) + 1e-9
  rank = jnp.cumsum(is_min)
  target = (jnp.sum(is_min) + 1) // 2
  return jnp.argmax(is_min & (rank >= target))


def cv_weight(x, y, mask, folds_of_rows, grid, *, ridge, objective, folds):
  """Weight of the grid with the best pooled k-fold validation objective.

  Per-class held-out errors are pooled over folds (wrong counts / class counts); ties,
  common with small held-out sets, are broken by the other objective and then by the
  middle of the tied range.
  """
  def one_fold(f):
    train = mask * (folds_of_rows != f)
    held = (mask * (folds_of_rows == f)).astype(x.dtype)
    layer = lls.fit_sweep(x, y, grid, ridge=ridge, mask=train)
    wrong = lls.scores(layer, x) * y <= 0                                   # [G, N]
    return (jnp.sum(wrong * (held * (y > 0)), -1), jnp.sum(wrong * (held * (y < 0)), -1),
            jnp.sum(held * (y > 0)), jnp.sum(held * (y < 0)))

  # lax.map, not vmap: batched LAPACK calls can deadlock jaxlib 0.10 on CPU (module docstring).
  wp, wm, np_, nm = jax.lax.map(one_fold, jnp.arange(folds))
  errs = ClassErrors(jnp.sum(wp, 0) / jnp.sum(np_), jnp.sum(wm, 0) / jnp.sum(nm))
  main, other = (errs.worst, errs.balanced) if objective == "worst" else (errs.balanced,
                                                                           errs.worst)
  return grid[_middle_argmin(main + 1e-3 * other)]


class PoolOutput(NamedTuple):
  errors: ClassErrors      # [K, G + len(FIXED) + 1]: grid, FIXED, downsample
  weights: jax.Array       # [K, len(FIXED)]
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
                 folds, errors_fn) -> PoolOutput:
  """Everything for one pool and K masks (sizes), sizes under lax.map."""
  log10_range = (-2.0, 4.0)

  def one_size(args):
    mask, down, fold_rows = args
    best, ok, d_effs, prior = theory_weights(x, y, mask, ridge=ridge, objective=objective,
                                             log10_range=log10_range)
    theory_w = jnp.where(ok, best.weight, prior)
    cv = cv_weight(x, y, mask, fold_rows, grid, ridge=ridge, objective=objective, folds=folds)
    fixed = jnp.concatenate([jnp.stack([jnp.ones_like(prior), prior]), theory_w, cv[None]])
    layers = lls.solve_factored(lls.factor(x, y, ridge=ridge, mask=mask),
                                jnp.concatenate([grid, fixed]))
    down_layer = lls.solve_factored(lls.factor(x, y, ridge=ridge, mask=down), jnp.ones((1,)))
    both = lls.LastLayer(jnp.concatenate([layers.w, down_layer.w]),
                         jnp.concatenate([layers.b, down_layer.b]))
    return PoolOutput(errors_fn(both, eval_data), fixed, ClassErrors(best.err_plus, best.err_minus),
                      d_effs, ~ok)

  return jax.lax.map(one_size, (masks, down_masks, folds_of_rows))


# ----------------------------------------------------------------------------- sklearn baseline

def sklearn_layer(x: np.ndarray, y: np.ndarray, ridge: float) -> lls.LastLayer:
  """RidgeClassifier(class_weight='balanced', alpha=ridge * n); y in {+1, -1} (classes_[1] = +1)."""
  from sklearn.linear_model import RidgeClassifier
  clf = RidgeClassifier(alpha=ridge * x.shape[0], class_weight="balanced").fit(x, y)
  return lls.LastLayer(jnp.asarray(np.ravel(clf.coef_)), jnp.asarray(np.ravel(clf.intercept_)[0]))


# ----------------------------------------------------------------------------- timing

def _median_time(fn, repeats: int) -> float:
  fn()                                                    # compile / warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def time_methods(x: np.ndarray, y: np.ndarray, *, ridge: float, cfg: Config, grid,
                 errors_fn, eval_data) -> dict:
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
  fit_time = _median_time(lambda: fit(xj, yj, 2.0), reps)

  def theory_call(dim):
    return lambda: recommend.recommend_weight(x, y, ridge=ridge, objective=cfg.objective,
                                              dimension=dim).weight

  times = {"unweighted": fit_time, "priors": fit_time,
           "downsample": _median_time(lambda: fit(xd, yd, 1.0), reps),
           "sklearn": _median_time(lambda: sklearn_layer(x, y, ridge).w, reps),
           "cv": _median_time(lambda: cv(xj, yj, ones, folds_rows, grid), reps) + fit_time,
           "oracle": _median_time(lambda: sweep_errors(xj, yj, grid, eval_data), reps)}
  for name, dim in zip(THEORY, THEORY_DIMS):
    try:
      times[name] = _median_time(theory_call(dim), reps) + fit_time
    except ValueError:        # undefined here (e.g. "whitened" with n <= d + 3)
      times[name] = float("nan")
  return times


# ----------------------------------------------------------------------------- run one case

def run_case(case: Case, cfg: Config, pi_plus: float) -> dict:
  dtype = jnp.result_type(float)
  grid = jnp.asarray(np.logspace(*cfg.grid_log10, cfg.grid_size), dtype)
  y = case.pool_labels
  case_index = ("isotropic", "anisotropic", "embeddings").index(case.name)
  keys = jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed), case_index),
                          cfg.num_seeds)
  rng = np.random.default_rng(cfg.seed)
  if case.draw is not None:            # Gaussian: new pool per repeat, shared masks
    masks = np.asarray(mixture_lib.nested_masks(y, case.sizes, pi_plus=pi_plus))
    per_seed = [(masks, downsample_masks(y, masks), fold_ids(y, masks, cfg.folds))]
  else:                                # embeddings: one pool, random masks per repeat
    per_seed = []
    for _ in range(cfg.num_seeds):
      order = rng.permutation(y.shape[0])
      masks = random_masks(np.random.default_rng(rng.integers(1 << 31)), y, case.sizes, pi_plus)
      per_seed.append((masks, downsample_masks(y, masks, order),
                       fold_ids(y, masks, cfg.folds, order)))
  stack = lambda i: jnp.asarray(np.stack([p[i] for p in per_seed]))
  masks_s, down_s, folds_s = stack(0).astype(dtype), stack(1).astype(dtype), stack(2)
  yj = jnp.asarray(y, dtype)
  one = functools.partial(pool_outputs, grid=grid, ridge=case.ridge, objective=cfg.objective,
                          folds=cfg.folds, errors_fn=case.errors)

  if case.draw is not None:
    def run(keys, masks, down, fold_rows, pool, eval_data):
      del pool
      return jax.lax.map(lambda key: one(case.draw(key), yj, masks[0], down[0], fold_rows[0],
                                         eval_data), keys)
    pool = None
  else:
    def run(keys, masks, down, fold_rows, pool, eval_data):
      del keys
      return jax.lax.map(lambda a: one(pool, yj, *a, eval_data), (masks, down, fold_rows))
    pool = jnp.asarray(case.pool, dtype)

  start = time.perf_counter()
  out = jax.jit(run)(keys, masks_s, down_s, folds_s, pool, case.eval_data)
  out = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), out)
  sweep_seconds = time.perf_counter() - start

  # scikit-learn's RidgeClassifier, one fit per repeat and size (host loop).
  sk_plus, sk_minus = np.zeros(out.weights.shape[:2]), np.zeros(out.weights.shape[:2])
  errors_jit = jax.jit(case.errors)
  for s in range(cfg.num_seeds):
    x = np.asarray(case.draw(keys[s])) if case.draw is not None else case.pool
    masks = per_seed[0][0] if case.draw is not None else per_seed[s][0]
    for k, mask in enumerate(masks):
      rows = mask > 0
      e = errors_jit(sklearn_layer(x[rows], y[rows], case.ridge), case.eval_data)
      sk_plus[s, k], sk_minus[s, k] = float(e.err_plus), float(e.err_minus)

  # Timings on repeat 0, each size.
  x0 = np.asarray(case.draw(keys[0])) if case.draw is not None else case.pool
  masks0 = per_seed[0][0]
  timings = []
  for mask in masks0:
    rows = mask > 0
    timings.append(time_methods(x0[rows], y[rows], ridge=case.ridge, cfg=cfg, grid=grid,
                                errors_fn=case.errors, eval_data=case.eval_data))
  return summarize(case, cfg, out, ClassErrors(sk_plus, sk_minus), timings, np.asarray(grid),
                   sweep_seconds)


def summarize(case: Case, cfg: Config, out: PoolOutput, sk: ClassErrors, timings, grid,
              sweep_seconds) -> dict:
  """Means and 95% intervals over repeats per method and size."""
  g = grid.shape[0]
  errs = ClassErrors(out.errors.err_plus, out.errors.err_minus)        # [S, K, M]
  worst, balanced = np.maximum(*errs), 0.5 * (errs.err_plus + errs.err_minus)
  per = {}
  for i, name in enumerate(FIXED):
    per[name] = (worst[..., g + i], balanced[..., g + i], out.weights[..., i])
  per["downsample"] = (worst[..., -1], balanced[..., -1], np.ones(worst.shape[:2]))
  best = np.argmin(worst[..., :g], axis=-1)
  per["oracle"] = (np.min(worst[..., :g], -1), np.min(balanced[..., :g], -1), grid[best])
  per["sklearn"] = (np.maximum(*sk), 0.5 * (sk.err_plus + sk.err_minus),
                    np.full(worst.shape[:2], np.nan))
  ratio = (1 - np.mean(case.pool_labels > 0)) / np.mean(case.pool_labels > 0)
  methods = {}
  for name in METHODS:
    w, b, weight = per[name]
    ci_w, ci_b = metrics.mean_ci(w), metrics.mean_ci(b)
    excess = metrics.mean_ci(w - per["oracle"][0])
    methods[name] = {
        "worst": {"mean": ci_w.mean, "low": ci_w.low, "high": ci_w.high},
        "balanced": {"mean": ci_b.mean, "low": ci_b.low, "high": ci_b.high},
        "excess_worst_over_oracle": {"mean": excess.mean, "low": excess.low, "high": excess.high},
        "weight_median": np.nanmedian(weight, axis=0) if not np.all(np.isnan(weight)) else
                         np.full(weight.shape[1], np.nan),
        "weight_q25": np.nanpercentile(weight, 25, axis=0) if not np.all(np.isnan(weight))
                      else np.full(weight.shape[1], np.nan),
        "weight_q75": np.nanpercentile(weight, 75, axis=0) if not np.all(np.isnan(weight))
                      else np.full(weight.shape[1], np.nan),
        "time_s": [t[name] for t in timings],
    }
  for j, name in enumerate(THEORY):
    pred = np.maximum(out.predicted.err_plus[..., j], out.predicted.err_minus[..., j])
    pred = np.where(out.fallback[..., j] > 0, np.nan, pred)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
      warnings.simplefilter("ignore", RuntimeWarning)          # all-NaN columns (fallbacks)
      methods[name]["predicted_worst_mean"] = np.nanmean(pred, axis=0)
    methods[name]["d_eff_mean"] = np.mean(out.d_eff[..., j], axis=0)
    methods[name]["fallback_fraction"] = np.mean(out.fallback[..., j], axis=0)
  return {"name": case.name, "note": case.note, "d": case.d, "sizes": case.sizes,
          "deltas": case.d / case.sizes, "ridge": case.ridge, "prior_ratio_pool": ratio,
          "num_seeds": cfg.num_seeds, "sweep_seconds": sweep_seconds, "methods": methods}


# ----------------------------------------------------------------------------- reporting

STYLE = {"theory": ("C0", "-", "o"), "theory_ambient": ("C0", "--", "s"),
         "theory_erank": ("C0", ":", "^"), "theory_whitened": ("C9", "-", "h"),
         "oracle": ("k", "-", None),
         "priors": ("C1", "-", "v"), "unweighted": ("C7", "-", "x"),
         "sklearn": ("C2", "--", "D"), "cv": ("C3", "-", "P"), "downsample": ("C4", "-", "*")}


def plot_case(result: dict, path: Path) -> None:
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  deltas = np.asarray(result["deltas"])
  for name, m in result["methods"].items():
    color, ls, marker = STYLE[name]
    for ax, key in zip(axes[:2], ("worst", "balanced")):
      ax.plot(deltas, m[key]["mean"], color=color, ls=ls, marker=marker, label=name, ms=4)
      ax.fill_between(deltas, m[key]["low"], m[key]["high"], color=color, alpha=0.12)
    if not np.all(np.isnan(m["weight_median"])) and name != "unweighted":
      axes[2].plot(deltas, m["weight_median"], color=color, ls=ls, marker=marker, label=name,
                   ms=4)
  axes[0].set_title(f"{result['name']}: worst-class test error")
  axes[1].set_title("balanced test error")
  axes[2].set_title("chosen minority weight (median over repeats)")
  axes[2].set_yscale("log")
  for ax in axes:
    ax.set_xlabel("delta = d / n")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7, ncol=2)
  fig.suptitle(result["note"], fontsize=8)
  common.save_figure(fig, path)


def plot_timing(results: dict, path: Path) -> None:
  import matplotlib.pyplot as plt
  cases = list(results)
  fig, axes = plt.subplots(1, len(cases), figsize=(5 * len(cases), 4), squeeze=False)
  for ax, name in zip(axes[0], cases):
    r = results[name]
    for method, m in r["methods"].items():
      color, ls, marker = STYLE[method]
      ax.plot(r["sizes"], m["time_s"], color=color, ls=ls, marker=marker, label=method, ms=4)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("n (retraining set)")
    ax.set_ylabel("wall time of one call (s)")
    ax.set_title(f"{name} (d = {r['d']})")
    ax.grid(alpha=0.3)
  axes[0, 0].legend(fontsize=7)
  common.save_figure(fig, path)


def csv_rows(results: dict) -> list[dict]:
  rows = []
  for case, r in results.items():
    for name, m in r["methods"].items():
      for k, n in enumerate(r["sizes"]):
        rows.append({"case": case, "method": name, "n": int(n), "delta": float(r["deltas"][k]),
                     "worst_mean": m["worst"]["mean"][k], "worst_low": m["worst"]["low"][k],
                     "worst_high": m["worst"]["high"][k],
                     "balanced_mean": m["balanced"]["mean"][k],
                     "balanced_low": m["balanced"]["low"][k],
                     "balanced_high": m["balanced"]["high"][k],
                     "excess_worst_mean": m["excess_worst_over_oracle"]["mean"][k],
                     "weight_median": m["weight_median"][k], "time_s": m["time_s"][k]})
  return rows


def table(result: dict) -> str:
  """Worst-class error mean +- 95% half width (and ms per call) by method and delta."""
  deltas = result["deltas"]
  head = f"{'method':<15}" + "".join(f"{'delta ' + format(d, '.2f'):>22}" for d in deltas)
  lines = [f"== {result['name']}: {result['note']}", "worst-class test error, mean +- 95% CI "
           f"over {result['num_seeds']} repeats [ms per call]", head]
  for name, m in result["methods"].items():
    cells = []
    for k in range(len(deltas)):
      mean, half = m["worst"]["mean"][k], m["worst"]["mean"][k] - m["worst"]["low"][k]
      cells.append(f"{mean:.3f}+-{half:.3f} [{1e3 * m['time_s'][k]:6.1f}]")
    lines.append(f"{name:<15}" + "".join(f"{c:>22}" for c in cells))
  for name in THEORY:
    m = result["methods"][name]
    lines.append(f"{name}: predicted worst-class error " + " ".join(
        f"{v:.3f}" for v in m["predicted_worst_mean"]) + " (realized above); d_eff " + " ".join(
        f"{v:.0f}" for v in m["d_eff_mean"]) + "; fallback to priors " + " ".join(
        f"{v:.2f}" for v in m["fallback_fraction"]))
  lines.append("balanced error of theory / cv / priors / oracle: " + "; ".join(
      f"delta {d:.2f}: " + "/".join(f"{result['methods'][n]['balanced']['mean'][k]:.3f}"
                                    for n in ("theory", "cv", "priors", "oracle"))
      for k, d in enumerate(deltas)))
  return "\n".join(lines)


# ----------------------------------------------------------------------------- entry point

def main(argv: Sequence[str] | None = None) -> dict:
  cfg, out = common.parse_args(argv, config(), quick=quick, description=__doc__,
                               flags=("embeddings",))
  if cfg.objective not in metrics.OBJECTIVES:
    raise ValueError(f"objective: expected 'worst' or 'balanced', got {cfg.objective!r}")
  results = {}
  for name in cfg.cases:
    if name not in ("isotropic", "anisotropic"):
      raise ValueError(f"cases: expected isotropic / anisotropic, got {name!r}")
    results[name] = run_case(gaussian_case(cfg, name), cfg, cfg.pi_plus)
  if cfg.embeddings:
    case, pi = embedding_case(cfg, cfg.embeddings)
    results["embeddings"] = run_case(case, cfg, pi)
  for name, r in results.items():
    plot_case(r, out / f"{name}.png")
    print(table(r))
  plot_timing(results, out / "timing.png")
  common.write_csv(out / "results.csv", csv_rows(results))
  common.save_results(out / "results.json", config=cfg, results=results)
  print(f"wrote {out}/results.json, results.csv, " + ", ".join(f"{n}.png" for n in results)
        + ", timing.png")
  return results


if __name__ == "__main__":
  main(sys.argv[1:])
