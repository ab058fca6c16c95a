"""Throughput of the general-covariance theory (`thumb_jax.anisotropic.class_errors`).

    python -m experiments.bench_anisotropic --out OUT [--quick] [--set d=512 ...]

Points (n, weight) per second after compilation, at dimension d, for the three paths:

  eigenbasis    fast path (a): covariances given by eigenvalues in a shared basis
                (`from_eigenbasis`), any ridge; a num_n x num_weights grid, jit(vmap(vmap)).
  generalized   fast path (b): non-commuting covariances, `prepare` -> the generalized
                eigenbasis of (Sigma_+, Sigma_-), ridge 0 only (n > d); same grid and jit.
                The one-time `prepare` (O(d^3)) is timed separately. Same program as
                eigenbasis (a Diagonalized of the same shapes), so its compile time is ~0.
  dense         the general path on the CovarianceMixture (a Cholesky and four triangular
                solves per fixed-point step, O(d^3)), `dense_points` points of the grid at
                ridge 0 (the generalized path's problem), jit(vmap).

Compile time is `lower(...).compile()`; run time is the median of `repeats` calls after a
first one, each blocked until ready (`report.time_calls`). Also checks that every point
converged and that the generalized path agrees with the dense path at ridge 0 on the dense
points. Writes results.json.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common, report
from thumb_jax import anisotropic as an
from thumb_jax import mixture as mixture_lib
from thumb_jax import platform


@dataclasses.dataclass(frozen=True)
class Config:
  seed: int = 0
  d: int = 512
  num_n: int = 32
  num_weights: int = 32
  dense_points: int = 8
  delta_min: float = 0.2           # n from d / delta_min down to d / delta_max
  delta_max: float = 0.9           # < 1: the ridge-0 generalized path needs n > d
  weight_min: float = 0.5
  weight_max: float = 50.0
  ridge: float = 0.05              # eigenbasis and dense paths
  pi_plus: float = 0.2
  power_plus: float = 1.0
  power_minus: float = 0.5
  mahalanobis_sq: float = 16.0
  repeats: int = 5
  target_points_per_s: float = 10_000.0


def config() -> Config:
  return Config()


def quick(cfg: Config) -> Config:
  return dataclasses.replace(cfg, d=32, num_n=4, num_weights=4, dense_points=2, repeats=2)


def grid_errors(form, ns: jax.Array, weights: jax.Array, ridge) -> an.GeneralErrors:
  """class_errors on the grid ns [N] x weights [K] -> [N, K] (pure; jit at the call site)."""
  per_n = lambda n: jax.vmap(lambda w: an.class_errors(form, n=n, weight=w, ridge=ridge))(weights)
  return jax.vmap(per_n)(ns)


def dense_errors(mixture: an.CovarianceMixture, ns: jax.Array, weights: jax.Array,
                 ridges: jax.Array) -> an.GeneralErrors:
  """class_errors at points (ns, weights, ridges) [P] (pure; jit at the call site)."""
  return jax.vmap(lambda n, w, r: an.class_errors(mixture, n=n, weight=w, ridge=r))(
      ns, weights, ridges)


def time_compiled(fn: Callable, args: tuple, repeats: int) -> tuple[dict, object]:
  """Compile time (`report.compile_timed`) and `report.time_calls` of the compiled function."""
  compiled, timings = report.compile_timed(jax.jit(fn), *args)
  t = report.time_calls(compiled, *args, repeats=repeats)
  return {**timings, "first_s": t.first_s, "run_s": t.times_s,
          "run_median_s": t.median_s}, t.output


def path_summary(timings: dict, out: an.GeneralErrors, points: int, target: float) -> dict:
  rate = points / timings["run_median_s"]
  return {**timings, "points": points, "points_per_s": rate, "meets_target": rate >= target,
          "all_converged": bool(np.all(out.converged)),
          "max_iterations": int(np.max(out.iterations))}


def main(argv: Sequence[str] | None = None) -> dict:
  cfg, out = common.parse_args(argv, config(), quick=quick, description=__doc__)
  dtype = jnp.result_type(float)
  key_model, key_eig = jax.random.split(jax.random.key(cfg.seed))
  mixture = mixture_lib.power_law_mixture(
      key_model, d=cfg.d, pi_plus=cfg.pi_plus, power_plus=cfg.power_plus,
      power_minus=cfg.power_minus, mahalanobis_sq=cfg.mahalanobis_sq, mean_alignment=0.5,
      commuting=False)
  mix = mixture._replace(**{k: jnp.asarray(getattr(mixture, k), dtype)
                           for k in mixture._fields[1:]})
  ns = jnp.asarray(np.geomspace(cfg.d / cfg.delta_min, cfg.d / cfg.delta_max, cfg.num_n), dtype)
  weights = jnp.asarray(np.geomspace(cfg.weight_min, cfg.weight_max, cfg.num_weights), dtype)
  grid_points = cfg.num_n * cfg.num_weights
  # Fast path (a): the same spectra, given by eigenvalues (a shared basis), a random mean.
  signal = np.sqrt(cfg.mahalanobis_sq / cfg.d) * np.asarray(jax.random.normal(key_eig, (cfg.d,)))
  eig = an.from_eigenbasis(
      pi_plus=cfg.pi_plus, eig_plus=mixture_lib.power_law_spectrum(cfg.d, cfg.power_plus),
      eig_minus=mixture_lib.power_law_spectrum(cfg.d, cfg.power_minus),
      mean_plus=0.5 * signal, mean_minus=-0.5 * signal)
  # Dense points: spread over the grid.
  pick = np.linspace(0, grid_points - 1, cfg.dense_points).round().astype(int)
  dense_n = jnp.repeat(ns, cfg.num_weights)[pick]
  dense_w = jnp.tile(weights, cfg.num_n)[pick]

  results: dict = {"d": cfg.d, "grid": [cfg.num_n, cfg.num_weights]}
  with platform.single_threaded_blas():
    timings, form = time_compiled(an.prepare, (mix,), cfg.repeats)
    results["prepare"] = timings
    results["prepare_ridge_exact"] = bool(form.ridge_exact)
    ridge = jnp.asarray(cfg.ridge, dtype)
    timings, got = time_compiled(grid_errors, (eig, ns, weights, ridge), cfg.repeats)
    results["eigenbasis"] = path_summary(timings, got, grid_points, cfg.target_points_per_s)
    zero = jnp.zeros((), dtype)
    timings, generalized = time_compiled(grid_errors, (form, ns, weights, zero), cfg.repeats)
    results["generalized"] = path_summary(timings, generalized, grid_points,
                                          cfg.target_points_per_s)
    # The dense path on the generalized path's problem (ridge 0), so the speed-up compares
    # like with like and the same outputs check their agreement.
    ridges = jnp.zeros((cfg.dense_points,), dtype)
    timings, dense0 = time_compiled(dense_errors, (mix, dense_n, dense_w, ridges), cfg.repeats)
    results["dense"] = path_summary(timings, dense0, cfg.dense_points, cfg.target_points_per_s)
  fast0 = [np.asarray(v).ravel()[pick] for v in (generalized.err_plus, generalized.err_minus)]
  results["generalized_vs_dense_max_abs_diff"] = float(np.max(np.abs(
      np.stack(fast0) - np.stack([np.asarray(dense0.err_plus), np.asarray(dense0.err_minus)]))))
  results["speedup_generalized_over_dense"] = (results["generalized"]["points_per_s"]
                                               / results["dense"]["points_per_s"])
  common.save_results(out / "results.json", config=cfg, results=results,
                      experiment="bench_anisotropic")
  for name in ("eigenbasis", "generalized", "dense"):
    r = results[name]
    print(f"{name:12s} d={cfg.d}: {r['points']} points in {r['run_median_s'] * 1e3:.1f} ms = "
          f"{r['points_per_s']:,.0f} points/s (compile {r['compile_s']:.1f} s, max "
          f"{r['max_iterations']} iterations, converged {r['all_converged']})")
  print(f"prepare (one-time, d={cfg.d}): {results['prepare']['run_median_s'] * 1e3:.0f} ms; "
        f"generalized vs dense at ridge 0: max |diff| "
        f"{results['generalized_vs_dense_max_abs_diff']:.2e}", flush=True)
  return results


if __name__ == "__main__":
  main(sys.argv[1:])
