"""Optimal weighting vs downsampling vs the prior ratio as n shrinks at fixed d.

    python -m experiments.downsampling --out out/downsampling [--quick] [--set d=400]

Methods on the same pool (ridge 0, float32 simulation):
  optimal   weight = theory.optimal_weight (worst-class objective) at delta = d / n;
  prior     weight = pi_- / pi_+;
  unweighted weight = 1;
  downsample keep the n_+ minority rows and n_+ majority rows, weight 1: delta' = d / (2 n_+);
            with delta' > 1 the ridge-0 fit is the minimum-norm interpolator (lls returns it,
            theory.downsampled_class_errors switches to interpolator_class_errors).
Figure: worst-class error against n (theory lines, simulation points with 95% CIs), and
the per-class errors of each method.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path
from typing import Sequence

import jax
import matplotlib.pyplot as plt
import numpy as np

from experiments import common, gaussian
from thumb_jax import mixture as mixture_lib
from thumb_jax import theory
from thumb_jax.metrics import ClassErrors
from thumb_jax.mixture import GaussianMixture

METHODS = ("optimal", "prior", "unweighted", "downsample")
COLORS = {"optimal": "tab:blue", "prior": "tab:gray", "unweighted": "tab:orange",
          "downsample": "tab:green"}


@dataclasses.dataclass(frozen=True)
class Config:
  seed: int = 0
  num_seeds: int = 16
  d: int = 200
  mean_norm: float = 2.0
  pi_plus: float = 0.1
  # delta = d / n; chosen so that the downsampled delta' = delta / (2 pi_+) avoids 1,
  # where the ridgeless fit is singular and finite-d fluctuations are largest.
  deltas: tuple[float, ...] = (0.1, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9)
  theory_points: int = 120
  log10_range: tuple[float, float] = (-2.0, 4.0)   # optimal-weight search
  theory_x64: bool = True


def config() -> Config:
  return Config()


def quick(cfg: Config) -> Config:
  return dataclasses.replace(cfg, num_seeds=4, d=64, deltas=(0.1, 0.3, 0.6), theory_points=16)


def optimal_weights(cfg: Config, mixture: GaussianMixture, deltas: np.ndarray):
  search = jax.jit(functools.partial(theory.optimal_weight, mixture, objective="worst",
                                     log10_range=tuple(cfg.log10_range)))
  return search(deltas)


def theory_curves(cfg: Config, mixture: GaussianMixture) -> dict:
  """Per-class errors of each method on a dense delta grid (n = d / delta)."""
  deltas = np.linspace(0.02, 0.97, cfg.theory_points)
  ratio = float(theory.prior_ratio(cfg.pi_plus))
  best = optimal_weights(cfg, mixture, deltas)
  errors = {"optimal": ClassErrors(best.err_plus, best.err_minus),
            "prior": theory.class_errors(mixture, deltas, ratio),
            "unweighted": theory.class_errors(mixture, deltas, 1.0),
            "downsample": theory.downsampled_class_errors(mixture, deltas)}
  return {"delta": deltas, "n": cfg.d / deltas, "optimal_weight": best.weight,
          **{m: {"err_plus": e.err_plus, "err_minus": e.err_minus,
                 "worst": np.maximum(np.asarray(e.err_plus), np.asarray(e.err_minus))}
             for m, e in errors.items()}}


def simulate(cfg: Config, mixture: GaussianMixture, keys: jax.Array) -> dict:
  sizes = gaussian.sizes_for(cfg.deltas, cfg.d)
  y = gaussian.pool_labels(mixture, int(sizes.max()))
  full = mixture_lib.nested_masks(y, sizes, pi_plus=cfg.pi_plus)
  down = gaussian.downsample_masks(y, sizes, cfg.pi_plus)
  realized = cfg.d / sizes
  n_down = np.asarray(down.sum(axis=1)).astype(int)
  ratio = float(theory.prior_ratio(cfg.pi_plus))
  with jax.enable_x64(cfg.theory_x64):
    w_opt = np.asarray(optimal_weights(cfg, mixture, realized).weight, np.float64)
  # One sweep: R = 2 * sizes rows (full masks with K = 3 weights, then downsampled masks
  # with weight 1, padded to K = 3 by repetition).
  rows = len(sizes)
  weights = np.concatenate([np.stack([w_opt, np.full(rows, ratio), np.ones(rows)], axis=1),
                            np.ones((rows, 3))])
  masks = np.concatenate([np.asarray(full), np.asarray(down)])
  errors = gaussian.run_sweep(mixture, keys, d=cfg.d, masks=masks, weights=weights,
                              ridges=np.zeros(2 * rows))
  pick = {"optimal": (slice(0, rows), 0), "prior": (slice(0, rows), 1),
          "unweighted": (slice(0, rows), 2), "downsample": (slice(rows, 2 * rows), 0)}
  # Theory at the realized sizes: delta' = d / n_down is reached by delta = 2 pi_+ d / n_down.
  with jax.enable_x64(cfg.theory_x64):
    at_points = {"optimal": theory.class_errors(mixture, realized, w_opt),
                 "prior": theory.class_errors(mixture, realized, ratio),
                 "unweighted": theory.class_errors(mixture, realized, 1.0),
                 "downsample": theory.downsampled_class_errors(
                     mixture, 2 * cfg.pi_plus * cfg.d / n_down)}
  out = {"n": sizes, "delta": realized, "n_downsampled": n_down,
         "delta_downsampled": cfg.d / n_down, "optimal_weight": w_opt, "prior_ratio": ratio}
  agreements = {}
  for method, (rows_of, k) in pick.items():
    e = ClassErrors(errors.err_plus[:, rows_of, k], errors.err_minus[:, rows_of, k])
    summary = gaussian.summarize(e)
    th = ClassErrors(np.asarray(at_points[method].err_plus), np.asarray(at_points[method].err_minus))
    out[method] = {"err_plus": gaussian.ci_dict(summary.err_plus),
                   "err_minus": gaussian.ci_dict(summary.err_minus),
                   "worst": gaussian.ci_dict(summary.worst),
                   "theory_err_plus": th.err_plus, "theory_err_minus": th.err_minus,
                   "theory_worst": np.maximum(th.err_plus, th.err_minus)}
    agreements[method] = gaussian.agreement(summary, th)
  out["agreement"] = agreements
  return out


def plot(cfg: Config, curves: dict, sim: dict):
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.0))
  labels = {"optimal": "optimal weight (worst class)", "prior": r"weight $\pi_-/\pi_+$",
            "unweighted": "weight 1", "downsample": "downsample majority, weight 1"}
  for method in METHODS:
    color = COLORS[method]
    axes[0].plot(curves["n"], curves[method]["worst"], "-", color=color, label=labels[method])
    mean = sim[method]["worst"]["mean"]
    yerr = np.stack([mean - sim[method]["worst"]["low"], sim[method]["worst"]["high"] - mean])
    axes[0].errorbar(sim["n"], mean, yerr=yerr, fmt="o", color=color, ms=4, capsize=2)
    for ax, cls in ((axes[1], "err_plus"), (axes[2], "err_minus")):
      ax.plot(curves["n"], curves[method][cls], "-", color=color)
      mean = sim[method][cls]["mean"]
      yerr = np.stack([mean - sim[method][cls]["low"], sim[method][cls]["high"] - mean])
      ax.errorbar(sim["n"], mean, yerr=yerr, fmt="o", color=color, ms=4, capsize=2)
  threshold = cfg.d / (2 * cfg.pi_plus)   # n below which downsampling interpolates
  titles = ("worst-class error", r"minority error $err_+$", r"majority error $err_-$")
  for ax, title in zip(axes, titles):
    ax.axvline(threshold, color="tab:green", lw=0.7, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel(f"retraining set size n (d = {cfg.d})")
    ax.set_title(title, fontsize=9)
    ax.set_ylim(0, None)
    ax.grid(alpha=0.3, which="both")
  axes[0].text(threshold, 0.02, r" downsampled $\delta' = 1$", fontsize=7, color="tab:green")
  handles, names = axes[0].get_legend_handles_labels()
  fig.legend(handles, names, loc="lower center", ncol=4, fontsize=8, bbox_to_anchor=(0.5, -0.08))
  fig.suptitle(rf"Weighting vs downsampling, $\pi_+ = {cfg.pi_plus}$, $|\mu| = {cfg.mean_norm}$, "
               f"ridge 0: theory (lines), simulation (points, 95% CI over {cfg.num_seeds} seeds)",
               fontsize=9)
  return fig


def csv_rows(sim: dict) -> list[dict]:
  rows = []
  for i, n in enumerate(sim["n"]):
    for method in METHODS:
      row = {"n": int(n), "delta": sim["delta"][i], "method": method,
             "weight": {"optimal": sim["optimal_weight"][i], "prior": sim["prior_ratio"],
                        "unweighted": 1.0, "downsample": 1.0}[method],
             "n_fit": int(sim["n_downsampled"][i]) if method == "downsample" else int(n)}
      for cls in ("err_plus", "err_minus", "worst"):
        for stat in ("mean", "low", "high"):
          row[f"{cls}_{stat}"] = sim[method][cls][stat][i]
        row[f"theory_{cls}"] = np.asarray(sim[method][f"theory_{cls}"])[i]
      rows.append(row)
  return rows


def summarize(sim: dict) -> dict:
  out = {"n": sim["n"], "optimal_weight": sim["optimal_weight"]}
  for method in METHODS:
    out[f"{method}_worst_sim"] = sim[method]["worst"]["mean"]
    out[f"{method}_worst_theory"] = sim[method]["theory_worst"]
    out[f"{method}_max_abs_gap"] = sim["agreement"][method]["max_abs_gap"]
  opt, down = np.asarray(sim["optimal"]["theory_worst"]), np.asarray(sim["downsample"]["theory_worst"])
  wins = np.asarray(sim["n"])[down < opt]
  out["downsampling_beats_optimal_weighting_at_n"] = wins
  return out


def headline(summary: dict) -> str:
  parts = []
  for i, n in enumerate(summary["n"]):
    parts.append(f"n={n}: opt {summary['optimal_worst_sim'][i]:.3f} / prior "
                 f"{summary['prior_worst_sim'][i]:.3f} / down {summary['downsample_worst_sim'][i]:.3f}")
  gaps = max(summary[f"{m}_max_abs_gap"] for m in METHODS)
  return ("worst-class error (sim) " + "; ".join(parts)
          + f"; max |sim - theory| {gaps:.3f}")


def run(cfg: Config, out) -> dict:
  out = common.ensure_dir(out)
  mixture = GaussianMixture.symmetric(pi_plus=cfg.pi_plus, mean_norm=cfg.mean_norm)
  timings = {}
  keys = gaussian.fold(gaussian.seed_keys(cfg.seed, cfg.num_seeds), 0)
  for stage in common.progress(("simulation", "theory", "figures"), desc="downsampling"):
    with common.stopwatch(timings, stage):
      if stage == "simulation":
        sim = simulate(cfg, mixture, keys)
      elif stage == "theory":
        with jax.enable_x64(cfg.theory_x64):
          curves = theory_curves(cfg, mixture)
      else:
        common.save_figure(plot(cfg, curves, sim), Path(out) / "downsampling.png")
  common.write_csv(Path(out) / "downsampling.csv", csv_rows(sim))
  summary = summarize(sim)
  results = {"simulation": sim, "theory": curves, "summary": summary, "seconds": timings}
  common.save_results(Path(out) / "results.json", config=cfg, results=results,
                      experiment="downsampling")
  return results


def main(argv: Sequence[str] | None = None) -> dict:
  cfg, out = common.parse_args(argv, config(), quick=quick, description=__doc__)
  results = run(cfg, out)
  print(headline(results["summary"]))
  return results


if __name__ == "__main__":
  main(sys.argv[1:])
