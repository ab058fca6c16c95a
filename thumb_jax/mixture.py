"""Two-class Gaussian mixture specs (isotropic and full-covariance), builders and a sampler.

`GaussianMixture`: x | y ~ N(mu_y, s_y^2 I_d), y in {+1, -1}, class +1 the minority with prior
pi_plus. Only |mu_+|^2, |mu_-|^2 and mu_+ . mu_- matter, so the spec stores those three numbers;
`means` places the two vectors in the first two coordinates of R^d.
`CovarianceMixture`: x | y = k ~ N(mu_k, Sigma_k) with full covariances (THEORY.md, "General
class covariances"); `power_law_mixture` builds the rotated power-law ones used throughout.
`sample` draws from either. Class counts round half up (`round_half_up`, the repo's one rule).
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
                var_plus: float = 1.0, var_minus: float = 1.0) -> GaussianMixture:
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

  def validate(self) -> GaussianMixture:
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


def round_half_up(x):
  """The nearest integer, halves rounded up (2.5 -> 3, 3.5 -> 4): the repo's one count rule.

  Values within 1e-9 (relative) of a half count as the half, so 0.35 * 10 (3.4999999999999996
  in floating point) gives 4. Returns an int for a scalar, an int64 array otherwise.
  """
  v = np.asarray(x, np.float64)
  out = np.floor(v + 0.5 + 1e-9 * np.maximum(1.0, np.abs(v))).astype(np.int64)
  return int(out) if out.ndim == 0 else out


def class_counts(n: int, pi_plus: float) -> tuple[int, int]:
  """Fixed class counts (n_plus, n_minus) = (round_half_up(pi_plus n), n - n_plus), >= 1 each."""
  n_plus = int(min(max(round_half_up(pi_plus * n), 1), n - 1))
  return n_plus, n - n_plus


class CovarianceMixture(NamedTuple):
  """Two-class Gaussian mixture with full class covariances (a pytree).

  Attributes:
    pi_plus: prior of the minority class +1, in (0, 1).
    mean_plus: mu_+ [d].
    mean_minus: mu_- [d].
    cov_plus: Sigma_+ [d, d], symmetric positive semi-definite.
    cov_minus: Sigma_- [d, d], symmetric positive semi-definite.
  """
  pi_plus: float
  mean_plus: jax.Array
  mean_minus: jax.Array
  cov_plus: jax.Array
  cov_minus: jax.Array

  @property
  def dim(self) -> int:
    return int(np.shape(self.mean_plus)[-1])

  def validate(self) -> CovarianceMixture:
    """Raises ValueError naming the field if a concrete value is invalid."""
    _checks.open_interval("pi_plus", self.pi_plus, 0.0, 1.0)
    _checks.shape("mean_plus", self.mean_plus, (None,), "[d]")
    d = np.shape(self.mean_plus)[0]
    _checks.shape("mean_minus", self.mean_minus, (d,), f"[{d}] (as mean_plus)")
    for name in ("cov_plus", "cov_minus"):
      cov = getattr(self, name)
      _checks.shape(name, cov, (d, d), f"[{d}, {d}] (d from mean_plus)")
      check_psd(name, cov)
    return self


def check_psd(name: str, cov) -> None:
  """ValueError unless a concrete cov is finite, symmetric and PSD (float32-level slack)."""
  if not _checks.is_concrete(cov):
    return
  c = np.asarray(cov, np.float64)
  scale = max(np.abs(c).max(), np.finfo(np.float64).tiny)
  if not np.all(np.isfinite(c)):
    raise ValueError(f"{name}: expected finite entries")
  if np.abs(c - c.T).max() > 1e-5 * scale:
    raise ValueError(f"{name}: expected a symmetric matrix, max |C - C'| = "
                     f"{np.abs(c - c.T).max():.3g}")
  low = np.linalg.eigvalsh(0.5 * (c + c.T))[0]
  if low < -1e-5 * scale:
    raise ValueError(f"{name}: expected a positive semi-definite matrix, smallest "
                     f"eigenvalue {low:.3g}")


def power_law_spectrum(d: int, power: float) -> np.ndarray:
  """Eigenvalues j^-power, j = 1..d, normalized to mean 1: float64 [d]."""
  ev = np.arange(1, d + 1, dtype=np.float64) ** -float(power)
  return ev / ev.mean()


def _haar_rotation(key: jax.Array, d: int) -> np.ndarray:
  """A Haar-random orthogonal matrix [d, d] (QR of a Gaussian matrix, signs fixed)."""
  g = np.asarray(jax.random.normal(key, (d, d)), np.float64)
  q, r = np.linalg.qr(g)
  return q * np.sign(np.diag(r))


def power_law_mixture(key: jax.Array, *, d: int, pi_plus: float, power_plus: float,
                      power_minus: float | None = None, mahalanobis_sq: float,
                      mean_alignment: float = 0.0, rotate: bool = True,
                      commuting: bool = False) -> CovarianceMixture:
  """Power-law class covariances and a mean difference of a given Mahalanobis size.

  Sigma_k = U_k diag(power_law_spectrum(d, power_k)) U_k' with U_k Haar-random (independent
  per class, or one shared U when `commuting`), or U_k = I when not `rotate` (diagonal
  covariances). dmu = Sigma^a u with Sigma = pi_+ Sigma_+ + pi_- Sigma_-, a = mean_alignment
  and u ~ N(0, I_d), scaled so that dmu' Sigma^-1 dmu = mahalanobis_sq; mu_+- = +- dmu / 2
  (only dmu matters: the intercept absorbs a common shift).

  Args:
    key: PRNG key (rotations and the mean direction).
    d: dimension; pi_plus: prior of class +1 in (0, 1).
    power_plus, power_minus: spectrum decay per class (power_minus defaults to power_plus).
    mahalanobis_sq: dmu' Sigma^-1 dmu > 0.
    mean_alignment: a; 0 gives an isotropic random direction, a > 0 aligns dmu with the
      top of the spectrum.
    rotate: random rotations (True) or diagonal covariances (False).
    commuting: one shared rotation (the covariances commute).

  Returns:
    CovarianceMixture of float64 NumPy arrays (pi_plus a Python float).
  """
  _checks.open_interval("pi_plus", pi_plus, 0.0, 1.0)
  _checks.positive("mahalanobis_sq", mahalanobis_sq)
  power_minus = power_plus if power_minus is None else power_minus
  key_plus, key_minus, key_mean = jax.random.split(key, 3)
  ev_plus, ev_minus = power_law_spectrum(d, power_plus), power_law_spectrum(d, power_minus)
  if rotate:
    rot_plus = _haar_rotation(key_plus, d)
    rot_minus = rot_plus if commuting else _haar_rotation(key_minus, d)
    cov_plus = (rot_plus * ev_plus) @ rot_plus.T
    cov_minus = (rot_minus * ev_minus) @ rot_minus.T
  else:
    cov_plus, cov_minus = np.diag(ev_plus), np.diag(ev_minus)
  pooled = pi_plus * cov_plus + (1 - pi_plus) * cov_minus
  ev, vec = np.linalg.eigh(pooled)
  u = np.asarray(jax.random.normal(key_mean, (d,)), np.float64)
  dmu = (vec * ev ** mean_alignment) @ (vec.T @ u)
  dmu *= np.sqrt(mahalanobis_sq / (dmu @ np.linalg.solve(pooled, dmu)))
  return CovarianceMixture(float(pi_plus), dmu / 2, -dmu / 2, cov_plus, cov_minus)


def _labels(key, pi_plus, n, dtype, fixed_counts):
  if fixed_counts:
    if not isinstance(pi_plus, (int, float)):
      raise ValueError("pi_plus: fixed_counts=True needs a Python float pi_plus "
                       "(class counts are static shapes); use fixed_counts=False to trace it")
    n_plus, _ = class_counts(n, pi_plus)
    return jnp.where(jnp.arange(n) < n_plus, 1.0, -1.0).astype(dtype)
  return jnp.where(jax.random.bernoulli(key, pi_plus, (n,)), 1.0, -1.0).astype(dtype)


def sample(key: jax.Array, mixture: GaussianMixture | CovarianceMixture, *, n: int,
           d: int | None = None, fixed_counts: bool = True) -> tuple[jax.Array, jax.Array]:
  """Draws n labelled points from either mixture spec.

  With fixed_counts the first n_+ = round_half_up(pi_plus n) rows are class +1 and the rest
  -1 (THEORY.md's retraining set); otherwise labels are Bernoulli(pi_plus). Rows within a
  class are i.i.d., so the first k rows of each class are a uniform subsample of size k
  (see `subsample.nested_masks`). A CovarianceMixture draws x = mu_y + L_y z with
  Sigma_y = L_y L_y' (Cholesky: the covariances must be positive definite, NaN rows
  otherwise).

  Args:
    key: PRNG key.
    mixture: GaussianMixture or CovarianceMixture (fields may be traced, except pi_plus
      with fixed_counts).
    n: number of samples (static).
    d: dimension (static); required for a GaussianMixture, optional (must equal the
      mixture's) for a CovarianceMixture.
    fixed_counts: deterministic class counts if True, Bernoulli(pi_plus) labels otherwise.

  Returns:
    (x [n, d], y [n]) with y in {+1., -1.}.
  """
  key_y, key_z = jax.random.split(key)
  if isinstance(mixture, CovarianceMixture):
    if d is not None and d != mixture.dim:
      raise ValueError(f"d: expected None or the mixture's dimension {mixture.dim}, got {d}")
    dtype = jnp.result_type(float)
    mean_p, mean_m, cov_p, cov_m = (jnp.asarray(v, dtype) for v in mixture[1:])
    y = _labels(key_y, mixture.pi_plus, n, dtype, fixed_counts)
    z = jax.random.normal(key_z, (n, mixture.dim), dtype)
    chol_p, chol_m = jnp.linalg.cholesky(cov_p), jnp.linalg.cholesky(cov_m)
    x = jnp.where((y > 0)[:, None], mean_p + z @ chol_p.T, mean_m + z @ chol_m.T)
    return x, y
  if d is None:
    raise ValueError("d: a GaussianMixture needs the dimension d")
  mu_p, mu_m = means(mixture, d)
  y = _labels(key_y, mixture.pi_plus, n, mu_p.dtype, fixed_counts)
  z = jax.random.normal(key_z, (n, d), mu_p.dtype)
  x = jnp.where((y > 0)[:, None], mu_p + jnp.sqrt(mixture.var_plus) * z,
                mu_m + jnp.sqrt(mixture.var_minus) * z)
  return x, y


class ShrunkCovariance(NamedTuple):
  """Shrinkage covariance estimate (1 - s) S + s (tr S / d) I."""
  cov: jax.Array        # [d, d]
  shrinkage: jax.Array  # s in [0, 1]


def shrunk_covariance(x: jax.Array, *, shrinkage=None) -> ShrunkCovariance:
  """Ledoit-Wolf shrinkage of the sample covariance towards a multiple of I.

  S = Xc' Xc / n (Xc: centred rows, 1/n normalization as scikit-learn), target
  mu I with mu = tr S / d. Without `shrinkage` the Ledoit-Wolf (2004) estimate
      s = min(b2, d2) / d2,  d2 = |S - mu I|_F^2 / d,
      b2 = (1 / (d n^2)) sum_i |xc_i xc_i' - S|_F^2
         = (1 / (d n)) ((1/n) sum_i |xc_i|^4 - |S|_F^2),
  the same as `sklearn.covariance.ledoit_wolf`.

  Args:
    x: samples [n, d] (n >= 2).
    shrinkage: fixed s in [0, 1], or None for Ledoit-Wolf.

  Returns:
    ShrunkCovariance(cov [d, d], shrinkage []).
  """
  _checks.shape("x", x, (None, None), "[n, d]")
  n, d = np.shape(x)
  if n < 2:
    raise ValueError(f"x: expected at least 2 rows, got {n}")
  if shrinkage is not None:
    _checks.nonnegative("shrinkage", shrinkage)
    if _checks.is_concrete(shrinkage) and np.any(np.asarray(shrinkage) > 1):
      raise ValueError(f"shrinkage: expected a value in [0, 1], got {shrinkage}")
  x = jnp.asarray(x, jnp.result_type(float))
  xc = x - jnp.mean(x, axis=0)
  emp = xc.T @ xc / n
  mu = jnp.trace(emp) / d
  if shrinkage is None:
    frob2 = jnp.sum(emp ** 2)
    d2 = (frob2 - 2 * mu * jnp.trace(emp) + d * mu ** 2) / d
    b2 = (jnp.sum(jnp.sum(xc ** 2, axis=1) ** 2) / n - frob2) / (d * n)
    b2 = jnp.minimum(b2, d2)
    shrinkage = jnp.where(d2 > 0, b2 / jnp.where(d2 > 0, d2, 1.0), 0.0)
  shrinkage = jnp.asarray(shrinkage, x.dtype)
  cov = (1 - shrinkage) * emp + shrinkage * mu * jnp.eye(d, dtype=x.dtype)
  return ShrunkCovariance(cov, shrinkage)


def from_samples(x: jax.Array, y: jax.Array, *, shrinkage=None) -> CovarianceMixture:
  """Plug-in CovarianceMixture: class frequencies, class means, shrunk class covariances.

  Args:
    x: features [n, d] (concrete).
    y: labels [n] in {+1, -1} (concrete), both classes present (at least 2 rows each).
    shrinkage: passed to `shrunk_covariance` (None: Ledoit-Wolf per class).

  Returns:
    CovarianceMixture with a Python-float pi_plus.
  """
  _checks.shape("x", x, (None, None), "[n, d]")
  _checks.shape("y", y, (np.shape(x)[0],), f"[{np.shape(x)[0]}]")
  _checks.labels("y", y)
  y = np.asarray(y)
  x = jnp.asarray(x, jnp.result_type(float))
  plus, minus = x[y > 0], x[y < 0]
  return CovarianceMixture(
      float(np.mean(y > 0)), jnp.mean(plus, 0), jnp.mean(minus, 0),
      shrunk_covariance(plus, shrinkage=shrinkage).cov,
      shrunk_covariance(minus, shrinkage=shrinkage).cov)
