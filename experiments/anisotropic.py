"""General class covariances: theory vs simulation, the isotropic shortcut, real embeddings.

    python -m experiments.anisotropic --out out/anisotropic [--quick] [--set d=300]
        [--set embeddings=DIR]

Three studies (THEORY.md, "General class covariances"; `thumb_jax.anisotropic`):

(a) simulation  Rotated power-law class covariances (`power_law_mixture`; independent
    rotations unless `commuting`), mean difference of Mahalanobis size `mahalanobis_sq`.
    Per-class error against delta = d / n (ridge 0 below delta = 1, `ridge` from 1 on) for
    the prior-ratio weight and `other_weights`: the general theory (curves) against
    `thumb_jax.simulate` (points: mean and 95% t-interval over seeds of exact Gaussian
    errors), and the isotropic plug-in's theory at delta and at delta_eff = d_eff / n.
(b) shortcut    For each of `shortcut_powers` (Sigma_+ has power + `power_gap`, a shared
    eigenbasis): the worst-class optimal weight against delta from the general theory and
    from the isotropic theory at delta and at delta_eff, and the worst-class error each
    weight gets under the general theory; the excess over the general optimum is the cost
    of the one-number shortcut (`anisotropic.isotropic_plug_in`: population moments).
(c) embeddings  (with `embeddings` set) the three plug-ins against retraining on real
    embeddings (`experiments.anisotropic_real`).

Writes results.json (config, platform, every number), a_simulation.csv, a_curves.csv,
b_shortcut.csv, c_embeddings.csv (with embeddings), one PNG per study, and prints a summary.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from experiments import anisotropic_figures as figures
from experiments import anisotropic_real as real
from experiments import common, report
from experiments.anisotropic_theory import (
  CHOICES,
  Shortcut,
  Simulation,
  as_jnp,
  fast_points,
  ridge_for,
  theory_triplet,
)
from thumb_jax import anisotropic as an
from thumb_jax import metrics, platform, simulate, subsample, theory
from thumb_jax.metrics import ClassErrors
from thumb_jax.mixture import power_law_mixture


@dataclasses.dataclass(frozen=True)
class Config:
  seed: int = 0
  # The model of (a); (b) reuses d, pi_plus, mahalanobis_sq, mean_alignment and ridge.
  d: int = 256
  pi_plus: float = 0.2
  power_plus: float = 1.0
  power_minus: float = 0.5
  commuting: bool = False            # False: Sigma_+ and Sigma_- rotated independently
  mahalanobis_sq: float = 16.0       # dmu' Sigma^-1 dmu, Sigma the pooled covariance
  mean_alignment: float = 0.5        # dmu = Sigma^a u, u ~ N(0, I), then scaled
  ridge: float = 0.05                # where delta >= 1 (ridge 0 below)
  # (a) simulation.
  num_seeds: int = 32
  deltas: tuple[float, ...] = (0.2, 0.35, 0.5, 0.65, 0.8, 1.2, 1.6, 2.0)
  other_weights: tuple[float, ...] = (1.0, 2.0)   # besides the prior ratio
  theory_points: int = 12            # curve points per regime (ridge 0 / ridge > 0)
  theory_x64: bool = True            # theory in float64 (simulation stays float32)
  # (b) the isotropic shortcut.
  shortcut_powers: tuple[float, ...] = (0.0, 1.0, 2.0)   # flat, moderate, steep
  power_gap: float = 0.5             # Sigma_+ power = power + power_gap
  shortcut_deltas: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9,
                                        1.2, 1.5, 2.0, 3.0)
  good_enough: float = 0.005         # excess worst-class error counted as negligible
  search_grid: int = 128             # log10 weight grid in [-2, 4], refined twice (1/4 size)
  # (c) real embeddings.
  embeddings: str = ""               # folder with val.npz / test.npz; empty: skip (c)
  embedding_pi_plus: float = 0.0     # > 0: drop minority pool rows down to this share
  embedding_max_delta: float = 2.0
  embedding_num_sizes: int = 6
  num_repeats: int = 10
  num_weights: int = 24
  weight_low: float = 0.1
  weight_high: float = 1000.0
  shrinkage: float | None = None     # None: Ledoit-Wolf per class
  debias_mean: bool = True           # shrink |dmu_hat|^2 by its sampling bias
  project_to_span: bool = True       # estimate in the span of the centred pool (see span_basis)


def config() -> Config:
  return Config()


def quick(cfg: Config) -> Config:
  return dataclasses.replace(cfg, d=40, num_seeds=4, deltas=(0.3, 0.7, 1.5),
                             theory_points=4, shortcut_deltas=(0.3, 0.7, 1.5),
                             embedding_num_sizes=3, num_repeats=3, num_weights=8)


def simulation_study(cfg: Config, key_model: jax.Array, key_sim: jax.Array) -> Simulation:
  mixture = power_law_mixture(key_model, d=cfg.d, pi_plus=cfg.pi_plus,
                              power_plus=cfg.power_plus, power_minus=cfg.power_minus,
                              mahalanobis_sq=cfg.mahalanobis_sq,
                              mean_alignment=cfg.mean_alignment, commuting=cfg.commuting)
  sizes = simulate.sizes_for(cfg.deltas, cfg.d)
  delta = cfg.d / sizes
  ridges = ridge_for(delta, cfg.ridge)
  weights = np.array([(1 - cfg.pi_plus) / cfg.pi_plus, *cfg.other_weights])
  labels = simulate.pool_labels(cfg.pi_plus, int(sizes.max()))
  masks = subsample.nested_masks(labels, sizes, pi_plus=cfg.pi_plus)
  keys = jax.random.split(key_sim, cfg.num_seeds)
  with platform.single_threaded_blas():
    errors = simulate.run_covariance_sweep(mixture, keys, masks=masks,
                                           weights=np.tile(weights, (len(sizes), 1)),
                                           ridges=ridges)

  below = np.linspace(min(0.9 * min(cfg.deltas), 0.15), 0.95, cfg.theory_points)
  above = np.linspace(1.0, max(max(cfg.deltas), 1.05), cfg.theory_points)
  curve_delta = np.concatenate([below, above])
  curve_ridge = ridge_for(curve_delta, cfg.ridge)
  with jax.enable_x64(cfg.theory_x64), platform.single_threaded_blas():
    plug = an.isotropic_plug_in(as_jnp(mixture))
    # Simulated points and curve points in one call (one compiled shape per path).
    both = theory_triplet(mixture, plug, d=cfg.d, n=np.concatenate([sizes, cfg.d / curve_delta]),
                          weights=weights, ridge=np.concatenate([ridges, curve_ridge]))
    at_points = [type(t)(*(v[:len(sizes)] for v in t)) for t in both]
    curves = [type(t)(*(v[len(sizes):] for v in t)) for t in both]
  return Simulation(weights, sizes, delta, ridges, errors, *at_points, curve_delta, curve_ridge,
                    *curves, float(plug.d_eff))


def simulation_agreement(sim: Simulation, d: int) -> dict:
  """Theory vs simulation per point: gap, z = gap / standard error, the test's tolerance.

  Tolerance (tests/test_anisotropic.py): gap <= 4 standard errors + 1 / d (the finite-size
  bias of the deterministic equivalents is O(1/n_k)).
  """
  summary = simulate.intervals(sim.errors)
  out = simulate.agreement(summary, ClassErrors(sim.general.err_plus,
                                                sim.general.err_minus))._asdict()
  within = []
  for errs, pred in ((sim.errors.err_plus, sim.general.err_plus),
                     (sim.errors.err_minus, sim.general.err_minus)):
    se = errs.std(0, ddof=1) / np.sqrt(errs.shape[0])
    within.append(np.abs(errs.mean(0) - pred) <= 4 * se + 1.0 / d)
  out["within_tolerance"] = bool(np.all(within))
  out["num_outside_tolerance"] = int(np.sum(~np.stack(within)))
  for name, pred in (("iso", sim.iso), ("iso_eff", sim.iso_eff)):
    gap = np.abs(np.stack([summary.err_plus.mean - pred.err_plus,
                           summary.err_minus.mean - pred.err_minus]))
    out[f"{name}_max_abs_gap"] = float(np.nanmax(gap))
    out[f"{name}_mean_abs_gap"] = float(np.nanmean(gap))
  out["general_converged"] = bool(np.all(sim.general.converged)
                                  and np.all(sim.curve_general.converged))
  return out


# ----------------------------------------------------------------------------- (b) shortcut


_prepare = jax.jit(an.prepare)


@functools.partial(jax.jit, static_argnames=("grid_size", "refine_size"))
def _general_optimum(form, n, ridge, *, grid_size, refine_size):
  return an.optimal_weight(form, n=n, ridge=ridge, grid_size=grid_size, refine_size=refine_size)


@functools.partial(jax.jit, static_argnames=("grid_size", "refine_size"))
def _isotropic_optimum(mixture, delta, ridge, *, grid_size, refine_size):
  return theory.optimal_weight(mixture, delta, ridge, grid_size=grid_size,
                               refine_size=refine_size)


def shortcut_study(cfg: Config, key: jax.Array, power: float) -> Shortcut:
  mixture = power_law_mixture(key, d=cfg.d, pi_plus=cfg.pi_plus, power_plus=power + cfg.power_gap,
                              power_minus=power, mahalanobis_sq=cfg.mahalanobis_sq,
                              mean_alignment=cfg.mean_alignment, commuting=True)
  delta = np.asarray(cfg.shortcut_deltas, np.float64)
  ridge = ridge_for(delta, cfg.ridge)
  n = cfg.d / delta
  search = dict(grid_size=cfg.search_grid, refine_size=cfg.search_grid // 4)
  with jax.enable_x64(cfg.theory_x64), platform.single_threaded_blas():
    mix = as_jnp(mixture)
    form = _prepare(mix)
    if not bool(form.ridge_exact):
      raise ValueError("shortcut: expected commuting covariances (a shared eigenbasis)")
    plug = an.isotropic_plug_in(mix)
    dtype = jnp.result_type(float)
    n_, ridge_ = jnp.asarray(n, dtype), jnp.asarray(ridge, dtype)
    # The library searches (log objective, grid then refinement), one per delta.
    general = _general_optimum(form, n_, ridge_, **search)
    iso = functools.partial(_isotropic_optimum, **search)
    iso_at = {"iso": iso(plug.mixture, jnp.asarray(delta, dtype), ridge_),
              "iso_eff": iso(plug.mixture, jnp.asarray(plug.d_eff / n, dtype), ridge_)}
    weight = {"general": np.asarray(general.weight, np.float64),
              **{c: np.asarray(o.weight, np.float64) for c, o in iso_at.items()},
              "prior_ratio": np.full(delta.shape, theory.prior_ratio(cfg.pi_plus))}
    # The worst-class error each weight actually gets under the general theory.
    worst = {c: np.asarray(fast_points(form, n_, jnp.asarray(w, dtype), ridge_).worst,
                           np.float64) for c, w in weight.items()}
    claimed = {"general": np.asarray(general.value, np.float64),
               **{c: np.asarray(o.value, np.float64) for c, o in iso_at.items()}}
  excess = {c: worst[c] - worst["general"] for c in CHOICES}
  return Shortcut(power, float(plug.d_eff), delta, ridge, weight, worst, excess, claimed)


def shortcut_summary(shortcuts: Sequence[Shortcut], good_enough: float) -> dict:
  out = {}
  for s in shortcuts:
    entry = {"d_eff": s.d_eff}
    for choice in CHOICES[1:]:
      excess = s.excess[choice]
      log_ratio = np.abs(np.log10(s.weight[choice] / s.weight["general"]))
      entry[choice] = {
          "max_excess_worst": float(np.nanmax(excess)),
          "mean_excess_worst": float(np.nanmean(excess)),
          "delta_at_max_excess": float(s.delta[np.nanargmax(excess)]),
          "frac_good_enough": float(np.mean(excess <= good_enough)),
          "median_abs_log10_weight_ratio": float(np.nanmedian(log_ratio)),
      }
      if choice in s.claimed:
        entry[choice]["max_abs_claimed_minus_actual"] = float(np.nanmax(np.abs(
            s.claimed[choice] - s.worst[choice])))
    out[f"power={s.power:g}"] = entry
  return out


def headline(summary: dict) -> str:
  a = summary["simulation"]
  lines = [(f"(a) general theory vs simulation: max |gap| {a['max_abs_gap']:.4f}, mean "
            f"{a['mean_abs_gap']:.4f}, max z {a['max_z']:.2f}, {100 * a['frac_within_ci']:.0f}% "
            f"within 95% CI, within tolerance (4 se + 1/d) everywhere: {a['within_tolerance']}; "
            f"isotropic at delta: max |gap| {a['iso_max_abs_gap']:.4f}, at delta_eff "
            f"{a['iso_eff_max_abs_gap']:.4f} (d_eff = {a['d_eff']:.1f})")]
  for key, entry in summary["shortcut"].items():
    parts = [f"{c}: max excess {entry[c]['max_excess_worst']:.4f} at delta "
             f"{entry[c]['delta_at_max_excess']:g}, good enough at "
             f"{100 * entry[c]['frac_good_enough']:.0f}%" for c in CHOICES[1:]]
    lines.append(f"(b) {key} (d_eff {entry['d_eff']:.1f}): " + "; ".join(parts))
  if "embeddings" in summary:
    e = summary["embeddings"]
    parts = [f"{name}: mean |pred - meas| {e[name]['mean_abs_diff']:.4f}, best weight matched "
             f"{int(np.sum(e[name]['best_weight_matches']))}/{len(e[name]['best_weight_matches'])}"
             f" sizes, mean worst lost {e[name]['mean_worst_lost']:.4f}" for name in real.PLUG_INS]
    lines.append("(c) embeddings: " + "; ".join(parts))
  return "\n".join(lines)


def run(cfg: Config, out) -> dict:
  common.positive_ints(cfg, "num_seeds", "d", "theory_points", "search_grid", minimum=2)
  if cfg.embeddings:
    common.positive_ints(cfg, "num_repeats", "num_weights", "embedding_num_sizes")
  out = common.ensure_dir(out)
  timings: dict = {}
  key_model, key_sim, key_spectra, key_emb = jax.random.split(jax.random.key(cfg.seed), 4)
  with common.stopwatch(timings, "simulation"):
    sim = simulation_study(cfg, key_model, key_sim)
  with common.stopwatch(timings, "shortcut"):
    shortcuts = [shortcut_study(cfg, jax.random.fold_in(key_spectra, i), power)
                 for i, power in enumerate(common.progress(cfg.shortcut_powers,
                                                           desc="shortcut spectra"))]
  summary = {"simulation": {**simulation_agreement(sim, cfg.d), "d_eff": sim.d_eff},
             "shortcut": shortcut_summary(shortcuts, cfg.good_enough)}
  emb = None
  if cfg.embeddings:
    with common.stopwatch(timings, "embeddings"):
      emb = real.embedding_study(cfg, key_emb)
    summary["embeddings"] = {"note": emb.note, "scale_check": emb.scale_check,
                             **real.embedding_summary(emb)}
  with common.stopwatch(timings, "figures"):
    common.save_figure(figures.plot_simulation(sim, cfg), out / "a_simulation.png")
    common.save_figure(figures.plot_shortcut(shortcuts), out / "b_shortcut.png")
    if emb is not None:
      common.save_figure(figures.plot_embeddings(emb, summary["embeddings"]),
                         out / "c_embeddings.png")
  common.write_csv(out / "a_simulation.csv", figures.simulation_rows(sim))
  common.write_csv(out / "a_curves.csv", figures.curve_rows(sim))
  common.write_csv(out / "b_shortcut.csv", figures.shortcut_rows(shortcuts))
  if emb is not None:
    common.write_csv(out / "c_embeddings.csv", figures.embedding_rows(emb))
  sim_errors = {name: report.interval_dict(ci)
                for name, ci in simulate.intervals(sim.errors)._asdict().items()}
  results = {
      "summary": summary,
      "simulation": {**sim._asdict(), "errors": sim_errors},
      "shortcut": [s._asdict() for s in shortcuts],
      "seconds": timings,
  }
  if emb is not None:
    results["embeddings"] = {**emb._asdict(), "measured": {
        "err_plus": report.interval_dict(metrics.mean_ci(emb.measured.err_plus, axis=1)),
        "err_minus": report.interval_dict(metrics.mean_ci(emb.measured.err_minus, axis=1))}}
  common.save_results(out / "results.json", config=cfg, results=results, experiment="anisotropic")
  return results


def main(argv: Sequence[str] | None = None) -> dict:
  cfg, out = common.parse_args(argv, config(), quick=quick, description=__doc__)
  start = time.perf_counter()
  results = run(cfg, out)
  print(headline(results["summary"]))
  print(f"anisotropic: {time.perf_counter() - start:.1f}s wall -> {out}", flush=True)
  return results


if __name__ == "__main__":
  main(sys.argv[1:])
