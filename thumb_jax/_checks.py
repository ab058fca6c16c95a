"""Argument checks that raise ValueError on concrete values and stay silent under jit.

Inside jit the values are tracers; the numerical code then returns NaN for invalid
inputs (documented per function) rather than raising.
"""

from __future__ import annotations

import jax
import numpy as np


def is_concrete(*values) -> bool:
  """True if no leaf of `values` is a tracer."""
  return not any(isinstance(v, jax.core.Tracer) for v in jax.tree_util.tree_leaves(values))


def _fail(name, expected, value):
  raise ValueError(f"{name}: expected {expected}, got {np.asarray(value).tolist()!r}")


def real(name: str, value) -> np.ndarray:
  """`value` as a NumPy array of real numbers (bool, int or float), else ValueError naming it.

  Strings, None, objects and complex numbers are refused here, before NumPy would raise a
  bare TypeError (e.g. UFuncTypeError on a comparison).
  """
  try:
    v = np.asarray(value)
  except (TypeError, ValueError) as err:
    raise ValueError(f"{name}: expected real numbers, got {value!r} ({err})") from None
  if v.dtype.kind not in "biuf" and not jax.numpy.issubdtype(v.dtype, jax.numpy.floating):
    raise ValueError(f"{name}: expected real numbers, got {value!r}")
  return v


def finite(name: str, value) -> None:
  """Real and finite (no inf, no NaN); silent for tracers."""
  if is_concrete(value) and not np.all(np.isfinite(real(name, value))):
    _fail(name, "finite values", value)


def open_interval(name: str, value, lo: float, hi: float) -> None:
  if is_concrete(value):
    v = real(name, value)
    if not np.all((v > lo) & (v < hi)):
      _fail(name, f"values in ({lo}, {hi})", value)


def positive(name: str, value) -> None:
  if is_concrete(value):
    v = real(name, value)
    if not np.all(v > 0):
      _fail(name, "values > 0", value)


def nonnegative(name: str, value) -> None:
  if is_concrete(value):
    v = real(name, value)
    if not np.all(v >= 0):
      _fail(name, "values >= 0", value)


def labels(name: str, y) -> None:
  """Labels must be +1 / -1 and both classes present."""
  if is_concrete(y):
    v = np.asarray(y)
    if not np.all((v == 1) | (v == -1)):
      bad = np.unique(v[(v != 1) & (v != -1)])[:5]
      raise ValueError(f"{name}: expected labels in {{+1, -1}}, found {bad.tolist()}")
    if not (np.any(v == 1) and np.any(v == -1)):
      raise ValueError(f"{name}: expected both classes +1 and -1 to be present, "
                       f"found only {np.unique(v).tolist()}")


def shape(name: str, value, expected: tuple, what: str) -> None:
  got = np.shape(value)
  if len(got) != len(expected) or any(e is not None and g != e for g, e in zip(got, expected)):
    raise ValueError(f"{name}: expected shape {what}, got {got}")
