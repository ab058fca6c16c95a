"""Optimal weighting vs downsampling vs the prior ratio as n shrinks at fixed d.

    python -m experiments.downsampling --out out/downsampling [--quick] [--set d=400]

Methods on the same pool (float32 simulation):
  optimal    weight = theory.optimal_weight (worst-class objective) at delta = d / n;
  prior      weight = pi_- / pi_+;
  unweighted weight = 1;
  downsample keep the n_+ minority rows and n_+ majority rows, weight 1: delta' = d / (2 n_+);
             with delta' > 1 the ridge-0 fit is the minimum-norm interpolator (lls returns it,
             theory.downsampled_class_errors switches to interpolator_class_errors).
Two regimes (`regimes`), one row of panels each:
  ridge0  every method ridgeless. Near delta = 1 the full-data fit sits on the interpolation
          peak of its variance, while the downsampled fit is already past it: there
          downsampling wins (and loses for small delta).
  tuned   each method with its own best ridge of `ridge_grid` per n, chosen by the theory
          (for `optimal`, jointly with the weight: the best (ridge, weight) pair). This is
          the comparison the paper's claim is about: a tuned weighted fit against a tuned
          downsampled fit.
Figure: worst-class and per-class error against n (theory lines, simulation points with
95% CIs), one row per regime.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from experiments import common, report
from experiments.report import plt
from thumb_jax import mixture as mixture_lib
from thumb_jax import simulate, subsample, theory
from thumb_jax.metrics import ClassErrors
from thumb_jax.mixture import GaussianMixture

METHODS = ("optimal", "prior", "unweighted", "downsample")
REGIMES = ("ridge0", "tuned")
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
  regimes: tuple[str, ...] = REGIMES
  # Ridges the "tuned" regime chooses from. Large ridges pay off here, where the class means
  # carry the signal: the optimally weighted fit picks 1e2 to 3e3; downsampling and the prior
  # ratio pick the top of the grid, essentially their ridge -> infinity limit.
  ridge_grid: tuple[float, ...] = tuple(float(r) for r in np.geomspace(1e-2, 1e4, 13))
  theory_points: int = 120
  log10_range: tuple[float, float] = (-2.0, 7.0)   # optimal-weight search
  theory_x64: bool = True


def config() -> Config:
  return Config()


def quick(cfg: Config) -> Config:
  return dataclasses.replace(cfg, num_seeds=4, d=64, deltas=(0.1, 0.3, 0.6), theory_points=16,
                             ridge_grid=(0.1, 10.0, 1000.0))


class Choice(NamedTuple):
  """Per method, the (ridge, weight) of each delta [D] and the theory's errors there."""
  ridge: dict
  weight: dict
  errors: dict          # method -> ClassErrors [D]


def _best_over_ridges(errors: ClassErrors, ridges: np.ndarray):
  """The ridge [D] (of the last axis) with the smallest worst-class error, and its errors.

  Where the theory is undefined at every ridge (NaN: e.g. ridge 0 exactly at delta' = 1)
  the first ridge is returned with NaN errors, so the point is flagged, never dropped.
  """
  worst = np.maximum(np.asarray(errors.err_plus), np.asarray(errors.err_minus))
  k = np.argmin(np.where(np.isfinite(worst), worst, np.inf), axis=-1)
  take = lambda a: np.take_along_axis(np.asarray(a), k[:, None], axis=-1)[:, 0]
  return ridges[k], ClassErrors(take(errors.err_plus), take(errors.err_minus)), take


@functools.partial(jax.jit, static_argnames=("log10_range", "methods"))
def _candidates(mixture: GaussianMixture, pis, deltas, ridges, *, log10_range, methods):
  """Theory of `methods` at each (pi_plus, delta) [D] for every ridge [R] (pure).

  Module level and jitted once per shape and `methods`: every `choose` call reuses it.

  Returns:
    (optimal weights [D, R], or None without "optimal"; {method: ClassErrors [D, R]}).
  """
  def one(pi, delta):
    mix = mixture._replace(pi_plus=pi)
    weight, out = None, {}
    if "optimal" in methods:
      best = theory.optimal_weight(mix, delta, ridges, objective="worst",
                                   log10_range=log10_range)
      weight, out["optimal"] = best.weight, ClassErrors(best.err_plus, best.err_minus)
    if "prior" in methods:
      out["prior"] = theory.class_errors(mix, delta, (1.0 - pi) / pi, ridges)
    if "unweighted" in methods:
      out["unweighted"] = theory.class_errors(mix, delta, 1.0, ridges)
    if "downsample" in methods:
      out["downsample"] = theory.downsampled_class_errors(mix, delta, ridges)
    return weight, out

  return jax.vmap(one)(pis, deltas)


def choose(cfg: Config, mixture: GaussianMixture, deltas: np.ndarray, regime: str, *,
           pi_plus: np.ndarray | None = None, methods: Sequence[str] = METHODS) -> Choice:
  """Each method's ridge and weight per delta under `regime` (module docstring), by theory.

  Args:
    cfg, mixture: the experiment's config and model.
    deltas: [D] d / n.
    regime: "ridge0" or "tuned".
    pi_plus: [D] minority share per delta (default: the model's). The simulation passes the
      realized n_+ / n of each size: with a large ridge the scores shrink like 1 / ridge
      while the intercept's offset 2p - 1 does not, so the best weight must balance the
      realized counts exactly (the prior method then uses n_- / n_+ too).
    methods: the methods to choose for (default all).

  Returns:
    Choice with [D] arrays. Downsampled errors: theory.downsampled_class_errors at delta.
  """
  if regime not in REGIMES:
    raise ValueError(f"regimes: expected names from {REGIMES}, got {regime!r}")
  deltas = np.asarray(deltas, np.float64)
  pis = np.full(deltas.shape, cfg.pi_plus) if pi_plus is None else np.asarray(pi_plus)
  # ridge0: zeros of the grid's shape, so both regimes share one compiled `_candidates`.
  ridges = np.asarray(cfg.ridge_grid, np.float64) * (regime == "tuned")
  weights, candidates = _candidates(mixture, pis, deltas, ridges,                # [D, R]
                                    log10_range=tuple(cfg.log10_range), methods=tuple(methods))
  ridge, weight, errors = {}, {}, {}
  for method, errs in candidates.items():
    ridge[method], errors[method], take = _best_over_ridges(errs, ridges)
    weight[method] = (take(weights) if method == "optimal" else
                      (1.0 - pis) / pis if method == "prior" else np.ones(len(deltas)))
  return Choice(ridge, weight, errors)


def _part(choice: Choice, rows: slice) -> Choice:
  cut = lambda v: np.asarray(v)[rows]
  return Choice({m: cut(v) for m, v in choice.ridge.items()},
                {m: cut(v) for m, v in choice.weight.items()},
                {m: ClassErrors(cut(e.err_plus), cut(e.err_minus))
                 for m, e in choice.errors.items()})


def theory_choices(cfg: Config, mixture: GaussianMixture, sizes: np.ndarray,
                   n_down: np.ndarray) -> tuple[dict, dict]:
  """Per regime, the theory's choices at the simulated sizes and on a dense delta grid.

  One `choose` call per regime covers the realized sizes (at their realized minority share),
  the downsampled sets (at delta = 2 pi_+ d / n_down, i.e. delta' = d / n_down) and the
  curve grid.

  Returns:
    ({regime: Choice [S]} for the simulation, the downsample entry at the downsampled sets;
     {regime: curves dict} on the grid delta in [0.02, 0.97], n = d / delta).
  """
  realized = cfg.d / sizes
  delta_down = 2 * cfg.pi_plus * cfg.d / n_down
  grid = np.linspace(0.02, 0.97, cfg.theory_points)
  pis = np.asarray([mixture_lib.class_counts(int(n), cfg.pi_plus)[0] / n for n in sizes])
  deltas = np.concatenate([realized, delta_down, grid])
  pi_all = np.concatenate([pis, np.full(len(delta_down) + len(grid), cfg.pi_plus)])
  k = len(sizes)
  choices, curves = {}, {}
  with jax.enable_x64(cfg.theory_x64):
    for regime in cfg.regimes:
      everything = choose(cfg, mixture, deltas, regime, pi_plus=pi_all)
      at_sizes, at_down = _part(everything, slice(0, k)), _part(everything, slice(k, 2 * k))
      choices[regime] = at_sizes._replace(
          ridge={**at_sizes.ridge, "downsample": at_down.ridge["downsample"]},
          errors={**at_sizes.errors, "downsample": at_down.errors["downsample"]})
      curve = _part(everything, slice(2 * k, None))
      curves[regime] = {"delta": grid, "n": cfg.d / grid, **{
          m: {"ridge": curve.ridge[m], "weight": curve.weight[m],
              "err_plus": e.err_plus, "err_minus": e.err_minus,
              "worst": np.maximum(e.err_plus, e.err_minus)}
          for m, e in curve.errors.items()}}
  return choices, curves


def run_simulation(cfg: Config, mixture: GaussianMixture, keys: jax.Array) -> tuple[dict, dict]:
  """All regimes, methods and sizes in one sweep: one row (mask, weight, ridge) each.

  Returns:
    (simulation results, theory curves per regime).
  """
  sizes = simulate.sizes_for(cfg.deltas, cfg.d)
  y = simulate.pool_labels(cfg.pi_plus, int(sizes.max()))
  full = np.asarray(subsample.nested_masks(y, sizes, pi_plus=cfg.pi_plus))
  down = np.asarray(subsample.downsample_masks(y, full))
  realized = cfg.d / sizes
  n_down = down.sum(axis=1).astype(int)
  choices, curves = theory_choices(cfg, mixture, sizes, n_down)
  masks, weights, ridges, index = [], [], [], {}
  for regime, choice in choices.items():
    for method in METHODS:
      index[regime, method] = slice(len(masks), len(masks) + len(sizes))
      masks.extend(down if method == "downsample" else full)
      weights.extend(choice.weight[method])
      ridges.extend(choice.ridge[method])
  errors = simulate.run_sweep(mixture, keys, d=cfg.d, masks=np.stack(masks),
                              weights=np.asarray(weights)[:, None], ridges=np.asarray(ridges))
  out = {"n": sizes, "delta": realized, "n_downsampled": n_down,
         "delta_downsampled": cfg.d / n_down}
  for regime, choice in choices.items():
    entry, agreements = {}, {}
    for method in METHODS:
      rows = index[regime, method]
      e = ClassErrors(errors.err_plus[:, rows, 0], errors.err_minus[:, rows, 0])
      summary = simulate.intervals(e)
      th = ClassErrors(np.asarray(choice.errors[method].err_plus),
                       np.asarray(choice.errors[method].err_minus))
      entry[method] = {"ridge": choice.ridge[method], "weight": choice.weight[method],
                       **{name: report.interval_dict(ci)
                          for name, ci in summary._asdict().items()},
                       "theory_err_plus": th.err_plus, "theory_err_minus": th.err_minus,
                       "theory_worst": np.maximum(th.err_plus, th.err_minus),
                       # False where the theory is undefined (NaN), e.g. delta' = 1 at ridge 0.
                       "theory_defined": np.isfinite(np.maximum(th.err_plus, th.err_minus))}
      agreements[method] = simulate.agreement(summary, th)._asdict()
    entry["agreement"] = agreements
    out[regime] = entry
  return out, curves


def plot(cfg: Config, curves: dict, sim: dict):
  regimes = list(cfg.regimes)
  fig, axes = plt.subplots(len(regimes), 3, figsize=(15, 4.0 * len(regimes)), squeeze=False)
  labels = {"optimal": "optimal weight (worst class)", "prior": r"weight $\pi_-/\pi_+$",
            "unweighted": "weight 1", "downsample": "downsample majority, weight 1"}
  titles = ("worst-class error", r"minority error $err_+$", r"majority error $err_-$")
  threshold = cfg.d / (2 * cfg.pi_plus)   # n below which downsampling interpolates
  for row, regime in zip(axes, regimes):
    for method in METHODS:
      color = COLORS[method]
      for ax, cls in zip(row, ("worst", "err_plus", "err_minus")):
        ax.plot(curves[regime]["n"], curves[regime][method][cls], "-", color=color,
                label=labels[method] if cls == "worst" else None)
        report.errorbar(ax, sim["n"], sim[regime][method][cls], color=color)
    name = ("ridge 0" if regime == "ridge0"
            else "each method's best ridge (theory, per n)")
    for ax, title in zip(row, titles):
      ax.axvline(threshold, color="tab:green", lw=0.7, ls=":")
      ax.set_xscale("log")
      ax.set_xlabel(f"retraining set size n (d = {cfg.d})")
      ax.set_title(f"{title}, {name}", fontsize=9)
      ax.set_ylim(0, None)
      ax.grid(True, which="both")
    row[0].text(threshold, 0.02, r" downsampled $\delta' = 1$", fontsize=7, color="tab:green")
  handles, names = axes[0, 0].get_legend_handles_labels()
  fig.legend(handles, names, loc="lower center", ncol=4, fontsize=8,
             bbox_to_anchor=(0.5, -0.04 if len(regimes) > 1 else -0.08))
  fig.suptitle(rf"Weighting vs downsampling, $\pi_+ = {cfg.pi_plus}$, $|\mu| = {cfg.mean_norm}$: "
               f"theory (lines), simulation (points, 95% CI over {cfg.num_seeds} seeds)",
               fontsize=9)
  fig.tight_layout()
  return fig


def csv_rows(sim: dict, regimes: Sequence[str]) -> list[dict]:
  rows = []
  for regime in regimes:
    for i, n in enumerate(sim["n"]):
      for method in METHODS:
        entry = sim[regime][method]
        row = {"regime": regime, "n": int(n), "delta": sim["delta"][i], "method": method,
               "ridge": entry["ridge"][i], "weight": entry["weight"][i],
               "n_fit": int(sim["n_downsampled"][i]) if method == "downsample" else int(n)}
        for cls in ("err_plus", "err_minus", "worst"):
          row.update(report.interval_columns(cls, entry[cls], i))
          row[f"theory_{cls}"] = np.asarray(entry[f"theory_{cls}"])[i]
        rows.append(row)
  return rows


def key_numbers(sim: dict, regimes: Sequence[str]) -> dict:
  """Per regime and method: ridge, simulated and theory worst-class error per n, gaps."""
  out = {"n": sim["n"]}
  for regime in regimes:
    entry = sim[regime]
    part = {"optimal_weight": entry["optimal"]["weight"]}
    for method in METHODS:
      part[f"{method}_ridge"] = entry[method]["ridge"]
      part[f"{method}_worst_sim"] = entry[method]["worst"]["mean"]
      part[f"{method}_worst_theory"] = entry[method]["theory_worst"]
      part[f"{method}_max_abs_gap"] = entry["agreement"][method]["max_abs_gap"]
    opt = np.asarray(entry["optimal"]["theory_worst"])
    down = np.asarray(entry["downsample"]["theory_worst"])
    part["downsampling_beats_optimal_weighting_at_n"] = np.asarray(sim["n"])[down < opt]
    part["optimal_minus_downsample_worst_theory"] = opt - down
    undefined = ~np.all([entry[m]["theory_defined"] for m in METHODS], axis=0)
    part["theory_undefined_at_n"] = np.asarray(sim["n"])[undefined]
    out[regime] = part
  return out


def headline(summary: dict) -> str:
  lines = []
  for regime, part in summary.items():
    if regime == "n":
      continue
    cells = [f"n={n}: opt {part['optimal_worst_sim'][i]:.3f} / prior "
             f"{part['prior_worst_sim'][i]:.3f} / down {part['downsample_worst_sim'][i]:.3f}"
             for i, n in enumerate(summary["n"])]
    gaps = max([g for g in (part[f"{m}_max_abs_gap"] for m in METHODS) if np.isfinite(g)],
               default=np.nan)
    undefined = list(np.asarray(part["theory_undefined_at_n"]).tolist())
    lines.append(f"{regime}: worst-class error (sim) " + "; ".join(cells)
                 + f"; max |sim - theory| {gaps:.3f}"
                 + (f"; theory undefined (delta' = 1, ridge 0) at n = {undefined}"
                    if undefined else ""))
  return "\n".join(lines)


def run(cfg: Config, out) -> dict:
  common.positive_ints(cfg, "num_seeds", "d", "theory_points", minimum=2)
  simulate.sizes_for(cfg.deltas, cfg.d)
  out = common.ensure_dir(out)
  unknown = [r for r in cfg.regimes if r not in REGIMES]
  if unknown:
    raise ValueError(f"regimes: unknown {unknown}; expected names from {REGIMES}")
  if not cfg.ridge_grid or min(cfg.ridge_grid) <= 0:
    raise ValueError(f"ridge_grid: expected ridges > 0, got {cfg.ridge_grid}")
  mixture = GaussianMixture.symmetric(pi_plus=cfg.pi_plus, mean_norm=cfg.mean_norm)
  timings = {}
  keys = simulate.fold(simulate.seed_keys(cfg.seed, cfg.num_seeds), 0)
  for stage in common.progress(("simulation", "figures"), desc="downsampling"):
    with common.stopwatch(timings, stage):
      if stage == "simulation":
        sim, curves = run_simulation(cfg, mixture, keys)
      else:
        common.save_figure(plot(cfg, curves, sim), Path(out) / "downsampling.png")
  common.write_csv(Path(out) / "downsampling.csv", csv_rows(sim, cfg.regimes))
  summary = key_numbers(sim, cfg.regimes)
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
