"""General-covariance studies: figures and CSV tables of (a), (b) and (c)."""

from __future__ import annotations

from collections.abc import Sequence

from experiments import report
from experiments.anisotropic_real import Embeddings
from experiments.anisotropic_theory import CHOICES, PLUG_INS, Shortcut, Simulation
from experiments.report import plt
from thumb_jax import metrics, simulate


def plot_simulation(sim: Simulation, cfg):
  k_all = len(sim.weights)
  fig, axes = plt.subplots(1, k_all, figsize=(4.6 * k_all, 3.9), squeeze=False)
  summary = simulate.intervals(sim.errors)
  below = sim.curve_delta < 1
  for k, ax in enumerate(axes[0]):
    for cls, color, marker_face in (("err_plus", "tab:red", "tab:red"),
                                    ("err_minus", "tab:blue", "white")):
      name = "minority" if cls == "err_plus" else "majority"
      for segment, part in enumerate((below, ~below)):
        x = sim.curve_delta[part]
        first = segment == 0
        ax.plot(x, getattr(sim.curve_general, cls)[part, k], "-", color=color,
                label=f"{name}: general theory" if first else None)
        ax.plot(x, getattr(sim.curve_iso, cls)[part, k], ":", color=color, alpha=0.8,
                label=f"{name}: isotropic, delta" if first else None)
        ax.plot(x, getattr(sim.curve_iso_eff, cls)[part, k], "-.", color=color, alpha=0.6,
                label=f"{name}: isotropic, delta_eff" if first else None)
      report.errorbar(ax, sim.delta, metrics.MeanCI(*(v[:, k] for v in getattr(summary, cls))),
                      color=color, mfc=marker_face, label=f"{name}: simulation")
    ax.axvline(1.0, color="0.6", lw=0.8)
    title = "prior ratio" if k == 0 else "weight"
    ax.set_title(f"{title} {sim.weights[k]:.3g}; ridge 0 | {cfg.ridge:g} (delta >= 1)",
                 fontsize=9)
    ax.set_xlabel(r"$\delta = d / n$")
    ax.set_ylim(0, None)
  axes[0, 0].set_ylabel("per-class test error")
  handles, labels = axes[0, 0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7, bbox_to_anchor=(0.5, -0.12))
  fig.suptitle(f"General covariances, d = {cfg.d}, powers {cfg.power_plus:g} / {cfg.power_minus:g}"
               f"{' (commuting)' if cfg.commuting else ' (independent rotations)'}, "
               f"pi_+ = {cfg.pi_plus}, d_eff = {sim.d_eff:.0f}; 95% CI over {cfg.num_seeds} seeds",
               fontsize=9)
  return fig


def plot_shortcut(shortcuts: Sequence[Shortcut]):
  fig, axes = plt.subplots(2, len(shortcuts), figsize=(4.4 * len(shortcuts), 6.6), squeeze=False)
  styles = {"general": ("k", "-", "o"), "iso": ("tab:orange", "--", "s"),
            "iso_eff": ("tab:green", "-.", "^"), "prior_ratio": ("0.5", ":", "x")}
  labels = {"general": "general theory", "iso": "isotropic, delta",
            "iso_eff": "isotropic, delta_eff", "prior_ratio": "prior ratio"}
  for j, s in enumerate(shortcuts):
    for choice in CHOICES:
      color, ls, marker = styles[choice]
      axes[0, j].plot(s.delta, s.weight[choice], ls=ls, marker=marker, color=color, ms=4,
                      label=labels[choice])
      axes[1, j].plot(s.delta, s.worst[choice], ls=ls, marker=marker, color=color, ms=4,
                      label=labels[choice])
      if choice in ("iso", "iso_eff"):
        axes[1, j].plot(s.delta, s.claimed[choice], ls=ls, color=color, alpha=0.35, lw=1,
                        label=f"{labels[choice]}: its own prediction")
    axes[0, j].set_yscale("log")
    axes[0, j].set_title(f"Sigma_-: power {s.power:g}, Sigma_+: {s.power:g} + gap; "
                         f"d_eff = {s.d_eff:.1f}", fontsize=9)
    for ax in axes[:, j]:
      ax.axvline(1.0, color="0.7", lw=0.8)
      ax.set_xlabel(r"$\delta = d / n$")
  axes[0, 0].set_ylabel("worst-class optimal weight")
  axes[1, 0].set_ylabel("worst-class error (general theory)")
  axes[0, 0].legend(fontsize=7)
  axes[1, 0].legend(fontsize=6)
  fig.suptitle("The isotropic shortcut: its optimal weight and what that weight costs", fontsize=9)
  return fig


def plot_embeddings(emb: Embeddings, summary: dict):
  picks = sorted({0, len(emb.sizes) // 2, len(emb.sizes) - 1})
  fig, axes = plt.subplots(1, len(picks) + 1, figsize=(4.4 * (len(picks) + 1), 3.8),
                           squeeze=False)
  styles = {"iso": ("tab:orange", ":"), "iso_eff": ("tab:green", "-."), "general": ("k", "-")}
  for ax, s in zip(axes[0], picks):
    for cls, marker in (("err_plus", "o"), ("err_minus", "s")):
      ci = metrics.mean_ci(getattr(emb.measured, cls)[s], axis=0)
      report.errorbar(ax, emb.weights, ci, fmt=marker, ms=3, label=f"measured {cls}",
                      color="tab:red" if cls == "err_plus" else "tab:blue")
      for name in PLUG_INS:
        color, ls = styles[name]
        ax.plot(emb.weights, getattr(emb.predicted[name], cls)[s], ls=ls, color=color,
                label=f"{name}" if cls == "err_plus" else None)
    ax.set_xscale("log")
    ax.set_title(f"n = {emb.sizes[s]:.0f} (delta = {emb.d / emb.sizes[s]:.2f})", fontsize=9)
    ax.set_xlabel("minority weight")
  axes[0, 0].set_ylabel("per-class test error")
  axes[0, 0].legend(fontsize=7)
  ax = axes[0, -1]
  for name in PLUG_INS:
    color, ls = styles[name]
    ax.plot(emb.d / emb.sizes, summary[name]["mean_abs_diff_per_n"], ls=ls, marker="o",
            color=color, label=f"{name} ({summary[name]['mean_abs_diff']:.3f})")
  ax.set_xlabel(r"$\delta = d / n$")
  ax.set_ylabel("mean |predicted - measured|")
  ax.legend(fontsize=7)
  fig.suptitle(emb.note, fontsize=8)
  return fig


def simulation_rows(sim: Simulation) -> list[dict]:
  summary = simulate.intervals(sim.errors)
  rows = []
  for i, n in enumerate(sim.n):
    for k, weight in enumerate(sim.weights):
      row = {"n": int(n), "delta": sim.delta[i], "ridge": sim.ridge[i], "weight": weight}
      for cls in ("err_plus", "err_minus"):
        row.update(report.interval_columns(f"sim_{cls}", getattr(summary, cls), (i, k)))
        row.update({f"general_{cls}": getattr(sim.general, cls)[i, k],
                    f"iso_{cls}": getattr(sim.iso, cls)[i, k],
                    f"iso_eff_{cls}": getattr(sim.iso_eff, cls)[i, k]})
      rows.append(row)
  return rows


def curve_rows(sim: Simulation) -> list[dict]:
  rows = []
  for i, delta in enumerate(sim.curve_delta):
    for k, weight in enumerate(sim.weights):
      row = {"delta": delta, "ridge": sim.curve_ridge[i], "weight": weight}
      for name, errs in (("general", sim.curve_general), ("iso", sim.curve_iso),
                         ("iso_eff", sim.curve_iso_eff)):
        row[f"{name}_err_plus"] = errs.err_plus[i, k]
        row[f"{name}_err_minus"] = errs.err_minus[i, k]
      rows.append(row)
  return rows


def shortcut_rows(shortcuts: Sequence[Shortcut]) -> list[dict]:
  rows = []
  for s in shortcuts:
    for i, delta in enumerate(s.delta):
      row = {"power": s.power, "d_eff": s.d_eff, "delta": delta, "ridge": s.ridge[i]}
      for choice in CHOICES:
        row[f"weight_{choice}"] = s.weight[choice][i]
        row[f"worst_{choice}"] = s.worst[choice][i]
        row[f"excess_{choice}"] = s.excess[choice][i]
        if choice in s.claimed:
          row[f"claimed_{choice}"] = s.claimed[choice][i]
      rows.append(row)
  return rows


def embedding_rows(emb: Embeddings) -> list[dict]:
  rows = []
  for s, n in enumerate(emb.sizes):
    for k, weight in enumerate(emb.weights):
      row = {"n": int(n), "delta": emb.d / n, "weight": weight, "ridge": emb.ridge}
      for cls in ("err_plus", "err_minus"):
        ci = metrics.mean_ci(getattr(emb.measured, cls)[s, :, k])
        row.update(report.interval_columns(f"measured_{cls}", ci))
        for name in PLUG_INS:
          row[f"{name}_{cls}"] = getattr(emb.predicted[name], cls)[s, k]
      rows.append(row)
  return rows
