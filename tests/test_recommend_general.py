"""recommend_weight(model="general"), ridge="auto" and weighting vs downsampling.

Every general call here uses retraining sets of n = 160 rows in d = 16 (one compilation of the
plug-in and of the options per number of ridges), the theory against dense grids, the dense
covariance path and known anisotropic Gaussian models.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from thumb_jax import GaussianMixture, io, metrics, mixture, recommend
from thumb_jax import anisotropic as an
from thumb_jax import general_plug_in as gp

D, N = 16, 160


def _model(seed, *, commuting=False, pi_plus=0.2):
  """Power-law covariances j^-1 (class +1) and j^-0.5 (class -1), rotated, Mahalanobis 9."""
  return mixture.power_law_mixture(jax.random.key(seed), d=D, pi_plus=pi_plus, power_plus=1.0,
                                   power_minus=0.5, mahalanobis_sq=9.0, commuting=commuting)


def _draw(model, seed, n=N):
  x, y = mixture.sample(jax.random.key(1000 + seed), model, n=n)
  return np.asarray(x, np.float64), np.asarray(y)


# Jitted once here (forms of one shape share the compilation): the theory at one point and on
# the dense log grid of weights (-2, 4) the search is compared with.
_point = jax.jit(lambda form, n, w, r: an.class_errors(form, n=n, weight=w, ridge=r))
_row = jax.jit(jax.vmap(lambda form, n, w, r: an.class_errors(form, n=n, weight=w, ridge=r),
                        in_axes=(None, None, 0, None)))
_prepare = jax.jit(an.prepare)
DENSE = np.logspace(-2, 4, 1201)


def _dense_argmin(form, n, ridge, objective="worst"):
  """The general theory's objective on the dense grid: (best weight, value, all values)."""
  errs = _row(form, n, DENSE, ridge)
  value = np.asarray(metrics.objective(metrics.ClassErrors(errs.err_plus, errs.err_minus),
                                       objective))
  best = int(np.nanargmin(value))
  return DENSE[best], value[best], value


# recommend_weight's own jitted functions: the tests share their compilations (n = 160, d = 16).
_options = recommend._general_options_jit
_general_stats = recommend._general_stats_jit


def test_general_weight_is_the_dense_grid_argmin_on_known_covariances(objective="worst"):
  """Known covariances: commuting (every ridge exact) and not commuting (ridge 0, the
  generalized eigenbasis). The search (3 rounds of 48) lands within one dense-grid step
  (0.005 decades) of the dense argmin, and never above its objective value; the
  downsampling and prior-ratio entries are the theory at (n' = 2 n_+, pi' = 1/2, weight 1)
  and (n, pi_+, n_- / n_+)."""
  n_plus, n_minus = 32, 128
  # 12 ridges, as recommend's grid (one compilation); only the first 3 differ.
  cases = [(_prepare(_model(0, commuting=True)), np.r_[0.0, 0.05, 0.5, np.full(9, 0.5)]),
           (_prepare(_model(1)), np.zeros(12))]
  for form, ridges in cases:
    opts = _options(form, n_plus, n_minus, jnp.asarray(ridges), objective=objective,
                    log10_range=(-2.0, 4.0))
    for r, ridge in enumerate(ridges[:3]):
      best_w, best_value, values = _dense_argmin(form, N, ridge, objective)
      got = float(metrics.objective(metrics.ClassErrors(opts.weighting.err_plus[r],
                                                        opts.weighting.err_minus[r]),
                                    objective))
      assert got <= best_value + 1e-6
      assert abs(np.log10(float(opts.weight[r]) / best_w)) < 0.006 or got <= np.nanmin(
          values) + 1e-6
      down = _point(form._replace(pi_plus=0.5), 2.0 * n_plus, 1.0, ridge)
      prior = _point(form, float(N), n_minus / n_plus, ridge)
      np.testing.assert_allclose([opts.downsampling.err_plus[r], opts.downsampling.err_minus[r],
                                  opts.prior.err_plus[r], opts.prior.err_minus[r]],
                                 [down.err_plus, down.err_minus, prior.err_plus,
                                  prior.err_minus], rtol=1e-5, atol=1e-7)


def test_pinched_form_against_the_dense_path():
  """`general_stats` is `from_samples` then `debiased_means`, pinched. The pinch (class
  covariances kept diagonal in the eigenbasis of (S_+ + S_-) / 2) against the dense
  deterministic equivalent of the same estimated covariances, on samples of strongly
  non-commuting models (independent rotations, powers 1 and 0.5; commute gap 0.2 to 0.3),
  weights 1 to 16 and ridges 0.01 to 1 x the mean variance. Measured (3 seeds, d = 16,
  n = 160): largest per-class gap 0.015; the pi-weighted pool's basis gave 0.016 to 0.04 at
  d = 32. Tolerance 0.02."""
  weights, ridges = np.array([1.0, 4.0, 16.0]), np.array([0.01, 0.1, 1.0])
  gaps = []
  for seed in range(3):
    x, y = _draw(_model(3 + seed), 3 + seed)
    z = x - x.mean(0)
    est, _, basis = gp.pool_plug_in(z, y)
    # general_stats with identity targets = from_samples then debiased_means, pinched.
    stats = gp.general_stats(jnp.asarray(z @ basis, jnp.result_type(float)), jnp.asarray(y > 0),
                             pooled_target=False)
    dmu = np.asarray(est.mean_plus - est.mean_minus)
    np.testing.assert_allclose(np.sum(np.asarray(stats.form.mean_plus - stats.form.mean_minus)
                                      ** 2), dmu @ dmu, rtol=1e-4)
    for var, cov in ((stats.form.var_plus, est.cov_plus), (stats.form.var_minus, est.cov_minus)):
      np.testing.assert_allclose(np.sum(var), np.trace(np.asarray(cov)), rtol=1e-4)
    assert float(stats.count_plus) == 32 and 0 < float(stats.commute_gap) < 1
    scale = float(np.trace(np.asarray(est.cov_plus + est.cov_minus))) / (2 * basis.shape[1])
    for ridge in ridges * scale:
      for w in weights:
        dense, fast = _point(est, float(N), w, ridge), _point(stats.form, float(N), w, ridge)
        gaps.append(max(abs(float(dense.err_plus - fast.err_plus)),
                        abs(float(dense.err_minus - fast.err_minus))))
  assert max(gaps) < 0.02, np.round(gaps, 4)


@pytest.mark.parametrize("commuting,ridge,tol", [(False, 0.0, 0.03), (True, 0.1, 0.03)])
def test_recommendation_is_near_the_true_optimum_on_an_anisotropic_gaussian(commuting, ridge,
                                                                           tol):
  """Samples (n = 160, n_+ = 32, d = 16) of known anisotropic Gaussian models: the general
  recommendation's true worst-class error (the general theory with the true parameters; exact:
  ridge 0 in the generalized eigenbasis, or commuting covariances) minus the true optimum.
  Measured over 4 seeds: 0.008 to 0.016 (ridge 0) and 0.007 to 0.021 (ridge 0.1); the prior
  ratio loses 0.010 to 0.017 there, so on these strongly non-commuting models (powers 1 and
  0.5, independent rotations, which the pooled shrinkage target does not favour) the plug-in
  is no better than the prior ratio. Tolerance 0.03 (32 minority rows in 16 dimensions)."""
  excess = []
  for seed in range(4):
    true = _model(10 + seed, commuting=commuting)
    x, y = _draw(true, 10 + seed)
    rec = recommend.recommend_weight(x, y, ridge=ridge, model="general")
    assert rec.model == "general" and rec.general.span_dim == D
    form = _prepare(true)
    _, best, _ = _dense_argmin(form, float(N), ridge)
    got = _point(form, float(N), rec.weight, ridge)
    excess.append(max(float(got.err_plus), float(got.err_minus)) - best)
  assert max(excess) < tol, excess


def test_auto_ridge_and_method_are_the_predicted_argmin():
  """ridge="auto" picks the (method, ridge) of the grid with the lowest predicted objective
  (both models); `choice`, `chosen_errors` and the options table agree."""
  x, y = _draw(_model(20), 20)
  for model in ("general", "isotropic"):
    rec = recommend.recommend_weight(x, y, ridge="auto", model=model)
    opts = rec.options
    assert rec.ridge_auto and len(opts.ridges) == len(recommend.RIDGE_GRID)
    values = np.stack([np.maximum(opts.weighting.err_plus, opts.weighting.err_minus),
                       np.maximum(opts.downsampling.err_plus, opts.downsampling.err_minus)])
    values = np.where(np.isfinite(values), values, np.inf)
    method, r = np.unravel_index(np.argmin(values), values.shape)
    assert rec.method == gp.METHODS[method]
    assert rec.ridge == pytest.approx(opts.ridges[r], rel=1e-6)
    assert float(rec.chosen_errors.worst) == pytest.approx(values[method, r], rel=1e-6)
    assert rec.weight == pytest.approx(opts.weight[r], rel=1e-6)
    name, weight, ridge = rec.choice
    assert name == rec.method and ridge == rec.ridge
    assert weight == (1.0 if name == "downsampling" else rec.weight)
    report = json.loads(io.dumps(rec.as_dict()))
    assert report["choice"]["method"] == rec.method and len(report["options"]) == len(
        opts.ridges)
  # The grid is relative to the mean within-class variance: scaling x scales the ridge.
  scaled = recommend.recommend_weight(4.0 * x, y, ridge="auto", model="general")
  general = recommend.recommend_weight(x, y, ridge="auto", model="general")
  assert scaled.ridge == pytest.approx(16.0 * general.ridge, rel=1e-4)
  assert scaled.weight == pytest.approx(general.weight, rel=1e-3)


def test_downsampling_is_chosen_where_the_theory_predicts_it_better():
  """Isotropic Gaussian, pi_+ = 0.15, delta = 16 / 27 = 0.6 at a tiny ridge (the README's
  case where downsampling beats every weight): the isotropic recommendation says
  "downsampling", and its chosen errors are the downsampling option's, below weighting's."""
  mix = GaussianMixture.symmetric(pi_plus=0.15, mean_norm=2.0)
  x, y = mixture.sample(jax.random.key(1), mix, n=27, d=D)
  rec = recommend.recommend_weight(np.asarray(x), np.asarray(y), ridge=1e-3)
  assert rec.method == "downsampling", (rec.errors, rec.chosen_errors)
  assert rec.choice == ("downsampling", 1.0, 1e-3)
  down = rec.options.downsampling
  assert float(rec.chosen_errors.worst) == pytest.approx(
      max(float(down.err_plus[0]), float(down.err_minus[0])))
  assert float(rec.chosen_errors.worst) < float(rec.errors.worst)


def test_general_bootstrap_intervals():
  x, y = _draw(_model(21), 21)
  rec = recommend.recommend_weight(x, y, ridge="auto", model="general", bootstrap=8, seed=1)
  for field in ("bootstrap_weights", "bootstrap_ridges", "bootstrap_downsample",
                "bootstrap_values"):
    assert getattr(rec, field).shape == (8,), field
  assert np.all(np.isfinite(rec.bootstrap_weights))
  lo, hi = rec.value_interval
  assert 0 <= lo <= hi <= 1
  assert rec.ridge_interval[0] <= rec.ridge_interval[1]
  assert 0 <= rec.downsample_share <= 1
  assert set(np.unique(rec.bootstrap_ridges)) <= set(np.round(rec.options.ridges, 12)) or \
      np.all(np.min(np.abs(rec.bootstrap_ridges[:, None] - rec.options.ridges[None]), 1)
             <= 1e-5 * rec.options.ridges.max())


@pytest.mark.parametrize("features,labels,kwargs,match", [
    (np.ones((10, 3)), np.ones(10), {}, "labels: expected two classes, found only one"),
    (np.random.default_rng(0).standard_normal((20, 3)), np.r_[np.ones(3), -np.ones(17)], {},
     "labels: class 1.0 .* has 3 samples; model='general' needs at least 4"),
    (np.r_[np.full((1, 3), np.nan), np.ones((19, 3))], np.r_[np.ones(5), -np.ones(15)], {},
     "features: expected finite"),
    (np.random.default_rng(0).standard_normal((20, 64)), np.r_[np.ones(5), -np.ones(15)],
     {"ridge": 0.0}, "ridge: with ridge=0 and d=64 >= n-1=19 .* interpolates"),
    (np.random.default_rng(0).standard_normal((20, 3)), np.r_[np.ones(5), -np.ones(15)],
     {"ridge": "best"}, "ridge: expected a finite number >= 0 or 'auto'"),
    (np.random.default_rng(0).standard_normal((20, 3)), np.r_[np.ones(5), -np.ones(15)],
     {"ridge": "auto", "ridge_grid": [-1.0]}, "ridge_grid: expected"),
    (np.random.default_rng(0).standard_normal((20, 3)), np.r_[np.ones(5), -np.ones(15)],
     {"model": "gaussian"}, "model: expected one of"),
])
def test_general_bad_inputs_name_the_argument(features, labels, kwargs, match):
  with pytest.raises(ValueError, match=match):
    recommend.recommend_weight(features, labels, **{"model": "general", **kwargs})
