"""Per-class error against delta = d / n, several minority priors, weight 1 and the prior ratio.

    python -m experiments.error_vs_delta --out out/error_vs_delta [--quick] [--set d=400]

At fixed d the sample size n = d / delta shrinks along the sweep; each seed draws one
pool of the largest n and smaller samples are nested masks of it. Theory curves are
`theory.class_errors` on a dense delta grid; points are means over seeds with 95%
t-intervals of the exact Gaussian errors of the fitted last layer.
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
  mean_norm: float = 2.0                       # |mu_+| = |mu_-|, mu_- = -mu_+
  pi_plus: tuple[float, ...] = (0.05, 0.1, 0.2)
  deltas: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
  theory_points: int = 200                     # dense delta grid for the curves
  theory_x64: bool = True                      # theory in float64 (simulation stays float32)


# The theory, compiled once per shape (every study jitting the same function shares it).
class_errors = devices.sharded_grid(theory.class_errors)  # points over all devices


def config() -> Config:
  return Config()


def quick(cfg: Config) -> Config:
  return dataclasses.replace(cfg, num_seeds=4, d=64, pi_plus=(0.1, 0.2), deltas=(0.2, 0.5),
                             theory_points=20)


def run_prior(cfg: Config, pi_plus: float, keys: jax.Array) -> dict:
  mixture = GaussianMixture.symmetric(pi_plus=pi_plus, mean_norm=cfg.mean_norm)
  sizes = simulate.sizes_for(cfg.deltas, cfg.d)
  masks = subsample.nested_masks(simulate.pool_labels(pi_plus, int(sizes.max())), sizes,
                                 pi_plus=pi_plus)
  ratio = float(theory.prior_ratio(pi_plus))
  weights = np.array([1.0, ratio])
  errors = simulate.run_sweep(mixture, keys, d=cfg.d, masks=masks,
                              weights=np.tile(weights, (len(sizes), 1)),
                              ridges=np.zeros(len(sizes)))
  sim = simulate.intervals(errors)                                       # [R, K]
  realized = cfg.d / sizes
  grid = np.linspace(min(0.02, min(cfg.deltas)), max(0.98, max(cfg.deltas)), cfg.theory_points)
  with jax.enable_x64(cfg.theory_x64):
    at_points = class_errors(mixture, realized[:, None], weights[None, :])
    curves = class_errors(mixture, grid[:, None], weights[None, :])
  return {
      "pi_plus": pi_plus, "prior_ratio": ratio, "weights": weights,
      "theory": {"delta": grid, "err_plus": curves.err_plus, "err_minus": curves.err_minus},
      "simulation": {"n": sizes, "delta": realized,
                     **{name: report.interval_dict(ci) for name, ci in sim._asdict().items()},
                     "theory_err_plus": at_points.err_plus,
                     "theory_err_minus": at_points.err_minus},
      "agreement": simulate.agreement(sim, ClassErrors(*at_points))._asdict(),
  }


def plot(per_prior: list[dict], cfg: Config):
  fig, axes = plt.subplots(1, len(per_prior), figsize=(4.6 * len(per_prior), 3.8), squeeze=False)
  for ax, res in zip(axes[0], per_prior):
    th, sim = res["theory"], res["simulation"]
    for k, (label, color) in enumerate(((r"$\omega=1$", "tab:gray"),
                                        (r"$\omega=\pi_-/\pi_+$", "tab:blue"))):
      for cls, style, marker in (("err_plus", "-", "o"), ("err_minus", "--", "s")):
        name = "minority" if cls == "err_plus" else "majority"
        ax.plot(th["delta"], np.asarray(th[cls])[:, k], style, color=color,
                label=f"{name}, {label}")
        column = {stat: v[:, k] for stat, v in sim[cls].items()}
        report.errorbar(ax, sim["delta"], column, fmt=marker, color=color,
                        mfc="white" if cls == "err_minus" else color)
    ax.set_title(rf"$\pi_+ = {res['pi_plus']}$ ($\pi_-/\pi_+ = {res['prior_ratio']:.3g}$), "
                 rf"$|\mu| = {cfg.mean_norm}$, $d = {cfg.d}$", fontsize=9)
    ax.set_xlabel(r"$\delta = d / n$")
    ax.set_ylim(0, None)
  axes[0, 0].set_ylabel("per-class test error")
  handles, labels = axes[0, 0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, bbox_to_anchor=(0.5, -0.08))
  fig.suptitle("Per-class error vs delta: theory (lines), simulation (points, 95% CI over "
               f"{cfg.num_seeds} seeds)", fontsize=9)
  return fig


def csv_rows(per_prior: list[dict]) -> list[dict]:
  rows = []
  for res in per_prior:
    sim = res["simulation"]
    for i, n in enumerate(sim["n"]):
      for k, weight in enumerate(res["weights"]):
        row = {"pi_plus": res["pi_plus"], "n": int(n), "delta": sim["delta"][i],
               "weight": weight}
        for cls in ("err_plus", "err_minus", "worst"):
          row.update(report.interval_columns(cls, sim[cls], (i, k)))
        row["theory_err_plus"] = np.asarray(sim["theory_err_plus"])[i, k]
        row["theory_err_minus"] = np.asarray(sim["theory_err_minus"])[i, k]
        rows.append(row)
  return rows


def key_numbers(per_prior: list[dict]) -> dict:
  """Per prior: errors of the prior-ratio weight at the largest delta, and the agreement."""
  out = {}
  for res in per_prior:
    sim = res["simulation"]
    largest = int(np.argmax(sim["delta"]))
    out[f"pi_plus={res['pi_plus']}"] = {
        "delta_max": sim["delta"][largest],
        "prior_ratio_err_plus_theory": float(np.asarray(sim["theory_err_plus"])[largest, 1]),
        "prior_ratio_err_minus_theory": float(np.asarray(sim["theory_err_minus"])[largest, 1]),
        "prior_ratio_err_plus_sim": float(sim["err_plus"]["mean"][largest, 1]),
        "prior_ratio_err_minus_sim": float(sim["err_minus"]["mean"][largest, 1]),
        "weight1_err_plus_sim": float(sim["err_plus"]["mean"][largest, 0]),
        **{f"agreement_{k}": v for k, v in res["agreement"].items()},
    }
  return out


def headline(summary: dict) -> str:
  parts = []
  for key, s in summary.items():
    parts.append(f"{key}: at delta={s['delta_max']:.2f} prior ratio gives err+/err- = "
                 f"{s['prior_ratio_err_plus_sim']:.3f}/{s['prior_ratio_err_minus_sim']:.3f} "
                 f"(theory {s['prior_ratio_err_plus_theory']:.3f}/"
                 f"{s['prior_ratio_err_minus_theory']:.3f}), max gap "
                 f"{s['agreement_max_abs_gap']:.3f}")
  return "; ".join(parts)


def run(cfg: Config, out) -> dict:
  common.positive_ints(cfg, "num_seeds", "d", "theory_points", minimum=2)
  if not cfg.pi_plus or not all(0 < p < 1 for p in cfg.pi_plus):
    raise ValueError(f"pi_plus: expected priors in (0, 1), got {cfg.pi_plus}")
  simulate.sizes_for(cfg.deltas, cfg.d)
  out = common.ensure_dir(out)
  timings = {}
  keys = simulate.seed_keys(cfg.seed, cfg.num_seeds)
  per_prior = []
  with common.stopwatch(timings, "sweeps"):
    for i, pi_plus in enumerate(common.progress(cfg.pi_plus, desc="error_vs_delta priors")):
      per_prior.append(run_prior(cfg, pi_plus, simulate.fold(keys, i)))
  summary = key_numbers(per_prior)
  with common.stopwatch(timings, "figures"):
    common.save_figure(plot(per_prior, cfg), Path(out) / "error_vs_delta.png")
  common.write_csv(Path(out) / "error_vs_delta.csv", csv_rows(per_prior))
  results = {"per_prior": per_prior, "summary": summary, "seconds": timings}
  common.save_results(Path(out) / "results.json", config=cfg, results=results,
                      experiment="error_vs_delta")
  return results


def main(argv: Sequence[str] | None = None) -> dict:
  cfg, out = common.parse_args(argv, config(), quick=quick, description=__doc__)
  results = run(cfg, out)
  print(headline(results["summary"]))
  return results


if __name__ == "__main__":
  main(sys.argv[1:])
