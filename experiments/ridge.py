"""Ridge and delta > 1: weighting is inert for the ridgeless interpolator, not with a ridge.

    python -m experiments.ridge --out out/ridge [--quick] [--set ridges=0,0.01,0.1]

With d > n and ridge -> 0+ the fit is the minimum-norm interpolator, which fits every
training label exactly whatever the class weights, so its per-class errors do not depend
on the weight (theory.interpolator_class_errors; lls returns that interpolator at ridge 0).
With ridge > 0 the weights matter again (theory.class_errors with the ridge).
Figure: per-class errors against the weight, one panel per delta, one colour per ridge.
"""

from __future__ import annotations

import dataclasses
import itertools
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
  d: int = 400
  mean_norm: float = 2.0
  pi_plus: float = 0.1
  deltas: tuple[float, ...] = (1.5, 2.0)
  ridges: tuple[float, ...] = (0.0, 0.01, 0.1, 1.0)
  weight_min: float = 0.5
  weight_max: float = 200.0
  num_weights: int = 16
  theory_weights: int = 200
  theory_x64: bool = True


# The theory, compiled once per shape (every study jitting the same function shares it).
class_errors = devices.sharded_grid(theory.class_errors)  # points over all devices
interpolator_class_errors = jax.jit(theory.interpolator_class_errors)


def config() -> Config:
  return Config()


def quick(cfg: Config) -> Config:
  return dataclasses.replace(cfg, num_seeds=4, d=96, num_weights=5, theory_weights=20)


def theory_errors(mixture: GaussianMixture, delta: float, weights: np.ndarray,
                  ridge: float) -> ClassErrors:
  """Ridge 0 (delta > 1): the interpolator, broadcast over the weights; else class_errors."""
  if ridge == 0:
    e = interpolator_class_errors(mixture, delta)
    ones = np.ones_like(weights)
    return ClassErrors(np.asarray(e.err_plus) * ones, np.asarray(e.err_minus) * ones)
  e = class_errors(mixture, delta, weights, ridge)
  return ClassErrors(np.asarray(e.err_plus), np.asarray(e.err_minus))


def run_all(cfg: Config, mixture: GaussianMixture, keys: jax.Array) -> dict:
  sizes = simulate.sizes_for(cfg.deltas, cfg.d)
  if np.any(sizes >= cfg.d):
    raise ValueError(f"deltas: expected every delta > 1 (n < d), got n = {sizes.tolist()} "
                     f"for d = {cfg.d}")
  masks = subsample.nested_masks(simulate.pool_labels(cfg.pi_plus, int(sizes.max())), sizes,
                                 pi_plus=cfg.pi_plus)
  weights = np.geomspace(cfg.weight_min, cfg.weight_max, cfg.num_weights)
  grid = list(itertools.product(range(len(sizes)), cfg.ridges))          # rows: (size, ridge)
  errors = simulate.run_sweep(
      mixture, keys, d=cfg.d, masks=np.stack([np.asarray(masks)[i] for i, _ in grid]),
      weights=np.tile(weights, (len(grid), 1)), ridges=np.array([r for _, r in grid]))
  realized = cfg.d / sizes
  dense = np.geomspace(cfg.weight_min, cfg.weight_max, cfg.theory_weights)
  panels = []
  with jax.enable_x64(cfg.theory_x64):
    for i, n in enumerate(sizes):
      per_ridge = []
      for ridge in cfg.ridges:
        row = grid.index((i, ridge))
        at_points = theory_errors(mixture, realized[i], weights, ridge)
        curve = theory_errors(mixture, realized[i], dense, ridge)
        sim = ClassErrors(errors.err_plus[:, row], errors.err_minus[:, row])
        s = simulate.intervals(sim)
        per_ridge.append({
            "ridge": ridge,
            "theory": {"weights": dense, "err_plus": curve.err_plus, "err_minus": curve.err_minus},
            **{name: report.interval_dict(ci) for name, ci in s._asdict().items()},
            "theory_err_plus": at_points.err_plus, "theory_err_minus": at_points.err_minus,
            # How much the per-seed errors move across weights (0 when weighting is inert).
            "max_spread_over_weights": float(np.max(np.ptp(sim.err_plus, axis=-1))),
            "theory_range_err_plus": float(np.ptp(curve.err_plus)),
            "agreement": simulate.agreement(s, at_points)._asdict(),
        })
      panels.append({"n": int(n), "delta": realized[i], "per_ridge": per_ridge})
  return {"weights": weights, "panels": panels}


def plot(cfg: Config, res: dict):
  panels = res["panels"]
  fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), squeeze=False)
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for ax, panel in zip(axes[0], panels):
    for j, pr in enumerate(panel["per_ridge"]):
      color = colors[j % len(colors)]
      for cls, style, marker in (("err_plus", "-", "o"), ("err_minus", "--", "s")):
        name = "minority" if cls == "err_plus" else "majority"
        ax.plot(pr["theory"]["weights"], pr["theory"][cls], style, color=color,
                label=f"{name}, ridge {pr['ridge']:g}")
        report.errorbar(ax, res["weights"], pr[cls], fmt=marker, color=color, ms=3.5,
                        mfc="white" if cls == "err_minus" else color)
    ax.set_xscale("log")
    ax.set_xlabel(r"minority weight $\omega$")
    ax.set_title(rf"$\delta = {panel['delta']:.3g}$ ($n = {panel['n']}$, $d = {cfg.d}$)",
                 fontsize=9)
    ax.set_ylim(0, None)
    ax.grid(True, which="both")
  axes[0, 0].set_ylabel("per-class test error")
  handles, labels = axes[0, 0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=len(cfg.ridges), fontsize=8,
             bbox_to_anchor=(0.5, -0.12))
  fig.suptitle(rf"$\delta > 1$: ridge 0 = min-norm interpolator (flat in $\omega$) vs ridge > 0, "
               rf"$\pi_+ = {cfg.pi_plus}$, $|\mu| = {cfg.mean_norm}$; theory (lines), simulation "
               f"(points, 95% CI over {cfg.num_seeds} seeds)", fontsize=9)
  return fig


def csv_rows(res: dict) -> list[dict]:
  rows = []
  for panel in res["panels"]:
    for pr in panel["per_ridge"]:
      for k, weight in enumerate(res["weights"]):
        row = {"n": panel["n"], "delta": panel["delta"], "ridge": pr["ridge"], "weight": weight}
        for cls in ("err_plus", "err_minus", "worst"):
          row.update(report.interval_columns(cls, pr[cls], k))
        row["theory_err_plus"] = pr["theory_err_plus"][k]
        row["theory_err_minus"] = pr["theory_err_minus"][k]
        rows.append(row)
  return rows


def key_numbers(res: dict) -> dict:
  """Per (delta, ridge): how much err_+ moves across weights (simulation, theory), the gap."""
  out = {}
  for panel in res["panels"]:
    for pr in panel["per_ridge"]:
      out[f"delta={panel['delta']:.3g},ridge={pr['ridge']:g}"] = {
          "sim_max_spread_err_plus_over_weights": pr["max_spread_over_weights"],
          "theory_range_err_plus_over_weights": pr["theory_range_err_plus"],
          "sim_err_plus_at_min_weight": float(pr["err_plus"]["mean"][0]),
          "sim_err_plus_at_max_weight": float(pr["err_plus"]["mean"][-1]),
          "max_abs_gap": pr["agreement"]["max_abs_gap"],
      }
  return out


def headline(summary: dict) -> str:
  return "; ".join(
      f"{k}: err+ {v['sim_err_plus_at_min_weight']:.3f}->{v['sim_err_plus_at_max_weight']:.3f} "
      f"(spread {v['sim_max_spread_err_plus_over_weights']:.2g}), gap {v['max_abs_gap']:.3f}"
      for k, v in summary.items())


def run(cfg: Config, out) -> dict:
  common.positive_ints(cfg, "num_seeds", "d", "num_weights", "theory_weights", minimum=2)
  if not cfg.ridges or min(cfg.ridges) < 0:
    raise ValueError(f"ridges: expected ridges >= 0, got {cfg.ridges}")
  simulate.sizes_for(cfg.deltas, cfg.d)
  out = common.ensure_dir(out)
  mixture = GaussianMixture.symmetric(pi_plus=cfg.pi_plus, mean_norm=cfg.mean_norm)
  timings = {}
  keys = simulate.fold(simulate.seed_keys(cfg.seed, cfg.num_seeds), 0)
  for stage in common.progress(("simulation", "figures"), desc="ridge"):
    with common.stopwatch(timings, stage):
      if stage == "simulation":
        res = run_all(cfg, mixture, keys)
      else:
        common.save_figure(plot(cfg, res), Path(out) / "ridge.png")
  common.write_csv(Path(out) / "ridge.csv", csv_rows(res))
  summary = key_numbers(res)
  results = {**res, "summary": summary, "seconds": timings}
  common.save_results(Path(out) / "results.json", config=cfg, results=results, experiment="ridge")
  return results


def main(argv: Sequence[str] | None = None) -> dict:
  cfg, out = common.parse_args(argv, config(), quick=quick, description=__doc__)
  results = run(cfg, out)
  print(headline(results["summary"]))
  return results


if __name__ == "__main__":
  main(sys.argv[1:])
