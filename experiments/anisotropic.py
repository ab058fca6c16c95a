"""General class covariances: theory vs simulation, the isotropic shortcut, real embeddings.

    python -m experiments.anisotropic --out out/anisotropic [--quick] [--set d=300]
        [--set embeddings=DIR]

Three studies (THEORY.md, "General class covariances"; `thumb_jax.anisotropic`):

(a) simulation  Power-law spectra lambda_j ~ j^-power (mean 1), Sigma_+ and Sigma_- with
    different powers, each randomly rotated (independently: they do not commute), mean
    difference dmu = Sigma^a u for a random u, scaled to a given squared Mahalanobis distance
    dmu' Sigma^-1 dmu (Sigma = pi_+ Sigma_+ + pi_- Sigma_-; a = 1/2 spreads the
    signal-to-noise evenly over the eigendirections). Per-class error against delta = d / n
    (ridge 0 below delta = 1, `ridge` from 1 on) for the prior-ratio weight and
    `other_weights`: the general theory (curves) against simulation (points, mean and 95%
    t-interval over seeds of the exact Gaussian errors of `lls.fit_sweep` fits, no test
    sampling), and the isotropic theory of the `isotropic_plug_in` mixture at delta = d / n
    and at delta_eff = d_eff / n (d_eff = participation ratio of Sigma) on the same axes.
    One pool of the largest n per seed, smaller n as nested 0/1 masks; rows and seeds are
    `lax.map`s (no batched LAPACK calls on CPU).
(b) shortcut    For `shortcut_powers` (flat to steep; Sigma_+ has power + `power_gap`, a
    shared eigenbasis so the fast path is exact at every ridge): the worst-class optimal
    weight against delta from the general theory, from the isotropic theory at delta and at
    delta_eff, and the worst-class error each weight actually gets under the general theory.
    The excess over the general optimum is the cost of the one-number shortcut. The
    isotropic mixture is `anisotropic.isotropic_plug_in` (population moments, Mahalanobis
    signal), not `recommend.surrogate` (sample moments, raw squared mean difference): this
    study measures the isotropic theory itself, not the recommendation's estimator.
(c) embeddings  (only with `embeddings` set) val.npz = retraining pool, test.npz = evaluation
    (`retrain.load_retraining_data`). `retrain.run` measures per-class test errors for sizes
    n from the pool size down to delta = d / n = `embedding_max_delta`, `num_repeats`
    subsamples each, and a log grid of weights. Class means and shrunk covariances are
    estimated on the pool only (`anisotropic.from_samples`, Ledoit-Wolf) in the coordinates
    `retrain.sweep` fits in (centred by the pool mean, divided by its feature_scale; checked
    against the returned scale and by refitting one subsample), so `retrain`'s ridge is the
    theory's ridge, restricted to the span of the centred pool (dead ReLU coordinates carry
    no data, and a fitted layer has no weight on them); three plug-ins predict every
    (n, weight): isotropic at delta = d / n (d = the embedding width), isotropic at
    delta_eff, general.
    Reported per plug-in: mean |predicted - measured| per-class error, and per n whether the
    predicted best grid weight is the measured best and the measured worst-class error lost.

Writes results.json (config, platform, every number), a_simulation.csv, a_curves.csv,
b_shortcut.csv, c_embeddings.csv (with embeddings), one PNG per study, and prints a summary.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from experiments import common, gaussian
from thumb_jax import anisotropic as an
from thumb_jax import lls, metrics, retrain, theory
from thumb_jax import mixture as mixture_lib
from thumb_jax.metrics import ClassErrors


@dataclasses.dataclass(frozen=True)
class Config:
  seed: int = 0
  # The model of (a); (b) reuses d, pi_plus, mahalanobis_sq, mean_alignment and ridge.
  d: int = 256
  pi_plus: float = 0.2
  power_plus: float = 1.0
  power_minus: float = 0.5
  commuting: bool = False            # False: Sigma_+ and Sigma_- rotated independently
  mahalanobis_sq: float = 16.0       # dmu' Sigma^-1 dmu, Sigma the pooled covariance
  mean_alignment: float = 0.5        # dmu = Sigma^a u, u ~ N(0, I), then scaled
  ridge: float = 0.05                # where delta >= 1 (ridge 0 below)
  # (a) simulation.
  num_seeds: int = 32
  deltas: tuple[float, ...] = (0.2, 0.35, 0.5, 0.65, 0.8, 1.2, 1.6, 2.0)
  other_weights: tuple[float, ...] = (1.0, 2.0)   # besides the prior ratio
  theory_points: int = 12            # curve points per regime (ridge 0 / ridge > 0)
  theory_x64: bool = True            # theory in float64 (simulation stays float32)
  # (b) the isotropic shortcut.
  shortcut_powers: tuple[float, ...] = (0.0, 1.0, 2.0)   # flat, moderate, steep
  power_gap: float = 0.5             # Sigma_+ power = power + power_gap
  shortcut_deltas: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9,
                                        1.2, 1.5, 2.0, 3.0)
  good_enough: float = 0.005         # excess worst-class error counted as negligible
  search_grid: int = 128             # log10 weight grid in [-2, 4], refined twice (1/4 size)
  # (c) real embeddings.
  embeddings: str = ""               # folder with val.npz / test.npz; empty: skip (c)
  embedding_pi_plus: float = 0.0     # > 0: drop minority pool rows down to this share
  embedding_max_delta: float = 2.0
  embedding_num_sizes: int = 6
  num_repeats: int = 10
  num_weights: int = 24
  weight_low: float = 0.1
  weight_high: float = 1000.0
  shrinkage: float | None = None     # None: Ledoit-Wolf per class
  debias_mean: bool = True           # shrink |dmu_hat|^2 by its sampling bias
  project_to_span: bool = True       # estimate in the span of the centred pool (see span_basis)


def config() -> Config:
  return Config()


def quick(cfg: Config) -> Config:
  return dataclasses.replace(cfg, d=40, num_seeds=4, deltas=(0.3, 0.7, 1.5),
                             theory_points=4, shortcut_deltas=(0.3, 0.7, 1.5),
                             embedding_num_sizes=3, num_repeats=3, num_weights=8)


# ----------------------------------------------------------------------------- the model


def power_law(d: int, power: float) -> np.ndarray:
  """Eigenvalues j^-power, j = 1..d, normalized to mean 1 [d]."""
  ev = np.arange(1, d + 1, dtype=np.float64) ** -power
  return ev / ev.mean()


def haar_rotation(key: jax.Array, d: int) -> np.ndarray:
  """A Haar-random orthogonal matrix [d, d] (QR of a Gaussian matrix, signs fixed)."""
  g = np.asarray(jax.random.normal(key, (d, d)), np.float64)
  q, r = np.linalg.qr(g)
  return q * np.sign(np.diag(r))


def power_law_mixture(key: jax.Array, *, d: int, pi_plus: float, power_plus: float,
                      power_minus: float, mahalanobis_sq: float, mean_alignment: float,
                      commuting: bool) -> an.CovarianceMixture:
  """Rotated power-law class covariances and a mean difference of given Mahalanobis size.

  Sigma_k = U_k diag(power_law(d, power_k)) U_k' with U_+ = U_- when commuting, else
  independent. dmu = Sigma^a u (Sigma = pi_+ Sigma_+ + pi_- Sigma_-, u ~ N(0, I_d)), scaled
  so that dmu' Sigma^-1 dmu = mahalanobis_sq; mu_+- = +- dmu / 2 (only dmu matters: the
  intercept absorbs a common shift).

  Returns:
    CovarianceMixture of float64 NumPy arrays (pi_plus a Python float).
  """
  key_plus, key_minus, key_mean = jax.random.split(key, 3)
  rot_plus = haar_rotation(key_plus, d)
  rot_minus = rot_plus if commuting else haar_rotation(key_minus, d)
  cov_plus = (rot_plus * power_law(d, power_plus)) @ rot_plus.T
  cov_minus = (rot_minus * power_law(d, power_minus)) @ rot_minus.T
  pooled = pi_plus * cov_plus + (1 - pi_plus) * cov_minus
  ev, vec = np.linalg.eigh(pooled)
  u = np.asarray(jax.random.normal(key_mean, (d,)), np.float64)
  dmu = (vec * ev ** mean_alignment) @ (vec.T @ u)
  dmu *= np.sqrt(mahalanobis_sq / (dmu @ np.linalg.solve(pooled, dmu)))
  return an.CovarianceMixture(float(pi_plus), dmu / 2, -dmu / 2, cov_plus, cov_minus)


def as_jnp(mixture: an.CovarianceMixture) -> an.CovarianceMixture:
  """Arrays in the current default float precision (pi_plus stays a Python float)."""
  dtype = jnp.result_type(float)
  return mixture._replace(**{k: jnp.asarray(getattr(mixture, k), dtype)
                             for k in mixture._fields[1:]})


# ----------------------------------------------------------------------------- theory helpers


@jax.jit
def _fast_points(form, n, weight, ridge):
  return jax.vmap(lambda n, w, r: an.class_errors(form, n=n, weight=w, ridge=r))(
      n, weight, ridge)


@jax.jit
def _dense_points(mixture, n, weight, ridge):
  # lax.map, not vmap: one unbatched Cholesky per step (the project avoids batched LAPACK).
  return jax.lax.map(lambda p: an.class_errors(mixture, n=p[0], weight=p[1], ridge=p[2]),
                     (n, weight, ridge))


def general_errors(mixture: an.CovarianceMixture, n, weight, ridge) -> an.GeneralErrors:
  """The general theory at points (n, weight, ridge), each [P] (broadcast), fast where exact.

  `prepare` once; points it covers exactly (all of them if the covariances commute, else
  those with ridge 0) go through the vmapped O(d) path, the rest through the dense path.

  Returns:
    GeneralErrors of float64 NumPy arrays [P].
  """
  n, weight, ridge = (np.asarray(v, np.float64) for v in np.broadcast_arrays(n, weight, ridge))
  mixture = as_jnp(mixture)
  dtype = jnp.result_type(float)
  form = jax.jit(an.prepare)(mixture)
  fast = np.ones(n.shape, bool) if bool(form.ridge_exact) else ridge == 0
  out = [np.full(n.shape, np.nan) for _ in an.GeneralErrors._fields]
  for select, fn, spec in ((fast, _fast_points, form), (~fast, _dense_points, mixture)):
    if np.any(select):
      got = fn(spec, *(jnp.asarray(v[select], dtype) for v in (n, weight, ridge)))
      for buf, value in zip(out, got):
        buf[select] = np.asarray(value, np.float64)
  return an.GeneralErrors(*out)


def isotropic_errors(plug: an.IsotropicPlugIn, *, d: int, n, weight, ridge,
                     effective: bool) -> ClassErrors:
  """Isotropic theory of the plug-in at delta = d / n, or d_eff / n when `effective`."""
  delta = (plug.d_eff if effective else d) / np.asarray(n, np.float64)
  errs = theory.class_errors(plug.mixture, delta, np.asarray(weight, np.float64),
                             np.asarray(ridge, np.float64))
  return ClassErrors(np.asarray(errs.err_plus, np.float64), np.asarray(errs.err_minus, np.float64))


def ridge_for(deltas, ridge: float) -> np.ndarray:
  """0 below delta = 1, `ridge` from 1 on (the ridgeless fit interpolates for d >= n)."""
  return np.where(np.asarray(deltas) >= 1.0, ridge, 0.0)


# ----------------------------------------------------------------------------- (a) simulation


def simulate(keys: jax.Array, mixture: an.CovarianceMixture, masks: jax.Array,
             ridges: jax.Array, weights: jax.Array) -> ClassErrors:
  """Exact per-class errors of the weighted last layer, seeds x rows x weights (pure).

  One pool of `masks.shape[-1]` rows per seed (`anisotropic.sample`, minority first);
  each row is a 0/1 mask (a nested subsample) with its ridge; the weights of a row share
  one factorization (`lls.fit_sweep`). Seeds and rows are lax.maps (unbatched LAPACK).

  Args:
    keys: [S] PRNG keys.
    mixture: CovarianceMixture (pi_plus a Python float: static class counts).
    masks: [R, N] 0/1; ridges: [R]; weights: [K].

  Returns:
    ClassErrors [S, R, K].
  """
  def seed(key):
    x, y = an.sample(key, mixture, n=masks.shape[-1])

    def row(args):
      mask, ridge = args
      layer = lls.fit_sweep(x, y, weights, ridge=ridge, mask=mask)
      return an.layer_class_errors(layer, mixture)

    return jax.lax.map(row, (masks, ridges))

  return jax.lax.map(seed, keys)


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


def simulation_study(cfg: Config, key_model: jax.Array, key_sim: jax.Array) -> Simulation:
  mixture = power_law_mixture(key_model, d=cfg.d, pi_plus=cfg.pi_plus,
                              power_plus=cfg.power_plus, power_minus=cfg.power_minus,
                              mahalanobis_sq=cfg.mahalanobis_sq,
                              mean_alignment=cfg.mean_alignment, commuting=cfg.commuting)
  sizes = gaussian.sizes_for(cfg.deltas, cfg.d)
  delta = cfg.d / sizes
  ridges = ridge_for(delta, cfg.ridge)
  weights = np.array([(1 - cfg.pi_plus) / cfg.pi_plus, *cfg.other_weights])
  n_pool = int(sizes.max())
  n_plus, _ = mixture_lib.class_counts(n_pool, cfg.pi_plus)
  labels = np.where(np.arange(n_pool) < n_plus, 1.0, -1.0)        # as `anisotropic.sample`
  masks = mixture_lib.nested_masks(labels, sizes, pi_plus=cfg.pi_plus)
  keys = jax.random.split(key_sim, cfg.num_seeds)
  sim_mix = as_jnp(mixture)
  sweep = jax.jit(lambda k, m, r, w: simulate(k, sim_mix, m, r, w))
  dtype = jnp.result_type(float)
  with retrain.single_threaded_blas():
    errors = sweep(keys, jnp.asarray(masks, dtype), jnp.asarray(ridges, dtype),
                   jnp.asarray(weights, dtype))
  errors = ClassErrors(*(np.asarray(v, np.float64) for v in errors))

  below = np.linspace(min(0.9 * min(cfg.deltas), 0.15), 0.95, cfg.theory_points)
  above = np.linspace(1.0, max(max(cfg.deltas), 1.05), cfg.theory_points)
  curve_delta = np.concatenate([below, above])
  curve_ridge = ridge_for(curve_delta, cfg.ridge)
  with jax.enable_x64(cfg.theory_x64), retrain.single_threaded_blas():
    plug = an.isotropic_plug_in(as_jnp(mixture))
    # Simulated points and curve points in one call (one compiled shape per path).
    both = theory_triplet(mixture, plug, d=cfg.d, n=np.concatenate([sizes, cfg.d / curve_delta]),
                          weights=weights, ridge=np.concatenate([ridges, curve_ridge]))
    at_points = [type(t)(*(v[:len(sizes)] for v in t)) for t in both]
    curves = [type(t)(*(v[len(sizes):] for v in t)) for t in both]
  return Simulation(weights, sizes, delta, ridges, errors, *at_points, curve_delta, curve_ridge,
                    *curves, float(plug.d_eff))


def simulation_agreement(sim: Simulation, d: int) -> dict:
  """Theory vs simulation per point: gap, z = gap / standard error, the test's tolerance.

  Tolerance (tests/test_anisotropic.py): gap <= 4 standard errors + 1 / d (the finite-size
  bias of the deterministic equivalents is O(1/n_k)).
  """
  summary = gaussian.summarize(sim.errors)
  out = gaussian.agreement(summary, ClassErrors(sim.general.err_plus, sim.general.err_minus))
  within = []
  for errs, pred in ((sim.errors.err_plus, sim.general.err_plus),
                     (sim.errors.err_minus, sim.general.err_minus)):
    se = errs.std(0, ddof=1) / np.sqrt(errs.shape[0])
    within.append(np.abs(errs.mean(0) - pred) <= 4 * se + 1.0 / d)
  out["within_tolerance"] = bool(np.all(within))
  out["num_outside_tolerance"] = int(np.sum(~np.stack(within)))
  for name, pred in (("iso", sim.iso), ("iso_eff", sim.iso_eff)):
    gap = np.abs(np.stack([summary.err_plus.mean - pred.err_plus,
                           summary.err_minus.mean - pred.err_minus]))
    out[f"{name}_max_abs_gap"] = float(np.nanmax(gap))
    out[f"{name}_mean_abs_gap"] = float(np.nanmean(gap))
  out["general_converged"] = bool(np.all(sim.general.converged)
                                  and np.all(sim.curve_general.converged))
  return out


# ----------------------------------------------------------------------------- (b) shortcut


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


CHOICES = ("general", "iso", "iso_eff", "prior_ratio")


def shortcut_study(cfg: Config, key: jax.Array, power: float) -> Shortcut:
  mixture = power_law_mixture(key, d=cfg.d, pi_plus=cfg.pi_plus, power_plus=power + cfg.power_gap,
                              power_minus=power, mahalanobis_sq=cfg.mahalanobis_sq,
                              mean_alignment=cfg.mean_alignment, commuting=True)
  delta = np.asarray(cfg.shortcut_deltas, np.float64)
  ridge = ridge_for(delta, cfg.ridge)
  n = cfg.d / delta
  search = dict(grid_size=cfg.search_grid, refine_size=cfg.search_grid // 4)
  with jax.enable_x64(cfg.theory_x64), retrain.single_threaded_blas():
    mix = as_jnp(mixture)
    form = jax.jit(an.prepare)(mix)
    if not bool(form.ridge_exact):
      raise ValueError("shortcut: expected commuting covariances (a shared eigenbasis)")
    plug = an.isotropic_plug_in(mix)
    dtype = jnp.result_type(float)
    n_, ridge_ = jnp.asarray(n, dtype), jnp.asarray(ridge, dtype)
    # The library searches (log objective, grid then refinement), one per delta.
    general = jax.jit(lambda f, n, r: an.optimal_weight(f, n=n, ridge=r, **search))(
        form, n_, ridge_)
    iso = jax.jit(lambda m, dl, r: theory.optimal_weight(m, dl, r, **search))
    iso_at = {"iso": iso(plug.mixture, jnp.asarray(delta, dtype), ridge_),
              "iso_eff": iso(plug.mixture, jnp.asarray(plug.d_eff / n, dtype), ridge_)}
    weight = {"general": np.asarray(general.weight, np.float64),
              **{c: np.asarray(o.weight, np.float64) for c, o in iso_at.items()},
              "prior_ratio": np.full(delta.shape, theory.prior_ratio(cfg.pi_plus))}
    # The worst-class error each weight actually gets under the general theory.
    worst = {c: np.asarray(_fast_points(form, n_, jnp.asarray(w, dtype), ridge_).worst,
                           np.float64) for c, w in weight.items()}
    claimed = {"general": np.asarray(general.value, np.float64),
               **{c: np.asarray(o.value, np.float64) for c, o in iso_at.items()}}
  excess = {c: worst[c] - worst["general"] for c in CHOICES}
  return Shortcut(power, float(plug.d_eff), delta, ridge, weight, worst, excess, claimed)


def shortcut_summary(shortcuts: Sequence[Shortcut], good_enough: float) -> dict:
  out = {}
  for s in shortcuts:
    entry = {"d_eff": s.d_eff}
    for choice in CHOICES[1:]:
      excess = s.excess[choice]
      log_ratio = np.abs(np.log10(s.weight[choice] / s.weight["general"]))
      entry[choice] = {
          "max_excess_worst": float(np.nanmax(excess)),
          "mean_excess_worst": float(np.nanmean(excess)),
          "delta_at_max_excess": float(s.delta[np.nanargmax(excess)]),
          "frac_good_enough": float(np.mean(excess <= good_enough)),
          "median_abs_log10_weight_ratio": float(np.nanmedian(log_ratio)),
      }
      if choice in s.claimed:
        entry[choice]["max_abs_claimed_minus_actual"] = float(np.nanmax(np.abs(
            s.claimed[choice] - s.worst[choice])))
    out[f"power={s.power:g}"] = entry
  return out


# ----------------------------------------------------------------------------- (c) embeddings


def imbalance_pool(key: jax.Array, y: np.ndarray, pi_plus: float) -> np.ndarray:
  """Row indices keeping every -1 row and a random subset of +1 rows with share pi_plus."""
  plus = np.flatnonzero(y > 0)
  minus = np.flatnonzero(y < 0)
  keep = round(pi_plus * len(minus) / (1 - pi_plus))
  if not 2 <= keep <= len(plus):
    raise ValueError(f"embedding_pi_plus: {pi_plus} needs {keep} minority rows, the pool has "
                     f"{len(plus)}")
  chosen = np.asarray(jax.random.permutation(key, len(plus)))[:keep]
  return np.sort(np.concatenate([plus[chosen], minus]))


def embedding_sizes(y: np.ndarray, d: int, *, max_delta: float, num_sizes: int,
                    min_minority: int = 4) -> np.ndarray:
  """Sizes from the pool size N down to n = d / max_delta (descending, at least
  `min_minority` minority rows each at the pool's share)."""
  n_pool = y.shape[0]
  pi = float(np.mean(y > 0))
  smallest = max(int(np.ceil(d / max_delta)), int(np.ceil(min_minority / pi)), 4)
  if smallest >= n_pool:
    return np.array([n_pool])
  sizes = np.unique(np.round(np.geomspace(n_pool, smallest, num_sizes)).astype(int))
  return sizes[::-1]


def feature_scale(x: np.ndarray) -> float:
  """`retrain.sweep`'s scale: sqrt(tr Cov(x) / d), Cov with 1/N (jnp.var)."""
  return float(np.sqrt(np.sum(np.var(x, axis=0)) / x.shape[1]))


def span_basis(x: np.ndarray, *, rtol: float = 1e-5) -> np.ndarray:
  """Orthonormal basis [d, r] of the span of the centred rows of x (singular values > rtol * max).

  A fitted layer lies in this span (the data have no component outside it, and the ridge or
  the minimum-norm solution sets w to zero there), so the theory for that layer is the
  theory of the projected features: dead coordinates (ReLU embeddings often have many)
  then add no spurious noise dimensions through the shrinkage target.
  """
  xc = x - x.mean(0)
  _, sv, vt = np.linalg.svd(xc, full_matrices=False)
  return vt[sv > rtol * sv[0]].T


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


def refit_check(z: np.ndarray, y: np.ndarray, result: retrain.RetrainResult, *, scale: float,
                center: np.ndarray, seed: int) -> float:
  """Refits retrain's first subsample (largest n, repeat 0) with `lls.fit_sweep` on z.

  z are the pool features in the theory's coordinates (centred, divided by `scale`) and the
  ridge is retrain's: if the conventions agree, the layers mapped back to raw coordinates
  (w / scale, b - center.w / scale) equal retrain's own. The masks are rebuilt from the
  same seed (`retrain.subsample_masks` with `jax.random.key(seed)`, as `retrain.run`).

  Returns:
    max over the grid weights of |theta_refit - theta_retrain| / |theta_retrain|, theta = (w, b).
  """
  dtype = jnp.result_type(float)
  masks = retrain.subsample_masks(jax.random.key(seed), jnp.asarray(y, dtype),
                                  jnp.asarray(result.count_plus), jnp.asarray(result.count_minus),
                                  num_repeats=1, dtype=dtype)
  layer = lls.fit_sweep(jnp.asarray(z, dtype), jnp.asarray(y, dtype),
                        jnp.asarray(result.weights, dtype), ridge=float(result.ridge),
                        mask=masks.mask[0, 0])
  w = np.asarray(layer.w, np.float64) / scale
  b = np.asarray(layer.b, np.float64) - w @ center
  ours = np.concatenate([w, b[:, None]], axis=1)
  ref = np.concatenate([np.asarray(result.layers.w[0, 0], np.float64),
                        np.asarray(result.layers.b[0, 0], np.float64)[:, None]], axis=1)
  return float(np.max(np.linalg.norm(ours - ref, axis=-1) / np.linalg.norm(ref, axis=-1)))


class Embeddings(NamedTuple):
  """(c): measured and predicted per-class errors (S sizes, R repeats, K weights)."""
  note: str
  d: int                       # embedding width (the isotropic plug-in's delta = d / n)
  d_span: int                  # rank of the centred pool (the theory's coordinates)
  d_eff: float
  sizes: np.ndarray            # [S]
  weights: np.ndarray          # [K]
  ridge: float                 # on the scaled features (retrain's convention)
  scale_check: dict
  measured: ClassErrors        # [S, R, K]
  predicted: dict              # {"iso", "iso_eff", "general"}: ClassErrors [S, K]


PLUG_INS = ("iso", "iso_eff", "general")


def embedding_study(cfg: Config, key: jax.Array) -> Embeddings:
  data = retrain.load_retraining_data(cfg.embeddings)
  x_pool, y_pool, x_test, y_test = data.x_pool, data.y_pool, data.x_test, data.y_test
  if cfg.embedding_pi_plus > 0:
    keep = imbalance_pool(key, y_pool, cfg.embedding_pi_plus)
    x_pool, y_pool = x_pool[keep], y_pool[keep]
  d = x_pool.shape[1]
  sizes = embedding_sizes(y_pool, d, max_delta=cfg.embedding_max_delta,
                          num_sizes=cfg.embedding_num_sizes)
  weights = retrain.log_weights(cfg.num_weights, low=cfg.weight_low, high=cfg.weight_high)
  result = retrain.run(x_pool, y_pool, x_test, y_test, sizes=sizes, weights=weights,
                       num_repeats=cfg.num_repeats, seed=cfg.seed)
  measured = ClassErrors(np.asarray(result.errors.err_plus, np.float64),
                         np.asarray(result.errors.err_minus, np.float64))
  sizes = np.asarray(result.sizes, np.float64)
  ridge = float(result.ridge)

  # The coordinates retrain fits in: centred by the pool mean, divided by feature_scale;
  # its ridge is on these features, which is the theory's ridge in them.
  scale = feature_scale(x_pool)
  z = (x_pool - x_pool.mean(0)) / scale
  scale_check = {"feature_scale": scale, "retrain_feature_scale": float(result.feature_scale),
                 "relative_difference": abs(scale - float(result.feature_scale)) / scale,
                 "mean_eigenvalue_total_cov": float(np.trace(np.cov(z.T, bias=True)) / d)}
  scale_check["refit_relative_difference"] = refit_check(z, y_pool, result, scale=scale,
                                                         center=x_pool.mean(0), seed=cfg.seed)
  if scale_check["relative_difference"] > 1e-3 or scale_check["refit_relative_difference"] > 1e-2:
    raise ValueError(f"embeddings: retrain's coordinates are not the theory's: {scale_check}")
  basis = span_basis(z) if cfg.project_to_span else np.eye(d)
  with jax.enable_x64(cfg.theory_x64), retrain.single_threaded_blas():
    est = an.from_samples(jnp.asarray(z @ basis), y_pool, shrinkage=cfg.shrinkage)
    est = est._replace(**{k: np.asarray(getattr(est, k), np.float64) for k in est._fields[1:]})
    if cfg.debias_mean:
      est = debiased_means(est, int(np.sum(y_pool > 0)), int(np.sum(y_pool < 0)))
    plug = an.isotropic_plug_in(as_jnp(est))
    ridges = np.full(sizes.shape, ridge)
    general, iso, iso_eff = theory_triplet(est, plug, d=d, n=sizes, weights=weights,
                                           ridge=ridges)
  predicted = {"iso": iso, "iso_eff": iso_eff,
               "general": ClassErrors(general.err_plus, general.err_minus)}
  note = (f"pool {x_pool.shape[0]} rows (+1 = {data.labels.plus!r}, share "
          f"{np.mean(y_pool > 0):.3f}), test {x_test.shape[0]}, d = {d} (span of the pool "
          f"{basis.shape[1]}), d_eff = {plug.d_eff:.1f}, ridge {ridge:g} on scaled features")
  return Embeddings(note, d, basis.shape[1], float(plug.d_eff), sizes, np.asarray(weights), ridge,
                    scale_check, measured, predicted)


def embedding_summary(emb: Embeddings) -> dict:
  """Per plug-in: mean |predicted - measured| and the best-weight comparison per n."""
  mean_p, mean_m = emb.measured.err_plus.mean(1), emb.measured.err_minus.mean(1)   # [S, K]
  worst = np.maximum(emb.measured.err_plus, emb.measured.err_minus).mean(1)       # [S, K]
  best = np.argmin(worst, axis=1)
  rows = np.arange(len(emb.sizes))
  out = {"measured_best_weight": emb.weights[best], "measured_best_worst": worst[rows, best]}
  for name in PLUG_INS:
    pred = emb.predicted[name]
    gap = np.abs(np.stack([pred.err_plus - mean_p, pred.err_minus - mean_m]))
    pred_best = np.argmin(np.nan_to_num(np.maximum(pred.err_plus, pred.err_minus), nan=np.inf),
                          axis=1)
    lost = worst[rows, pred_best] - worst[rows, best]
    out[name] = {
        "mean_abs_diff": float(np.nanmean(gap)),
        "mean_abs_diff_plus": float(np.nanmean(gap[0])),
        "mean_abs_diff_minus": float(np.nanmean(gap[1])),
        "mean_abs_diff_per_n": np.nanmean(gap, axis=(0, 2)),
        "predicted_best_weight": emb.weights[pred_best],
        "best_weight_matches": pred_best == best,
        "worst_lost": lost,
        "mean_worst_lost": float(np.mean(lost)),
    }
  return out


# ----------------------------------------------------------------------------- figures


def _errorbars(ax, x, ci: metrics.MeanCI, **kw):
  yerr = np.stack([ci.mean - ci.low, ci.high - ci.mean])
  ax.errorbar(x, ci.mean, yerr=yerr, fmt="o", ms=4, capsize=2, **kw)


def plot_simulation(sim: Simulation, cfg: Config):
  k_all = len(sim.weights)
  fig, axes = plt.subplots(1, k_all, figsize=(4.6 * k_all, 3.9), squeeze=False)
  summary = gaussian.summarize(sim.errors)
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
      _errorbars(ax, sim.delta, metrics.MeanCI(*(v[:, k] for v in getattr(summary, cls))),
                 color=color, mfc=marker_face, label=f"{name}: simulation")
    ax.axvline(1.0, color="0.6", lw=0.8)
    title = "prior ratio" if k == 0 else "weight"
    ax.set_title(f"{title} {sim.weights[k]:.3g}; ridge 0 | {cfg.ridge:g} (delta >= 1)",
                 fontsize=9)
    ax.set_xlabel(r"$\delta = d / n$")
    ax.set_ylim(0, None)
    ax.grid(alpha=0.3)
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
      ax.grid(alpha=0.3)
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
      yerr = np.stack([ci.mean - ci.low, ci.high - ci.mean])
      ax.errorbar(emb.weights, ci.mean, yerr=yerr, fmt=marker, ms=3, capsize=2, color="tab:red"
                  if cls == "err_plus" else "tab:blue", label=f"measured {cls}")
      for name in PLUG_INS:
        color, ls = styles[name]
        ax.plot(emb.weights, getattr(emb.predicted[name], cls)[s], ls=ls, color=color,
                label=f"{name}" if cls == "err_plus" else None)
    ax.set_xscale("log")
    ax.set_title(f"n = {emb.sizes[s]:.0f} (delta = {emb.d / emb.sizes[s]:.2f})", fontsize=9)
    ax.set_xlabel("minority weight")
    ax.grid(alpha=0.3)
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
  ax.grid(alpha=0.3)
  fig.suptitle(emb.note, fontsize=8)
  return fig


# ----------------------------------------------------------------------------- tables


def simulation_rows(sim: Simulation) -> list[dict]:
  summary = gaussian.summarize(sim.errors)
  rows = []
  for i, n in enumerate(sim.n):
    for k, weight in enumerate(sim.weights):
      row = {"n": int(n), "delta": sim.delta[i], "ridge": sim.ridge[i], "weight": weight}
      for cls in ("err_plus", "err_minus"):
        ci = getattr(summary, cls)
        row.update({f"sim_{cls}_mean": ci.mean[i, k], f"sim_{cls}_low": ci.low[i, k],
                    f"sim_{cls}_high": ci.high[i, k],
                    f"general_{cls}": getattr(sim.general, cls)[i, k],
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
        row.update({f"measured_{cls}_mean": ci.mean, f"measured_{cls}_low": ci.low,
                    f"measured_{cls}_high": ci.high})
        for name in PLUG_INS:
          row[f"{name}_{cls}"] = getattr(emb.predicted[name], cls)[s, k]
      rows.append(row)
  return rows


# ----------------------------------------------------------------------------- entry point


def headline(summary: dict) -> str:
  a = summary["simulation"]
  lines = [(f"(a) general theory vs simulation: max |gap| {a['max_abs_gap']:.4f}, mean "
            f"{a['mean_abs_gap']:.4f}, max z {a['max_z']:.2f}, {100 * a['frac_within_ci']:.0f}% "
            f"within 95% CI, within tolerance (4 se + 1/d) everywhere: {a['within_tolerance']}; "
            f"isotropic at delta: max |gap| {a['iso_max_abs_gap']:.4f}, at delta_eff "
            f"{a['iso_eff_max_abs_gap']:.4f} (d_eff = {a['d_eff']:.1f})")]
  for key, entry in summary["shortcut"].items():
    parts = [f"{c}: max excess {entry[c]['max_excess_worst']:.4f} at delta "
             f"{entry[c]['delta_at_max_excess']:g}, good enough at "
             f"{100 * entry[c]['frac_good_enough']:.0f}%" for c in CHOICES[1:]]
    lines.append(f"(b) {key} (d_eff {entry['d_eff']:.1f}): " + "; ".join(parts))
  if "embeddings" in summary:
    e = summary["embeddings"]
    parts = [f"{name}: mean |pred - meas| {e[name]['mean_abs_diff']:.4f}, best weight matched "
             f"{int(np.sum(e[name]['best_weight_matches']))}/{len(e[name]['best_weight_matches'])}"
             f" sizes, mean worst lost {e[name]['mean_worst_lost']:.4f}" for name in PLUG_INS]
    lines.append("(c) embeddings: " + "; ".join(parts))
  return "\n".join(lines)


def run(cfg: Config, out) -> dict:
  out = common.ensure_dir(out)
  timings: dict = {}
  key_model, key_sim, key_spectra, key_emb = jax.random.split(jax.random.key(cfg.seed), 4)
  with common.stopwatch(timings, "simulation"):
    sim = simulation_study(cfg, key_model, key_sim)
  with common.stopwatch(timings, "shortcut"):
    shortcuts = [shortcut_study(cfg, jax.random.fold_in(key_spectra, i), power)
                 for i, power in enumerate(common.progress(cfg.shortcut_powers,
                                                           desc="shortcut spectra"))]
  summary = {"simulation": {**simulation_agreement(sim, cfg.d), "d_eff": sim.d_eff},
             "shortcut": shortcut_summary(shortcuts, cfg.good_enough)}
  emb = None
  if cfg.embeddings:
    with common.stopwatch(timings, "embeddings"):
      emb = embedding_study(cfg, key_emb)
    summary["embeddings"] = {"note": emb.note, "scale_check": emb.scale_check,
                             **embedding_summary(emb)}
  with common.stopwatch(timings, "figures"):
    common.save_figure(plot_simulation(sim, cfg), out / "a_simulation.png")
    common.save_figure(plot_shortcut(shortcuts), out / "b_shortcut.png")
    if emb is not None:
      common.save_figure(plot_embeddings(emb, summary["embeddings"]), out / "c_embeddings.png")
  common.write_csv(out / "a_simulation.csv", simulation_rows(sim))
  common.write_csv(out / "a_curves.csv", curve_rows(sim))
  common.write_csv(out / "b_shortcut.csv", shortcut_rows(shortcuts))
  if emb is not None:
    common.write_csv(out / "c_embeddings.csv", embedding_rows(emb))
  sim_summary = gaussian.summarize(sim.errors)
  sim_errors = {name: gaussian.ci_dict(getattr(sim_summary, name))
                for name in ("err_plus", "err_minus", "worst")}
  results = {
      "summary": summary,
      "simulation": {**sim._asdict(), "errors": sim_errors},
      "shortcut": [s._asdict() for s in shortcuts],
      "seconds": timings,
  }
  if emb is not None:
    results["embeddings"] = {**emb._asdict(), "measured": {
        "err_plus": gaussian.ci_dict(metrics.mean_ci(emb.measured.err_plus, axis=1)),
        "err_minus": gaussian.ci_dict(metrics.mean_ci(emb.measured.err_minus, axis=1))}}
  common.save_results(out / "results.json", config=cfg, results=results, experiment="anisotropic")
  return results


def main(argv: Sequence[str] | None = None) -> dict:
  cfg, out = common.parse_args(argv, config(), quick=quick, description=__doc__)
  start = time.perf_counter()
  results = run(cfg, out)
  print(headline(results["summary"]))
  print(f"anisotropic: {time.perf_counter() - start:.1f}s wall -> {out}", flush=True)
  return results


if __name__ == "__main__":
  main(sys.argv[1:])
