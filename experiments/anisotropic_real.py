"""General-covariance study (c): the three plug-in theories against retraining on real embeddings.

val.npz is the retraining pool, test.npz the evaluation split
(`embedding_files.load_retraining_data`). `retrain.run` measures per-class test errors for
sizes n from the pool size down to delta = d / n = `embedding_max_delta`, `num_repeats`
subsamples each, on a log grid of weights. Class means and shrunk covariances are estimated
on the pool only (`anisotropic.from_samples`, Ledoit-Wolf) in the coordinates `retrain`
fits in (centred by the pool mean, divided by its feature scale; checked against retrain's
scale and by refitting one subsample), restricted to the span of the centred pool, so
retrain's ridge is the theory's ridge. Three plug-ins predict every (n, weight): isotropic
at delta = d / n, isotropic at delta_eff, general.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from experiments.anisotropic_theory import PLUG_INS, theory_triplet
from thumb_jax import embedding_files, lls, platform, retrain

# The pool plug-in lives in the library (recommend's model="general" uses it); re-exported.
from thumb_jax.general_plug_in import debiased_means, pool_plug_in, span_basis  # noqa: F401
from thumb_jax.metrics import ClassErrors

# Compiled once per shape (static: the ridge picks lls's Cholesky path, as in retrain).
_fit_sweep = jax.jit(lls.fit_sweep, static_argnames=("ridge",))
_subsample_masks = jax.jit(retrain.subsample_masks, static_argnames=("num_repeats", "dtype"))


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
  masks = _subsample_masks(jax.random.key(seed), jnp.asarray(y, dtype),
                                  jnp.asarray(result.count_plus), jnp.asarray(result.count_minus),
                                  num_repeats=1, dtype=dtype)
  layer = _fit_sweep(jnp.asarray(z, dtype), jnp.asarray(y, dtype),
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


def embedding_study(cfg, key: jax.Array) -> Embeddings:
  """Runs (c) for `cfg` (an `experiments.anisotropic.Config` with `embeddings` set)."""
  data = embedding_files.load_retraining_data(cfg.embeddings)
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
  with jax.enable_x64(cfg.theory_x64), platform.single_threaded_blas():
    est, plug, basis = pool_plug_in(z, y_pool, shrinkage=cfg.shrinkage,
                                    debias_mean=cfg.debias_mean,
                                    project_to_span=cfg.project_to_span)
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
