"""Benchmark of the whole last-layer retraining sweep (`thumb_jax.retrain`), compile vs run.

  python -m experiments.bench_retrain --out OUT [--quick] [--set dim=512 ...]

Gaussian pool embeddings (minority share `pi_plus`, |mu| = `mean_norm`, mu_- = -mu_+), one
jitted call over sizes x repeats x weights (by default d = 512, 12 sizes n = 128 .. 2048,
10 repeats, 32 weights, ridge 1e-3), with every method of `retrain.sweep` (subsample masks,
plug-in theory weights per subsample and on the pool, downsampling, the theory overlay):
the computation `retrain.run` jits. Compile time is `lower(...).compile()`; run time is the
median of `num_runs` calls after a first one (`report.time_calls`), each blocked until the
results are ready, with the process's CPU seconds and the load average beside it (other
jobs on the machine inflate the wall time). Writes results.json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common, report
from thumb_jax import mixture, platform, retrain, subsample


@dataclasses.dataclass(frozen=True)
class Config:
  dim: int = 512
  pool_size: int = 2048          # largest size: delta = 0.25 at d = 512
  min_size: int = 128
  num_sizes: int = 12
  num_repeats: int = 10
  num_weights: int = 32
  test_size: int = 2000
  pi_plus: float = 0.1
  mean_norm: float = 2.0
  ridge: float = 1e-3
  batch_size: int = 8
  num_runs: int = 3
  single_thread_blas: bool = True   # see platform.single_threaded_blas
  seed: int = 0


def config() -> Config:
  return Config()


def quick(cfg: Config) -> Config:
  return dataclasses.replace(cfg, dim=32, pool_size=256, min_size=32, num_sizes=4,
                             num_repeats=3, num_weights=8, test_size=200, num_runs=1)


def main(argv=None) -> dict:
  cfg, out = common.parse_args(argv, config(), quick=quick, description=__doc__)
  mix = mixture.GaussianMixture.symmetric(pi_plus=cfg.pi_plus, mean_norm=cfg.mean_norm)
  key_pool, key_test, key_masks = jax.random.split(jax.random.key(cfg.seed), 3)
  x_pool, y_pool = mixture.sample(key_pool, mix, n=cfg.pool_size, d=cfg.dim)
  x_test, y_test = mixture.sample(key_test, mix, n=cfg.test_size, d=cfg.dim)
  sizes = np.unique(np.round(np.geomspace(cfg.min_size, cfg.pool_size, cfg.num_sizes)).astype(int))
  if len(sizes) != cfg.num_sizes:
    raise ValueError(f"num_sizes: {cfg.num_sizes} log-spaced sizes from {cfg.min_size} to "
                     f"{cfg.pool_size} round to only {len(sizes)} distinct ones")
  count_plus, count_minus = retrain.size_counts(y_pool, sizes)
  weights = jnp.asarray(retrain.log_weights(cfg.num_weights))
  args = (x_pool, y_pool, x_test, y_test, key_masks, jnp.asarray(count_plus),
          jnp.asarray(count_minus), weights)
  static = dict(num_repeats=cfg.num_repeats, ridge=cfg.ridge, objective="worst",
                dimension="ambient", batch_size=cfg.batch_size,
                row_buffers=subsample.buffer_lengths(count_plus, count_minus, cfg.pool_size))

  blas = platform.single_threaded_blas() if cfg.single_thread_blas else contextlib.nullcontext()
  with blas:
    compiled, timings = report.compile_timed(
        retrain._run_jit, *args, **static)  # pylint: disable=protected-access
    t = report.time_calls(compiled, *args, repeats=cfg.num_runs)
  result, runs, cpu = t.output, t.times_s, t.cpu_s
  timings["first_run_s"] = t.first_s
  timings["run_s"] = runs
  timings["run_median_s"] = t.median_s
  # CPU seconds of this process per run (all its threads): with other jobs on the machine
  # the wall time grows, this much less.
  timings["run_cpu_s"] = cpu
  timings["load_average_after"] = list(os.getloadavg())
  num_fits = len(sizes) * cfg.num_repeats
  summary = {
      "sizes": sizes, "num_subsamples": num_fits,
      "grid_solves": num_fits * cfg.num_weights,
      "timings": timings,
      "target_run_s": 5.0,
      "mean_worst_error_theory": np.asarray(
          result.methods.theory_ambient.errors.worst).mean(axis=1),
      "mean_worst_error_prior_ratio": np.asarray(
          result.methods.prior_ratio.errors.worst).mean(axis=1),
  }
  print(f"retrain sweep d={cfg.dim} N={cfg.pool_size} sizes={len(sizes)} repeats={cfg.num_repeats} "
        f"weights={cfg.num_weights}: lower {timings['lower_s']:.1f} s, compile "
        f"{timings['compile_s']:.1f} s, run {timings['run_median_s']:.2f} s (median of "
        f"{cfg.num_runs}: {', '.join(f'{r:.2f}' for r in runs)}; CPU "
        f"{', '.join(f'{c:.2f}' for c in cpu)} s; load average "
        f"{timings['load_average_after'][0]:.1f} on {os.cpu_count()} CPUs)")
  common.save_results(out / "results.json", config=cfg, results=summary)
  return summary


if __name__ == "__main__":
  main()
