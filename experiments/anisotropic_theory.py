"""General-covariance studies, shared parts: result types and the theory at many points.

`general_errors` evaluates `thumb_jax.anisotropic.class_errors` at arrays of (n, weight, ridge)
points (fast O(d) path where exact, dense path elsewhere); `theory_triplet` adds the
isotropic plug-in's theory at delta = d / n and at delta_eff = d_eff / n on a grid.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from thumb_jax import anisotropic as an
from thumb_jax import devices, theory
from thumb_jax.metrics import ClassErrors

# Weight choices of the shortcut study and plug-ins of the embedding study.
CHOICES = ("general", "iso", "iso_eff", "prior_ratio")
PLUG_INS = ("iso", "iso_eff", "general")


class Simulation(NamedTuple):
  """(a): simulated and predicted per-class errors (R deltas, K weights, P curve points)."""
  weights: np.ndarray          # [K], the prior ratio first
  n: np.ndarray                # [R]
  delta: np.ndarray            # [R] realized d / n
  ridge: np.ndarray            # [R]
  errors: ClassErrors          # [S, R, K] simulation
  general: an.GeneralErrors    # [R, K] at the simulated points
  iso: ClassErrors             # [R, K] isotropic at delta
  iso_eff: ClassErrors         # [R, K] isotropic at delta_eff
  curve_delta: np.ndarray      # [P]
  curve_ridge: np.ndarray      # [P]
  curve_general: an.GeneralErrors  # [P, K]
  curve_iso: ClassErrors       # [P, K]
  curve_iso_eff: ClassErrors   # [P, K]
  d_eff: float


class Shortcut(NamedTuple):
  """(b) for one spectrum: optimal weights [D] and the general-theory worst error they get."""
  power: float
  d_eff: float
  delta: np.ndarray             # [D]
  ridge: np.ndarray             # [D]
  weight: dict                  # {choice: [D]} for general, iso, iso_eff, prior_ratio
  worst: dict                   # {choice: [D]} worst-class error under the general theory
  excess: dict                  # {choice: [D]} worst - worst[general]
  claimed: dict                 # {general, iso, iso_eff: [D]} worst error each theory predicts
                                # for its own weight (the shortcut's promise)


_isotropic_class_errors = devices.sharded_grid(theory.class_errors)


def as_jnp(mixture: an.CovarianceMixture) -> an.CovarianceMixture:
  """Arrays in the current default float precision (pi_plus stays a Python float)."""
  dtype = jnp.result_type(float)
  return mixture._replace(**{k: jnp.asarray(getattr(mixture, k), dtype)
                             for k in mixture._fields[1:]})


@jax.jit
def fast_points(form, n, weight, ridge):
  return jax.vmap(lambda n, w, r: an.class_errors(form, n=n, weight=w, ridge=r))(
      n, weight, ridge)


@jax.jit
def dense_points(mixture, n, weight, ridge):
  # lax.map: one point's dense factorizations in memory at a time.
  return jax.lax.map(lambda p: an.class_errors(mixture, n=p[0], weight=p[1], ridge=p[2]),
                     (n, weight, ridge))


@functools.cache
def sharded_fast_points():
  """`fast_points` with the points sharded over every device (`devices.sharded_vmap`);
  built on first use, after `devices.initialize` may have run."""
  return devices.sharded_vmap(
      lambda form, n, w, r: an.class_errors(form, n=n, weight=w, ridge=r),
      in_axes=(None, 0, 0, 0))


def general_errors(mixture: an.CovarianceMixture, n, weight, ridge) -> an.GeneralErrors:
  """The general theory at points (n, weight, ridge), each [P] (broadcast), fast where exact.

  `prepare` once; points it covers exactly (all of them if the covariances commute, else
  those with ridge 0) go through the vmapped O(d) path (sharded over the devices when
  there are several), the rest through the dense path.

  Returns:
    GeneralErrors of float64 NumPy arrays [P].
  """
  n, weight, ridge = (np.asarray(v, np.float64) for v in np.broadcast_arrays(n, weight, ridge))
  mixture = as_jnp(mixture)
  dtype = jnp.result_type(float)
  form = jax.jit(an.prepare)(mixture)
  fast = np.ones(n.shape, bool) if bool(form.ridge_exact) else ridge == 0
  out = [np.full(n.shape, np.nan) for _ in an.GeneralErrors._fields]
  # With several devices the fast points are sharded over them (same numbers per point).
  fast_fn = sharded_fast_points() if jax.device_count() > 1 else fast_points
  for select, fn, spec in ((fast, fast_fn, form), (~fast, dense_points, mixture)):
    if np.any(select):
      got = fn(spec, *(jnp.asarray(v[select], dtype) for v in (n, weight, ridge)))
      for buf, value in zip(out, got):
        buf[select] = np.asarray(value, np.float64)
  return an.GeneralErrors(*out)


def isotropic_errors(plug: an.IsotropicPlugIn, *, d: int, n, weight, ridge,
                     effective: bool) -> ClassErrors:
  """Isotropic theory of the plug-in at delta = d / n, or d_eff / n when `effective`."""
  delta = (plug.d_eff if effective else d) / np.asarray(n, np.float64)
  errs = _isotropic_class_errors(plug.mixture, delta, np.asarray(weight, np.float64),
                             np.asarray(ridge, np.float64))
  return ClassErrors(np.asarray(errs.err_plus, np.float64), np.asarray(errs.err_minus, np.float64))


def ridge_for(deltas, ridge: float) -> np.ndarray:
  """0 below delta = 1, `ridge` from 1 on (the ridgeless fit interpolates for d >= n)."""
  return np.where(np.asarray(deltas) >= 1.0, ridge, 0.0)


def _grid_errors(fn, n, weights, ridge):
  """fn(n [P*K], weight [P*K], ridge [P*K]) reshaped to [P, K]."""
  n_, w_ = np.meshgrid(n, weights, indexing="ij")
  r_ = np.broadcast_to(np.asarray(ridge)[:, None], n_.shape)
  out = fn(n_.ravel(), w_.ravel(), r_.ravel())
  return type(out)(*(np.reshape(v, n_.shape) for v in out))


def theory_triplet(mixture, plug, *, d, n, weights, ridge):
  """(general, isotropic at delta, isotropic at delta_eff) on the grid n [P] x weights [K]."""
  general = _grid_errors(lambda *a: general_errors(mixture, *a), n, weights, ridge)
  iso = _grid_errors(lambda n, w, r: isotropic_errors(plug, d=d, n=n, weight=w, ridge=r,
                                                      effective=False), n, weights, ridge)
  iso_eff = _grid_errors(lambda n, w, r: isotropic_errors(plug, d=d, n=n, weight=w, ridge=r,
                                                          effective=True), n, weights, ridge)
  return general, iso, iso_eff
