"""Reporting helpers for the experiments: intervals as JSON / CSV, error bars, figure style, timing.

Importing this module selects matplotlib's Agg backend and applies `STYLE` once, so every
figure of every experiment looks the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from thumb_jax import metrics

STYLE = {
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.titlesize": 9,
    "legend.fontsize": 7,
    "savefig.bbox": "tight",
}
plt.rcParams.update(STYLE)

STATS = ("mean", "low", "high")


# ----------------------------------------------------------------------------- intervals

def interval_dict(ci: metrics.MeanCI) -> dict:
  """{"mean", "low", "high"} of an interval (the form results.json stores)."""
  return {"mean": ci.mean, "low": ci.low, "high": ci.high}


def _stat(interval, name: str):
  return interval[name] if isinstance(interval, Mapping) else getattr(interval, name)


def interval_columns(name: str, interval, index=()) -> dict:
  """CSV columns {name_mean, name_low, name_high} of one entry of an interval.

  Args:
    name: column prefix, e.g. "err_plus".
    interval: a MeanCI or a mapping with "mean", "low", "high" arrays.
    index: the entry (an int or a tuple of ints); () for scalars.
  """
  return {f"{name}_{stat}": np.asarray(_stat(interval, stat))[index] for stat in STATS}


def errorbar(ax, x, interval, *, fmt: str = "o", **kw):
  """`ax.errorbar` of an interval's mean with asymmetric bars to its low and high.

  Args:
    ax: matplotlib axes; x: positions [P].
    interval: a MeanCI or a mapping with "mean", "low", "high" [P].
    fmt, **kw: passed to `ax.errorbar` (markersize 4 and capsize 2 unless given).
  """
  mean, low, high = (np.asarray(_stat(interval, s), np.float64) for s in STATS)
  kw.setdefault("ms", 4)
  kw.setdefault("capsize", 2)
  return ax.errorbar(x, mean, yerr=np.stack([mean - low, high - mean]), fmt=fmt, **kw)


# ----------------------------------------------------------------------------- timing

class Timing(NamedTuple):
  """Wall time of a function: the first call, then `repeats` calls (each blocked until ready).

  first_s: the first call (for a jitted function this includes compilation);
  median_s: median of times_s; cpu_s: this process's CPU seconds per repeat (all threads);
  output: the last call's output.
  """
  first_s: float
  median_s: float
  times_s: list
  cpu_s: list
  output: Any


def time_calls(fn: Callable, *args, repeats: int) -> Timing:
  """Times `fn(*args)`: one first call, then `repeats` timed calls.

  Raises:
    ValueError: repeats < 1.
  """
  if repeats < 1:
    raise ValueError(f"repeats: expected an integer >= 1, got {repeats}")
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  first = time.perf_counter() - start
  times, cpu = [], []
  for _ in range(repeats):
    start, start_cpu = time.perf_counter(), time.process_time()
    out = jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
    cpu.append(time.process_time() - start_cpu)
  return Timing(first, float(np.median(times)), times, cpu, out)


def compile_timed(jitted, *args, **kwargs) -> tuple[Any, dict]:
  """Ahead-of-time compiles `jitted` for these arguments.

  Returns:
    (the compiled function, {"lower_s", "compile_s"}).
  """
  start = time.perf_counter()
  lowered = jitted.lower(*args, **kwargs)
  lower_s = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  return compiled, {"lower_s": lower_s, "compile_s": time.perf_counter() - start}
