"""recommend_validate, reporting: per-case figure, timing figure, CSV rows and a text table."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments import common
from experiments.recommend_validate_methods import GENERAL, THEORY
from experiments.report import plt
from thumb_jax import metrics

STYLE = {"theory_general": ("C5", "-", "p"), "theory_joint": ("C6", "-", "X"),
         "cv_ridge": ("C3", "--", "P"),
         "theory": ("C0", "-", "o"), "theory_ambient": ("C0", "--", "s"),
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
  for name in GENERAL:
    m = result["methods"].get(name)
    if m is None:
      continue
    lines.append(f"{name}: predicted worst-class error " + " ".join(
        f"{v:.3f}" for v in m["predicted_worst_mean"]) + " (realized above); median ridge "
        + " ".join(f"{v:.3g}" for v in m["ridge_median"]) + "; downsampling chosen "
        + " ".join(f"{v:.2f}" for v in m["downsample_fraction"]) + "; fallback to priors "
        + " ".join(f"{v:.2f}" for v in m["fallback_fraction"]))
  if "cv_ridge" in result["methods"]:
    lines.append("cv_ridge: median ridge " + " ".join(
        f"{v:.3g}" for v in result["methods"]["cv_ridge"]["ridge_median"]))
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


BASELINES = ("theory", "priors", "unweighted", "sklearn", "sklearn_same_ridge", "cv", "cv_ridge",
             "downsample")


def target_summary(results: dict, *, min_delta: float = 0.3,
                   methods: tuple[str, ...] = GENERAL) -> str:
  """Issue 11's targets per group of cases (Gaussian, real embeddings), cells with realized
  delta = d / n >= min_delta - 0.01 (d / round(d / delta) rounds).

  For each method: its mean worst-class error over the cells, minus the oracle's, minus each
  baseline's; the cells where it is significantly worse (paired 95% t-interval over repeats
  above 0) than the best baseline of that cell; and the median time ratio of 5-fold CV
  (over the weight grid for theory_general, over weight x ridge for theory_joint) to it.
  """
  groups = {"gaussian": [r for n, r in results.items() if n in ("isotropic", "anisotropic")],
            "real": [r for n, r in results.items() if n not in ("isotropic", "anisotropic")]}
  lines = [f"== targets (cells with delta >= {min_delta})"]
  for group, cases in groups.items():
    cells = [(r, k) for r in cases for k, dl in enumerate(r["deltas"]) if dl >= min_delta - 0.01]
    if not cells:
      continue
    present = [b for b in BASELINES if b in cases[0]["methods"]]

    def mean_of(name, cells=cells):
      return float(np.mean([r["methods"][name]["worst"]["mean"][k] for r, k in cells]))

    lines.append(f"{group}: {len(cells)} cells; mean worst-class error: " + ", ".join(
        f"{n} {mean_of(n):.4f}" for n in (*methods, "oracle", *present)
        if n in cases[0]["methods"]))
    for name in methods:
      if name not in cases[0]["methods"]:
        continue
      worse, where = 0, []
      for r, k in cells:
        ms = r["methods"]
        best = min(present, key=lambda b, ms=ms, k=k: ms[b]["worst"]["mean"][k])
        diff = (np.asarray(ms[name]["paired_worst"])[:, k]
                - np.asarray(ms[best]["paired_worst"])[:, k])
        ci = metrics.mean_ci(diff)
        if float(ci.low) > 0:
          worse += 1
          where.append(f"{r['name']} delta {r['deltas'][k]:.2f} vs {best} "
                       f"+{float(ci.mean):.3f} [{float(ci.low):.3f}, {float(ci.high):.3f}]")
      reference = "cv_ridge" if name == "theory_joint" else "cv"
      ratios = [r["methods"][reference]["time_s"][k] / r["methods"][name]["time_s"][k]
                for r, k in cells]
      lines.append(
          f"  {name}: - oracle {mean_of(name) - mean_of('oracle'):+.4f}; - baselines "
          + ", ".join(f"{b} {mean_of(name) - mean_of(b):+.4f}" for b in present)
          + f"; significantly worse than the cell's best baseline in {worse}/{len(cells)} cells"
          + (" (" + "; ".join(where) + ")" if where else "")
          + f"; time of {reference} / {name}: median {np.nanmedian(ratios):.1f}x")
  return "\n".join(lines)
