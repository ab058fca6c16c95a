"""The closed forms of THEORY.md against Monte Carlo, special cases and bad inputs."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from thumb_jax import GaussianMixture, lls, metrics, mixture, theory
from thumb_jax.metrics import ClassErrors

SYM2 = GaussianMixture.symmetric(pi_plus=0.1, mean_norm=2.0)
SYM1 = GaussianMixture.symmetric(pi_plus=0.1, mean_norm=1.0)

# Shared compiled searches: tests call them with the same shapes ([3] deltas) to reuse them.
_OPTIMAL = jax.jit(theory.optimal_weight, static_argnames="objective")
_EQUAL = jax.jit(theory.equal_error_weight)


@pytest.mark.parametrize("mix,delta,weight,err_plus,err_minus", [
    (SYM2, 0.1, 9.0, 0.051, 0.034),
    (SYM2, 0.5, 9.0, 0.197, 0.066),
    (SYM1, 0.5, 1.0, 0.712, 0.070),
    (SYM1, 0.5, 9.0, 0.520, 0.175),
])
def test_reference_values(x64, mix, delta, weight, err_plus, err_minus):
  """THEORY.md's table ("about" = to the third decimal)."""
  e = theory.class_errors(mix, delta, weight)
  np.testing.assert_allclose([e.err_plus, e.err_minus], [err_plus, err_minus], atol=1.5e-3)


def test_resolvent_solves_fixed_point(x64):
  delta = jnp.array([0.05, 0.3, 0.9, 1.5, 4.0])
  for ridge in [1e-3, 0.1, 1.0]:
    m = theory.resolvent(delta, 9.0 * 1.5, 0.7, 0.1, ridge)
    rhs = ridge + 0.1 * 13.5 / (1 + 13.5 * delta * m) + 0.9 * 0.7 / (1 + 0.7 * delta * m)
    np.testing.assert_allclose(1.0 / m, rhs, rtol=1e-5 if not x64 else 1e-12)
  # Closed form at ridge 0 is the ridge -> 0 limit of the Newton branch.
  d = jnp.array([0.1, 0.5, 0.8])
  np.testing.assert_allclose(theory.resolvent(d, 9.0, 1.0, 0.1, 0.0),
                             theory.resolvent(d, 9.0, 1.0, 0.1, 1e-7), rtol=1e-4)


def test_resolvent_matches_trace_of_weighted_scatter():
  """m = lim (1/d) tr (A/n + ridge I)^-1 with A = c_+ S_+ + c_- S_- (d = 400, one draw)."""
  d, n, weight, ridge = 400, 800, 4.0, 0.05
  mix = GaussianMixture(0.2, 1.0, 1.0, 0.0, 2.0, 0.5)
  x, y = mixture.sample(jax.random.key(0), mix, n=n, d=d)
  mu_p, mu_m = mixture.means(mix, d)
  c = jnp.where(y > 0, weight, 1.0)
  xc = x - jnp.where(y[:, None] > 0, mu_p, mu_m)
  a = xc.T @ (c[:, None] * xc) / n
  empirical = jnp.trace(jnp.linalg.inv(a + ridge * jnp.eye(d))) / d
  m = theory.resolvent(d / n, weight * 2.0, 0.5, 0.2, ridge)
  np.testing.assert_allclose(empirical, m, rtol=0.02)   # one draw at d = 400: ~1% fluctuations


def _simulate(mix, *, d, n, weights, ridge, seeds):
  """Exact per-class errors of fitted layers, [seeds, weights] (vmapped over seeds)."""
  mu_p, mu_m = mixture.means(mix, d)

  def one(key):
    x, y = mixture.sample(key, mix, n=n, d=d)
    layer = lls.fit_sweep(x, y, weights, ridge=ridge)
    return metrics.gaussian_class_errors(layer, mu_p, mu_m, var_plus=mix.var_plus,
                                         var_minus=mix.var_minus)

  keys = jax.random.split(jax.random.key(42), seeds)
  return jax.jit(jax.vmap(one))(keys)


# Monte Carlo tolerance: |theory - mean over seeds| <= 4 standard errors + 0.01 for the
# O(1/sqrt(d)) finite-size bias at d = 300 (THEORY.md reports ~2 SE at d = 400).
MC_CASES = [
    ("ridgeless", SYM1, 0.5, 0.0),
    ("ridge, delta > 1", SYM1, 1.5, 0.1),
    ("unequal means", GaussianMixture(0.15, 2.0, 0.5, 0.3), 0.4, 0.02),
    ("unequal variances", GaussianMixture(0.2, 1.5, 1.5, -1.5, 2.0, 0.5), 0.6, 0.0),
]


@pytest.mark.parametrize("name,mix,delta,ridge", MC_CASES, ids=[c[0] for c in MC_CASES])
def test_class_errors_match_monte_carlo(name, mix, delta, ridge):
  d, seeds = 300, 16
  n = int(round(d / delta))
  weights = jnp.array([1.0, (1 - mix.pi_plus) / mix.pi_plus, 30.0])
  sim = _simulate(mix, d=d, n=n, weights=weights, ridge=ridge, seeds=seeds)
  # The simulation's realized delta and prior (fixed counts) are used for the theory.
  n_plus, _ = mixture.class_counts(n, mix.pi_plus)
  th = theory.class_errors(mix._replace(pi_plus=n_plus / n), d / n, weights, ridge)
  for got, want in [(sim.err_plus, th.err_plus), (sim.err_minus, th.err_minus)]:
    mean = np.mean(got, axis=0)
    se = np.std(got, axis=0, ddof=1) / np.sqrt(seeds)
    assert np.all(np.abs(mean - want) <= 4 * se + 0.01), (name, mean, want, se)


def test_interpolator_limit_matches_simulation_and_ignores_weight():
  d, delta = 300, 2.0
  n = int(d / delta)
  sim = _simulate(SYM1, d=d, n=n, weights=jnp.array([1.0, 9.0, 50.0]), ridge=0.0, seeds=12)
  # The min-norm interpolator does not see the weight: identical errors across weights.
  np.testing.assert_allclose(sim.err_plus[:, 0], sim.err_plus[:, 2], atol=1e-4)
  n_plus, _ = mixture.class_counts(n, 0.1)
  th = theory.interpolator_class_errors(SYM1._replace(pi_plus=n_plus / n), d / n)
  se = np.std(sim.err_plus[:, 0], ddof=1) / np.sqrt(12)
  assert abs(np.mean(sim.err_plus[:, 0]) - th.err_plus) <= 4 * se + 0.01
  # The ridge -> 0+ limit of the general formula is the interpolator, for every weight.
  tiny = theory.class_errors(SYM1, 2.0, jnp.array([1.0, 9.0, 50.0]), ridge=1e-7)
  np.testing.assert_allclose(tiny.err_plus, theory.interpolator_class_errors(SYM1, 2.0).err_plus,
                             atol=2e-3)


def test_population_limit_prior_ratio_equalizes(x64):
  """delta -> 0, equal variances, mu_- = -mu_+: the ratio of priors gives equal errors."""
  for pi in [0.05, 0.1, 0.3]:
    mix = GaussianMixture.symmetric(pi_plus=pi, mean_norm=1.3)
    e = theory.class_errors(mix, 1e-6, (1 - pi) / pi)
    np.testing.assert_allclose(e.err_plus, e.err_minus, atol=1e-5)


def test_finite_delta_minority_error_exceeds_majority_at_prior_ratio():
  e = theory.class_errors(SYM2, jnp.array([0.05, 0.2, 0.5, 0.9]), 9.0)
  assert np.all(e.err_plus > e.err_minus)
  opt = _EQUAL(SYM2, jnp.array([0.02, 0.05, 0.1]))
  assert np.all(opt.weight > 9.0)                  # the equalizing weight grows with delta
  assert np.all(np.diff(opt.weight) > 0)


@pytest.mark.parametrize("pi", [0.05, 0.1, 0.3])
def test_equal_error_weight_closed_form_symmetric_ridgeless(x64, pi):
  """Found with this code, not in THEORY.md: for mu_- = -mu_+, equal variances and ridge 0
  the equal-error weight is (pi_- - delta/2) / (pi_+ - delta/2), whatever |mu|, and none
  exists once delta >= 2 pi_+ (checked to 1e-4 relative)."""
  deltas = jnp.array([0.2, 1.0, 1.8, 2.2]) * pi
  closed = (1 - pi - deltas / 2) / (pi - deltas / 2)
  for norm in [0.5, 2.0]:
    mix = GaussianMixture.symmetric(pi_plus=pi, mean_norm=norm)
    got = jax.jit(theory.equal_error_weight)(mix, deltas)
    np.testing.assert_allclose(got.weight[:3], closed[:3], rtol=1e-4)
    assert np.isnan(got.weight[3])


def test_minority_error_is_u_shaped_and_equal_error_weight_can_vanish():
  w = jnp.logspace(-1, 5, 400)
  mix = GaussianMixture.symmetric(pi_plus=0.05, mean_norm=2.0, var_plus=0.5, var_minus=0.5)
  e = theory.class_errors(mix, 0.1, w)
  i = int(jnp.argmin(e.err_plus))
  assert 0 < i < len(w) - 1                        # interior minimum: U shape
  assert e.err_plus[-1] > e.err_plus[i] + 0.01     # too much weight hurts the minority itself
  none = jax.jit(theory.equal_error_weight)(SYM2, 0.5)
  assert np.isnan(none.weight)                     # err_+ > err_- for every weight
  assert np.all(theory.class_errors(SYM2, 0.5, w).err_plus
                > theory.class_errors(SYM2, 0.5, w).err_minus)


def test_downsampling_is_balanced_problem_at_scaled_delta():
  mix = GaussianMixture(0.1, 1.0, 2.0, -0.5, 1.2, 0.8)
  got = theory.downsampled_class_errors(mix, 0.05, ridge=0.01)
  want = theory.class_errors(mix._replace(pi_plus=0.5), 0.25, 1.0, ridge=0.01)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # delta' = 0.2 / 0.2 -> past 1 at ridge 0: interpolator limit, finite.
  inter = theory.downsampled_class_errors(mix, 0.3)
  want = theory.interpolator_class_errors(mix._replace(pi_plus=0.5), 1.5)
  np.testing.assert_allclose(inter, want,
                             rtol=1e-6)


@pytest.mark.parametrize("objective", ["worst", "balanced"])
def test_optimal_weight_beats_dense_grid(x64, objective):
  deltas = jnp.array([0.02, 0.2, 0.6])
  opt = _OPTIMAL(SYM1, deltas, objective=objective)
  grid = jnp.logspace(-2, 4, 20001)
  e = theory.class_errors(SYM1, deltas[:, None], grid)
  value = e.worst if objective == "worst" else e.balanced
  best = value.min(axis=1)
  # float32 flattens the objective near its minimum: allow 5e-5 (1e-7 with x64).
  assert np.all(opt.value <= best + (1e-7 if x64 else 5e-5))
  e_opt = theory.class_errors(SYM1, deltas, opt.weight)
  np.testing.assert_allclose(e_opt.err_plus, opt.err_plus, rtol=1e-5)


def test_optimal_weight_broadcasts_to_a_named_result_over_delta_and_ridge():
  """A [D, R] grid of (delta, ridge) gives OptimalWeight fields [D, R], each the 1-D search."""
  deltas, ridges = jnp.array([0.1, 0.5]), jnp.array([0.0, 0.1, 10.0])
  grid_d, grid_r = jnp.meshgrid(deltas, ridges, indexing="ij")
  for search in (theory.optimal_weight, theory.equal_error_weight):
    search = jax.jit(search)
    grid = search(SYM1, grid_d, grid_r)
    assert isinstance(grid, theory.OptimalWeight)
    chex.assert_shape(grid.weight, (2, 3))
    flat = search(SYM1, grid_d.ravel(), grid_r.ravel())
    np.testing.assert_allclose(grid.weight.ravel(), flat.weight, rtol=1e-5)


def test_weight_searches_survive_underflowing_errors():
  """At |mu| = 20 float32 errors are exactly 0 for every weight; the log-space search still
  finds the float64 optimum (a flat zero objective would return the grid's lower end)."""
  mix = GaussianMixture.symmetric(pi_plus=0.1, mean_norm=20.0)
  deltas = jnp.array([0.1, 0.3, 0.5])
  with jax.enable_x64(True):
    want = _OPTIMAL(mix, deltas, objective="worst")
    want_equal = _EQUAL(mix, deltas)
  got = _OPTIMAL(mix, deltas, objective="worst")
  assert np.all(np.asarray(got.err_plus) == 0) and np.all(np.asarray(got.err_minus) == 0)
  np.testing.assert_allclose(got.weight, want.weight, rtol=0.01)
  got_equal = _EQUAL(mix, deltas)
  np.testing.assert_allclose(got_equal.weight, want_equal.weight, rtol=0.01)
  # The log objective ranks like the objective where nothing underflows.
  errs = theory.class_errors(SYM1, 0.3, jnp.logspace(-1, 3, 50))
  logs = ClassErrors(jnp.log(errs.err_plus), jnp.log(errs.err_minus))
  for name, value in (("worst", errs.worst), ("balanced", errs.balanced)):
    assert int(jnp.argmin(metrics.log_objective(logs, name))) == int(jnp.argmin(value))
  with pytest.raises(ValueError, match="objective"):
    metrics.log_objective(logs, "mean")


def test_equal_error_weight_equalizes():
  opt = _EQUAL(SYM1, jnp.array([0.01, 0.1, 0.3]))
  ok = np.isfinite(opt.weight)
  assert ok[0]
  np.testing.assert_allclose(opt.err_plus[ok], opt.err_minus[ok], atol=1e-5)


def test_theory_sweep_compiles_once():
  @jax.jit
  @chex.assert_max_traces(n=1)
  def grid(delta, weight):
    return theory.class_errors(SYM1, delta[:, None], weight[None, :], 0.1)

  for k in range(3):
    out = grid(jnp.linspace(0.1, 0.9, 7) + 0.01 * k, jnp.logspace(-1, 2, 11))
    chex.assert_shape(out.err_plus, (7, 11))


@pytest.mark.parametrize("call,match", [
    (lambda: theory.class_errors(SYM1._replace(pi_plus=1.2), 0.5, 1.0), "pi_plus"),
    (lambda: theory.class_errors(SYM1._replace(pi_plus=0.0), 0.5, 1.0), "pi_plus"),
    (lambda: theory.class_errors(SYM1, 0.5, 0.0), "weight"),
    (lambda: theory.class_errors(SYM1, 0.5, 1.0, ridge=-1.0), "ridge"),
    (lambda: theory.class_errors(SYM1, 1.2, 1.0), "delta"),
    (lambda: theory.class_errors(SYM1, -0.1, 1.0, ridge=0.1), "delta"),
    (lambda: theory.optimal_weight(SYM1, 1.0), "delta"),
    (lambda: theory.optimal_weight(SYM1, 0.5, objective="median"), "objective"),
    (lambda: theory.interpolator_class_errors(SYM1, 0.5), "delta"),
    (lambda: GaussianMixture(0.1, 1.0, 1.0, 2.0).validate(), "mean_inner"),
    (lambda: theory.class_errors(SYM1, 0.5, np.inf), "weight"),
    (lambda: theory.class_errors(SYM1, 0.5, 1.0, ridge=np.nan), "ridge"),
    (lambda: theory.class_errors(SYM1, 0.5, 1.0, ridge=np.inf), "ridge"),
    (lambda: theory.class_errors(SYM1, 0.5, np.nan), "weight"),
    (lambda: theory.class_errors(SYM1, 0.5, "2"), "weight: expected real numbers"),
    (lambda: theory.class_errors(SYM1, 0.5, 1.0, ridge="0.1"), "ridge: expected real numbers"),
    (lambda: theory.optimal_weight(SYM1, 0.5, ridge=np.inf), "ridge"),
    (lambda: theory.optimal_weight(SYM1, 0.5, log10_range=(2.0, 1.0)), "log10_range"),
    (lambda: theory.optimal_weight(SYM1, 0.5, grid_size=1), "grid_size"),
    (lambda: theory.optimal_weight(SYM1, 0.5, refine_size=1), "refine_size"),
    (lambda: theory.equal_error_weight(SYM1, 0.5, log10_range=(0.0, 0.0)), "log10_range"),
    (lambda: mixture.sample(jax.random.key(0), SYM1, n=10), "d"),
])
def test_bad_inputs_raise(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_bad_inputs_under_jit_give_nan():
  f = jax.jit(lambda mix, delta, w, r: theory.class_errors(mix, delta, w, r))
  assert np.all(np.isnan(f(SYM1, 1.2, 1.0, 0.0)))          # ridgeless with delta >= 1
  assert np.all(np.isnan(f(SYM1, 0.5, -1.0, 0.0)))         # weight <= 0
  assert np.all(np.isnan(f(SYM1, 0.5, 1.0, -0.1)))         # ridge < 0
  assert np.all(np.isnan(f(SYM1._replace(pi_plus=1.5), 0.5, 1.0, 0.0)))
  assert np.all(np.isfinite(f(SYM1, 0.5, 1.0, 0.0)))


# Extreme finite arguments: float32 must agree with float64 or say NaN, never a confident
# wrong number (float32 once gave (0.000, 0.743) for the README mix at weight 9, ridge 1e8,
# where float64 gives (0.107, 0.014), and (0, 1) at weight 1e10).
EXTREME_DELTAS = np.array([0.05, 0.5, 0.999, 2.0])
EXTREME_WEIGHTS = np.array([1e-10, 1e-3, 1.0, 4.0, 9.0, 9.0001, 1e3, 1e6, 1e10, 1e20])
EXTREME_RIDGES = np.array([0.0, 1e-12, 1e-2, 1.0, 1e4, 1e8, 1e12, 1e20, 1e30, 1e37])
_ERRORS = jax.jit(theory.class_errors)


@pytest.mark.parametrize("mix", [SYM2, GaussianMixture(0.2, 1.0, 1.0, -1.0, 1.5, 1.0)],
                         ids=["readme", "unequal-variances"])
def test_extreme_weights_and_ridges_float32_matches_float64_or_is_nan(mix):
  grid = (EXTREME_DELTAS[:, None, None], EXTREME_WEIGHTS[None, :, None],
          EXTREME_RIDGES[None, None, :])
  with jax.enable_x64(True):
    ref = np.asarray(_ERRORS(mix, *grid))
  with jax.enable_x64(False):
    got = np.asarray(_ERRORS(mix, *grid), np.float64)
  finite = np.isfinite(got)                              # [2, deltas, weights, ridges]
  # Rounding may move a trusted error by metrics.ROUNDING_TOL = 1e-3 at most (seen: 2e-5).
  np.testing.assert_allclose(got[finite], ref[finite], atol=metrics.ROUNDING_TOL, rtol=0)
  assert np.all(np.isnan(got[np.isnan(ref)]))          # invalid (ridge 0, delta 2) in both
  assert finite.mean() > 0.85 and np.isfinite(ref).mean() > 0.9
  # The stable form (p, 1 - p and the resolvent root without cancellation) keeps these.
  weight, ridge = list(EXTREME_WEIGHTS).index, list(EXTREME_RIDGES).index
  assert np.all(finite[:, :3, weight(1e10), ridge(1e-2)])
  assert np.all(finite[:, :3, :-1, ridge(0.0)])
  if mix is SYM2:
    np.testing.assert_allclose(ref[:, 1, weight(9.0), ridge(1e8)], [0.1067, 0.0138], atol=5e-4)
    assert np.all(np.isnan(got[:, 1, weight(9.0), ridge(1e8)]))


def test_counts_round_half_up():
  """One rounding rule for the repo: halves go up (Python's round would give 2 and 4)."""
  assert [mixture.round_half_up(v) for v in (2.5, 4.5, 2.4999, -0.5)] == [3, 5, 2, 0]
  assert mixture.round_half_up(0.35 * 10) == 4             # 3.4999999999999996 is a half
  np.testing.assert_array_equal(mixture.round_half_up(np.array([0.5, 1.5])), [1, 2])
  assert mixture.class_counts(10, 0.25) == (3, 7)
  assert mixture.class_counts(18, 0.25) == (5, 13)        # 4.5 -> 5
  assert mixture.class_counts(10, 0.01) == (1, 9)         # at least one row per class


def test_power_law_mixture_and_sample():
  """The builder's Mahalanobis size, commuting and diagonal variants; `sample` takes both specs."""
  key = jax.random.key(3)
  mix = mixture.power_law_mixture(key, d=12, pi_plus=0.3, power_plus=1.0, power_minus=0.5,
                                  mahalanobis_sq=4.0, mean_alignment=0.5)
  pooled = 0.3 * mix.cov_plus + 0.7 * mix.cov_minus
  dmu = mix.mean_plus - mix.mean_minus
  np.testing.assert_allclose(dmu @ np.linalg.solve(pooled, dmu), 4.0, rtol=1e-10)
  np.testing.assert_allclose(np.linalg.eigvalsh(mix.cov_plus)[::-1],
                             mixture.power_law_spectrum(12, 1.0), rtol=1e-8)
  assert np.abs(mix.cov_plus @ mix.cov_minus - mix.cov_minus @ mix.cov_plus).max() > 1e-3
  shared = mixture.power_law_mixture(key, d=12, pi_plus=0.3, power_plus=1.0, power_minus=0.5,
                                     mahalanobis_sq=4.0, commuting=True)
  np.testing.assert_allclose(shared.cov_plus @ shared.cov_minus,
                             shared.cov_minus @ shared.cov_plus, atol=1e-10)
  diag = mixture.power_law_mixture(key, d=12, pi_plus=0.3, power_plus=1.0, mahalanobis_sq=4.0,
                                   rotate=False)
  np.testing.assert_array_equal(diag.cov_plus, np.diag(mixture.power_law_spectrum(12, 1.0)))
  np.testing.assert_array_equal(diag.cov_minus, diag.cov_plus)
  x, y = mixture.sample(key, mix, n=20)
  chex.assert_shape(x, (20, 12))
  assert int(jnp.sum(y > 0)) == mixture.class_counts(20, 0.3)[0]
  with pytest.raises(ValueError, match="d"):
    mixture.sample(key, mix, n=20, d=5)
