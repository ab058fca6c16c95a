"""Per-class and worst-class error against the minority weight, and the best weight against delta.

    python -m experiments.error_vs_weight --out out/error_vs_weight [--quick] [--set d=400]

Figure 1 (error_vs_weight.png): err_+, err_- and max(err_+, err_-) against the weight
omega at a few delta: theory curves, simulation means with 95% intervals.
Figure 2 (best_weight.png): against delta, the theory's optimal weight for the
worst-class and the balanced objective, the equal-error weight (gaps: none exists),
the prior ratio, the band of weights within `near_optimal` (relative) of the best
worst-class error, and the simulation's empirical best weight per delta (argmin of
the mean worst-class error over the simulated weight grid).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from experiments import common, report
from experiments.report import plt
from thumb_jax import devices, simulate, subsample, theory
from thumb_jax.metrics import ClassErrors
from thumb_jax.mixture import GaussianMixture


@dataclasses.dataclass(frozen=True)
class Config:
  seed: int = 0
  num_seeds: int = 16
  d: int = 200
  mean_norm: float = 2.0
  pi_plus: float = 0.1
  deltas: tuple[float, ...] = (0.1, 0.15, 0.2, 0.3, 0.5, 0.7)         # simulated
  panel_deltas: tuple[float, ...] = (0.1, 0.2, 0.5)                   # figure 1 (subset)
  weight_min: float = 0.5
  weight_max: float = 1000.0
  num_weights: int = 24                                               # simulated grid
  theory_weights: int = 300                                           # curves
  theory_deltas: int = 60                                             # figure 2 grid
  log10_range: tuple[float, float] = (-2.0, 4.0)                      # optimal-weight search
  near_optimal: float = 0.01                                          # band: <= (1 + this) min
  theory_x64: bool = True   # float32 theory has ~1e-3 noise at omega ~ 1e4, delta -> 1


# The theory, compiled once per shape (every study jitting the same function shares it).
class_errors = devices.sharded_grid(theory.class_errors)  # points over all devices
optimal_weight = jax.jit(theory.optimal_weight, static_argnames=("objective", "log10_range"))
equal_error_weight = jax.jit(theory.equal_error_weight, static_argnames=("log10_range",))


def config() -> Config:
  return Config()


def quick(cfg: Config) -> Config:
  return dataclasses.replace(cfg, num_seeds=4, d=64, deltas=(0.2, 0.5), panel_deltas=(0.2, 0.5),
                             num_weights=6, theory_weights=30, theory_deltas=8)


def weight_grid(cfg: Config, num: int) -> np.ndarray:
  return np.geomspace(cfg.weight_min, cfg.weight_max, num)


def run_simulation(cfg: Config, mixture: GaussianMixture, keys: jax.Array) -> dict:
  sizes = simulate.sizes_for(cfg.deltas, cfg.d)
  masks = subsample.nested_masks(simulate.pool_labels(cfg.pi_plus, int(sizes.max())), sizes,
                                 pi_plus=cfg.pi_plus)
  weights = weight_grid(cfg, cfg.num_weights)
  errors = simulate.run_sweep(mixture, keys, d=cfg.d, masks=masks,
                              weights=np.tile(weights, (len(sizes), 1)),
                              ridges=np.zeros(len(sizes)))
  summary = simulate.intervals(errors)                                   # [R, K]
  realized = cfg.d / sizes
  with jax.enable_x64(cfg.theory_x64):
    at_points = class_errors(mixture, realized[:, None], weights[None, :])
  theory_worst = np.maximum(np.asarray(at_points.err_plus), np.asarray(at_points.err_minus))
  best = np.argmin(summary.worst.mean, axis=1)
  return {
      "n": sizes, "delta": realized, "weights": weights,
      **{name: report.interval_dict(ci) for name, ci in summary._asdict().items()},
      "theory_err_plus": at_points.err_plus, "theory_err_minus": at_points.err_minus,
      "best_weight": weights[best],
      "best_worst_error": summary.worst.mean[np.arange(len(sizes)), best],
      "theory_best_weight_on_grid": weights[np.argmin(theory_worst, axis=1)],
      "agreement": simulate.agreement(summary, ClassErrors(*at_points))._asdict(),
  }


def theory_curves(cfg: Config, mixture: GaussianMixture) -> dict:
  weights = weight_grid(cfg, cfg.theory_weights)
  deltas = np.asarray(cfg.panel_deltas)
  curves = class_errors(mixture, deltas[:, None], weights[None, :])
  return {"delta": deltas, "weights": weights, "err_plus": curves.err_plus,
          "err_minus": curves.err_minus}


def near_optimal_band(mixture: GaussianMixture, deltas: np.ndarray, *, log10_range,
                      slack: float, num: int = 1024) -> tuple[np.ndarray, np.ndarray]:
  """Smallest and largest weight on a log grid whose worst-class error is <= (1 + slack) min."""
  weights = np.logspace(*log10_range, num)
  errs = class_errors(mixture, deltas[:, None], weights[None, :])
  worst = np.maximum(np.asarray(errs.err_plus), np.asarray(errs.err_minus))
  ok = worst <= (1 + slack) * np.nanmin(worst, axis=1, keepdims=True)
  low = np.array([weights[row].min() for row in ok])
  high = np.array([weights[row].max() for row in ok])
  return low, high


def best_weights(cfg: Config, mixture: GaussianMixture) -> dict:
  """Theory's optimal and equal-error weights on a dense delta grid (jitted, vectorized)."""
  deltas = np.linspace(0.02, 0.95, cfg.theory_deltas)
  search = dict(log10_range=tuple(cfg.log10_range))
  opt_worst = optimal_weight(mixture, deltas, objective="worst", **search)
  opt_bal = optimal_weight(mixture, deltas, objective="balanced", **search)
  eq = equal_error_weight(mixture, deltas, **search)
  low, high = near_optimal_band(mixture, deltas, log10_range=cfg.log10_range,
                                slack=cfg.near_optimal)
  bound = 10.0 ** cfg.log10_range[1]
  ratio = float(theory.prior_ratio(cfg.pi_plus))
  at_ratio = class_errors(mixture, deltas, ratio)
  return {
      "delta": deltas, "prior_ratio": ratio,
      "worst": {"weight": opt_worst.weight, "err_plus": opt_worst.err_plus,
                "err_minus": opt_worst.err_minus, "value": opt_worst.value,
                # Within a factor 2 of the search bound: the objective keeps (weakly)
                # decreasing as omega -> infinity, the optimum is "as large as possible".
                "at_search_bound": np.asarray(opt_worst.weight) > bound / 2},
      "balanced": {"weight": opt_bal.weight, "value": opt_bal.value,
                   "at_search_bound": np.asarray(opt_bal.weight) > bound / 2},
      "equal_error": {"weight": eq.weight, "value": eq.value},
      "near_optimal_low": low, "near_optimal_high": high,
      "worst_at_prior_ratio": np.maximum(np.asarray(at_ratio.err_plus),
                                         np.asarray(at_ratio.err_minus)),
  }


def plot_errors(cfg: Config, curves: dict, sim: dict):
  panels = len(curves["delta"])
  fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 3.8), squeeze=False)
  ratio = float(theory.prior_ratio(cfg.pi_plus))
  for j, (ax, delta) in enumerate(zip(axes[0], curves["delta"])):
    ep, em = np.asarray(curves["err_plus"])[j], np.asarray(curves["err_minus"])[j]
    ax.plot(curves["weights"], ep, "-", color="tab:red", label="minority $err_+$")
    ax.plot(curves["weights"], em, "-", color="tab:blue", label="majority $err_-$")
    ax.plot(curves["weights"], np.maximum(ep, em), ":", color="k", lw=2, label="worst class")
    i = int(np.argmin(np.abs(np.asarray(cfg.deltas) - delta)))
    for cls, color, marker in (("err_plus", "tab:red", "o"), ("err_minus", "tab:blue", "s"),
                               ("worst", "k", "x")):
      report.errorbar(ax, sim["weights"], {stat: v[i] for stat, v in sim[cls].items()},
                      fmt=marker, color=color, ms=3.5)
    ax.axvline(ratio, color="gray", lw=0.8, ls="--", label=r"$\pi_-/\pi_+$")
    ax.axvline(sim["best_weight"][i], color="tab:green", lw=0.8, label="sim. best (worst)")
    ax.set_xscale("log")
    ax.set_xlabel(r"minority weight $\omega$")
    ax.set_title(rf"$\delta = {sim['delta'][i]:.3g}$ ($n = {sim['n'][i]}$, $d = {cfg.d}$)",
                 fontsize=9)
    ax.set_ylim(0, None)
  axes[0, 0].set_ylabel("test error")
  handles, labels = axes[0, 0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=8, bbox_to_anchor=(0.5, -0.08))
  fig.suptitle(rf"Error vs weight, $\pi_+ = {cfg.pi_plus}$, $|\mu| = {cfg.mean_norm}$: theory "
               f"(lines), simulation (points, 95% CI over {cfg.num_seeds} seeds)", fontsize=9)
  return fig


def plot_best(cfg: Config, best: dict, sim: dict):
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  delta = best["delta"]
  ax.fill_between(delta, best["near_optimal_low"], best["near_optimal_high"], color="tab:blue",
                  alpha=0.12, label=rf"worst-class error within {100 * cfg.near_optimal:g}% of min")
  ax.plot(delta, best["worst"]["weight"], "-", color="tab:blue", label="optimal (worst class)")
  ax.plot(delta, best["balanced"]["weight"], "-", color="tab:orange",
          label="optimal (balanced error)")
  ax.plot(delta, best["equal_error"]["weight"], "--", color="tab:red", lw=2,
          label="equal-error weight (gap: none)")
  ax.axhline(best["prior_ratio"], color="gray", ls=":", label=r"prior ratio $\pi_-/\pi_+$")
  ax.plot(sim["delta"], sim["best_weight"], "D", color="tab:green", ms=6,
          label="simulation: argmin of mean worst error")
  ax.axhline(10.0 ** cfg.log10_range[1], color="k", lw=0.5)
  ax.text(delta[-1], 10.0 ** cfg.log10_range[1] * 1.15, "search bound", fontsize=7, ha="right")
  ax.axhspan(cfg.weight_max, 10.0 ** cfg.log10_range[1], color="gray", alpha=0.06)
  ax.set_yscale("log")
  ax.set_xlabel(r"$\delta = d / n$")
  ax.set_ylabel(r"weight $\omega$")
  ax.set_title(rf"Best weight vs $\delta$ ($\pi_+ = {cfg.pi_plus}$, $|\mu| = {cfg.mean_norm}$; "
               f"simulated grid up to {cfg.weight_max:g}, shaded above)", fontsize=9)
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
  return fig


def csv_rows(sim: dict) -> list[dict]:
  rows = []
  for i, n in enumerate(sim["n"]):
    for k, weight in enumerate(sim["weights"]):
      row = {"n": int(n), "delta": sim["delta"][i], "weight": weight}
      for cls in ("err_plus", "err_minus", "worst"):
        row.update(report.interval_columns(cls, sim[cls], (i, k)))
      row["theory_err_plus"] = np.asarray(sim["theory_err_plus"])[i, k]
      row["theory_err_minus"] = np.asarray(sim["theory_err_minus"])[i, k]
      rows.append(row)
  return rows


def key_numbers(sim: dict, best: dict) -> dict:
  """Best weights per simulated delta, where the theory's optima break down, the agreement."""
  first_none = np.asarray(best["delta"])[np.isnan(np.asarray(best["equal_error"]["weight"],
                                                             float))]
  first_bound = np.asarray(best["delta"])[np.asarray(best["worst"]["at_search_bound"])]
  return {
      "sim_delta": sim["delta"], "sim_best_weight": sim["best_weight"],
      "theory_best_weight_on_grid": sim["theory_best_weight_on_grid"],
      "equal_error_weight_none_from_delta": (float(first_none.min()) if first_none.size
                                                else None),
      "worst_optimum_at_bound_from_delta": float(first_bound.min()) if first_bound.size else None,
      **{f"agreement_{k}": v for k, v in sim["agreement"].items()},
  }


def headline(summary: dict) -> str:
  pairs = ", ".join(f"{d:.2f}:{w:.3g}" for d, w in zip(summary["sim_delta"],
                                                       summary["sim_best_weight"]))
  return (f"sim best weight per delta {{{pairs}}}; equal-error weight none from delta ~ "
          f"{summary['equal_error_weight_none_from_delta']}; worst-class optimum at the search "
          f"bound from delta ~ {summary['worst_optimum_at_bound_from_delta']}; max gap "
          f"{summary['agreement_max_abs_gap']:.3f}")


def run(cfg: Config, out) -> dict:
  common.positive_ints(cfg, "num_seeds", "d", "num_weights", "theory_weights", "theory_deltas",
                       minimum=2)
  simulate.sizes_for(cfg.deltas, cfg.d)
  out = common.ensure_dir(out)
  missing = [d for d in cfg.panel_deltas if not np.isclose(np.asarray(cfg.deltas), d).any()]
  if missing:
    raise ValueError(f"panel_deltas: expected a subset of deltas {cfg.deltas}, got {missing}")
  mixture = GaussianMixture.symmetric(pi_plus=cfg.pi_plus, mean_norm=cfg.mean_norm)
  timings = {}
  keys = simulate.seed_keys(cfg.seed, cfg.num_seeds)
  stages = ("simulation", "theory", "figures")
  bar = common.progress(stages, desc="error_vs_weight")
  for stage in bar:
    with common.stopwatch(timings, stage):
      if stage == "simulation":
        sim = run_simulation(cfg, mixture, simulate.fold(keys, 0))
      elif stage == "theory":
        with jax.enable_x64(cfg.theory_x64):
          curves, best = theory_curves(cfg, mixture), best_weights(cfg, mixture)
      else:
        common.save_figure(plot_errors(cfg, curves, sim), Path(out) / "error_vs_weight.png")
        common.save_figure(plot_best(cfg, best, sim), Path(out) / "best_weight.png")
  common.write_csv(Path(out) / "error_vs_weight.csv", csv_rows(sim))
  summary = key_numbers(sim, best)
  results = {"simulation": sim, "theory_curves": curves, "best_weights": best,
             "summary": summary, "seconds": timings}
  common.save_results(Path(out) / "results.json", config=cfg, results=results,
                      experiment="error_vs_weight")
  return results


def main(argv: Sequence[str] | None = None) -> dict:
  cfg, out = common.parse_args(argv, config(), quick=quick, description=__doc__)
  results = run(cfg, out)
  print(headline(results["summary"]))
  return results


if __name__ == "__main__":
  main(sys.argv[1:])
