"""The general-covariance plug-in: the theory of `thumb_jax.anisotropic` fed by a retraining set.

Class means and Ledoit-Wolf-shrunk class covariances (each towards the pooled within-class
covariance) are estimated on the data itself, in the
span of its centred rows (`span_basis`), with the squared mean difference debiased
(`debiased_means`). `general_stats` does this traceably (bootstrap multiplicities allowed) and
returns the mixture in the eigenbasis of the balanced within-class covariance
(Sigma_+ + Sigma_-) / 2, keeping each class covariance's diagonal there (the "pinched" form,
`anisotropic.Diagonalized`): O(r) per fixed-point step at every ridge instead of the dense
O(r^3), exact when the estimated class covariances commute. `options` then predicts every
option a practitioner has (the optimal weight, balanced downsampling, the ratio of priors) on
a grid of ridges, and `choose` picks the best by the predicted objective. Derivations:
THEORY.md, "Derivations: the general-covariance recommendation". Pure and traceable;
`thumb_jax.recommend` applies jit.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from thumb_jax import anisotropic as an
from thumb_jax import metrics
from thumb_jax.metrics import ClassErrors
from thumb_jax.plug_in import class_moments

METHODS = ("weighting", "downsampling")
# The pinch's basis: eigenvectors of POOL_MIX Sigma_+ + (1 - POOL_MIX) Sigma_-. Qbar^-1 =
# ridge I + a_+ Sigma_+ + a_- Sigma_- has them when a_+ = a_-, i.e. near the weights that
# balance the classes (c_+ ~ n_- / n_+), where the optimum usually is; the pi-weighted pool
# (the unweighted fit's) was 2-3x less accurate in tests/test_recommend_general.py.
POOL_MIX = 0.5


# ----------------------------------------------------------------------- pool estimates


def span_basis(x: np.ndarray, *, rtol: float = 1e-5) -> np.ndarray:
  """Orthonormal basis [d, r] of the span of the centred rows of x (singular values > rtol * max).

  A fitted layer lies in this span (the data have no component outside it, and the ridge or
  the minimum-norm solution sets w to zero there), so the theory for that layer is the
  theory of the projected features: dead coordinates (ReLU embeddings often have many)
  then add no spurious noise dimensions through the shrinkage target.
  """
  x = np.asarray(x, np.float64)
  xc = x - x.mean(0)
  n, d = xc.shape
  # Eigen-decomposition of the smaller Gram matrix (singular values = sqrt(eigenvalues)):
  # for n = 320, d = 128 it takes a third of the time of the SVD of xc.
  evals, vecs = np.linalg.eigh(xc.T @ xc if n >= d else xc @ xc.T)
  sv = np.sqrt(np.maximum(evals[::-1], 0.0))
  vecs = vecs[:, ::-1]
  if not sv.size or sv[0] == 0:
    return np.zeros((d, 0))
  keep = sv > rtol * sv[0]
  if n >= d:
    return vecs[:, keep]
  return (xc.T @ vecs[:, keep]) / sv[keep]


def debiased_means(mixture: an.CovarianceMixture, count_plus: int,
                   count_minus: int) -> an.CovarianceMixture:
  """Shrinks the estimated mean difference towards the midpoint by its sampling bias.

  E |dmu_hat|^2 = |dmu|^2 + tr Sigma_+ / n_+ + tr Sigma_- / n_-, so dmu_hat is rescaled to
  squared length |dmu_hat|^2 - bias (at least 1% of it), direction kept. Only dmu enters
  the theory (the intercept absorbs a common shift of the means).
  """
  mean_p, mean_m = np.asarray(mixture.mean_plus), np.asarray(mixture.mean_minus)
  dmu, mid = mean_p - mean_m, 0.5 * (mean_p + mean_m)
  bias = (np.trace(np.asarray(mixture.cov_plus)) / count_plus
          + np.trace(np.asarray(mixture.cov_minus)) / count_minus)
  factor = np.sqrt(max(1.0 - bias / (dmu @ dmu), 0.01))
  return mixture._replace(mean_plus=mid + factor * dmu / 2, mean_minus=mid - factor * dmu / 2)


def pool_plug_in(z: np.ndarray, y: np.ndarray, *, shrinkage: float | None = None,
                 debias_mean: bool = True, project_to_span: bool = True
                 ) -> tuple[an.CovarianceMixture, an.IsotropicPlugIn, np.ndarray]:
  """The general-covariance plug-in mixture estimated on a pool (dense covariances).

  Args:
    z: [N, d] pool features (e.g. centred and scaled as the fit sees them).
    y: [N] labels in {+1, -1}.
    shrinkage: covariance shrinkage (None: Ledoit-Wolf per class).
    debias_mean: shrink |dmu_hat|^2 by its sampling bias (`debiased_means`).
    project_to_span: estimate in the span of the centred pool (`span_basis`).

  Returns:
    (mixture in the basis's coordinates, float64; its isotropic plug-in (d_eff);
    basis [d, r]). Runs in the caller's precision (wrap in `jax.enable_x64` for float64).
  """
  basis = span_basis(z) if project_to_span else np.eye(z.shape[1])
  est = an.from_samples(jnp.asarray(z @ basis), y, shrinkage=shrinkage)
  est = est._replace(**{k: np.asarray(getattr(est, k), np.float64) for k in est._fields[1:]})
  if debias_mean:
    est = debiased_means(est, int(np.sum(y > 0)), int(np.sum(y < 0)))
  dtype = jnp.result_type(float)
  as_jnp = est._replace(**{k: jnp.asarray(getattr(est, k), dtype) for k in est._fields[1:]})
  return est, an.isotropic_plug_in(as_jnp), basis


# ------------------------------------------------------------- traceable plug-in (pinched)


class GeneralStats(NamedTuple):
  """The general plug-in of one (possibly resampled) retraining set; fields may be traced.

  Attributes:
    count_plus, count_minus: n_+, n_- [].
    form: the pinched mixture (Diagonalized, ridge_exact True) in the eigenbasis U of
      (Sigma_+ + Sigma_-) / 2 (`POOL_MIX`), means +- dmu / 2 (debiased length).
    signal: debiased |dmu|^2 = |dmu_hat|^2 - tr S_+ / n_+ - tr S_- / n_- [] (<= 0: no
      detectable signal; the form then keeps 10% of |dmu_hat|).
    shrinkage: Ledoit-Wolf shrinkage of (Sigma_+, Sigma_-) [2].
    commute_gap: max_k |off-diagonal of U' Sigma_k U|_F / |Sigma_k|_F [] (0: the pinch is exact).
  """
  count_plus: jax.Array
  count_minus: jax.Array
  form: an.Diagonalized
  signal: jax.Array
  shrinkage: jax.Array
  commute_gap: jax.Array


def _ledoit_wolf(xc, c, n_k, target=None):
  """`mixture.shrunk_covariance` of the rows with multiplicities c (others 0), centred xc.

  With `target` [r, r] (fixed) it shrinks towards that matrix instead of (tr S / r) I, with
  the same Ledoit-Wolf weight s = min(b2, d2) / d2, d2 = |S - target|_F^2 / r.
  """
  r = xc.shape[1]
  rows = jnp.sqrt(c)[:, None] * xc
  emp = rows.T @ rows / n_k                                   # 1/n normalization
  if target is None:
    target = jnp.trace(emp) / r * jnp.eye(r, dtype=xc.dtype)
  frob2 = jnp.sum(emp ** 2)
  d2 = jnp.sum((emp - target) ** 2) / r                       # |S - target|_F^2 / r
  b2 = (c @ jnp.sum(xc ** 2, axis=1) ** 2 / n_k - frob2) / (r * n_k)
  b2 = jnp.minimum(b2, d2)
  s = jnp.where(d2 > 0, b2 / jnp.where(d2 > 0, d2, 1.0), 0.0)
  return (1 - s) * emp + s * target, s


def general_stats(z: jax.Array, is_plus: jax.Array, counts: jax.Array | None = None, *,
                  pooled_target: bool = True) -> GeneralStats:
  """Means, shrunk covariances and their pinched form (THEORY.md, "Derivations: the
  general-covariance recommendation"), pure and traceable.

  Args:
    z: [n, r] features in the coordinates of `span_basis` (r <= n - 1; centred).
    is_plus: bool [n], True for class +1.
    counts: multiplicities [n] >= 0 (a bootstrap resample), default all ones.
    pooled_target: shrink each class covariance towards the pooled within-class covariance
      (default; itself shrunk towards a multiple of I), else towards a multiple of I as
      `mixture.shrunk_covariance`. On CIFAR embeddings (n = 213 and 320, 8 subsamples, two
      ridges) the weight it picks lost 0.045 worst-class error to the measured best weight,
      against 0.195 with the identity target (THEORY.md, "Derivations: the
      general-covariance recommendation").

  Returns:
    GeneralStats (with all-ones counts and pooled_target False: `from_samples` then
    `debiased_means`, pinched).
  """
  counts = jnp.ones(z.shape[:1], z.dtype) if counts is None else counts.astype(z.dtype)
  c_p, c_m, n_p, n_m, mean_p, mean_m, xc = class_moments(z, is_plus, counts)
  if pooled_target:
    # Each class towards the pooled within-class covariance (itself Ledoit-Wolf towards a
    # multiple of I): the classes of an embedding share most of their structure, and a
    # minority of n_+ << r rows alone leaves r - n_+ directions at the target's level.
    pooled, _ = _ledoit_wolf(xc, counts, n_p + n_m)
    cov_p, s_p = _ledoit_wolf(xc, c_p, n_p, pooled)
    cov_m, s_m = _ledoit_wolf(xc, c_m, n_m, pooled)
  else:
    cov_p, s_p = _ledoit_wolf(xc, c_p, n_p)
    cov_m, s_m = _ledoit_wolf(xc, c_m, n_m)
  dmu = mean_p - mean_m
  raw = dmu @ dmu
  bias = jnp.trace(cov_p) / n_p + jnp.trace(cov_m) / n_m
  factor = jnp.sqrt(jnp.maximum(1.0 - bias / raw, 0.01))
  pi = n_p / (n_p + n_m)
  _, basis = jnp.linalg.eigh(POOL_MIX * cov_p + (1 - POOL_MIX) * cov_m)
  rot_p, rot_m = basis.T @ cov_p @ basis, basis.T @ cov_m @ basis
  var_p, var_m = jnp.clip(jnp.diag(rot_p), 0.0), jnp.clip(jnp.diag(rot_m), 0.0)

  def gap(rot, var):
    return jnp.linalg.norm(rot - jnp.diag(var)) / jnp.linalg.norm(rot)

  half = factor * (basis.T @ dmu) / 2
  form = an.Diagonalized(pi, half, -half, var_p, var_m, jnp.asarray(True))
  return GeneralStats(n_p, n_m, form, raw - bias, jnp.stack([s_p, s_m]),
                      jnp.maximum(gap(rot_p, var_p), gap(rot_m, var_m)))


# --------------------------------------------------------------------------- options


class Options(NamedTuple):
  """Predicted per-class errors of every option at R ridges (fields [R]; class +1 = minority).

  Attributes:
    ridges: the ridges [R] (penalty ridge * n * |w|^2; downsampling: n = its own size).
    weight: the optimal minority weight of weighting at each ridge [R].
    weighting: ClassErrors [R] of weighting at `weight`.
    downsampling: ClassErrors [R] of balanced downsampling (all n_+ minority rows, as many
      majority rows, weight 1).
    prior: ClassErrors [R] of weighting at the ratio of priors n_- / n_+.
  NaN where the theory is undefined (e.g. ridge 0 with n <= r, or no converged fixed point).
  """
  ridges: jax.Array
  weight: jax.Array
  weighting: ClassErrors
  downsampling: ClassErrors
  prior: ClassErrors


def options(form: an.Diagonalized, count_plus, count_minus, ridges, *, objective: str = "worst",
            log10_range: tuple[float, float] = (-2.0, 4.0), grid_size: int = 48,
            rounds: int = 3) -> Options:
  """The general theory's options on a ridge grid (traceable; jit it).

  The weight search: `rounds` grids of `grid_size` log weights, the first over
  `log10_range`, each next one between the neighbours of the best point so far (spacing
  0.13, 0.0054, 0.0002 decades with the defaults), on the log objective (as
  `weight_search.best_weight`). Every evaluation, downsampling (pi' = 1/2, n' = 2 n_+,
  weight 1) and the ratio of priors included, goes through one vmapped
  `anisotropic.class_errors` inside one loop: one copy of the fixed point to compile.

  Args:
    form: a Diagonalized mixture with ridge_exact True (`general_stats`, `an.from_eigenbasis`,
      or `an.prepare` of commuting covariances; for ridge 0 also the generalized eigenbasis).
    count_plus, count_minus: n_+, n_- of the retraining set (n = their sum).
    ridges: [R] ridges >= 0.
    objective: "worst" or "balanced".
    log10_range: the weights searched.
    grid_size, rounds: the search (above).

  Returns:
    Options [R].
  """
  metrics.check_objective(objective)
  dtype = jnp.result_type(float)
  ridges = jnp.asarray(ridges, dtype)
  num_ridges = ridges.shape[0]
  n = jnp.asarray(count_plus + count_minus, dtype)
  pi = jnp.asarray(form.pi_plus, dtype)
  # Per point: (pi_plus, n, weight); the last two points of each row are downsampling and
  # the ratio of priors, the others the search grid.
  pis = jnp.concatenate([jnp.full((grid_size,), pi), jnp.stack([jnp.asarray(0.5, dtype), pi])])
  sizes = jnp.concatenate([jnp.full((grid_size,), n),
                           jnp.stack([2.0 * jnp.asarray(count_plus, dtype), n])])
  prior_weight = jnp.asarray(count_minus / count_plus, dtype)

  def point(pi, n, weight, ridge):
    e = an.class_errors(form._replace(pi_plus=pi), n=n, weight=weight, ridge=ridge)
    return ClassErrors(e.err_plus, e.err_minus), ClassErrors(e.log_err_plus, e.log_err_minus)

  row = jax.vmap(point, in_axes=(0, 0, 0, None))
  table = jax.vmap(row, in_axes=(None, None, 0, 0))

  def evaluate(log_w):                                   # [R, G] -> errors [R, G + 2]
    weights = jnp.concatenate([10.0 ** log_w, jnp.ones((num_ridges, 1), dtype),
                               jnp.broadcast_to(prior_weight, (num_ridges, 1))], axis=1)
    return table(pis, sizes, weights, ridges)

  lo, hi = (float(v) for v in log10_range)
  unit = jnp.linspace(-1.0, 1.0, grid_size, dtype=dtype)

  def stage(_, carry):
    centre, half, *_ = carry
    log_w = jnp.clip(centre[:, None] + half[:, None] * unit, lo, hi)       # [R, G]
    errs, log_errs = evaluate(log_w)
    value = metrics.log_objective(ClassErrors(log_errs.err_plus[:, :grid_size],
                                              log_errs.err_minus[:, :grid_size]), objective)
    value = jnp.where(jnp.isnan(value), jnp.inf, value)
    best = jnp.argmin(value, axis=1)
    rows = jnp.arange(num_ridges)
    found = jnp.isfinite(value[rows, best])
    new_centre = log_w[rows, best]
    step = 2.0 * half / (grid_size - 1)
    return (new_centre, step, jnp.where(found, 10.0 ** new_centre, jnp.nan),
            jax.tree.map(lambda v: jnp.where(found, v[rows, best], jnp.nan), errs),
            jax.tree.map(lambda v: v[:, grid_size:], errs))

  nan_r = jnp.full((num_ridges,), jnp.nan, dtype)
  nan_e = ClassErrors(nan_r, nan_r)
  init = (jnp.full((num_ridges,), 0.5 * (lo + hi), dtype),
          jnp.full((num_ridges,), 0.5 * (hi - lo), dtype), nan_r, nan_e,
          ClassErrors(jnp.zeros((num_ridges, 2), dtype), jnp.zeros((num_ridges, 2), dtype)))
  _, _, weight, errors, extra = jax.lax.fori_loop(0, rounds, stage, init)
  return Options(ridges, weight, errors, ClassErrors(extra.err_plus[:, 0], extra.err_minus[:, 0]),
                 ClassErrors(extra.err_plus[:, 1], extra.err_minus[:, 1]))


def option_values(opts: Options, objective: str) -> jax.Array:
  """Predicted objective of each option [2, R] (row 0 weighting, row 1 downsampling), inf
  where undefined."""
  values = jnp.stack([metrics.objective(opts.weighting, objective),
                      metrics.objective(opts.downsampling, objective)])
  weight_ok = jnp.isfinite(opts.weight)
  values = values.at[0].set(jnp.where(weight_ok, values[0], jnp.inf))
  return jnp.where(jnp.isfinite(values), values, jnp.inf)


class Choice(NamedTuple):
  """The option with the lowest predicted objective (scalars; fields may be traced).

  method_index: 0 weighting, 1 downsampling (`METHODS`); ridge_index into Options.ridges;
  weight: the minority weight to fit with (1 for downsampling); value: predicted objective
  (inf if no option is defined).
  """
  method_index: jax.Array
  ridge_index: jax.Array
  weight: jax.Array
  ridge: jax.Array
  value: jax.Array


def choose(opts: Options, objective: str) -> Choice:
  """argmin of the predicted objective over (method, ridge); ties go to weighting, then to the
  smaller ridge (traceable)."""
  values = option_values(opts, objective)
  flat = jnp.argmin(values.reshape(-1))          # first minimum: row 0 (weighting) first
  method, ridge_index = flat // values.shape[1], flat % values.shape[1]
  weight = jnp.where(method == 0, opts.weight[ridge_index], 1.0)
  return Choice(method, ridge_index, weight, opts.ridges[ridge_index],
                values[method, ridge_index])
