"""Last-layer retraining on image embeddings: weighting methods against the sample size n.

    python -m experiments.image_llr --dataset cifar10|celeba --embeddings DIR --out OUT \
        [--quick] [--set key=value ...]

DIR holds the backbone's embeddings of the val split (the retraining pool) and of the test
split, as `val.npz` / `test.npz` or under the cache names of `thumb_jax.images.embeddings`
(`{dataset}_{split}_d{k}_{hash}.npz`; with several datasets in DIR, `--dataset` picks
the files). Labels may be any two values: the pool's less frequent one becomes class +1.

One call of `thumb_jax.retrain.run` retrains the weighted least-squares last layer on
`num_repeats` seeded subsamples of the pool (nested across sizes, the pool's class balance)
for each of `num_sizes` log-spaced sizes n, from the smallest n that keeps 2 rows of each
class up to the whole pool (delta = d / n from large to small; at n = N every repeat is
the whole pool, so its interval has zero width), for a log-spaced weight grid and the
methods of `retrain.METHODS`, and measures per-class test errors.

Writes results.json (config, platform, the embedding files and their provenance, per size
and method: weight and per-class / worst-class / balanced test error, mean and 95% interval
over repeats; the plug-in theory overlay), results.csv (one row per size x method) and
errors_vs_n.png, errors_vs_weight.png, weights_vs_n.png; prints a summary table.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import ticker

from experiments import common
from thumb_jax import embedding_files, metrics, retrain, subsample

DATASETS = ("cifar10", "celeba")
COLORS = {"unweighted": "tab:orange", "prior_ratio": "tab:gray", "theory_ambient": "tab:blue",
          "theory_participation": "tab:cyan", "theory_pool": "tab:purple",
          "downsample": "tab:green", "grid_oracle": "black"}
LABELS = {"unweighted": "weight 1", "prior_ratio": r"prior ratio $n_-/n_+$",
          "theory_ambient": r"theory (plug-in on the subsample, $\delta = d/n$)",
          "theory_participation": r"theory, $d_{eff}$ = participation ratio",
          "theory_pool": "theory (plug-in on the pool)",
          "downsample": "downsample majority", "grid_oracle": "grid oracle (test, hindsight)"}
TABLE_METHODS = ("prior_ratio", "theory_ambient", "theory_participation", "theory_pool",
                 "downsample", "unweighted", "grid_oracle")
# Methods compared with the prior ratio, paired over the same subsamples.
VERSUS_PRIOR = ("theory_ambient", "theory_participation", "theory_pool", "downsample")


@dataclasses.dataclass(frozen=True)
class Config:
  dataset: str = "cifar10"            # picks the cache-named files in `embeddings`
  embeddings: str = ""                # folder of the val / test embedding files (required)
  num_sizes: int = 12                 # log-spaced sizes (duplicates after rounding dropped)
  min_size: int | None = None         # None: the smallest n keeping 2 rows of each class
  max_size: int | None = None         # None: the whole pool
  num_repeats: int = 10
  num_weights: int = 32               # retrain.log_weights grid
  weight_low: float = 0.1
  weight_high: float = 1000.0
  ridge: float | None = None          # None: retrain.default_ridge
  objective: str = "worst"            # of the theory weights: worst | balanced
  dimension: str = "ambient"          # d_eff of theory_pool: ambient | participation
  curve_panels: int = 3               # sizes shown in errors_vs_weight.png
  batch_size: int = 8
  seed: int = 0


def config() -> Config:
  return Config()


def quick(cfg: Config) -> Config:
  return dataclasses.replace(cfg, num_sizes=3, num_repeats=3, num_weights=8, curve_panels=2)


def check_config(cfg: Config) -> None:
  """Raises ValueError naming the flag or field that is invalid."""
  if not cfg.embeddings:
    raise ValueError("--embeddings: required (the folder of the val / test embedding files)")
  if cfg.dataset not in DATASETS:
    raise ValueError(f"--dataset: expected one of {DATASETS}, got {cfg.dataset!r}")
  if cfg.objective not in ("worst", "balanced"):
    raise ValueError(f"objective: expected 'worst' or 'balanced', got {cfg.objective!r}")
  if cfg.dimension not in ("ambient", "participation"):
    raise ValueError(f"dimension: expected 'ambient' or 'participation', got {cfg.dimension!r}")
  for name in ("num_sizes", "num_repeats", "num_weights", "curve_panels", "batch_size"):
    if getattr(cfg, name) < 1:
      raise ValueError(f"{name}: expected a positive integer, got {getattr(cfg, name)}")
  if cfg.ridge is not None and not (math.isfinite(cfg.ridge) and cfg.ridge >= 0):
    raise ValueError(f"ridge: expected a finite number >= 0 or none, got {cfg.ridge!r}")
  if not (0 < cfg.weight_low < cfg.weight_high and math.isfinite(cfg.weight_high)):
    raise ValueError(f"weight_low, weight_high: expected 0 < weight_low < weight_high, got "
                     f"{cfg.weight_low}, {cfg.weight_high}")


# ----------------------------------------------------------------------------- summaries


def ci_dict(values, axis: int = 1) -> dict:
  """Mean and 95% t-interval over the repeats axis."""
  ci = metrics.mean_ci(values, axis=axis)
  return {"mean": ci.mean, "low": ci.low, "high": ci.high}


def geometric_ci_dict(values, axis: int = 1) -> dict:
  """Geometric mean and 95% interval (a t-interval of log values), for weights."""
  ci = metrics.mean_ci(np.log(np.asarray(values, np.float64)), axis=axis)
  return {"mean": np.exp(ci.mean), "low": np.exp(ci.low), "high": np.exp(ci.high)}


def summarize(result: retrain.RetrainResult, dim: int, pool_size: int) -> dict:
  """Per size and method: weight and errors (mean, 95% CI over repeats), theory overlay.

  At n = pool_size every repeat is the whole pool: the intervals have zero width there, and
  the verdict of theory against the prior ratio says so.
  """
  sizes = np.asarray(result.sizes)
  methods = {}
  for name in retrain.METHODS:
    m = getattr(result.methods, name)
    methods[name] = {
        "defined_fraction": np.mean(m.defined, axis=1),
        "weight": ci_dict(m.weight), "weight_geometric": geometric_ci_dict(m.weight),
        "err_plus": ci_dict(m.errors.err_plus), "err_minus": ci_dict(m.errors.err_minus),
        "worst": ci_dict(m.errors.worst), "balanced": ci_dict(m.errors.balanced),
        "predicted_worst": _nanmean(np.maximum(m.predicted.err_plus, m.predicted.err_minus)),
    }
  # Paired over the same subsamples: prior ratio minus method (> 0: the method is better).
  versus = {}
  for name in VERSUS_PRIOR:
    gap = ci_dict(result.methods.prior_ratio.errors.worst
                  - getattr(result.methods, name).errors.worst)
    verdict = np.where(gap["low"] > 0, "better", np.where(gap["high"] < 0, "worse", "tie"))
    verdict = np.where(sizes >= pool_size, np.char.add(verdict, " (n = N, one subsample)"),
                       verdict)
    versus[name] = {"prior_minus_method": gap, "verdict": verdict}
  curves = result.theory
  grid = result.errors
  return {
      "n": sizes, "delta": dim / sizes, "n_plus": result.count_plus,
      "n_minus": result.count_minus, "dim": dim, "pool_size": pool_size,
      "ridge": result.ridge,
      "feature_scale": result.feature_scale, "weights": result.weights,
      "methods": methods,
      "versus_prior_worst": versus,
      "grid": {"err_plus": ci_dict(grid.err_plus), "err_minus": ci_dict(grid.err_minus),
               "worst": ci_dict(grid.worst)},
      "theory_overlay": {
          "mixture": curves.mixture._asdict(), "delta": curves.delta,
          "err_plus": curves.errors.err_plus, "err_minus": curves.errors.err_minus,
          "optimal_weight": curves.optimal.weight,
          "optimal_err_plus": curves.optimal.err_plus,
          "optimal_err_minus": curves.optimal.err_minus,
          "prior_ratio": curves.prior_ratio._asdict(),
          "downsample": curves.downsample._asdict()},
  }


def _nanmean(values) -> np.ndarray:
  v = np.asarray(values, np.float64)
  count = np.sum(np.isfinite(v), axis=1)
  total = np.sum(np.where(np.isfinite(v), v, 0.0), axis=1)
  return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def csv_rows(summary: dict) -> list[dict]:
  rows = []
  for i, n in enumerate(summary["n"]):
    for name, m in summary["methods"].items():
      row = {"n": int(n), "delta": summary["delta"][i], "n_plus": int(summary["n_plus"][i]),
             "n_minus": int(summary["n_minus"][i]), "method": name}
      for key in ("weight", "err_plus", "err_minus", "worst", "balanced"):
        for stat in ("mean", "low", "high"):
          row[f"{key}_{stat}"] = m[key][stat][i]
      row["weight_geometric_mean"] = m["weight_geometric"]["mean"][i]
      row["predicted_worst"] = m["predicted_worst"][i]
      rows.append(row)
  return rows


def table(summary: dict) -> str:
  """Worst-class test error per size and method, and each theory method vs the prior ratio."""
  short = {"prior_ratio": "prior", "theory_ambient": "th_ambient",
           "theory_participation": "th_partic",
           "theory_pool": "th_pool", "downsample": "downsample", "unweighted": "weight 1",
           "grid_oracle": "oracle"}
  head = (f"{'n':>6} {'delta':>6} " + " ".join(f"{short[m]:>10}" for m in TABLE_METHODS)
          + "   prior minus: " + ", ".join(short[m] for m in VERSUS_PRIOR) + " [95% CI]")
  lines = ["worst-class test error (mean over repeats)", head]
  for i, n in enumerate(summary["n"]):
    errs = " ".join(f"{summary['methods'][m]['worst']['mean'][i]:>10.3f}"
                    for m in TABLE_METHODS)
    cells = []
    for name in VERSUS_PRIOR:
      v = summary["versus_prior_worst"][name]
      diff = v["prior_minus_method"]
      cells.append(f"{diff['mean'][i]:+.3f} [{diff['low'][i]:+.3f}, {diff['high'][i]:+.3f}] "
                   f"{v['verdict'][i].split(' ')[0]}")
    lines.append(f"{int(n):>6} {summary['delta'][i]:>6.3f} {errs}   " + "; ".join(cells))
  lines.append("(better / worse: the 95% interval of the paired difference excludes 0; at n = N "
               "every repeat is the whole pool)")
  return "\n".join(lines)


# ----------------------------------------------------------------------------- figures


def _band(ax, x, ci: dict, *, color, label=None, style="-o", clip=(0.0, 1.0)):
  ax.plot(x, ci["mean"], style, color=color, ms=3, lw=1.2, label=label)
  ax.fill_between(x, np.clip(ci["low"], *clip), np.clip(ci["high"], *clip), color=color,
                  alpha=0.15, lw=0)


def _size_axis(ax, sizes, dim: int):
  """Log n axis ticked at (every other) size, with delta = d / n on top."""
  ticks = np.asarray(sizes)[::-2][::-1]
  ax.set_xscale("log")
  ax.xaxis.set_minor_locator(ticker.NullLocator())
  ax.set_xticks(ticks, [str(int(n)) for n in ticks], fontsize=7)
  ax.set_xlabel(f"retraining set size n (d = {dim})")
  top = ax.secondary_xaxis("top", functions=(lambda n: dim / np.maximum(n, 1e-9),
                                             lambda delta: dim / np.maximum(delta, 1e-9)))
  top.xaxis.set_minor_locator(ticker.NullLocator())
  top.set_xticks(dim / ticks, [f"{dim / n:.2g}" for n in ticks], fontsize=7)
  top.set_xlabel(r"$\delta = d / n$", fontsize=8)


def plot_errors_vs_n(summary: dict, title: str):
  """(a) Worst-class and balanced test error against n, per method, 95% bands."""
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
  n = summary["n"]
  for ax, key, name in ((axes[0], "worst", "worst-class"), (axes[1], "balanced", "balanced")):
    for method, m in summary["methods"].items():
      _band(ax, n, m[key], color=COLORS[method], label=LABELS[method],
            style="--" if method == "grid_oracle" else "-o")
    _size_axis(ax, n, summary["dim"])
    ax.set_ylabel(f"{name} test error")
    ax.grid(alpha=0.3, which="both")
  overlay = summary["theory_overlay"]
  axes[0].plot(n, np.maximum(overlay["optimal_err_plus"], overlay["optimal_err_minus"]), ":",
               color=COLORS["theory_pool"], lw=1, label="theory_pool, plug-in prediction")
  handles, names = axes[0].get_legend_handles_labels()
  fig.legend(handles, names, loc="lower center", ncol=4, fontsize=7, bbox_to_anchor=(0.5, -0.1))
  fig.suptitle(title, fontsize=9, y=1.04)
  return fig


def panel_sizes(num_sizes: int, panels: int) -> np.ndarray:
  """Indices of `panels` sizes spread over the grid (smallest, ..., largest)."""
  return np.unique(np.round(np.linspace(0, num_sizes - 1, max(1, panels))).astype(int))


def plot_errors_vs_weight(summary: dict, panels: int, title: str):
  """(b) Per-class test error against the weight at a few n, with the plug-in theory."""
  index = panel_sizes(len(summary["n"]), panels)
  fig, axes = plt.subplots(1, len(index), figsize=(4.5 * len(index), 4.0), squeeze=False)
  weights, grid, overlay = summary["weights"], summary["grid"], summary["theory_overlay"]
  for ax, i in zip(axes[0], index):
    for key, color, name in (("err_plus", "tab:red", r"$err_+$ (minority)"),
                             ("err_minus", "tab:blue", r"$err_-$ (majority)")):
      _band(ax, weights, {s: v[i] for s, v in grid[key].items()}, color=color,
            label=f"{name}, measured")
      ax.plot(weights, overlay[key][i], "--", color=color, lw=1, label=f"{name}, plug-in theory")
    for method, style in (("prior_ratio", ":"), ("theory_ambient", "-"), ("theory_pool", "-.")):
      ax.axvline(summary["methods"][method]["weight_geometric"]["mean"][i],
                 color=COLORS[method], ls=style, lw=1,
                 label=f"{LABELS[method]} (geometric mean weight)")
    ax.set_xscale("log")
    ax.set_xlabel(r"minority weight $\omega$")
    ax.set_title(f"n = {int(summary['n'][i])}, delta = {summary['delta'][i]:.3g}", fontsize=9)
    ax.set_ylim(0, None)
    ax.grid(alpha=0.3, which="both")
  axes[0, 0].set_ylabel("test error")
  handles, names = axes[0, 0].get_legend_handles_labels()
  fig.legend(handles, names, loc="lower center", ncol=4, fontsize=7, bbox_to_anchor=(0.5, -0.12))
  fig.suptitle(title, fontsize=9)
  return fig


def plot_weights_vs_n(summary: dict, title: str):
  """(c) The weights the methods choose against n (mean and 95% band over repeats)."""
  fig, ax = plt.subplots(figsize=(6.5, 4.2))
  for method in ("prior_ratio", "theory_ambient", "theory_participation", "theory_pool",
                 "grid_oracle"):
    _band(ax, summary["n"], summary["methods"][method]["weight_geometric"],
          color=COLORS[method], label=LABELS[method],
          style="--" if method == "grid_oracle" else "-o", clip=(0.0, np.inf))
  _size_axis(ax, summary["n"], summary["dim"])
  ax.set_yscale("log")
  ax.set_ylabel(r"minority weight $\omega$ (geometric mean, 95% CI)")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=7)
  ax.set_title(title, fontsize=9, pad=28)
  return fig


# ----------------------------------------------------------------------------- entry point


def run(cfg: Config, out) -> dict:
  """Loads the embeddings, runs the sweep, writes results, figures and the table."""
  check_config(cfg)
  out = common.ensure_dir(out)
  timings: dict = {}
  with common.stopwatch(timings, "load"):
    data = embedding_files.load_retraining_data(cfg.embeddings, dataset=cfg.dataset)
    sizes = subsample.default_sizes(data.y_pool, num_sizes=cfg.num_sizes, min_size=cfg.min_size,
                         max_size=cfg.max_size)
  dim = data.x_pool.shape[1]
  with common.stopwatch(timings, "sweep"):
    result = retrain.run(
        data.x_pool, data.y_pool, data.x_test, data.y_test, sizes=sizes,
        weights=retrain.log_weights(cfg.num_weights, low=cfg.weight_low, high=cfg.weight_high),
        num_repeats=cfg.num_repeats, seed=cfg.seed, ridge=cfg.ridge, objective=cfg.objective,
        dimension=cfg.dimension, batch_size=cfg.batch_size)
  summary = summarize(result, dim, data.x_pool.shape[0])
  pi = float(np.mean(data.y_pool > 0))
  title = (f"{cfg.dataset}: d = {dim}, pool N = {data.x_pool.shape[0]} "
           rf"($\pi_+$ = {pi:.3f}), test M = {data.x_test.shape[0]}, ridge "
           f"{float(result.ridge):.3g}; 95% CI over {cfg.num_repeats} subsamples")
  figures = {"errors_vs_n.png": lambda: plot_errors_vs_n(summary, title),
             "errors_vs_weight.png": lambda: plot_errors_vs_weight(summary, cfg.curve_panels,
                                                                   title),
             "weights_vs_n.png": lambda: plot_weights_vs_n(summary, title)}
  with common.stopwatch(timings, "figures"):
    for name, make in common.progress(figures.items(), desc="figures", total=len(figures)):
      common.save_figure(make(), Path(out) / name)
  common.write_csv(Path(out) / "results.csv", csv_rows(summary))
  common.save_results(
      Path(out) / "results.json", config=cfg, results=summary, experiment="image_llr",
      embedding_files=data.files,
      labels={"plus (minority)": data.labels.plus, "minus (majority)": data.labels.minus},
      seconds=timings)
  return summary


def main(argv: Sequence[str] | None = None) -> dict:
  cfg, out = common.parse_args(argv, config(), quick=quick, description=__doc__,
                               flags=("dataset", "embeddings"))
  summary = run(cfg, out)
  print(table(summary))
  return summary


if __name__ == "__main__":
  main(sys.argv[1:])
