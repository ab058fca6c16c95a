"""Pools the image study's cells: spreads between backbones and subsamples, verdicts, collapse.

A cell (`experiments.image_study.run_cell`) is one (preset, width, backbone seed): per method
the per-repeat test errors [S sizes, R repeats], the grid's mean errors [S, K weights] and the
general-covariance plug-in's predictions [S, K]. Everything here is NumPy on those.

Spreads, per (width, n, method), with B backbones:
  between backbones: the SD over backbones of each backbone's mean over its R subsamples;
  between subsamples: the root mean over backbones of the within-backbone SD over repeats.
Comparisons with the prior ratio are paired over the same subsamples, one verdict per
backbone (the 95% t-interval of prior - method over its R repeats excludes 0); a claim is
"k / B": how many backbones it holds for. At n = N (the whole pool) every repeat is the
same subsample, so there is no per-backbone verdict; the interval over backbones remains.

Collapse (`collapse`): the hindsight-best grid weight w*(n) (least mean worst-class error over
the repeats) per width, against delta = d / n and against delta_eff = d_eff / n. If the best
weight is a function of delta (or delta_eff) alone, curves of different widths coincide at
matched delta (or delta_eff). Measured as the SD across widths of log10 w* interpolated
(linearly in log delta) onto common points in the overlap of the widths' ranges, averaged
over those points; the SD across backbones at fixed (width, n) is the noise floor.
"""

from __future__ import annotations

import numpy as np
from matplotlib import ticker

from experiments.report import plt
from thumb_jax import metrics

TABLE_METHODS = ("prior_ratio", "theory_ambient", "theory_participation", "theory_pool",
                 "theory_general", "downsample", "unweighted", "grid_oracle")
VERSUS_PRIOR = ("theory_ambient", "theory_participation", "theory_pool", "theory_general",
                "downsample", "unweighted")
SHORT = {"prior_ratio": "prior ratio", "theory_ambient": "theory d/n",
         "theory_participation": "theory d_eff/n", "theory_pool": "theory pool",
         "theory_general": "general plug-in", "downsample": "downsample",
         "unweighted": "weight 1", "grid_oracle": "oracle"}
COLORS = {"unweighted": "tab:orange", "prior_ratio": "tab:gray", "theory_ambient": "tab:blue",
          "theory_participation": "tab:cyan", "theory_pool": "tab:purple",
          "theory_general": "tab:red", "downsample": "tab:green", "grid_oracle": "black"}


def _worst(m: dict) -> np.ndarray:
  return np.maximum(np.asarray(m["err_plus"], float), np.asarray(m["err_minus"], float))


def t_interval(values: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Mean and 95% t-interval along `axis` (`metrics.mean_ci`; NaN bounds with one value)."""
  ci = metrics.mean_ci(values, axis=axis)
  return ci.mean, ci.low, ci.high


def by_preset(cells: list[dict]) -> dict[str, dict[int, list[dict]]]:
  """{preset: {width: [cells sorted by backbone seed]}}; widths ascending."""
  out: dict = {}
  for c in cells:
    out.setdefault(c["preset"], {}).setdefault(int(c["width"]), []).append(c)
  return {p: {w: sorted(v[w], key=lambda c: c["backbone_seed"]) for w in sorted(v)}
          for p, v in out.items()}


def _check_same_sizes(group: list[dict]) -> np.ndarray:
  sizes = np.asarray(group[0]["n"])
  for c in group[1:]:
    if not np.array_equal(np.asarray(c["n"]), sizes):
      raise ValueError("cells: the backbones of one (preset, width) have different sizes n")
  return sizes


def summarize_width(group: list[dict]) -> dict:
  """Per method and n: pooled mean, spreads, interval over backbones, per-backbone verdicts."""
  sizes = _check_same_sizes(group)
  full = sizes >= group[0]["pool_size"]
  out = {"n": sizes, "delta": group[0]["width"] / sizes, "backbone_seeds":
         [c["backbone_seed"] for c in group], "pool_size": group[0]["pool_size"],
         "d_eff": [c["d_eff_participation"] for c in group],
         "d_span": [c["general"]["d_span"] for c in group], "methods": {}}
  prior = np.stack([_worst(c["methods"]["prior_ratio"]) for c in group])          # [B, S, R]
  for name in TABLE_METHODS:
    worst = np.stack([_worst(c["methods"][name]) for c in group])                  # [B, S, R]
    per_backbone = worst.mean(2)                                                   # [B, S]
    mean, low, high = t_interval(per_backbone, axis=0)
    entry = {
        "worst_mean": mean, "worst_low_backbones": low, "worst_high_backbones": high,
        "between_backbones_sd": (per_backbone.std(0, ddof=1) if len(group) > 1
                                 else np.full(mean.shape, np.nan)),
        "between_subsamples_sd": np.sqrt(np.mean(worst.std(2, ddof=1) ** 2, axis=0)),
        "per_backbone_mean": per_backbone,
        "err_plus_mean": np.mean([np.mean(c["methods"][name]["err_plus"], 1) for c in group], 0),
        "err_minus_mean": np.mean([np.mean(c["methods"][name]["err_minus"], 1) for c in group],
                                  0),
        "weight_geometric_mean": np.exp(np.mean(
            [np.mean(np.log(c["methods"][name]["weight"]), 1) for c in group], 0)),
    }
    if name in VERSUS_PRIOR:
      gap = prior - worst                                                          # [B, S, R]
      _, g_low, g_high = t_interval(gap, axis=2)                                   # [B, S]
      better = np.where(full, 0, np.sum(g_low > 0, axis=0))
      worse = np.where(full, 0, np.sum(g_high < 0, axis=0))
      b_mean, b_low, b_high = t_interval(gap.mean(2), axis=0)
      entry["versus_prior"] = {"prior_minus_method_mean": b_mean,
                               "low_backbones": b_low, "high_backbones": b_high,
                               "backbones_better": better, "backbones_worse": worse,
                               "backbones": len(group), "single_subsample": full}
    out["methods"][name] = entry
  # Hindsight-best weight per backbone and n (least mean worst-class error over repeats).
  weights = np.asarray(group[0]["weights"], float)
  best = np.stack([weights[np.argmin(np.asarray(c["grid_mean"]["worst"]), axis=1)]
                   for c in group])                                                 # [B, S]
  out["best_weight"] = best
  out["general_weight"] = np.stack([np.asarray(c["methods"]["theory_general"]["weight"])[:, 0]
                                    for c in group])
  # The general plug-in's prediction at its own weight, mean over backbones.
  pred = []
  for c in group:
    k = np.argmin(np.abs(np.log(weights)[None, :]
                         - np.log(np.asarray(c["methods"]["theory_general"]["weight"])[:, :1])),
                  axis=1)
    rows = np.arange(len(sizes))
    pred.append([np.asarray(c["general"]["err_plus"])[rows, k],
                 np.asarray(c["general"]["err_minus"])[rows, k]])
  pred = np.asarray(pred, float)                                                   # [B, 2, S]
  out["general_predicted"] = {"err_plus": pred[:, 0].mean(0), "err_minus": pred[:, 1].mean(0),
                              "worst": np.max(pred, axis=1).mean(0)}
  # How far the prediction is from what its weight measured (per backbone, per class).
  measured = np.stack([[np.mean(c["methods"]["theory_general"]["err_plus"], 1),
                        np.mean(c["methods"]["theory_general"]["err_minus"], 1)]
                       for c in group])                                              # [B, 2, S]
  out["general_prediction_mean_abs_error"] = float(np.nanmean(np.abs(pred - measured)))
  return out


def _interp_spread(curves: list[tuple[np.ndarray, np.ndarray]], points: int = 9) -> dict:
  """SD across curves of y at matched x (log x axis), over the overlap of their x ranges.

  Args:
    curves: per width (x [S] > 0, y [S]).
  """
  lo = max(np.min(x) for x, _ in curves)
  hi = min(np.max(x) for x, _ in curves)
  if not lo < hi:
    return {"overlap": [float(lo), float(hi)], "points": [], "sd_mean": float("nan")}
  grid = np.geomspace(lo, hi, points)
  ys = []
  for x, y in curves:
    order = np.argsort(x)
    ys.append(np.interp(np.log(grid), np.log(x[order]), y[order]))
  sd = np.std(np.asarray(ys), axis=0, ddof=1)
  return {"overlap": [float(lo), float(hi)], "points": grid, "sd": sd,
          "sd_mean": float(np.mean(sd))}


def collapse(widths: dict[int, dict]) -> dict:
  """Does log10 of the best weight collapse onto one curve of delta, or of delta_eff?"""
  log_best = {w: np.log10(s["best_weight"]) for w, s in widths.items()}           # [B, S]
  curves_delta, curves_eff, dist_general, dist_partic, noise = [], [], [], [], []
  for w, s in widths.items():
    n = np.asarray(s["n"], float)
    inner = n < s["pool_size"]          # n = N has one subsample; kept (no repeats needed)
    mean_log = log_best[w].mean(0)
    curves_delta.append((w / n, mean_log))
    curves_eff.append((float(np.mean(s["d_eff"])) / n, mean_log))
    dist_general.append(np.log10(s["general_weight"]) - log_best[w])
    partic = np.log10(s["methods"]["theory_participation"]["weight_geometric_mean"])
    dist_partic.append(partic[None, :] - log_best[w])
    if log_best[w].shape[0] > 1:
      noise.append(np.std(log_best[w][:, inner], axis=0, ddof=1))
  rms = lambda parts: float(np.sqrt(np.mean(np.concatenate([p.ravel() for p in parts]) ** 2)))
  out = {"delta": _interp_spread(curves_delta), "delta_eff": _interp_spread(curves_eff),
         "rms_log10_general_minus_best": rms(dist_general),
         "rms_log10_participation_minus_best": rms(dist_partic),
         "between_backbones_sd_log10_best": (float(np.mean(np.concatenate(noise)))
                                             if noise else float("nan")),
         "general_prediction_mean_abs_error": float(np.mean(
             [s["general_prediction_mean_abs_error"] for s in widths.values()]))}
  return out


# ----------------------------------------------------------------------------- tables


def verdict_text(entry: dict, i: int) -> str:
  v = entry.get("versus_prior")
  if v is None or v["single_subsample"][i]:
    return ""
  b, better, worse = v["backbones"], int(v["backbones_better"][i]), int(v["backbones_worse"][i])
  parts = ([f"{better}/{b} better"] if better else []) + ([f"{worse}/{b} worse"] if worse else [])
  return f" ({', '.join(parts)})" if parts else ""


def markdown_table(preset: str, widths: dict[int, dict]) -> str:
  """Worst-class error by width and n for every method, markdown.

  Cell: mean over backbones, then (between-backbone SD / between-subsample SD) on the
  first method, and "k/B better|worse" where the per-backbone paired interval against the
  prior ratio excludes 0; bold where that holds for every backbone (B >= 2).
  """
  lines = ["| d | n (delta) | " + " | ".join(SHORT[m] for m in TABLE_METHODS) + " |",
           "|---|---|" + "---|" * len(TABLE_METHODS)]
  for w, s in widths.items():
    for i in range(len(s["n"]) - 1, -1, -1):
      cells = []
      for m in TABLE_METHODS:
        e = s["methods"][m]
        text = f"{e['worst_mean'][i]:.3f}"
        v = e.get("versus_prior")
        if v is not None and not v["single_subsample"][i] and v["backbones"] >= 2 and (
            v["backbones_better"][i] == v["backbones"] or v["backbones_worse"][i] ==
            v["backbones"]):
          text = f"**{text}**"
        if m == "prior_ratio":
          between = e["between_backbones_sd"][i]
          shown = "-" if not np.isfinite(between) else f"{between:.3f}"
          text += f" ({shown} / {e['between_subsamples_sd'][i]:.3f})"
        cells.append(text + verdict_text(e, i))
      lines.append(f"| {w} | {int(s['n'][i])} ({s['delta'][i]:.2f}) | " + " | ".join(cells)
                   + " |")
  return (f"{preset}: worst-class test error, mean over backbones (prior ratio: SD between "
          "backbones / SD between subsamples)\n" + "\n".join(lines))


def csv_rows(preset: str, widths: dict[int, dict]) -> list[dict]:
  rows = []
  for w, s in widths.items():
    for i, n in enumerate(s["n"]):
      for m in TABLE_METHODS:
        e = s["methods"][m]
        v = e.get("versus_prior", {})
        rows.append({
            "preset": preset, "width": w, "n": int(n), "delta": s["delta"][i],
            "delta_eff": float(np.mean(s["d_eff"])) / n, "method": m,
            "backbones": len(s["backbone_seeds"]),
            "worst_mean": e["worst_mean"][i], "worst_low_backbones": e["worst_low_backbones"][i],
            "worst_high_backbones": e["worst_high_backbones"][i],
            "between_backbones_sd": e["between_backbones_sd"][i],
            "between_subsamples_sd": e["between_subsamples_sd"][i],
            "err_plus_mean": e["err_plus_mean"][i], "err_minus_mean": e["err_minus_mean"][i],
            "weight_geometric_mean": e["weight_geometric_mean"][i],
            "prior_minus_method_mean": (v["prior_minus_method_mean"][i] if v else None),
            "backbones_better": (int(v["backbones_better"][i]) if v else None),
            "backbones_worse": (int(v["backbones_worse"][i]) if v else None),
            "best_weight_geometric_mean": float(np.exp(np.mean(np.log(s["best_weight"][:, i])))),
            "general_predicted_worst": s["general_predicted"]["worst"][i]})
  return rows


# ----------------------------------------------------------------------------- figures

FIGURE_METHODS = ("prior_ratio", "theory_participation", "theory_general", "downsample",
                  "unweighted", "grid_oracle")


def plot_errors(preset: str, widths: dict[int, dict], title: str):
  """(a) One column per width: worst-class error (top) and per-class errors (bottom) vs delta."""
  fig, axes = plt.subplots(2, len(widths), figsize=(4.6 * len(widths), 7.5), squeeze=False,
                           sharey="row")
  for col, (w, s) in enumerate(widths.items()):
    top, bottom = axes[0, col], axes[1, col]
    delta = s["delta"]
    for m in FIGURE_METHODS:
      e = s["methods"][m]
      style = "--" if m == "grid_oracle" else "-o"
      top.plot(delta, e["worst_mean"], style, color=COLORS[m], ms=3, lw=1.2, label=SHORT[m])
      low = np.where(np.isfinite(e["worst_low_backbones"]), e["worst_low_backbones"],
                     e["worst_mean"] - e["between_subsamples_sd"])
      high = np.where(np.isfinite(e["worst_high_backbones"]), e["worst_high_backbones"],
                      e["worst_mean"] + e["between_subsamples_sd"])
      top.fill_between(delta, np.clip(low, 0, 1), np.clip(high, 0, 1), color=COLORS[m],
                       alpha=0.12, lw=0)
    top.plot(delta, s["general_predicted"]["worst"], ":", color=COLORS["theory_general"], lw=1.5,
             label="general plug-in, predicted")
    for m in ("prior_ratio", "theory_general"):
      e = s["methods"][m]
      bottom.plot(delta, e["err_plus_mean"], "-^", color=COLORS[m], ms=3, lw=1,
                  label=f"{SHORT[m]}: err+ (minority)")
      bottom.plot(delta, e["err_minus_mean"], "-v", color=COLORS[m], ms=3, lw=1, alpha=0.6,
                  label=f"{SHORT[m]}: err- (majority)")
    bottom.plot(delta, s["general_predicted"]["err_plus"], ":^", color="tab:red", ms=2, lw=1,
                label="general plug-in predicted err+")
    bottom.plot(delta, s["general_predicted"]["err_minus"], ":v", color="tab:red", ms=2, lw=1,
                alpha=0.6, label="general plug-in predicted err-")
    for ax in (top, bottom):
      ax.set_xscale("log")
      ax.xaxis.set_minor_formatter(ticker.NullFormatter())
      ax.grid(alpha=0.3, which="both")
      ax.set_xlabel(r"$\delta = d / n$")
    b = len(s["backbone_seeds"])
    top.set_title(f"d = {w} ({b} backbone{'s' if b > 1 else ''})", fontsize=9)
  axes[0, 0].set_ylabel("worst-class test error (band: 95% over backbones)")
  axes[1, 0].set_ylabel("per-class test error")
  for row in (0, 1):
    handles, names = axes[row, 0].get_legend_handles_labels()
    axes[row, -1].legend(handles, names, fontsize=6, loc="upper left")
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  return fig


def plot_weights(preset: str, widths: dict[int, dict], collapse_: dict, title: str):
  """(b) Best and theory weights against delta (left) and delta_eff (right), all widths."""
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
  markers = "osD^v<>"
  for i, (w, s) in enumerate(widths.items()):
    n = np.asarray(s["n"], float)
    for ax, x in ((axes[0], w / n), (axes[1], float(np.mean(s["d_eff"])) / n)):
      for b in range(s["best_weight"].shape[0]):
        ax.plot(x, s["best_weight"][b], markers[i % len(markers)], ms=3, alpha=0.35,
                color=f"C{i}")
      ax.plot(x, np.exp(np.log(s["best_weight"]).mean(0)), "-" + markers[i % len(markers)],
              color=f"C{i}", ms=4, lw=1.2, label=f"d = {w}: hindsight-best (geometric mean)")
      ax.plot(x, np.exp(np.log(s["general_weight"]).mean(0)), "--", color=f"C{i}", lw=1,
              label=f"d = {w}: general plug-in")
      ax.plot(x, s["methods"]["theory_participation"]["weight_geometric_mean"], ":",
              color=f"C{i}", lw=1, label=f"d = {w}: theory d_eff/n")
      ax.plot(x, s["methods"]["prior_ratio"]["weight_geometric_mean"], "-", color="0.6", lw=0.8)
  for ax, key, label in ((axes[0], "delta", r"$\delta = d / n$"),
                         (axes[1], "delta_eff", r"$\delta_{eff} = d_{eff} / n$")):
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel(label)
    ax.grid(alpha=0.3, which="both")
    ax.set_title(f"SD of log10 best weight across widths at matched {key}: "
                 f"{collapse_[key]['sd_mean']:.2f}", fontsize=8)
  axes[0].set_ylabel("minority weight (grey: prior ratio)")
  axes[1].legend(fontsize=6, loc="best")
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  return fig


def collapse_text(preset: str, c: dict) -> str:
  """The collapse measurement in words and numbers."""
  d, e = c["delta"], c["delta_eff"]
  return (f"{preset}: SD across widths of log10(hindsight-best weight), mean over matched points:"
          f" at matched delta {d['sd_mean']:.3f} (overlap {d['overlap'][0]:.3g}..."
          f"{d['overlap'][1]:.3g}), at matched delta_eff {e['sd_mean']:.3f} (overlap "
          f"{e['overlap'][0]:.3g}...{e['overlap'][1]:.3g}); noise floor (SD across backbones at"
          f" one width and n) {c['between_backbones_sd_log10_best']:.3f}; RMS log10 distance to "
          f"the best weight: general plug-in {c['rms_log10_general_minus_best']:.3f}, "
          f"theory d_eff/n {c['rms_log10_participation_minus_best']:.3f}; general plug-in's "
          f"predicted per-class errors at its weight vs measured: mean abs. error "
          f"{c['general_prediction_mean_abs_error']:.3f}")
