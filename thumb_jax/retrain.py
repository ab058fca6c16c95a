"""Last-layer retraining sweeps on fixed embeddings: every sample size, repeat and weight at once.

Given a retraining pool (x_pool [N, d], y_pool [N], class +1 = minority) and a test split,
`sweep` retrains the weighted least-squares last layer (`lls`) on S x R subsamples of the
pool (`subsample.subsample_masks`: S sizes, R seeded repeats) for K grid weights and for
each weighting method of `METHODS`, and returns the per-class test errors:

    masks  = subsample.subsample_masks(key, y_pool, count_plus, count_minus, num_repeats=R)
    result = jax.jit(retrain.sweep, static_argnames=retrain.STATIC)(
        x_pool, y_pool, x_test, y_test, masks, weights, ridge=1e-3)

or, from host arrays, `retrain.run(...)` (builds the masks, picks the ridge, jits once per
shape and returns NumPy arrays).

Features are centred by the pool mean and divided by feature_scale = sqrt(tr Cov(x_pool) / d),
so `ridge` is relative to the mean per-coordinate variance (the intercept is unpenalized:
ridge 0 is unaffected); returned layers are in raw coordinates. Objective (THEORY.md,
"Estimator"): sum_i c_i (y_i - w.x_i - b)^2 + ridge * n * |w|^2.

Methods (`Methods`, by name), per subsample:
  unweighted            weight 1.
  prior_ratio           n_- / n_+ (scikit-learn's 'balanced').
  theory_ambient        `theory.optimal_weight` of the plug-in isotropic mixture estimated on
                        the subsample itself (`plug_in.surrogate`), delta = d / n.
  theory_participation  the same with d_eff = the subsample's debiased participation ratio,
                        delta = d_eff / n (`recommend_weight`'s default).
  theory_pool           the plug-in estimated once on the whole pool (more data than the
                        subsample has), d_eff from `dimension`, delta = d_eff / n.
  downsample            weight 1 on the balanced downsampled subsample.
  grid_oracle           the grid weight with the smallest worst-class *test* error (a
                        hindsight lower bound, not a method).
Where a plug-in is undefined (debiased squared mean difference <= 0, or ridge 0 with
delta >= 1) a theory method falls back to the prior ratio; `MethodResult.defined` says
where it did not. The plug-ins never see the test split.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from thumb_jax import _checks, devices, lls, mixture, platform, plug_in, subsample, theory
from thumb_jax.metrics import ClassErrors, empirical_class_errors
from thumb_jax.subsample import Subsamples, size_counts, subsample_masks

STATIC = ("ridge", "objective", "dimension", "batch_size", "row_buffers")
DEFAULT_RIDGE = 1e-3


class MethodResult(NamedTuple):
  """One weighting method on every subsample.

  weight: [S, R] the class weight used (1 for downsampling).
  errors: ClassErrors [S, R] measured on the test split.
  predicted: ClassErrors [S, R] the plug-in theory's prediction for that weight (NaN where
    the method makes none).
  layer: LastLayer (w [S, R, d], b [S, R]) in raw feature coordinates.
  defined: bool [S, R], the method's own weight was used (False: a theory method fell back
    to the prior ratio).
  """
  weight: jax.Array
  errors: ClassErrors
  predicted: ClassErrors
  layer: lls.LastLayer
  defined: jax.Array


class Methods(NamedTuple):
  """`MethodResult` per method, by name (module docstring)."""
  unweighted: MethodResult
  prior_ratio: MethodResult
  theory_ambient: MethodResult
  theory_participation: MethodResult
  theory_pool: MethodResult
  downsample: MethodResult
  grid_oracle: MethodResult


METHODS = Methods._fields


class TheoryCurves(NamedTuple):
  """Predictions of the plug-in mixture estimated on the whole pool (delta = d_eff / n).

  mixture: GaussianMixture of scalars (midpoint frame, see `plug_in.surrogate`).
  delta: [S] d_eff / n.
  errors: ClassErrors [S, K] at every grid weight.
  optimal: theory.OptimalWeight [S] (its weight is the theory_pool method's weight).
  prior_ratio: ClassErrors [S] at the pool's ratio of priors.
  downsample: ClassErrors [S] after balanced downsampling (theory.downsampled_class_errors).
  """
  mixture: mixture.GaussianMixture
  delta: jax.Array
  errors: ClassErrors
  optimal: theory.OptimalWeight
  prior_ratio: ClassErrors
  downsample: ClassErrors


class RetrainResult(NamedTuple):
  """Everything `sweep` measures (shapes with S sizes, R repeats, K weights).

  sizes, count_plus, count_minus: [S]; weights: [K].
  errors: ClassErrors [S, R, K], test errors of the grid of weights.
  layers: LastLayer (w [S, R, K, d], b [S, R, K]) in raw coordinates.
  methods: Methods.
  theory: TheoryCurves.
  ridge: [] the ridge used (on the scaled features); feature_scale: [] (module docstring).
  """
  sizes: jax.Array
  count_plus: jax.Array
  count_minus: jax.Array
  weights: jax.Array
  errors: ClassErrors
  layers: lls.LastLayer
  methods: Methods
  theory: TheoryCurves
  ridge: jax.Array
  feature_scale: jax.Array


class _SubsampleFit(NamedTuple):
  """Step 1 of `sweep` for one subsample (see `_fit_subsample`)."""
  factors: lls.Factors            # serves every weight
  stats: plug_in.PlugInStats
  grid: lls.LastLayer             # [K, d]
  grid_errors: ClassErrors        # [K]
  down: lls.LastLayer             # [d]
  down_errors: ClassErrors        # []


def default_ridge(sizes: Sequence[int], dim: int) -> float:
  """0 if every size has n >= d + 2 (a nonsingular within-class scatter), else 1e-3.

  One ridge for the whole sweep keeps the curves over n comparable; with ridge 0 and
  n - 2 < d the fit interpolates and the ridgeless theory needs delta < 1.
  """
  return 0.0 if min(int(n) for n in sizes) >= dim + 2 else DEFAULT_RIDGE


def log_weights(num: int = 32, *, low: float = 0.1, high: float = 1000.0) -> np.ndarray:
  """A log-spaced weight grid [num] from `low` to `high` (need not contain 1)."""
  return np.geomspace(low, high, num)


# ----------------------------------------------------------------------------- steps


def _fit_subsample(x, y, xt, y_test, weights, mask, down_mask, *, ridge: float,
                   buffers: tuple[int, int, int]) -> _SubsampleFit:
  """One subsample: its factorization (whose within-class scatter also gives the plug-in
  statistics), the K grid layers and the balanced downsampling fit, with test errors."""
  rows, down_rows, plus_rows = buffers
  xs, ys, m = subsample.gather_rows(x, y, mask, rows)
  factors = lls.factor(xs, ys, ridge=ridge, mask=m, minority_rows=min(plus_rows, rows))
  stats = plug_in.plug_in_stats(xs, ys > 0, m, scatter=factors.within)
  grid = lls.solve(factors, weights)
  xd, yd, md = subsample.gather_rows(x, y, down_mask, down_rows)
  down = lls.solve(lls.factor(xd, yd, ridge=ridge, mask=md, minority_rows=0),
                   jnp.ones((1,), x.dtype))
  down = lls.LastLayer(down.w[0], down.b[0])
  errors = lambda layer: empirical_class_errors(lls.scores(layer, xt), y_test)
  return _SubsampleFit(factors, stats, grid, errors(grid), down, errors(down))


def _theory_methods(stats: plug_in.PlugInStats, pool: plug_in.Surrogate, d: int, *,
                    ridge: float, objective: str):
  """Per theory method (weight, predicted ClassErrors, defined), each [S, R], and the pool
  plug-in's OptimalWeight [S].

  `stats` has fields [S, R]; `pool` is the pool surrogate with delta [S]. An undefined
  plug-in falls back to the prior ratio (the subsample's; theory_pool: the pool's) and
  predicts NaN.
  """
  shape = stats.count_plus.shape
  prior = stats.count_minus / stats.count_plus
  found = plug_in.surrogate_weights({
      "theory_ambient": plug_in.surrogate(stats, "ambient", d),
      "theory_participation": plug_in.surrogate(stats, "participation", d),
      "theory_pool": pool}, ridge, objective)
  pool_best = found["theory_pool"][0]                                           # [S]
  found["theory_pool"] = jax.tree.map(lambda a: jnp.broadcast_to(a[:, None], shape),
                                      found["theory_pool"])
  pool_prior = jnp.broadcast_to(theory.prior_ratio(pool.mixture.pi_plus), shape)
  out = {}
  for name, (best, ok) in found.items():
    predicted = ClassErrors(jnp.where(ok, best.err_plus, jnp.nan),
                            jnp.where(ok, best.err_minus, jnp.nan))
    fallback = pool_prior if name == "theory_pool" else prior
    out[name] = (jnp.where(ok, best.weight, fallback), predicted, ok)
  return out, pool_best


def _grid_oracle(weights, errors: ClassErrors, grid: lls.LastLayer) -> MethodResult:
  """The grid weight with the smallest worst-class test error (ties: the smallest weight)."""
  best = jnp.argmin(jnp.nan_to_num(errors.worst, nan=jnp.inf), axis=-1)          # [S, R]
  take = lambda a: jnp.take_along_axis(a, best[..., None], axis=-1)[..., 0]
  nan = jnp.full(best.shape, jnp.nan, weights.dtype)
  layer = lls.LastLayer(jnp.take_along_axis(grid.w, best[..., None, None], axis=-2)[..., 0, :],
                        take(grid.b))
  return MethodResult(weights[best], ClassErrors(take(errors.err_plus), take(errors.err_minus)),
                      ClassErrors(nan, nan), layer, jnp.ones(best.shape, bool))


def _to_raw(layer: lls.LastLayer, center, scale) -> lls.LastLayer:
  """Layers on (x - c) / s back to raw x: w.(x - c) / s + b = (w / s).x + (b - c.w / s)."""
  w = layer.w / scale
  return lls.LastLayer(w, layer.b - w @ center)


def _overlay(pool: plug_in.Surrogate, best: theory.OptimalWeight, weights,
             ridge: float) -> TheoryCurves:
  """The pool plug-in's predictions at every grid weight, its optimum, the prior ratio and
  downsampling, per size (pool.delta [S])."""
  mix, delta = pool.mixture, pool.delta
  return TheoryCurves(mix, delta, theory.class_errors(mix, delta[:, None], weights[None, :], ridge),
                      best, theory.class_errors(mix, delta, theory.prior_ratio(mix.pi_plus), ridge),
                      theory.downsampled_class_errors(mix, delta, ridge))


# ----------------------------------------------------------------------------- the sweep


def sweep(x_pool: jax.Array, y_pool: jax.Array, x_test: jax.Array, y_test: jax.Array,
          subsamples: Subsamples, weights: jax.Array, *, ridge: float = 0.0,
          objective: str = "worst", dimension: str = "ambient", batch_size: int = 8,
          row_buffers: subsample.RowBuffers | None = None) -> RetrainResult:
  """Retrains the last layer on every subsample for every weight and method (pure).

  Jit it with `static_argnames=retrain.STATIC`. Per subsample one factorization serves the K
  grid weights and the method weights (THEORY.md, "Fast sweep").

  Args:
    x_pool: retraining pool embeddings [N, d].
    y_pool: pool labels [N] in {+1, -1} (+1 = minority).
    x_test: test embeddings [M, d].
    y_test: test labels [M] in {+1, -1}.
    subsamples: from `subsample.subsample_masks` (masks [S, R, N]).
    weights: grid of minority weights [K] > 0.
    ridge: Python float >= 0, on the scaled features (module docstring).
    objective: "worst" or "balanced", the objective of the theory weights.
    dimension: d_eff of the pool plug-in (theory_pool and `TheoryCurves`): "ambient"
      (delta = d / n) or "participation".
    batch_size: subsamples whose method weights are solved and scored together.
    row_buffers: static, per size, (B, B_down, B_plus): the subsample's kept rows (at most
      B), its downsampling's (at most B_down) and its minority rows (at most B_plus) are
      gathered into buffers of these lengths (`subsample.buffer_lengths`); None: all N rows.

  Returns:
    RetrainResult.

  Raises:
    ValueError: mismatched shapes, a bad ridge, or (concrete counts) a size whose kept rows
      exceed its `row_buffers`.
  """
  n_pool, d = x_pool.shape
  if y_pool.shape != (n_pool,) or x_test.ndim != 2 or x_test.shape[1] != d \
      or y_test.shape != x_test.shape[:1]:
    raise ValueError(f"expected x_pool [N, d], y_pool [N], x_test [M, d], y_test [M]; got "
                     f"{x_pool.shape}, {y_pool.shape}, {x_test.shape}, {y_test.shape}")
  num_sizes, num_repeats, n_mask = subsamples.mask.shape
  if n_mask != n_pool:
    raise ValueError(f"subsamples.mask: expected [S, R, {n_pool}], got {subsamples.mask.shape}")
  if not isinstance(ridge, (int, float)) or not np.isfinite(ridge) or ridge < 0:
    raise ValueError(f"ridge: expected a finite Python float >= 0 (static), got {ridge!r}")
  if row_buffers is None:
    row_buffers = ((n_pool, n_pool, n_pool),) * num_sizes
  subsample.check_buffers(subsamples.count_plus, subsamples.count_minus, row_buffers)
  ridge, dtype, shape = float(ridge), x_pool.dtype, (num_sizes, num_repeats)
  weights = jnp.asarray(weights, dtype)
  center = jnp.mean(x_pool, axis=0)
  scale = jnp.sqrt(jnp.sum(jnp.var(x_pool, axis=0)) / d)
  x, xt = (x_pool - center) / scale, (x_test - center) / scale
  sizes = (subsamples.count_plus + subsamples.count_minus).astype(dtype)
  errors_of = lambda layer: empirical_class_errors(lls.scores(layer, xt), y_test)
  raw = lambda layer: _to_raw(layer, center, scale)

  # The pool plug-in, once: theory_pool's weights and the theory overlay.
  pool = plug_in.surrogate(plug_in.plug_in_stats(x, y_pool > 0), dimension, d)
  pool = pool._replace(delta=pool.dimension / sizes)                          # [S]

  # 1. Per subsample: factorization, plug-in statistics, grid layers, downsampling.
  groups = subsample.buffer_groups(row_buffers)
  per_group = lambda a: subsample.split_groups(groups, a)
  fits = [jax.lax.map(lambda item, b=buffers: _fit_subsample(
      x, y_pool, xt, y_test, weights, *item, ridge=ridge, buffers=b), (masks, down))
          for buffers, masks, down in zip(groups.buffers, per_group(subsamples.mask),
                                          per_group(subsamples.downsample))]
  stats, grid, grid_errors, down, down_errors = subsample.join_groups(
      groups, [f[1:] for f in fits], shape)

  # 2. Every method's weight, by name (the theory ones in one vectorized search).
  theory_methods, pool_best = _theory_methods(stats, pool, d, ridge=ridge, objective=objective)
  nan = ClassErrors(jnp.full(shape, jnp.nan, dtype), jnp.full(shape, jnp.nan, dtype))
  chosen = {"unweighted": (jnp.ones(shape, dtype), nan, jnp.ones(shape, bool)),
            "prior_ratio": (stats.count_minus / stats.count_plus, nan, jnp.ones(shape, bool)),
            **theory_methods}

  # 3. Their layers from the stored factorizations, batched over subsamples.
  names = tuple(chosen)
  stacked = jnp.stack([chosen[n][0] for n in names], axis=-1).astype(dtype)      # [S, R, J]

  def solve_and_score(item):
    layers = lls.solve(*item)
    return layers, errors_of(layers)

  layers, errors = subsample.join_groups(groups, [
      jax.lax.map(solve_and_score, (f.factors, w), batch_size=max(1, min(batch_size, len(w))))
      for f, w in zip(fits, per_group(stacked))], shape)
  methods = {}
  for j, name in enumerate(names):
    _, predicted, defined = chosen[name]
    layer = lls.LastLayer(layers.w[..., j, :], layers.b[..., j])
    methods[name] = MethodResult(stacked[..., j], jax.tree.map(lambda a, j=j: a[..., j], errors),
                                 predicted, raw(layer), defined)

  # The two methods that are not a weight of the same fit, and the theory overlay.
  curves = _overlay(pool, pool_best, weights, ridge)
  methods["downsample"] = MethodResult(
      jnp.ones(shape, dtype), down_errors,
      jax.tree.map(lambda a: jnp.broadcast_to(a[:, None], shape), curves.downsample),
      raw(down), jnp.ones(shape, bool))
  methods["grid_oracle"] = _grid_oracle(weights, grid_errors, raw(grid))
  return RetrainResult(sizes, subsamples.count_plus, subsamples.count_minus, weights,
                       grid_errors, raw(grid), Methods(**methods), curves,
                       jnp.asarray(ridge, dtype), scale)


def _run(x_pool, y_pool, x_test, y_test, key, count_plus, count_minus, weights, *,
         num_repeats, ridge, objective, dimension, batch_size, row_buffers):
  masks = subsample_masks(key, y_pool, count_plus, count_minus, num_repeats=num_repeats,
                          dtype=x_pool.dtype)
  return sweep(x_pool, y_pool, x_test, y_test, masks, weights, ridge=ridge,
               objective=objective, dimension=dimension, batch_size=batch_size,
               row_buffers=row_buffers)


def _run_sharded(x_pool, y_pool, x_test, y_test, key, count_plus, count_minus, weights, *,
                 num_repeats, ridge, objective, dimension, batch_size, row_buffers):
  """`_run` with the R repeats sharded over every device of `devices.mesh()`.

  Every subsample is fitted and scored on its own (the pool plug-in, the only quantity
  shared by the repeats, is computed from replicated data on each device), so each device
  runs `sweep` on its slice of the masks [S, R / devices, N] with no change to the math.
  R is padded to a device multiple by repeating the last repeat; the padding is dropped.
  """
  the_mesh = devices.mesh()
  masks = subsample_masks(key, y_pool, count_plus, count_minus, num_repeats=num_repeats,
                          dtype=x_pool.dtype)
  take = jnp.minimum(jnp.arange(devices.padded_size(num_repeats, the_mesh.devices.size)),
                     num_repeats - 1)
  same, split = P(), P(None, devices.BATCH)

  def local(x, y, xt, yt, mask, down, cp, cm, w):
    return sweep(x, y, xt, yt, Subsamples(mask, down, cp, cm), w, ridge=ridge,
                 objective=objective, dimension=dimension, batch_size=batch_size,
                 row_buffers=row_buffers)

  # check_vma=False: the pool plug-in's optimum (in `theory`) is found in one vectorized
  # search together with the subsamples' weights, so JAX types it as varying over devices;
  # it is computed from replicated data only, and its copies are equal (the test compares).
  result = jax.shard_map(
      local, mesh=the_mesh, in_specs=(same,) * 4 + (split,) * 2 + (same,) * 3,
      out_specs=RetrainResult(same, same, same, same, split, split, split, same, same, same),
      check_vma=False,
  )(x_pool, y_pool, x_test, y_test, masks.mask[:, take], masks.downsample[:, take],
    masks.count_plus, masks.count_minus, weights)
  drop = lambda tree: jax.tree.map(lambda a: a[:, :num_repeats], tree)
  return result._replace(errors=drop(result.errors), layers=drop(result.layers),
                         methods=drop(result.methods))


# Jitted at their only use site: one compile per (shapes, static arguments) per process.
_run_jit = jax.jit(_run, static_argnames=("num_repeats",) + STATIC)
_run_sharded_jit = jax.jit(_run_sharded, static_argnames=("num_repeats",) + STATIC)


def run(x_pool, y_pool, x_test, y_test, *, sizes: Sequence[int], weights=None,
        num_repeats: int = 10, seed: int = 0, ridge: float | None = None,
        objective: str = "worst", dimension: str = "ambient",
        batch_size: int = 8, shard: bool | None = None) -> RetrainResult:
  """`sweep` from host arrays: validates, builds the masks, one jitted call, NumPy results.

  Args:
    x_pool: [N, d] retraining pool embeddings; y_pool: [N] in {+1, -1} (+1 = minority).
    x_test: [M, d]; y_test: [M] in {+1, -1}.
    sizes: sample sizes (each in [4, N]); the pool's class balance with fixed counts.
    weights: grid [K] > 0 (default `log_weights()`, 32 weights from 0.1 to 1000).
    num_repeats: R subsamples per size.
    seed: root seed of the subsamples.
    ridge: None picks `default_ridge(sizes, d)`; else finite >= 0.
    objective, dimension, batch_size: see `sweep`.
    shard: split the repeats over every device of `devices.mesh()` (same numbers, see
      `_run_sharded`); None: when there is more than one device.

  Returns:
    RetrainResult of NumPy arrays (layer weights w in float64, raw feature units).

  Raises:
    ValueError naming the argument: non-numeric, non-finite or constant features, labels
    not in {+1, -1}, a non-finite or negative ridge or weight, bad sizes.
  """
  x_pool, x_test = _as_features("x_pool", x_pool), _as_features("x_test", x_test)
  y_pool = np.asarray(y_pool).astype(np.float64)
  y_test = np.asarray(y_test).astype(np.float64)
  for name, y, x in (("y_pool", y_pool, x_pool), ("y_test", y_test, x_test)):
    if y.shape != x.shape[:1] or not np.all((y == 1) | (y == -1)):
      raise ValueError(f"{name}: expected [{x.shape[0]}] labels in {{+1, -1}}")
  if x_test.shape[1] != x_pool.shape[1]:
    raise ValueError(f"x_test: expected width {x_pool.shape[1]}, got {x_test.shape[1]}")
  if objective not in ("worst", "balanced"):
    raise ValueError(f"objective: expected 'worst' or 'balanced', got {objective!r}")
  if dimension not in ("ambient", "participation"):
    raise ValueError(f"dimension: expected 'ambient' or 'participation', got {dimension!r}")
  count_plus, count_minus = size_counts(y_pool, sizes)
  if np.any(count_plus > count_minus):
    raise ValueError("y_pool: class +1 must be the minority (count_plus <= count_minus)")
  if weights is None:
    weights = log_weights()
  else:
    _checks.finite("weights", weights)
    weights = np.asarray(weights, np.float64)
  if weights.ndim != 1 or not np.all(weights > 0):
    raise ValueError("weights: expected a 1-D array of values > 0")
  if ridge is None:
    ridge = default_ridge(count_plus + count_minus, x_pool.shape[1])
  elif isinstance(ridge, bool) or np.ndim(ridge) != 0:
    raise ValueError(f"ridge: expected a finite number >= 0 or None, got {ridge!r}")
  _checks.finite("ridge", ridge)
  _checks.nonnegative("ridge", ridge)
  ridge = float(ridge)
  # The sweep standardizes by the pool's feature scale; dividing by a power of two near it
  # first (exact) keeps that float32 computation from overflowing or underflowing.
  prescale = lls.host_scale(x_pool - x_pool.mean(axis=0))
  dtype = jnp.result_type(float)
  if shard is None:
    shard = jax.device_count() > 1
  args = (np.asarray(x_pool / prescale, dtype), np.asarray(y_pool, dtype),
          np.asarray(x_test / prescale, dtype), np.asarray(y_test, dtype),
          jax.random.key(seed), np.asarray(count_plus), np.asarray(count_minus),
          np.asarray(weights, dtype))
  # Sharded: every input on every device (across processes each holds the same host data).
  args = devices.replicate(args) if shard else jax.tree.map(jnp.asarray, args)
  with platform.single_threaded_blas():
    result = (_run_sharded_jit if shard else _run_jit)(
        *args, num_repeats=int(num_repeats), ridge=ridge,
        objective=objective, dimension=dimension, batch_size=int(batch_size),
        row_buffers=subsample.buffer_lengths(count_plus, count_minus, x_pool.shape[0]))
    result = jax.tree.map(np.asarray, result)
  unscale = lambda layer: layer._replace(w=np.asarray(layer.w, np.float64) / prescale)
  return result._replace(
      layers=unscale(result.layers),
      methods=Methods(*(m._replace(layer=unscale(m.layer)) for m in result.methods)),
      feature_scale=np.asarray(result.feature_scale, np.float64) * prescale)


def _as_features(name: str, x) -> np.ndarray:
  """x as float64 [n, d], finite and not constant, else ValueError naming it."""
  x = _checks.real(name, x).astype(np.float64)
  if x.ndim != 2 or x.shape[0] < 1 or not np.all(np.isfinite(x)):
    bad = int(np.sum(~np.isfinite(x)))
    raise ValueError(f"{name}: expected a finite 2-D array [n, d], got shape {x.shape}"
                     + (f" with {bad} NaN/inf entries" if bad else ""))
  if name == "x_pool" and np.all(x == x[0]):
    raise ValueError(f"{name}: every feature is constant over the pool (no variance to "
                     "retrain on)")
  return x
