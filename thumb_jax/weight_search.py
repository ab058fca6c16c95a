"""The log-weight search shared by the isotropic and general-covariance theories.

`best_weight` minimizes a predicted objective (worst-class or balanced error) over the class
weight on a dense log grid, robust to non-convexity, then refines locally; `OptimalWeight`
is the result of `theory.optimal_weight` and `anisotropic.optimal_weight`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from thumb_jax import metrics
from thumb_jax.metrics import ClassErrors


class OptimalWeight(NamedTuple):
  """A chosen weight with its predicted per-class errors and objective value."""
  weight: jax.Array
  err_plus: jax.Array
  err_minus: jax.Array
  value: jax.Array           # objective at `weight`


def check_search(*, log10_range, grid_size, refine_size=2, refine_rounds=0) -> None:
  """ValueError naming the argument for an unusable search specification."""
  lo, hi = (float(v) for v in log10_range)
  if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
    raise ValueError(f"log10_range: expected finite (lo, hi) with lo < hi, got {log10_range!r}")
  if int(grid_size) < 2:
    raise ValueError(f"grid_size: expected an integer >= 2, got {grid_size!r}")
  if int(refine_size) < 2:
    raise ValueError(f"refine_size: expected an integer >= 2, got {refine_size!r}")
  if int(refine_rounds) < 0:
    raise ValueError(f"refine_rounds: expected an integer >= 0, got {refine_rounds!r}")


def search_log_weight(objective_fn: Callable[[jax.Array], jax.Array], *,
                      log10_range: tuple[float, float], grid_size: int, refine_size: int,
                      refine_rounds: int) -> jax.Array:
  """argmin over log10(weight) of a scalar objective, robust to non-convexity (pure).

  A dense grid of `grid_size` points over `log10_range` finds the basin (the objectives
  here can be U-shaped or flat); each of `refine_rounds` rounds then evaluates
  `refine_size` points between the neighbours of the best point so far (in a
  `lax.fori_loop`: `objective_fn` is traced once per grid size, not once per round).

  Args:
    objective_fn: log10 weights [G] -> objective values [G] (NaN where undefined).
    log10_range, grid_size, refine_size, refine_rounds: the search (see above).

  Returns:
    The best log10 weight, a scalar (meaningless where every value is NaN: callers check).
  """
  lo, hi = log10_range
  grid = jnp.linspace(lo, hi, grid_size)
  best = grid[jnp.nanargmin(objective_fn(grid))]

  def refine(_, carry):
    best, step = carry
    grid = jnp.clip(best + jnp.linspace(-step, step, refine_size), lo, hi)
    return grid[jnp.nanargmin(objective_fn(grid))], 2.0 * step / (refine_size - 1)

  best, _ = jax.lax.fori_loop(0, refine_rounds, refine,
                              (best, jnp.asarray((hi - lo) / (grid_size - 1), grid.dtype)))
  return best


def best_weight(errors_fn: Callable[[jax.Array], tuple[ClassErrors, ClassErrors]], *,
                objective: str, log10_range: tuple[float, float], grid_size: int,
                refine_size: int, refine_rounds: int) -> OptimalWeight:
  """The weight minimizing a predicted objective, with its errors (scalar fields).

  Searched on the log objective (`metrics.log_objective`): the same argmin, but it keeps
  ranking weights where the errors underflow.

  Args:
    errors_fn: weights [G] -> (errors, log errors), ClassErrors with fields [G].
    objective: "worst" or "balanced".
    log10_range, grid_size, refine_size, refine_rounds: see `search_log_weight`.

  Returns:
    OptimalWeight; weight NaN where the objective is undefined at every grid point.
  """
  def log_objective(log_w):
    return metrics.log_objective(errors_fn(10.0 ** log_w)[1], objective)

  best = search_log_weight(log_objective, log10_range=log10_range, grid_size=grid_size,
                           refine_size=refine_size, refine_rounds=refine_rounds)
  errs, log_errs = jax.tree.map(lambda v: v[0], errors_fn(10.0 ** best[None]))
  ok = jnp.isfinite(metrics.log_objective(log_errs, objective))
  return OptimalWeight(jnp.where(ok, 10.0 ** best, jnp.nan), errs.err_plus, errs.err_minus,
                       metrics.objective(errs, objective))


def vectorized(one: Callable[..., OptimalWeight], *args) -> OptimalWeight:
  """`one` (scalars -> OptimalWeight) broadcast over array args, as an OptimalWeight."""
  dtype = jnp.result_type(float)
  # jnp.vectorize can return a plain tuple (when a broadcast axis has size 1 in every input).
  return OptimalWeight(*jnp.vectorize(one)(*(jnp.asarray(a, dtype) for a in args)))
