"""The two-class Gaussian mixture of THEORY.md and a sampler for it.

x | y ~ N(mu_y, s_y^2 I_d), y in {+1, -1}, class +1 the minority with prior pi_plus.
Only |mu_+|^2, |mu_-|^2 and mu_+ . mu_- matter, so the spec stores those three
numbers; `means` places the two vectors in the first two coordinates of R^d.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from thumb_jax import _checks


class GaussianMixture(NamedTuple):
  """Two-class isotropic Gaussian mixture (a pytree: it vmaps and jits).

  Attributes:
    pi_plus: prior of the minority class +1, in (0, 1).
    mean_plus_sq: |mu_+|^2.
    mean_minus_sq: |mu_-|^2.
    mean_inner: mu_+ . mu_- (Cauchy-Schwarz: mean_inner^2 <= product of the squares).
    var_plus: s_+^2, per-coordinate variance of class +1.
    var_minus: s_-^2, per-coordinate variance of class -1.
  """
  pi_plus: float
  mean_plus_sq: float
  mean_minus_sq: float
  mean_inner: float
  var_plus: float = 1.0
  var_minus: float = 1.0

  @classmethod
  def symmetric(cls, *, pi_plus: float, mean_norm: float,
                var_plus: float = 1.0, var_minus: float = 1.0) -> "GaussianMixture":
    """mu_- = -mu_+ with |mu_+| = mean_norm (the paper's reference model)."""
    r2 = mean_norm ** 2
    return cls(pi_plus, r2, r2, -r2, var_plus, var_minus)

  # Derived statistics used by the theory (THEORY.md, "Model").
  @property
  def pi_minus(self):
    return 1.0 - self.pi_plus

  @property
  def mean_diff_sq(self):
    """D2 = |mu_+ - mu_-|^2."""
    return self.mean_plus_sq + self.mean_minus_sq - 2.0 * self.mean_inner

  @property
  def align_plus(self):
    """a_+ = (mu_+ - mu_-) . mu_+."""
    return self.mean_plus_sq - self.mean_inner

  @property
  def align_minus(self):
    """a_- = (mu_+ - mu_-) . mu_-."""
    return self.mean_inner - self.mean_minus_sq

  def validate(self) -> "GaussianMixture":
    """Raises ValueError naming the field if a concrete value is invalid."""
    _checks.open_interval("pi_plus", self.pi_plus, 0.0, 1.0)
    _checks.nonnegative("mean_plus_sq", self.mean_plus_sq)
    _checks.nonnegative("mean_minus_sq", self.mean_minus_sq)
    _checks.positive("var_plus", self.var_plus)
    _checks.positive("var_minus", self.var_minus)
    if _checks.is_concrete(self.mean_inner, self.mean_plus_sq, self.mean_minus_sq):
      gap = np.asarray(self.mean_inner) ** 2 - (np.asarray(self.mean_plus_sq)
                                                * np.asarray(self.mean_minus_sq))
      if np.any(gap > 1e-9 * (1.0 + np.abs(np.asarray(self.mean_plus_sq)
                                            * np.asarray(self.mean_minus_sq)))):
        raise ValueError(
            "mean_inner: expected mean_inner^2 <= mean_plus_sq * mean_minus_sq "
            f"(Cauchy-Schwarz), got mean_inner={self.mean_inner}, "
            f"mean_plus_sq={self.mean_plus_sq}, mean_minus_sq={self.mean_minus_sq}")
    return self


def means(mixture: GaussianMixture, d: int) -> tuple[jax.Array, jax.Array]:
  """Class means realizing the mixture's mean statistics in R^d.

  mu_+ = |mu_+| e_1 and mu_- = (mu_+.mu_- / |mu_+|) e_1 + rest e_2, so that every
  inner product matches the spec.

  Returns:
    (mu_plus [d], mu_minus [d]).
  """
  if d < 2:
    raise ValueError(f"d: expected an integer >= 2, got {d}")
  norm_p = jnp.sqrt(jnp.asarray(mixture.mean_plus_sq, jnp.result_type(float)))
  along = jnp.where(norm_p > 0, mixture.mean_inner / jnp.where(norm_p > 0, norm_p, 1.0), 0.0)
  rest = jnp.sqrt(jnp.maximum(mixture.mean_minus_sq - along ** 2, 0.0))
  mu_p = jnp.zeros((d,), norm_p.dtype).at[0].set(norm_p)
  mu_m = jnp.zeros((d,), norm_p.dtype).at[0].set(along).at[1].set(rest)
  return mu_p, mu_m


def class_counts(n: int, pi_plus: float) -> tuple[int, int]:
  """Fixed class counts (n_plus, n_minus) = (round(pi_plus n), n - n_plus), at least 1 each."""
  n_plus = int(min(max(round(pi_plus * n), 1), n - 1))
  return n_plus, n - n_plus


def sample(key: jax.Array, mixture: GaussianMixture, *, n: int, d: int,
           fixed_counts: bool = True) -> tuple[jax.Array, jax.Array]:
  """Draws n labelled points from the mixture.

  With fixed_counts the first round(pi_plus n) rows are class +1 and the rest -1
  (THEORY.md's retraining set: n_plus = pi_plus n); otherwise labels are Bernoulli.
  Rows within a class are i.i.d., so the first k rows of each class are a uniform
  subsample of size k (see `nested_masks`).

  Args:
    key: PRNG key.
    mixture: the mixture (its fields may be traced).
    n: number of samples (static).
    d: dimension (static).
    fixed_counts: deterministic class counts if True, Bernoulli(pi_plus) labels otherwise.

  Returns:
    (x [n, d], y [n]) with y in {+1., -1.}.
  """
  key_y, key_z = jax.random.split(key)
  if fixed_counts:
    if not isinstance(mixture.pi_plus, (int, float)):
      raise ValueError("pi_plus: fixed_counts=True needs a Python float pi_plus "
                       "(class counts are static shapes); use fixed_counts=False to trace it")
    n_plus, _ = class_counts(n, mixture.pi_plus)
    y = jnp.where(jnp.arange(n) < n_plus, 1.0, -1.0)
  else:
    y = jnp.where(jax.random.bernoulli(key_y, mixture.pi_plus, (n,)), 1.0, -1.0)
  mu_p, mu_m = means(mixture, d)
  z = jax.random.normal(key_z, (n, d), mu_p.dtype)
  is_plus = (y > 0)[:, None]
  x = jnp.where(is_plus, mu_p + jnp.sqrt(mixture.var_plus) * z,
                mu_m + jnp.sqrt(mixture.var_minus) * z)
  return x, y


def nested_masks(y: jax.Array, sizes, *, pi_plus: float | None = None) -> jax.Array:
  """0/1 masks selecting nested subsamples with fixed class counts from one pool.

  For each size n the mask keeps the first n_plus(n) rows of class +1 and the first
  n_minus(n) rows of class -1 (in row order), with n_plus(n) = round(pi_plus n).
  Rows within a class must be exchangeable (as from `sample` or after a shuffle).

  Args:
    y: labels [N] in {+1, -1} (concrete).
    sizes: sequence of sample sizes, each <= N.
    pi_plus: minority share of each subsample; default: the pool's share.

  Returns:
    masks [len(sizes), N] of 0./1.
  """
  y = np.asarray(y)
  n_pool = y.shape[0]
  plus = y > 0
  pi = plus.mean() if pi_plus is None else pi_plus
  rank = np.where(plus, np.cumsum(plus) - 1, np.cumsum(~plus) - 1)
  masks = []
  for n in sizes:
    if not 2 <= n <= n_pool:
      raise ValueError(f"sizes: expected every size in [2, {n_pool}], got {n}")
    n_plus, n_minus = class_counts(int(n), float(pi))
    if n_plus > plus.sum() or n_minus > (~plus).sum():
      raise ValueError(f"sizes: size {n} needs {n_plus} rows of class +1 and {n_minus} "
                       f"of class -1; the pool has {plus.sum()} and {(~plus).sum()}")
    masks.append(np.where(plus, rank < n_plus, rank < n_minus))
  return jnp.asarray(np.stack(masks), dtype=jnp.result_type(float))
