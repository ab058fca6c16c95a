"""Monte Carlo per-class errors of weighted last layers on simulated Gaussian pools.

The layout every simulation study shares:

  one seed  = one pool of N rows drawn from the model (minority rows first);
  one row   = a 0/1 mask over the pool (a sample size, or a downsampled set), K class
              weights and a ridge; the K weights share one factorization (`lls.fit_sweep`);
  errors    = exact per-class test errors of each fitted layer under the model
              (`metrics.gaussian_class_errors`), no test sampling.

Rows run under `lax.map` (one row's memory per seed); seeds are vmapped. `intervals` and
`agreement` turn a sweep's [S, ...] errors into means with 95% t-intervals and compare them
with a theory.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from thumb_jax import devices, lls, metrics
from thumb_jax import mixture as mixture_lib
from thumb_jax.metrics import ClassErrors
from thumb_jax.mixture import CovarianceMixture, GaussianMixture

# ----------------------------------------------------------------------------- pools and keys

def pool_labels(pi_plus: float, n_pool: int) -> np.ndarray:
  """Labels [n_pool] of a pool drawn with fixed class counts (the minority's rows first).

  As `mixture.sample(..., fixed_counts=True)` returns them.
  """
  n_plus, _ = mixture_lib.class_counts(n_pool, pi_plus)
  return np.where(np.arange(n_pool) < n_plus, 1.0, -1.0)


def sizes_for(deltas: Sequence[float], d: int) -> np.ndarray:
  """Sample sizes n = round(d / delta) [len(deltas)] (the realized delta is d / n).

  Raises:
    ValueError: no deltas, a delta <= 0, or one that rounds to n < 2.
  """
  deltas = [float(v) for v in deltas]
  if not deltas:
    raise ValueError("deltas: expected at least one value")
  if min(deltas) <= 0:
    raise ValueError(f"deltas: expected values > 0, got {deltas}")
  sizes = np.array([int(round(d / delta)) for delta in deltas])
  if sizes.min() < 2:
    raise ValueError(f"deltas: d / delta must round to a size >= 2, got sizes {sizes.tolist()} "
                     f"for d = {d}")
  return sizes


def seed_keys(seed: int, num_seeds: int) -> jax.Array:
  """The run's keys [num_seeds]: one root key split once (studies `fold_in` per sweep).

  Raises:
    ValueError: num_seeds < 2 (a confidence interval needs two seeds).
  """
  if not isinstance(num_seeds, (int, np.integer)) or num_seeds < 2:
    raise ValueError(f"num_seeds: expected an integer >= 2, got {num_seeds!r}")
  return jax.random.split(jax.random.key(seed), num_seeds)


def fold(keys: jax.Array, index: int) -> jax.Array:
  """fold_in(key, index) for every key [S]."""
  return jax.vmap(lambda k: jax.random.fold_in(k, index))(keys)


# ----------------------------------------------------------------------------- one seed

def class_errors_fn(mixture: GaussianMixture | CovarianceMixture, d: int | None = None):
  """layer -> exact ClassErrors under `mixture` (d: the dimension, for a GaussianMixture)."""
  if isinstance(mixture, CovarianceMixture):
    return lambda layer: metrics.gaussian_class_errors(
        layer, mixture.mean_plus, mixture.mean_minus, cov_plus=mixture.cov_plus,
        cov_minus=mixture.cov_minus)
  mu_plus, mu_minus = mixture_lib.means(mixture, d)
  return lambda layer: metrics.gaussian_class_errors(
      layer, mu_plus, mu_minus, var_plus=mixture.var_plus, var_minus=mixture.var_minus)


def simulate_seed(key: jax.Array, masks: jax.Array, weights: jax.Array, ridges: jax.Array, *,
                  mixture: GaussianMixture | CovarianceMixture,
                  d: int | None = None) -> ClassErrors:
  """Exact per-class test errors of the weighted last layer for one simulated pool (pure).

  Args:
    key: PRNG key of this seed.
    masks: [R, N] 0/1 rows of the pool kept by each row (N = pool size).
    weights: [R, K] minority class weights per row.
    ridges: [R] ridge per row.
    mixture: the model, isotropic or general-covariance (pi_plus a Python float: the class
      counts are static).
    d: dimension (static; required for a GaussianMixture).

  Returns:
    ClassErrors with err_plus, err_minus [R, K].
  """
  x, y = mixture_lib.sample(key, mixture, n=masks.shape[-1], d=d)

  def row(args):
    mask, weight, ridge = args
    return errors(lls.fit_sweep(x, y, weight, ridge=ridge, mask=mask))

  errors = class_errors_fn(mixture, d)
  return jax.lax.map(row, (masks, weights, ridges))


# ----------------------------------------------------------------------------- sweeps

@functools.cache
def compiled_sweep(mixture: GaussianMixture, *, d: int):
  """jit(vmap over seeds) of `simulate_seed`, seeds sharded over all devices.

  (keys [S], masks, weights, ridges) -> [S, R, K].

  Cached per (mixture, d): new keys, masks, weights or ridges of the same shapes never
  retrace.
  """
  one = functools.partial(simulate_seed, mixture=mixture, d=d)
  return devices.sharded_vmap(one, in_axes=(0, None, None, None))  # seeds over the devices


def _as_numpy(errors: ClassErrors) -> ClassErrors:
  return ClassErrors(np.asarray(errors.err_plus, np.float64),
                     np.asarray(errors.err_minus, np.float64))


def run_sweep(mixture: GaussianMixture, keys: jax.Array, *, d: int, masks, weights,
              ridges) -> ClassErrors:
  """Runs `compiled_sweep` in the default float dtype.

  Args:
    mixture: the isotropic model; keys: [S]; d: dimension.
    masks: [R, N] 0/1; weights: [R, K]; ridges: [R].

  Returns:
    float64 NumPy ClassErrors [S, R, K].
  """
  dtype = jnp.result_type(float)
  errors = compiled_sweep(mixture, d=d)(keys, jnp.asarray(masks, dtype),
                                        jnp.asarray(weights, dtype), jnp.asarray(ridges, dtype))
  return _as_numpy(errors)


@functools.cache
def _compiled_covariance_sweep(pi_plus: float):
  """jit(vmap over seeds) of `simulate_seed` with the mixture's arrays as arguments."""
  def one(key, masks, weights, ridges, arrays):
    return simulate_seed(key, masks, weights, ridges,
                         mixture=CovarianceMixture(pi_plus, *arrays))

  return devices.sharded_vmap(one, in_axes=(0, None, None, None, None))


def run_covariance_sweep(mixture: CovarianceMixture, keys: jax.Array, *, masks, weights,
                         ridges) -> ClassErrors:
  """`run_sweep` for a general-covariance model (compiled once per pi_plus and shapes).

  Args:
    mixture: CovarianceMixture (pi_plus a Python float); keys: [S].
    masks: [R, N] 0/1; weights: [R, K]; ridges: [R].

  Returns:
    float64 NumPy ClassErrors [S, R, K].
  """
  dtype = jnp.result_type(float)
  arrays = tuple(jnp.asarray(v, dtype) for v in mixture[1:])
  sweep = _compiled_covariance_sweep(float(mixture.pi_plus))
  return _as_numpy(sweep(keys, jnp.asarray(masks, dtype), jnp.asarray(weights, dtype),
                         jnp.asarray(ridges, dtype), arrays))


# ----------------------------------------------------------------------------- summaries

class Intervals(NamedTuple):
  """Mean and 95% t-interval over seeds of each error (shapes: the sweep's less S)."""
  err_plus: metrics.MeanCI
  err_minus: metrics.MeanCI
  worst: metrics.MeanCI


def intervals(errors: ClassErrors) -> Intervals:
  """Per-class and worst-class means and 95% t-intervals over the seeds axis (axis 0)."""
  worst = np.maximum(errors.err_plus, errors.err_minus)
  return Intervals(metrics.mean_ci(errors.err_plus), metrics.mean_ci(errors.err_minus),
                   metrics.mean_ci(worst))


class Agreement(NamedTuple):
  """Theory against simulation over both classes and every point (NaN points ignored).

  max_abs_gap, mean_abs_gap: of |simulated mean - theory|; max_z: the largest gap in
  standard errors of the simulated mean; frac_within_ci: share of points whose gap is
  inside the 95% t-interval. Finite-d bias shows as a large z with a small gap, so both
  are reported.
  """
  max_abs_gap: float
  mean_abs_gap: float
  max_z: float
  frac_within_ci: float


def agreement(sim: Intervals, theory: ClassErrors) -> Agreement:
  """Compares simulated intervals with theory errors of the same shape."""
  gaps, zs, inside = [], [], []
  for ci, th in ((sim.err_plus, theory.err_plus), (sim.err_minus, theory.err_minus)):
    gap = np.abs(ci.mean - np.asarray(th, np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
      z = gap / ci.standard_error
    gaps.append(gap)
    zs.append(z)
    inside.append(np.where(np.isnan(gap), np.nan, (gap <= ci.half_width).astype(float)))
  gap, z = np.stack(gaps), np.stack(zs)
  if np.all(np.isnan(gap)):
    return Agreement(np.nan, np.nan, np.nan, np.nan)
  finite_z = np.where(np.isfinite(z), z, np.nan)
  max_z = float(np.nanmax(finite_z)) if np.any(np.isfinite(finite_z)) else np.nan
  return Agreement(float(np.nanmax(gap)), float(np.nanmean(gap)), max_z,
                   float(np.nanmean(np.stack(inside))))
