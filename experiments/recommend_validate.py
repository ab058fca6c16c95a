"""Does the theory-guided weight (thumb_jax.recommend) pick a good class weight?

    python -m experiments.recommend_validate --out out/recommend [--quick] \\
        [--embeddings DIR[,DIR...]] [--set num_seeds=40]

Compares, on the same retraining sets, the per-class test errors (worst-class and
balanced, mean and 95% t-interval over repeats) and the wall time of:

  theory_general  recommend_weight(model="general") at the fixed ridge (weighting)
  theory_joint    recommend_weight(model="general", ridge="auto"): weight, ridge and weighting
                  or downsampling chosen by the predicted objective
  theory          recommend_weight, d_eff = participation ratio (the default)
  theory_ambient  recommend_weight, d_eff = the feature width
  theory_erank    recommend_weight, d_eff = entropy effective rank
  theory_whitened recommend_weight, dimension="whitened" (Mahalanobis signal, d_eff = d; needs
                  n > d + 3, otherwise it falls back to priors and the fallback is counted)
  oracle          the best weight of a log grid on the test error itself (not a method:
                  a lower bound; the worst-class and balanced columns each take their own best)
  priors          weight n_- / n_+
  unweighted      weight 1
  sklearn         sklearn RidgeClassifier(class_weight="balanced", alpha = ridge * n), as a
                  user would call it (its effective ridge is ridge * 2 n_- / n, ~1.8 x)
  sklearn_same_ridge  the same at alpha = ridge * n^2 / (2 n_-): the effective ridge `ridge`
  cv              stratified k-fold cross-validation of the weight over the grid
                  (lls.fit_sweep, one factorization per fold), then a refit on all n
  cv_ridge        the same over weight grid x ridge grid (recommend.RIDGE_GRID x the pool's
                  mean within-class variance), then a refit on all n at the chosen pair
  downsample      drop majority rows to balance, weight 1

Cases:
  isotropic    x | y ~ N(+-dmu/2, I_d), |dmu|^2 = `signal`; the plug-in model is exact.
  anisotropic  x | y ~ N(+-dmu/2, Sigma), eigenvalues lambda_j ~ j^-power (mean 1), dmu a
               random direction scaled to the Mahalanobis distance dmu' Sigma^-1 dmu = `signal`
               (the two cases are equally hard for a ridgeless fit, which is affine invariant).
               The isotropic plug-in sees |dmu|^2 and an energy-weighted noise level instead:
               this is where it loses.
  embeddings   (with --embeddings DIR, or several DIR,DIR: one case each, named after the
               folder) retraining subsamples from a validation pool of real embeddings,
               empirical per-class errors on the test split; see
               `thumb_jax.embedding_files.load_embedding_splits`.

Gaussian errors are exact (metrics.gaussian_class_errors, no test sampling). Every repeat is
one fresh pool of the largest n; the sizes are nested 0/1 masks of it, and the whole
comparison for all repeats and sizes is one jit(lax.map over repeats (lax.map over sizes)),
with the repeats split over every device when there are several (`sharded_repeats`),
except scikit-learn and the GENERAL methods, which run on the host, one call per retraining
set, as a user would call them.
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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from experiments import recommend_validate_report as report
from experiments.recommend_validate_methods import (
  FIXED,
  GENERAL,
  METHOD_NOTES,
  METHODS,
  SKLEARN,
  THEORY,
  PoolOutput,
  fold_ids,
  general_layers,
  pool_outputs,
  sklearn_layer,
  time_methods,
)
from experiments.report import interval_dict
from thumb_jax import devices, embedding_files, io, lls, metrics, recommend, simulate, subsample
from thumb_jax import mixture as mixture_lib
from thumb_jax.metrics import ClassErrors


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
  timing_repeats: int = 3        # 0: skip the timings (time_s NaN)
  cases: tuple[str, ...] = ("isotropic", "anisotropic")
  embeddings: str = ""           # folder(s) of {split}.npz, comma-separated (or --embeddings)
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
  variance: float = 1.0          # the ridge's unit (mean within-class variance of the pool)


def gaussian_case(cfg: Config, name: str) -> Case:
  """Isotropic or power-law Gaussian pool; exact errors via a rescaling trick.

  With Sigma = diag(lam) and r = sqrt(lam): w.mu = (r w).(mu / r) and w' Sigma w = |r w|^2,
  so metrics.gaussian_class_errors of LastLayer(r w, b) with means mu / r (unit variances)
  is the exact error under N(mu, Sigma).
  """
  d = cfg.d
  # Diagonal power-law covariances (power 0: isotropic), a random mean direction scaled so
  # that dmu' Sigma^-1 dmu = signal (= |dmu|^2 in the isotropic case).
  model = mixture_lib.power_law_mixture(
      jax.random.key(cfg.seed + 12345), d=d, pi_plus=cfg.pi_plus,
      power_plus=0.0 if name == "isotropic" else cfg.power, mahalanobis_sq=cfg.signal,
      rotate=False)
  lam = np.diag(model.cov_plus)
  dmu = model.mean_plus - model.mean_minus
  root = jnp.asarray(np.sqrt(lam), jnp.result_type(float))
  mu_plus = jnp.asarray(dmu / 2, root.dtype)
  sizes = simulate.sizes_for(cfg.deltas, d)
  n_pool = int(sizes.max())
  labels = simulate.pool_labels(cfg.pi_plus, n_pool)

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


def embedding_case(cfg: Config, directory: str, name: str = "embeddings") -> tuple[Case, float]:
  """Retraining subsamples from the val pool, empirical errors on the test split.

  Returns:
    (Case, minority share of the subsamples).
  """
  data = embedding_files.load_retraining_data(directory)
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
  case = Case(name, d, np.array(sorted(set(sizes), reverse=True)), y_pool, None,
              x_val - centre, _empirical_errors, (xt, yt), cfg.ridge * scale, note, scale)
  return case, pi


# ----------------------------------------------------------------------------- masks

def random_masks(rng: np.random.Generator, y: np.ndarray, sizes, pi_plus: float) -> np.ndarray:
  """Nested class-count masks [K, N] of a random within-class order of the pool."""
  order = rng.permutation(y.shape[0])
  masks = np.asarray(subsample.nested_masks(y[order], sizes, pi_plus=pi_plus))
  out = np.zeros_like(masks)
  out[:, order] = masks
  return out


# ----------------------------------------------------------------------------- devices

def sharded_repeats(run: Callable, *, batched: tuple[bool, ...]) -> Callable:
  """`jax.jit(run)` with the repeats (axis 0 of the `batched` arguments) split over devices.

  `run` maps over the repeats itself (lax.map); each device runs it unchanged on its own
  slice of the batched arguments, the others replicated, so every repeat's numbers are
  those of one device. The repeats are padded to a device multiple by repeating the last
  one, and the padding is dropped. On one device this is `jax.jit(run)`.

  Args:
    run: fn(*args) -> a tree of arrays with the repeats [S] in front.
    batched: per positional argument of `run`, whether its leading axis is the repeats.

  Returns:
    A callable of `run`'s arguments returning its results [S, ...] (replicated); its
    `jitted` attribute is the compiled function (tests: `jitted._cache_size()`).
  """
  if jax.device_count() == 1:
    call = jax.jit(run)
    call.jitted = call
    return call
  call = devices.sharded_map(run, in_axes=tuple(0 if b else None for b in batched))
  call.jitted = call.run
  return call


def retraining_sets(case: Case, cfg: Config, pi_plus: float,
                    case_index: int = 0) -> tuple[jax.Array, list]:
  """The repeats: keys [S] and per_seed, a list of (masks, downsample masks, fold ids), each
  [K, N]: one entry shared by every repeat (Gaussian: a new pool per key) or S (embeddings).
  """
  y = case.pool_labels
  keys = jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed), case_index),
                          cfg.num_seeds)
  rng = np.random.default_rng(cfg.seed)
  if case.draw is not None:            # Gaussian: new pool per repeat, shared masks
    masks = np.asarray(subsample.nested_masks(y, case.sizes, pi_plus=pi_plus))
    down = np.asarray(subsample.downsample_masks(y, masks))
    return keys, [(masks, down, fold_ids(y, masks, cfg.folds))]
  per_seed = []                        # embeddings: one pool, random masks per repeat
  for _ in range(cfg.num_seeds):
    order = rng.permutation(y.shape[0])
    masks = random_masks(np.random.default_rng(rng.integers(1 << 31)), y, case.sizes, pi_plus)
    down = np.asarray(subsample.downsample_masks(y, masks, order=order))
    per_seed.append((masks, down, fold_ids(y, masks, cfg.folds, order)))
  return keys, per_seed


def sweep(case: Case, cfg: Config, keys: jax.Array, per_seed: list) -> PoolOutput:
  """Every jitted method (`pool_outputs`) on every repeat and size, repeats split over the
  devices (`sharded_repeats`).

  Returns:
    PoolOutput of float64 NumPy arrays [S, K, ...].
  """
  dtype = jnp.result_type(float)
  grid, ridges = _grid_and_ridges(case, cfg)
  stack = lambda i: jnp.asarray(np.stack([p[i] for p in per_seed]))
  masks_s, down_s, folds_s = stack(0).astype(dtype), stack(1).astype(dtype), stack(2)
  yj = jnp.asarray(case.pool_labels, dtype)
  one = functools.partial(pool_outputs, grid=grid, ridge=case.ridge, objective=cfg.objective,
                          folds=cfg.folds, errors_fn=case.errors, ridges=ridges)

  # The repeats (keys; embeddings: also their masks) are split over the devices.
  if case.draw is not None:
    def run(keys, masks, down, fold_rows, pool, eval_data):
      del pool
      return jax.lax.map(lambda key: one(case.draw(key), yj, masks[0], down[0], fold_rows[0],
                                         eval_data), keys)
    pool, batched = None, (True, False, False, False, False, False)
  else:
    def run(keys, masks, down, fold_rows, pool, eval_data):
      del keys
      return jax.lax.map(lambda a: one(pool, yj, *a, eval_data), (masks, down, fold_rows))
    pool, batched = jnp.asarray(case.pool, dtype), (True, True, True, True, False, False)
  out = sharded_repeats(run, batched=batched)(keys, masks_s, down_s, folds_s, pool,
                                              case.eval_data)
  return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), out)


def _grid_and_ridges(case: Case, cfg: Config) -> tuple[jax.Array, jax.Array]:
  """The weight grid [G] and the cv_ridge ridges [len(RIDGE_GRID)] in the case's units."""
  dtype = jnp.result_type(float)
  return (jnp.asarray(np.logspace(*cfg.grid_log10, cfg.grid_size), dtype),
          jnp.asarray(np.asarray(recommend.RIDGE_GRID) * case.variance, dtype))


def run_case(case: Case, cfg: Config, pi_plus: float, case_index: int = 0) -> dict:
  grid, ridges = _grid_and_ridges(case, cfg)
  y = case.pool_labels
  keys, per_seed = retraining_sets(case, cfg, pi_plus, case_index)
  start = time.perf_counter()
  out = sweep(case, cfg, keys, per_seed)
  sweep_seconds = time.perf_counter() - start

  # scikit-learn's RidgeClassifier, one fit per repeat, size and alpha (host loop).
  shape = out.weights.shape[:2]
  sk = {name: (np.zeros(shape), np.zeros(shape)) for name in SKLEARN}
  errors_jit = jax.jit(case.errors)
  for s in range(cfg.num_seeds):
    x = np.asarray(case.draw(keys[s])) if case.draw is not None else case.pool
    masks = per_seed[0][0] if case.draw is not None else per_seed[s][0]
    for k, mask in enumerate(masks):
      rows = mask > 0
      for name, (plus, minus) in sk.items():
        layer = sklearn_layer(x[rows], y[rows], case.ridge,
                              same_ridge=name == "sklearn_same_ridge")
        e = errors_jit(layer, case.eval_data)
        plus[s, k], minus[s, k] = float(e.err_plus), float(e.err_minus)

  # recommend_weight(model="general"), one call per retraining set (host loop).
  general = {name: [[None] * shape[1] for _ in range(shape[0])] for name in GENERAL}
  for s in range(cfg.num_seeds):
    x = np.asarray(case.draw(keys[s])) if case.draw is not None else case.pool
    masks, downs = (per_seed[0][:2] if case.draw is not None else per_seed[s][:2])
    for k, mask in enumerate(masks):
      got = general_layers(x, y, mask, downs[k], case.eval_data, ridge=case.ridge,
                           objective=cfg.objective, errors_fn=case.errors)
      for name, result in got.items():
        general[name][s][k] = result

  # Timings on repeat 0, each size.
  x0 = np.asarray(case.draw(keys[0])) if case.draw is not None else case.pool
  masks0 = per_seed[0][0]
  timings = []
  for mask in masks0:
    rows = mask > 0
    if cfg.timing_repeats == 0:
      timings.append(dict.fromkeys(METHODS, float("nan")))
      continue
    timings.append(time_methods(x0[rows], y[rows], ridge=case.ridge, cfg=cfg, grid=grid,
                                errors_fn=case.errors, eval_data=case.eval_data, ridges=ridges))
  sk = {name: ClassErrors(*errors) for name, errors in sk.items()}
  return method_intervals(case, cfg, out, sk, timings, np.asarray(grid), sweep_seconds, general)


def method_intervals(case: Case, cfg: Config, out: PoolOutput, sk: dict, timings, grid,
                     sweep_seconds, general: dict | None = None) -> dict:
  """Per method and size: worst-class and balanced error (mean, 95% interval over repeats),
  excess over the oracle, chosen weights (median, quartiles), time per call.

  Args:
    sk: {sklearn method name: ClassErrors [S, K]} measured on the host.
    general: {GENERAL method name: [S][K] GeneralResult} measured on the host.
  """
  g = grid.shape[0]
  errs = ClassErrors(out.errors.err_plus, out.errors.err_minus)        # [S, K, M]
  worst, balanced = np.maximum(*errs), 0.5 * (errs.err_plus + errs.err_minus)
  per = {}
  for i, name in enumerate(FIXED):
    per[name] = (worst[..., g + i], balanced[..., g + i], out.weights[..., i])
  per["downsample"] = (worst[..., -1], balanced[..., -1], np.ones(worst.shape[:2]))
  per["cv_ridge"] = (worst[..., -2], balanced[..., -2], out.weights[..., len(FIXED)])
  extra = {"cv_ridge": {"ridge_median": np.median(out.cv_ridge, axis=0)}}
  for name, table in (general or {}).items():
    res = np.array([[(r.errors.err_plus, r.errors.err_minus, r.weight, r.ridge,
                      float(r.downsample), r.predicted_worst, float(r.fallback))
                     for r in row] for row in table])                          # [S, K, 7]
    per[name] = (np.maximum(res[..., 0], res[..., 1]), 0.5 * (res[..., 0] + res[..., 1]),
                 np.where(res[..., 4] > 0, np.nan, res[..., 2]))
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", RuntimeWarning)                  # all-NaN columns
      extra[name] = {"ridge_median": np.median(res[..., 3], axis=0),
                     "downsample_fraction": np.mean(res[..., 4], axis=0),
                     "predicted_worst_mean": np.nanmean(res[..., 5], axis=0),
                     "fallback_fraction": np.mean(res[..., 6], axis=0)}
  best = np.argmin(worst[..., :g], axis=-1)
  per["oracle"] = (np.min(worst[..., :g], -1), np.min(balanced[..., :g], -1), grid[best])
  for name, e in sk.items():
    per[name] = (np.maximum(*e), 0.5 * (e.err_plus + e.err_minus),
                 np.full(worst.shape[:2], np.nan))
  ratio = (1 - np.mean(case.pool_labels > 0)) / np.mean(case.pool_labels > 0)
  methods = {}
  for name in METHODS:
    if name not in per:
      continue
    w, b, weight = per[name]
    ci_w, ci_b = metrics.mean_ci(w), metrics.mean_ci(b)
    excess = metrics.mean_ci(w - per["oracle"][0])
    methods[name] = {
        "worst": interval_dict(ci_w),
        "balanced": interval_dict(ci_b),
        "excess_worst_over_oracle": interval_dict(excess),
        "weight_median": np.nanmedian(weight, axis=0) if not np.all(np.isnan(weight)) else
                         np.full(weight.shape[1], np.nan),
        "weight_q25": np.nanpercentile(weight, 25, axis=0) if not np.all(np.isnan(weight))
                      else np.full(weight.shape[1], np.nan),
        "weight_q75": np.nanpercentile(weight, 75, axis=0) if not np.all(np.isnan(weight))
                      else np.full(weight.shape[1], np.nan),
        "time_s": [t[name] for t in timings],
        "paired_worst": w,                       # [S, K], for paired comparisons
        **extra.get(name, {}),
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
          "ridge_grid": np.asarray(recommend.RIDGE_GRID) * case.variance,
          "deltas": case.d / case.sizes, "ridge": case.ridge, "prior_ratio_pool": ratio,
          "num_seeds": cfg.num_seeds, "sweep_seconds": sweep_seconds, "methods": methods}


# ----------------------------------------------------------------------------- resume

def _flatten(tree, prefix: str = "") -> dict[str, np.ndarray]:
  """A nested dict of arrays / numbers / strings as {"a/b/c": array}."""
  if isinstance(tree, dict):
    flat = {}
    for k, v in tree.items():
      if "/" in str(k):
        raise ValueError(f"cannot store the key {k!r}: it contains '/'")
      flat.update(_flatten(v, f"{prefix}{k}/"))
    return flat
  return {prefix[:-1]: np.asarray(tree)}


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
  """Inverse of `_flatten` (0-d numbers come back as Python numbers, strings as str)."""
  tree: dict = {}
  for path, value in flat.items():
    *parents, leaf = path.split("/")
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value.item() if value.ndim == 0 else value
  return tree


def cached_case(path: Path, compute: Callable[[], dict], *, key: dict) -> tuple[dict, bool]:
  """One case's results, from `path` when it was written for exactly `key` (the config,
  the case, its embedding folder, the device count), else computed and written there
  atomically: an interrupted run resumes at the first case it had not finished."""
  path.parent.mkdir(parents=True, exist_ok=True)
  flat, cached = io.cached_arrays(path, key, lambda: _flatten(compute()),
                                  writer=devices.is_main_process())
  return _unflatten(flat), cached


def main(argv: Sequence[str] | None = None) -> dict:
  cfg, out = common.parse_args(argv, config(), quick=quick, description=__doc__,
                               flags=("embeddings",))
  metrics.check_objective(cfg.objective)
  common.positive_ints(cfg, "num_seeds", "d", "grid_size", "folds", minimum=2)
  common.positive_ints(cfg, "timing_repeats", minimum=0)
  simulate.sizes_for(cfg.deltas, cfg.d)
  for name in cfg.cases:
    if name not in ("isotropic", "anisotropic"):
      raise ValueError(f"cases: expected isotropic / anisotropic, got {name!r}")
  folders = [f for f in cfg.embeddings.split(",") if f]
  jobs = [(name, i, None) for i, name in enumerate(cfg.cases)]
  jobs += [("embeddings" if len(folders) == 1 else f"emb_{Path(folder.rstrip('/')).name}",
            2 + i, folder) for i, folder in enumerate(folders)]
  results = {}
  for name, index, folder in common.progress(jobs, desc="cases"):
    start = time.perf_counter()

    def compute(name=name, index=index, folder=folder):
      if folder is None:
        return run_case(gaussian_case(cfg, name), cfg, cfg.pi_plus, index)
      case, pi = embedding_case(cfg, folder, name)
      return run_case(case, cfg, pi, index)

    results[name], cached = cached_case(out / "cases" / f"{name}.npz", compute, key={
        "config": cfg, "case": name, "index": index,
        "folder": None if folder is None else str(Path(folder).resolve()),
        "devices": jax.device_count()})
    print(f"case {name}: {'cached' if cached else 'computed'} in "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    # Each case compiles programs for its own shapes; dropping them keeps a long run's
    # memory flat (12 embedding cases in one process ran out of memory mapping compiled
    # code without this).
    jax.clear_caches()
  for name, r in results.items():
    report.plot_case(r, out / f"{name}.png")
    print(report.table(r), flush=True)
  print(report.target_summary(results))
  report.plot_timing(results, out / "timing.png")
  common.write_csv(out / "results.csv", report.csv_rows(results))
  common.save_results(out / "results.json", config=cfg, method_notes=METHOD_NOTES,
                      results=results)
  print(f"wrote {out}/results.json, results.csv, " + ", ".join(f"{n}.png" for n in results)
        + ", timing.png")
  return results


if __name__ == "__main__":
  main(sys.argv[1:])
