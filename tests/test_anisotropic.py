"""General-covariance theory: isotropic reduction, Monte Carlo, fast paths, gradients, inputs."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rtol
from sklearn.covariance import ledoit_wolf

from thumb_jax import GaussianMixture, lls, metrics, mixture, theory
from thumb_jax import anisotropic as an


def power_law_mixture(d, *, pi_plus=0.2, power_plus=1.0, power_minus=0.6, commuting=False,
                      seed=0):
  """`mixture.power_law_mixture` (Mahalanobis 9), both means shifted by 0.3 N(0, I)."""
  mix = mixture.power_law_mixture(jax.random.key(seed), d=d, pi_plus=pi_plus,
                                  power_plus=power_plus, power_minus=power_minus,
                                  mahalanobis_sq=9.0, commuting=commuting)
  shift = 0.3 * np.random.default_rng(seed).normal(size=d)
  return mix._replace(mean_plus=mix.mean_plus + shift, mean_minus=mix.mean_minus + shift)


def _layer_errors(layer, mix):
  return metrics.gaussian_class_errors(layer, mix.mean_plus, mix.mean_minus,
                                       cov_plus=mix.cov_plus, cov_minus=mix.cov_minus)


def _as_jnp(mix):
  return mix._replace(**{k: jnp.asarray(getattr(mix, k)) for k in mix._fields[1:]})


# ---------------------------------------------------------------------------------------
# Isotropic reduction.

# (delta, weight, ridge): ridgeless below 1, ridge below and above 1.
ISO_POINTS = np.array([(0.5, 9.0, 0.0), (0.3, 1.0, 0.1), (1.5, 5.0, 0.2), (0.9, 2.0, 0.0),
                       (0.1, 9.0, 0.0)])


def test_isotropic_covariances_reduce_to_isotropic_theory(x64):
  """Sigma_k = s_k^2 I: all three paths equal thumb_jax.theory.class_errors (delta = d / n)."""
  d = 64
  iso = GaussianMixture(0.1, 4.0, 1.0, -1.5, 1.3, 0.7)
  mu_p, mu_m = mixture.means(iso, d)
  dense = an.CovarianceMixture(0.1, mu_p, mu_m, 1.3 * jnp.eye(d), 0.7 * jnp.eye(d))
  prepared = jax.jit(an.prepare)(dense)
  assert bool(prepared.ridge_exact)                      # isotropic covariances commute
  eig = an.from_eigenbasis(pi_plus=0.1, eig_plus=jnp.full(d, 1.3), eig_minus=jnp.full(d, 0.7),
                           mean_plus=mu_p, mean_minus=mu_m)
  delta, weight, ridge = ISO_POINTS.T
  ref = jax.jit(lambda *a: theory.class_errors(iso, *a))(delta, weight, ridge)
  tol = rtol(x64, f32=2e-4, f64=1e-8)

  @jax.jit
  def sweep(form, delta, weight, ridge):
    return jax.vmap(lambda dl, w, r: an.class_errors(form, n=d / dl, weight=w, ridge=r))(
        delta, weight, ridge)

  for form in (dense, prepared, eig):
    got = sweep(form, delta, weight, ridge)
    assert np.all(got.converged)
    np.testing.assert_allclose([got.err_plus, got.err_minus], [ref.err_plus, ref.err_minus],
                               rtol=tol, atol=tol * 1e-2)


def test_reference_values_of_theory_md():
  """THEORY.md table: |mu| = 2 symmetric, unit variances, pi = 0.1, weight 9, ridge 0."""
  d = 100
  mu = jnp.zeros(d).at[0].set(2.0)
  form = an.from_eigenbasis(pi_plus=0.1, eig_plus=jnp.ones(d), eig_minus=jnp.ones(d),
                            mean_plus=mu, mean_minus=-mu)
  for delta, want in [(0.1, (0.051, 0.034)), (0.5, (0.197, 0.066))]:
    got = jax.jit(lambda f, n: an.class_errors(f, n=n, weight=9.0))(form, d / delta)
    np.testing.assert_allclose([got.err_plus, got.err_minus], want, atol=1.5e-3)


# ---------------------------------------------------------------------------------------
# Monte Carlo.

MC_D = 200
MC_DRAWS = 16
# (delta, ridge): below 1 with and without ridge, above 1 with ridge.
MC_POINTS = [(0.5, 0.0), (0.5, 0.1), (1.6, 0.1)]


@pytest.mark.parametrize("delta,ridge", MC_POINTS)
def test_theory_matches_monte_carlo(delta, ridge):
  """Non-commuting rotated power-law covariances at d = 200, 16 draws, weights 1 and 9.

  Tolerance: 4 standard errors of the 16-draw mean (t_15 quantile ~ 0.999 two-sided),
  plus 1/d for the finite-size bias of the deterministic equivalents (O(1/n_k) with
  n_+ = 25 to 80 minority rows here). Observed at these settings: |z| < 2.1.
  """
  mix = power_law_mixture(MC_D)
  mix = _as_jnp(mix)
  n = int(round(MC_D / delta))
  weights = jnp.array([1.0, 9.0])

  def draw(key):
    x, y = mixture.sample(key, mix, n=n)
    return _layer_errors(lls.fit_sweep(x, y, weights, ridge=ridge), mix)

  keys = jax.random.split(jax.random.key(7), MC_DRAWS)
  # Finish the batched solves before dispatching the next computation: two executables with
  # batched LAPACK calls in flight at once can deadlock XLA:CPU's pool (thumb_jax/platform.py).
  sim = jax.block_until_ready(jax.jit(jax.vmap(draw))(keys))
  pred = jax.jit(jax.vmap(lambda w: an.class_errors(mix, n=n, weight=w, ridge=ridge)))(weights)
  assert np.all(pred.converged)
  for got, want in [(sim.err_plus, pred.err_plus), (sim.err_minus, pred.err_minus)]:
    got = np.asarray(got, np.float64)
    se = got.std(0, ddof=1) / np.sqrt(MC_DRAWS)
    gap = np.abs(got.mean(0) - np.asarray(want))
    assert np.all(gap <= 4 * se + 1.0 / MC_D), (gap, se, gap / se)


def test_sampler_moments():
  mix = power_law_mixture(6, pi_plus=0.3, seed=3)
  mix = _as_jnp(mix)
  x, y = jax.jit(lambda k: mixture.sample(k, mix, n=40000))(jax.random.key(0))
  assert int(jnp.sum(y > 0)) == mixture.class_counts(40000, 0.3)[0]
  for sign, mean, cov in [(1, mix.mean_plus, mix.cov_plus), (-1, mix.mean_minus, mix.cov_minus)]:
    rows = np.asarray(x)[np.asarray(y) == sign]
    np.testing.assert_allclose(rows.mean(0), mean, atol=0.06)   # ~ 4 sd of the mean
    np.testing.assert_allclose(np.cov(rows.T), cov, atol=0.15)
  _, y_free = mixture.sample(jax.random.key(1), mix, n=4000, fixed_counts=False)
  assert abs(float(jnp.mean(y_free > 0)) - 0.3) < 0.03


def test_layer_errors_full_diagonal_and_isotropic_covariances_agree():
  """metrics.gaussian_class_errors: cov [d, d], var [d] and a scalar var give one answer."""
  rng = np.random.default_rng(0)
  d = 10
  mu_p, mu_m = jnp.asarray(rng.normal(size=d)), jnp.asarray(rng.normal(size=d))
  layer = lls.LastLayer(jnp.asarray(rng.normal(size=(3, d))), jnp.asarray(rng.normal(size=3)))
  full = metrics.gaussian_class_errors(layer, mu_p, mu_m, cov_plus=2.0 * jnp.eye(d),
                                       cov_minus=0.5 * jnp.eye(d))
  iso = metrics.gaussian_class_errors(layer, mu_p, mu_m, var_plus=2.0, var_minus=0.5)
  chex.assert_trees_all_close(full, iso, rtol=1e-5)
  var_p, var_m = jnp.asarray(rng.uniform(0.5, 2, d)), jnp.asarray(rng.uniform(0.5, 2, d))
  diag = metrics.gaussian_class_errors(layer, mu_p, mu_m, var_plus=var_p, var_minus=var_m)
  full = metrics.gaussian_class_errors(layer, mu_p, mu_m, cov_plus=jnp.diag(var_p),
                                       cov_minus=jnp.diag(var_m))
  chex.assert_trees_all_close(diag, full, rtol=1e-5)


# ---------------------------------------------------------------------------------------
# Fast paths against the general path.


def test_fast_paths_match_general_path(x64):
  d, n = 48, 120.0
  # (weight, ridge) pairs: ridgeless and ridge, weights below, at and above 1.
  weights = jnp.array([0.5, 1.0, 9.0, 0.5, 1.0, 9.0])
  ridges = jnp.array([0.0, 0.0, 0.0, 0.05, 0.05, 0.05])
  tol = rtol(x64, f32=1e-3, f64=1e-8)
  sweep = jax.jit(lambda form: jax.vmap(
      lambda w, r: an.class_errors(form, n=n, weight=w, ridge=r))(weights, ridges))

  def errors(form):
    out = sweep(form)
    assert np.all(out.converged)
    return np.asarray([out.err_plus, out.err_minus])

  # Commuting (shared rotation): prepare finds the orthonormal basis, every ridge exact;
  # from_eigenbasis with the known basis agrees too.
  mix = power_law_mixture(d, commuting=True, seed=1)
  ev_p, u = np.linalg.eigh(mix.cov_plus)               # distinct eigenvalues: the shared basis
  ev_m = np.diag(u.T @ mix.cov_minus @ u)
  mix = _as_jnp(mix)
  prepared = jax.jit(an.prepare)(mix)
  assert bool(prepared.ridge_exact)
  eig = an.from_eigenbasis(pi_plus=mix.pi_plus, eig_plus=ev_p, eig_minus=ev_m,
                           mean_plus=u.T @ mix.mean_plus, mean_minus=u.T @ mix.mean_minus)
  general = errors(mix)
  np.testing.assert_allclose(errors(prepared), general, rtol=tol, atol=tol * 1e-2)
  np.testing.assert_allclose(errors(eig), general, rtol=tol, atol=tol * 1e-2)

  # Non-commuting: the generalized eigenbasis is exact for ridge 0 and refuses ridge > 0
  # (ValueError when concrete, NaN and converged=False under jit).
  mix = power_law_mixture(d, seed=2)
  mix = _as_jnp(mix)
  prepared = jax.jit(an.prepare)(mix)
  assert not bool(prepared.ridge_exact)
  general = sweep(mix)
  fast = sweep(prepared)
  np.testing.assert_allclose(np.asarray([fast.err_plus, fast.err_minus])[:, :3],
                             np.asarray([general.err_plus, general.err_minus])[:, :3],
                             rtol=tol, atol=tol * 1e-2)
  assert np.all(general.converged)
  assert np.all(np.isnan(fast.err_plus[3:])) and not np.any(fast.converged[3:])
  with pytest.raises(ValueError, match="ridge"):
    an.class_errors(prepared, n=n, weight=1.0, ridge=0.05)


def test_sweep_over_weight_and_n_compiles_once_across_mixtures():
  """New mixtures (other spectra, prior, basis kind) and grids of one shape: one trace."""
  forms = [an.prepare(_as_jnp(power_law_mixture(32, seed=4 + i, pi_plus=0.1 + 0.1 * i,
                                                commuting=bool(i % 2))))
           for i in range(3)]
  assert [bool(f.ridge_exact) for f in forms] == [False, True, False]

  @jax.jit
  @chex.assert_max_traces(n=1)
  def grid(form, ns, ws):
    per_n = lambda n: jax.vmap(lambda w: an.class_errors(form, n=n, weight=w))(ws)
    return jax.vmap(per_n)(ns)

  for shift, form in enumerate(forms):
    out = grid(form, jnp.array([40.0, 80.0, 320.0]) + shift, jnp.linspace(0.5, 9.0, 5) + shift)
    chex.assert_shape(out.err_plus, (3, 5))
    assert np.all(out.converged)
  # More samples help both classes at weight 1 (monotone in n).
  assert np.all(np.diff(np.asarray(out.err_plus[:, 0])) < 0)


# ---------------------------------------------------------------------------------------
# Gradient, non-convergence, invalid inputs.


@pytest.mark.parametrize("general,ridge", [(False, 0.0), (True, 0.05)],
                         ids=["diagonal-ridgeless", "dense-ridge"])
def test_grad_in_weight_matches_finite_difference(x64, general, ridge):
  """jax.grad through the fixed point (implicit differentiation) against central differences."""
  mix = power_law_mixture(24, seed=5)
  mix = _as_jnp(mix)
  form = mix if general else an.prepare(mix)
  n = 60.0

  def objective(w):
    e = an.class_errors(form, n=n, weight=w, ridge=ridge)
    return e.err_plus + 2.0 * e.err_minus

  weights = jnp.array([1.0, 4.0])
  h = 1e-4 if x64 else 2e-2
  grad = jax.jit(jax.vmap(jax.grad(objective)))(weights)
  values = jax.jit(jax.vmap(objective))(jnp.concatenate([weights + h, weights - h]))
  fd = (values[:2] - values[2:]) / (2 * h)
  np.testing.assert_allclose(grad, fd, rtol=rtol(x64, f32=2e-2, f64=1e-6), atol=1e-6)


def test_capped_iteration_gives_nan_and_not_converged():
  mix = power_law_mixture(24, seed=6)
  form = an.prepare(_as_jnp(mix))
  capped = jax.jit(lambda w: an.class_errors(form, n=40.0, weight=w, max_iter=1))(9.0)
  assert np.isnan(capped.err_plus) and np.isnan(capped.err_minus)
  assert not bool(capped.converged) and int(capped.iterations) == 1
  assert float(capped.residual) > 1e-5
  full = jax.jit(lambda w: an.class_errors(form, n=40.0, weight=w))(9.0)
  assert bool(full.converged) and int(full.iterations) < 20


def test_invalid_arguments_under_jit_give_nan():
  mix = power_law_mixture(16, seed=7)
  mix = _as_jnp(mix)
  f = jax.jit(lambda n, w, r: an.class_errors(mix, n=n, weight=w, ridge=r))
  for n, w, r in [(40.0, -1.0, 0.0), (40.0, 1.0, -0.1), (10.0, 1.0, 0.0)]:
    out = f(n, w, r)
    assert np.isnan(out.err_plus) and not bool(out.converged)


def test_extreme_weights_and_ridges_float32_matches_float64_or_is_nan():
  """Never a confident wrong number: at ridge 1e30 float32 once gave (0, 0), converged.

  Every float32 error is within metrics.ROUNDING_TOL of float64, or NaN with converged
  False (the rescaled form keeps the traces from underflowing; where 2p - 1 cancels against
  a ~1 / ridge term the result is NaN, in float64 too at ridges near 1e20).
  """
  d = 16
  rng = np.random.default_rng(0)
  mean = 0.5 * rng.normal(size=d)
  spec = dict(eig_plus=np.arange(1, d + 1) ** -0.8, eig_minus=np.arange(1, d + 1) ** -0.5,
              mean_plus=mean, mean_minus=-mean)
  weights, ridges = np.meshgrid([1e-10, 1e-3, 1.0, 4.0, 1e3, 1e10],
                                [0.0, 1e-12, 1e-2, 1.0, 1e4, 1e8, 1e20, 1e30], indexing="ij")
  grid = jax.jit(jax.vmap(lambda form, w, r: an.class_errors(form, n=40.0, weight=w, ridge=r),
                          in_axes=(None, 0, 0)))
  for pi in (0.2, 0.5):
    out = {}
    for x64 in (True, False):
      with jax.enable_x64(x64):
        out[x64] = jax.tree.map(np.asarray, grid(an.from_eigenbasis(pi_plus=pi, **spec),
                                                 weights.ravel(), ridges.ravel()))
    got, ref = out[False], out[True]
    for g, r in ((got.err_plus, ref.err_plus), (got.err_minus, ref.err_minus)):
      finite = np.isfinite(g)
      np.testing.assert_allclose(g[finite], r[finite], atol=metrics.ROUNDING_TOL, rtol=0)
      np.testing.assert_array_equal(finite, got.converged)
      assert finite.mean() > 0.75 and np.isfinite(r[ridges.ravel() < 1e20]).all()
  # pi = 1/2, weight 1, ridge 1e30: NaN and not converged in float32 (was (0, 0), converged).
  at = (weights.ravel() == 1.0) & (ridges.ravel() == 1e30)
  assert np.isnan(got.err_plus[at]).all() and not got.converged[at].any()


def _good():
  mix = power_law_mixture(8, seed=8)
  return mix


@pytest.mark.parametrize("change,kwargs,match", [
    (dict(cov_plus=-np.eye(8)), {}, "cov_plus"),
    (dict(cov_minus=np.diag(np.r_[np.ones(7), -1.0])), {}, "cov_minus"),
    (dict(cov_plus=np.triu(np.ones((8, 8)))), {}, "cov_plus"),
    (dict(cov_minus=np.eye(7)), {}, "cov_minus"),
    (dict(mean_minus=np.zeros(5)), {}, "mean_minus"),
    (dict(pi_plus=0.0), {}, "pi_plus"),
    (dict(pi_plus=1.2), {}, "pi_plus"),
    ({}, dict(weight=0.0), "weight"),
    ({}, dict(weight=-3.0), "weight"),
    ({}, dict(ridge=-0.1), "ridge"),
    ({}, dict(n=8.0), "n"),
    ({}, dict(n=5.0, ridge=0.0), "n"),
    ({}, dict(n=0.0, ridge=0.1), "n"),
    ({}, dict(n=-4.0, ridge=0.1), "n"),
    ({}, dict(damping=0.0), "damping"),
    ({}, dict(max_iter=0), "max_iter"),
    ({}, dict(n=np.array([100.0, 200.0])), "n: expected a scalar.*vmap"),
    ({}, dict(weight=jnp.ones(2)), "weight: expected a scalar"),
    ({}, dict(weight=np.inf), "weight"),
    ({}, dict(ridge=np.nan), "ridge"),
    ({}, dict(ridge=np.inf), "ridge"),
    ({}, dict(weight=np.nan), "weight"),
    ({}, dict(weight="2"), "weight: expected real numbers"),
    ({}, dict(ridge="0.1"), "ridge: expected real numbers"),
])
def test_bad_inputs_raise(change, kwargs, match):
  mix = _good()._replace(**change)
  args = dict(n=40.0, weight=1.0, ridge=0.0)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    an.class_errors(mix, **args)


@pytest.mark.parametrize("kwargs,match", [
    (dict(log10_range=(1.0, -1.0)), "log10_range"),
    (dict(grid_size=1), "grid_size"),
    (dict(refine_size=0), "refine_size"),
    (dict(objective="mean"), "objective"),
])
def test_bad_search_arguments_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    an.optimal_weight(_good(), n=40.0, **kwargs)


def test_bad_diagonalized_and_prepare_inputs_raise():
  with pytest.raises(ValueError, match="eig_plus|var_plus"):
    an.from_eigenbasis(pi_plus=0.2, eig_plus=-np.ones(4), eig_minus=np.ones(4),
                       mean_plus=np.zeros(4), mean_minus=np.zeros(4))
  with pytest.raises(ValueError, match="mean_minus"):
    an.from_eigenbasis(pi_plus=0.2, eig_plus=np.ones(4), eig_minus=np.ones(4),
                       mean_plus=np.zeros(4), mean_minus=np.zeros(3))
  with pytest.raises(ValueError, match="cov_plus"):
    an.prepare(_good()._replace(cov_plus=-np.eye(8)))


# ---------------------------------------------------------------------------------------
# Plug-in estimates and the isotropic shortcut.


def test_shrunk_covariance_matches_sklearn_ledoit_wolf(x64):
  x = np.random.default_rng(0).normal(size=(30, 12)) @ np.diag(np.linspace(0.2, 3.0, 12))
  got = jax.jit(an.shrunk_covariance)(jnp.asarray(x))
  want_cov, want_s = ledoit_wolf(x)
  tol = rtol(x64, f32=1e-4, f64=1e-10)
  np.testing.assert_allclose(got.shrinkage, want_s, rtol=tol)
  np.testing.assert_allclose(got.cov, want_cov, rtol=tol, atol=tol)
  fixed = an.shrunk_covariance(jnp.asarray(x), shrinkage=1.0)
  np.testing.assert_allclose(fixed.cov, np.trace(np.cov(x.T, bias=True)) / 12 * np.eye(12),
                             rtol=tol, atol=tol)
  with pytest.raises(ValueError, match="shrinkage"):
    an.shrunk_covariance(jnp.asarray(x), shrinkage=1.5)


def test_from_samples_plugs_into_prepare_in_one_call():
  """Estimated (shrunk) mixture from a large sample predicts nearly the true errors."""
  mix = power_law_mixture(16, power_plus=0.5, power_minus=0.3, seed=9)
  mix = _as_jnp(mix)
  x, y = mixture.sample(jax.random.key(0), mix, n=20000)
  est = an.from_samples(x, y)
  assert abs(est.pi_plus - 0.2) < 1e-9
  predict = jax.jit(lambda m: an.class_errors(an.prepare(m), n=200.0, weight=4.0))
  got, want = predict(est), predict(mix)
  np.testing.assert_allclose([got.err_plus, got.err_minus], [want.err_plus, want.err_minus],
                             atol=0.01)


def test_isotropic_plug_in_matches_population_limit():
  """The plug-in has the general mixture's per-class errors as n -> infinity (weight 1)."""
  mix = power_law_mixture(40, seed=10)
  with jax.enable_x64(True):
    mix = _as_jnp(mix)
    plug = an.isotropic_plug_in(mix)
    assert 1.0 < plug.d_eff < 40.0
    n = 1e8
    general = jax.jit(lambda m: an.class_errors(m, n=n, weight=1.0))(mix)
    iso = theory.class_errors(plug.mixture, plug.d_eff / n, 1.0)
    np.testing.assert_allclose([iso.err_plus, iso.err_minus],
                               [general.err_plus, general.err_minus], rtol=1e-5)
  # Isotropic input: the plug-in is the isotropic mixture itself, d_eff = d.
  d = 30
  mu_p, mu_m = mixture.means(GaussianMixture(0.3, 2.0, 1.0, -1.0), d)
  plug = an.isotropic_plug_in(
      an.CovarianceMixture(0.3, mu_p, mu_m, 1.5 * jnp.eye(d), 1.5 * jnp.eye(d)))
  np.testing.assert_allclose(plug.d_eff, d, rtol=1e-5)
  np.testing.assert_allclose([plug.mixture.var_plus, plug.mixture.var_minus,
                              plug.mixture.mean_diff_sq], [1.5, 1.5, 5.0], rtol=1e-5)


def test_optimal_weight_matches_isotropic_search():
  d = 50
  iso = GaussianMixture.symmetric(pi_plus=0.1, mean_norm=2.0)
  mu_p, mu_m = mixture.means(iso, d)
  form = an.from_eigenbasis(pi_plus=0.1, eig_plus=jnp.ones(d), eig_minus=jnp.ones(d),
                            mean_plus=mu_p, mean_minus=mu_m)
  got = jax.jit(lambda: an.optimal_weight(form, n=d / 0.3, grid_size=128, refine_size=16,
                                          refine_rounds=3))()
  want = jax.jit(lambda: theory.optimal_weight(iso, 0.3, grid_size=128, refine_size=16,
                                               refine_rounds=3))()
  np.testing.assert_allclose(got.weight, want.weight, rtol=0.02)
  np.testing.assert_allclose(got.value, want.value, atol=1e-4)


def test_optimal_weight_broadcasts_over_n_and_ridge_and_flags_nan_points():
  """One search per (n, ridge) pair, each the scalar search's answer; NaN where undefined."""
  mix = power_law_mixture(24, seed=9, commuting=True)
  form = an.prepare(_as_jnp(mix))
  search = dict(grid_size=64, refine_size=16)
  n = jnp.array([40.0, 120.0, 20.0])                  # 20 <= d with ridge 0: undefined
  ridge = jnp.array([[0.0], [0.1]])
  got = jax.jit(lambda n, r: an.optimal_weight(form, n=n, ridge=r, **search))(n, ridge)
  chex.assert_shape(got.weight, (2, 3))
  one = jax.jit(lambda n, r: an.optimal_weight(form, n=n, ridge=r, **search))
  # A minimum: no weight on a fine grid does better (up to the search's resolution).
  grid_worst = jax.jit(lambda n, r: jnp.nanmin(jax.vmap(
      lambda w: an.class_errors(form, n=n, weight=w, ridge=r))(jnp.geomspace(1e-2, 1e4, 400))
      .worst))
  worst_at = jax.jit(lambda n, r, w: an.class_errors(form, n=n, weight=w, ridge=r).worst)
  for i, j in [(0, 0), (0, 1), (1, 0), (1, 2)]:
    want = one(n[j], ridge[i, 0])
    # The objective is flat near its minimum, so in float32 the batched and scalar searches
    # may stop at weights ~0.5% apart: compare the worst-class errors there instead (1e-5,
    # float32 resolution of errors ~0.1-0.3), and the reported values.
    np.testing.assert_allclose(worst_at(n[j], ridge[i, 0], got.weight[i, j]),
                               worst_at(n[j], ridge[i, 0], want.weight), rtol=0, atol=1e-5)
    np.testing.assert_allclose(got.value[i, j], want.value, rtol=0, atol=1e-5)
    assert float(want.value) <= float(grid_worst(n[j], ridge[i, 0])) + 1e-5
  assert np.isnan(got.weight[0, 2]) and np.isnan(got.value[0, 2])
  assert np.isfinite(got.weight[1, 2])                # ridge > 0: n <= d is fine
