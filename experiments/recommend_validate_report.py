"""recommend_validate, reporting: per-case figure, timing figure, CSV rows and a text table."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments import common
from experiments.recommend_validate_methods import THEORY
from experiments.report import plt

STYLE = {"theory": ("C0", "-", "o"), "theory_ambient": ("C0", "--", "s"),
         "theory_erank": ("C0", ":", "^"), "theory_whitened": ("C9", "-", "h"),
         "oracle": ("k", "-", None),
         "priors": ("C1", "-", "v"), "unweighted": ("C7", "-", "x"),
         "sklearn": ("C2", "--", "D"), "sklearn_same_ridge": ("C2", ":", "d"),
         "cv": ("C3", "-", "P"), "downsample": ("C4", "-", "*")}


def plot_case(result: dict, path: Path) -> None:
  """Worst-class and balanced error (mean, 95% band) and the chosen weight against delta."""
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  deltas = np.asarray(result["deltas"])
  for name, m in result["methods"].items():
    color, ls, marker = STYLE[name]
    for ax, key in zip(axes[:2], ("worst", "balanced")):
      ax.plot(deltas, m[key]["mean"], color=color, ls=ls, marker=marker, label=name, ms=4)
      ax.fill_between(deltas, m[key]["low"], m[key]["high"], color=color, alpha=0.12)
    if not np.all(np.isnan(m["weight_median"])) and name != "unweighted":
      axes[2].plot(deltas, m["weight_median"], color=color, ls=ls, marker=marker, label=name,
                   ms=4)
  axes[0].set_title(f"{result['name']}: worst-class test error")
  axes[1].set_title("balanced test error")
  axes[2].set_title("chosen minority weight (median over repeats)")
  axes[2].set_yscale("log")
  for ax in axes:
    ax.set_xlabel("delta = d / n")
  axes[0].legend(fontsize=7, ncol=2)
  fig.suptitle(result["note"], fontsize=8)
  common.save_figure(fig, path)


def plot_timing(results: dict, path: Path) -> None:
  """Wall time of one call per method against n, one panel per case."""
  cases = list(results)
  fig, axes = plt.subplots(1, len(cases), figsize=(5 * len(cases), 4), squeeze=False)
  for ax, name in zip(axes[0], cases):
    r = results[name]
    timed = {method: m for method, m in r["methods"].items()
             if np.any(np.isfinite(np.asarray(m["time_s"], float)))}
    for method, m in timed.items():
      color, ls, marker = STYLE[method]
      ax.plot(r["sizes"], m["time_s"], color=color, ls=ls, marker=marker, label=method, ms=4)
    ax.set_xscale("log")
    if timed:                      # none with timing_repeats = 0
      ax.set_yscale("log")
    ax.set_xlabel("n (retraining set)")
    ax.set_ylabel("wall time of one call (s)")
    ax.set_title(f"{name} (d = {r['d']})")
  if axes[0, 0].get_legend_handles_labels()[0]:
    axes[0, 0].legend(fontsize=7)
  common.save_figure(fig, path)


def csv_rows(results: dict) -> list[dict]:
  rows = []
  for case, r in results.items():
    for name, m in r["methods"].items():
      for k, n in enumerate(r["sizes"]):
        rows.append({"case": case, "method": name, "n": int(n), "delta": float(r["deltas"][k]),
                     "worst_mean": m["worst"]["mean"][k], "worst_low": m["worst"]["low"][k],
                     "worst_high": m["worst"]["high"][k],
                     "balanced_mean": m["balanced"]["mean"][k],
                     "balanced_low": m["balanced"]["low"][k],
                     "balanced_high": m["balanced"]["high"][k],
                     "excess_worst_mean": m["excess_worst_over_oracle"]["mean"][k],
                     "weight_median": m["weight_median"][k], "time_s": m["time_s"][k]})
  return rows


def table(result: dict) -> str:
  """Worst-class error mean +- 95% half width (and ms per call) by method and delta."""
  deltas = result["deltas"]
  head = f"{'method':<15}" + "".join(f"{'delta ' + format(d, '.2f'):>22}" for d in deltas)
  lines = [f"== {result['name']}: {result['note']}", "worst-class test error, mean +- 95% CI "
           f"over {result['num_seeds']} repeats [ms per call]", head]
  for name, m in result["methods"].items():
    cells = []
    for k in range(len(deltas)):
      mean, half = m["worst"]["mean"][k], m["worst"]["mean"][k] - m["worst"]["low"][k]
      cells.append(f"{mean:.3f}+-{half:.3f} [{1e3 * m['time_s'][k]:6.1f}]")
    lines.append(f"{name:<15}" + "".join(f"{c:>22}" for c in cells))
  for name in THEORY:
    m = result["methods"][name]
    lines.append(f"{name}: predicted worst-class error " + " ".join(
        f"{v:.3f}" for v in m["predicted_worst_mean"]) + " (realized above); d_eff " + " ".join(
        f"{v:.0f}" for v in m["d_eff_mean"]) + "; fallback to priors " + " ".join(
        f"{v:.2f}" for v in m["fallback_fraction"]))
  lines.append("balanced error of theory / cv / priors / oracle: " + "; ".join(
      f"delta {d:.2f}: " + "/".join(f"{result['methods'][n]['balanced']['mean'][k]:.3f}"
                                    for n in ("theory", "cv", "priors", "oracle"))
      for k, d in enumerate(deltas)))
  return "\n".join(lines)
