"""Gaussian-mixture simulations against the asymptotic theory: all four experiments.

    python -m experiments.gaussian --out out/gaussian [--quick] [--set num_seeds=8]

runs error_vs_delta, error_vs_weight, downsampling and ridge (each into its own
subfolder of --out) and prints a short summary. This module also holds the
simulation core the four share:

  one seed   = one pool of the largest n drawn with `mixture.sample`;
  one row    = a 0/1 mask over the pool (a sample size, or a downsampled set),
               a vector of K class weights and a ridge;
  one sweep  = jax.jit(jax.vmap(simulate_seed)) over seeds, rows inside by
               `lax.map`, weights inside by `lls.fit_sweep`;
  errors are exact (`metrics.gaussian_class_errors`), no test sampling.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from thumb_jax import lls, metrics
from thumb_jax import mixture as mixture_lib
from thumb_jax.metrics import ClassErrors
from thumb_jax.mixture import GaussianMixture


# ----------------------------------------------------------------------------- simulation core

def pool_labels(mixture: GaussianMixture, n_pool: int) -> np.ndarray:
  """The labels `mixture.sample(..., n=n_pool, fixed_counts=True)` returns (minority first)."""
  n_plus, _ = mixture_lib.class_counts(n_pool, mixture.pi_plus)
  return np.where(np.arange(n_pool) < n_plus, 1.0, -1.0)


def sizes_for(deltas: Sequence[float], d: int) -> np.ndarray:
  """Sample sizes n = round(d / delta) (the realized delta is d / n)."""
  return np.array([int(round(d / delta)) for delta in deltas])


def downsample_masks(y: np.ndarray, sizes: Sequence[int], pi_plus: float) -> jax.Array:
  """Masks keeping the n_+(n) minority rows of each size-n subsample and as many majority rows.

  n_+(n) = round(pi_plus n) as in `nested_masks`; the balanced set has 2 n_+(n) rows,
  which `nested_masks` with pi_plus = 1/2 selects from the same pool (first rows of each class).
  """
  counts = [mixture_lib.class_counts(int(n), pi_plus)[0] for n in sizes]
  return mixture_lib.nested_masks(y, [2 * c for c in counts], pi_plus=0.5)


def simulate_seed(key: jax.Array, masks: jax.Array, weights: jax.Array, ridges: jax.Array, *,
                  mixture: GaussianMixture, d: int) -> ClassErrors:
  """Exact per-class test errors of the weighted last layer for one simulated pool.

  Rows are looped with `lax.map` (one row's memory per seed); seeds are vmapped by
  the caller and weights are vectorized inside `lls.fit_sweep`. Mapping the rows keeps
  one row's memory per seed (and fewer batched LAPACK calls in flight: jaxlib 0.10.0-0.10.2,
  excluded by pyproject.toml, deadlocked on them on 2 CPU threads).

  Args:
    key: PRNG key of this seed.
    masks: [R, N] 0/1 rows of the pool kept by each row (N = pool size).
    weights: [R, K] minority class weights per row.
    ridges: [R] ridge per row.
    mixture: the model (static: fixed class counts need a Python pi_plus).
    d: dimension (static).

  Returns:
    ClassErrors with err_plus, err_minus [R, K].
  """
  x, y = mixture_lib.sample(key, mixture, n=masks.shape[-1], d=d)
  mu_plus, mu_minus = mixture_lib.means(mixture, d)

  def row(args):
    mask, weight, ridge = args
    layer = lls.fit_sweep(x, y, weight, ridge=ridge, mask=mask)
    return metrics.gaussian_class_errors(layer, mu_plus, mu_minus, var_plus=mixture.var_plus,
                                         var_minus=mixture.var_minus)

  return jax.lax.map(row, (masks, weights, ridges))


@functools.lru_cache(maxsize=None)
def make_sweep(mixture: GaussianMixture, *, d: int):
  """jit(vmap over seeds) of `simulate_seed`: (keys [S], masks, weights, ridges) -> [S, R, K].

  Cached per (mixture, d): new data (keys, masks, weights, ridges of the
  same shapes) never retraces.
  """
  one = functools.partial(simulate_seed, mixture=mixture, d=d)
  return jax.jit(jax.vmap(one, in_axes=(0, None, None, None)))


def seed_keys(seed: int, num_seeds: int) -> jax.Array:
  """The run's keys: one root key split once; experiments `fold_in` an index per sweep."""
  return jax.random.split(jax.random.key(seed), num_seeds)


def fold(keys: jax.Array, index: int) -> jax.Array:
  return jax.vmap(lambda k: jax.random.fold_in(k, index))(keys)


def run_sweep(mixture: GaussianMixture, keys: jax.Array, *, d: int, masks, weights,
              ridges) -> ClassErrors:
  """Runs one sweep and returns float64 NumPy ClassErrors [S, R, K]."""
  sweep = make_sweep(mixture, d=d)
  dtype = jnp.result_type(float)
  errors = sweep(keys, jnp.asarray(masks, dtype), jnp.asarray(weights, dtype),
                 jnp.asarray(ridges, dtype))
  return ClassErrors(np.asarray(errors.err_plus, np.float64),
                     np.asarray(errors.err_minus, np.float64))


class Summary(NamedTuple):
  """Mean and 95% t-interval over seeds of each per-class error (shapes: the sweep's less S)."""
  err_plus: metrics.MeanCI
  err_minus: metrics.MeanCI
  worst: metrics.MeanCI


def summarize(errors: ClassErrors) -> Summary:
  worst = np.maximum(errors.err_plus, errors.err_minus)
  return Summary(metrics.mean_ci(errors.err_plus), metrics.mean_ci(errors.err_minus),
                 metrics.mean_ci(worst))


def agreement(summary: Summary, theory: ClassErrors) -> dict:
  """Theory vs simulation: largest absolute gap of the per-class means, and its z-score.

  z = gap / standard error of the simulated mean (frac_within_ci: gap <= the 95%
  t-interval's half width); finite-d bias shows as large z with a small gap, so both are
  reported.
  """
  gaps, zs, inside = [], [], []
  for sim, th in ((summary.err_plus, theory.err_plus), (summary.err_minus, theory.err_minus)):
    th = np.asarray(th, np.float64)
    gap = np.abs(sim.mean - th)
    with np.errstate(invalid="ignore", divide="ignore"):
      z = gap / sim.standard_error
    gaps.append(gap)
    zs.append(z)
    inside.append(np.where(np.isnan(gap), np.nan, (gap <= sim.half_width).astype(float)))
  gap, z = np.stack(gaps), np.stack(zs)
  return {"max_abs_gap": float(np.nanmax(gap)), "mean_abs_gap": float(np.nanmean(gap)),
          "max_z": float(np.nanmax(np.where(np.isfinite(z), z, np.nan))),
          "frac_within_ci": float(np.nanmean(np.stack(inside)))}


def ci_dict(ci: metrics.MeanCI) -> dict:
  return {"mean": ci.mean, "low": ci.low, "high": ci.high}


# ----------------------------------------------------------------------------- entry point

EXPERIMENTS = ("error_vs_delta", "error_vs_weight", "downsampling", "ridge")


@dataclasses.dataclass(frozen=True)
class Config:
  seed: int = 0
  num_seeds: int | None = None     # None: each experiment's default
  experiments: tuple[str, ...] = EXPERIMENTS
  quick: bool = False              # run each experiment's quick variant


def config() -> Config:
  return Config()


def quick(cfg: Config) -> Config:
  return dataclasses.replace(cfg, quick=True)


def _modules():
  # Imported here: the experiment modules import this one for the simulation core.
  from experiments import downsampling, error_vs_delta, error_vs_weight, ridge
  return {"error_vs_delta": error_vs_delta, "error_vs_weight": error_vs_weight,
          "downsampling": downsampling, "ridge": ridge}


def main(argv: Sequence[str] | None = None) -> dict:
  cfg, out = common.parse_args(argv, config(), quick=quick, description=__doc__)
  modules = _modules()
  unknown = [name for name in cfg.experiments if name not in modules]
  if unknown:
    raise ValueError(f"experiments: unknown {unknown}; expected names from {list(modules)}")
  start = time.perf_counter()
  summaries, timings = {}, {}
  for name in common.progress(cfg.experiments, desc="gaussian experiments"):
    module = modules[name]
    sub = module.quick(module.config()) if cfg.quick else module.config()
    sub = dataclasses.replace(sub, seed=cfg.seed)
    if cfg.num_seeds is not None:
      sub = dataclasses.replace(sub, num_seeds=cfg.num_seeds)
    with common.stopwatch(timings, name):
      result = module.run(sub, out / name)
    summaries[name] = result["summary"]
    print(f"[{name}] {timings[name]:.1f}s  " + module.headline(result["summary"]), flush=True)
  wall = time.perf_counter() - start
  print(f"gaussian: {len(cfg.experiments)} experiments in {wall:.1f}s wall -> {out}", flush=True)
  payload = {"summary": summaries, "seconds": timings, "wall_seconds": wall}
  common.save_results(out / "summary.json", config=cfg, results=payload)
  return payload


if __name__ == "__main__":
  main(sys.argv[1:])
