"""The plug-in isotropic surrogate: moment estimates of a retraining set and the model they fit.

`plug_in_stats` estimates, from the retraining data itself, the statistics that the isotropic
theory needs (unbiased squared mean difference, class traces, a debiased participation ratio,
and optionally an entropy rank and whitened statistics); `surrogate` turns them into the
isotropic `GaussianMixture` standing in for the data, and `surrogate_weight` into its optimal
weight. Derivations: THEORY.md, "Derivations: the plug-in isotropic surrogate". Pure and
traceable; `thumb_jax.recommend` and `thumb_jax.retrain` apply jit / vmap.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp

from thumb_jax import theory
from thumb_jax.mixture import GaussianMixture

DIMENSIONS = ("participation", "effective_rank", "ambient", "whitened")


class PlugInStats(NamedTuple):
  """Moment estimates from one (possibly resampled) retraining set; scalars.

  count_plus, count_minus: n_+, n_-.
  mean_diff_sq: unbiased |mu_+ - mu_-|^2 (may be <= 0 when the signal is undetectable).
  trace_plus, trace_minus: unbiased tr Sigma_+, tr Sigma_-.
  participation: debiased (tr Sigma_w)^2 / tr Sigma_w^2, clipped to [1, d].
  effective_rank: exp(entropy of the normalized sample spectrum of S_w) (NaN if not computed).
  mahalanobis_sq: unbiased dmu' Sigma_w^-1 dmu (NaN if not computed; see "whitened").
  whitened_var_plus, whitened_var_minus: tr(S_w^-1 S_k) / d (NaN if not computed).
  mean_inverse_eigenvalue: debiased tr(Sigma_w^-1) / d (NaN if not computed).
  """
  count_plus: jax.Array
  count_minus: jax.Array
  mean_diff_sq: jax.Array
  trace_plus: jax.Array
  trace_minus: jax.Array
  participation: jax.Array
  effective_rank: jax.Array
  mahalanobis_sq: jax.Array
  whitened_var_plus: jax.Array
  whitened_var_minus: jax.Array
  mean_inverse_eigenvalue: jax.Array


class Surrogate(NamedTuple):
  """The isotropic model standing in for the data (scalars; fields may be traced)."""
  mixture: GaussianMixture
  dimension: jax.Array      # d_eff
  delta: jax.Array          # d_eff / n
  ridge_scale: jax.Array    # the theory's ridge is ridge * ridge_scale (1 unless "whitened")
  signal: jax.Array         # the debiased squared mean difference the mixture uses (may be <= 0)


class ClassMoments(NamedTuple):
  """Per-class multiplicities c_+, c_- [n], counts n_+, n_- (scalars), means [d], and the
  rows centred by their class mean xc [n, d]."""
  c_plus: jax.Array
  c_minus: jax.Array
  n_plus: jax.Array
  n_minus: jax.Array
  mean_plus: jax.Array
  mean_minus: jax.Array
  xc: jax.Array


def class_moments(x: jax.Array, is_plus: jax.Array, counts: jax.Array | None = None
                  ) -> ClassMoments:
  """Class counts, means and class-centred rows of x [n, d] with multiplicities `counts`
  [n] (default all ones; a bootstrap resample otherwise), pure and traceable."""
  counts = jnp.ones(x.shape[:1], x.dtype) if counts is None else counts.astype(x.dtype)
  c_plus = jnp.where(is_plus, counts, 0.0)
  c_minus = jnp.where(is_plus, 0.0, counts)
  n_plus, n_minus = jnp.sum(c_plus), jnp.sum(c_minus)
  mean_plus, mean_minus = c_plus @ x / n_plus, c_minus @ x / n_minus
  xc = x - jnp.where(is_plus[:, None], mean_plus, mean_minus)
  return ClassMoments(c_plus, c_minus, n_plus, n_minus, mean_plus, mean_minus, xc)


def plug_in_stats(x: jax.Array, is_plus: jax.Array, counts: jax.Array | None = None, *,
                  effective_rank: bool = False, whitened: bool = False,
                  scatter: jax.Array | None = None) -> PlugInStats:
  """Moment estimates for the surrogate (THEORY.md, "Derivations: the plug-in isotropic
  surrogate"), pure and traceable.

  Args:
    x: features [n, d] (centring them first improves float32 accuracy).
    is_plus: bool [n], True for class +1.
    counts: multiplicities [n] >= 0 (a bootstrap resample), default all ones.
    effective_rank: also compute the entropy-based rank (one eigendecomposition).
    whitened: also compute the whitened statistics (one Cholesky of S_w; needs n > d + 3).
    scatter: optional within-class scatter sum_i c_i (x_i - xbar_y)(x_i - xbar_y)' that the
      caller already has, [d, d] or any matrix with the same nonzero spectrum (its [n, n]
      kernel, or its restriction to an orthonormal basis of the rows); saves its O(n d^2).

  Returns:
    PlugInStats of scalars.
  """
  n_rows, d = x.shape
  counts = jnp.ones((n_rows,), x.dtype) if counts is None else counts.astype(x.dtype)
  c_plus, c_minus, n_plus, n_minus, mean_plus, mean_minus, xc = class_moments(x, is_plus, counts)
  sq = jnp.sum(xc ** 2, axis=1)
  trace_plus = c_plus @ sq / (n_plus - 1.0)
  trace_minus = c_minus @ sq / (n_minus - 1.0)
  diff = mean_plus - mean_minus
  mean_diff_sq = diff @ diff - trace_plus / n_plus - trace_minus / n_minus

  # Pooled S_w = B'B / n' with B = sqrt(c) * xc; its nonzero spectrum is that of the
  # smaller of B'B [d, d] and BB' [n, n].
  dof = n_plus + n_minus - 2.0
  if scatter is None:
    rows = jnp.sqrt(counts)[:, None] * xc
    gram = rows @ rows.T if n_rows <= d else rows.T @ rows
  else:
    gram = scatter
  tr1 = (counts @ sq) / dof                       # tr S_w
  tr2 = jnp.sum(gram ** 2) / dof ** 2             # tr S_w^2
  t2 = dof ** 2 / ((dof - 1.0) * (dof + 2.0)) * (tr2 - tr1 ** 2 / dof)
  t1sq = tr1 ** 2 - 2.0 * t2 / dof
  participation = jnp.where(t2 > 0, t1sq / jnp.where(t2 > 0, t2, 1.0), d)
  participation = jnp.clip(participation, 1.0, d)

  if effective_rank:
    evals = jnp.clip(jnp.linalg.eigvalsh(gram), 0.0, None)
    prob = evals / jnp.sum(evals)
    entropy = -jnp.sum(jnp.where(prob > 0, prob * jnp.log(jnp.where(prob > 0, prob, 1.0)), 0.0))
    rank = jnp.exp(entropy)
  else:
    rank = jnp.full((), jnp.nan, x.dtype)

  nan = jnp.full((), jnp.nan, x.dtype)
  maha, white_plus, white_minus, inv_mean = nan, nan, nan, nan
  if whitened:
    scatter_plus = (c_plus[:, None] * xc).T @ xc
    scatter_minus = (c_minus[:, None] * xc).T @ xc
    chol = jnp.linalg.cholesky((scatter_plus + scatter_minus) / dof)
    inv = jax.scipy.linalg.cho_solve((chol, True), jnp.eye(d, dtype=x.dtype))     # S_w^-1
    shrink = (dof - d - 1.0) / dof
    maha = shrink * (diff @ inv @ diff) - d * (1.0 / n_plus + 1.0 / n_minus)
    white_plus = jnp.sum(inv * scatter_plus) / (n_plus - 1.0) / d
    white_minus = jnp.sum(inv * scatter_minus) / (n_minus - 1.0) / d
    inv_mean = shrink * jnp.trace(inv) / d
  return PlugInStats(n_plus, n_minus, mean_diff_sq, trace_plus, trace_minus, participation, rank,
                     maha, white_plus, white_minus, inv_mean)


def effective_dimension(stats: PlugInStats, dimension, ambient_dim: int):
  """d_eff from the stats: 'participation', 'effective_rank', 'ambient' / 'whitened' (= d)
  or a number."""
  if dimension == "participation":
    return stats.participation
  if dimension == "effective_rank":
    return stats.effective_rank
  if dimension in ("ambient", "whitened"):
    return jnp.asarray(float(ambient_dim), stats.participation.dtype)
  return jnp.asarray(float(dimension), stats.participation.dtype)


def surrogate(stats: PlugInStats, dimension, ambient_dim: int) -> Surrogate:
  """The isotropic model for the stats: steps 1-3 of the derivation, or "whitened".

  The squared mean difference is floored at a tiny positive value so that the mixture
  stays valid under tracing; callers check `Surrogate.signal > 0` themselves.
  """
  n = stats.count_plus + stats.count_minus
  d_eff = effective_dimension(stats, dimension, ambient_dim)
  if dimension == "whitened":
    signal, var_plus, var_minus = (stats.mahalanobis_sq, stats.whitened_var_plus,
                                   stats.whitened_var_minus)
    ridge_scale = stats.mean_inverse_eigenvalue
  else:
    signal, var_plus, var_minus = (stats.mean_diff_sq, stats.trace_plus / d_eff,
                                   stats.trace_minus / d_eff)
    ridge_scale = jnp.ones_like(d_eff)
  d2 = jnp.maximum(signal, 1e-12 * (var_plus + var_minus))
  mixture = GaussianMixture(
      pi_plus=stats.count_plus / n,
      mean_plus_sq=d2 / 4.0, mean_minus_sq=d2 / 4.0, mean_inner=-d2 / 4.0,
      var_plus=var_plus, var_minus=var_minus)
  return Surrogate(mixture, d_eff, d_eff / n, ridge_scale, signal)


def surrogate_weight(sur: Surrogate, ridge, objective: str = "worst", *,
                     log10_range: tuple[float, float] = (-2.0, 4.0)
                     ) -> tuple[theory.OptimalWeight, jax.Array]:
  """`theory.optimal_weight` of a surrogate, and where that weight is defined (traceable).

  Scalar fields; vmap over a stacked Surrogate for many. The theory's ridge is
  ridge * sur.ridge_scale. Defined: the debiased squared mean difference is > 0, the
  theory applies (ridge > 0 or delta < 1) and the search found a weight.

  Returns:
    (OptimalWeight, defined bool).
  """
  best = theory.optimal_weight(sur.mixture, sur.delta, ridge * sur.ridge_scale, objective,
                               log10_range=log10_range)
  defined = (sur.signal > 0) & ((ridge > 0) | (sur.delta < 1)) & jnp.isfinite(best.weight)
  return best, defined


def surrogate_weights(surrogates: Mapping[str, Surrogate], ridge, objective: str = "worst", *,
                      log10_range: tuple[float, float] = (-2.0, 4.0)
                      ) -> dict[str, tuple[theory.OptimalWeight, jax.Array]]:
  """`surrogate_weight` of several named surrogates in one vmapped search (traceable).

  Each surrogate's fields broadcast to one shape (e.g. [S, R] per subsample, [S] per size);
  joining them compiles the scalar theory once instead of once per call site.

  Returns:
    {name: (OptimalWeight, defined)}, each field of the surrogate's broadcast shape.
  """
  shapes = {name: jnp.broadcast_shapes(*(jnp.shape(a) for a in jax.tree.leaves(sur)))
            for name, sur in surrogates.items()}
  flat = [jax.tree.map(lambda a, shape=shapes[name]: jnp.broadcast_to(a, shape).reshape(-1), sur)
          for name, sur in surrogates.items()]
  joined = jax.tree.map(lambda *parts: jnp.concatenate(parts), *flat)
  best, defined = jax.vmap(lambda s: surrogate_weight(s, ridge, objective,
                                                      log10_range=log10_range))(joined)
  out, start = {}, 0
  for name, shape in shapes.items():
    stop = start + math.prod(shape)
    out[name] = jax.tree.map(lambda a, i=start, j=stop, shape=shape: a[i:j].reshape(shape),
                             (best, defined))
    start = stop
  return out
