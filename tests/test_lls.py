"""Solvers against NumPy float64 references, sweep against per-weight solves."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rtol
from reference import class_fit

from thumb_jax import GaussianMixture, lls, mixture, subsample

# (n rows, d, ridge): n > d and d > n, with and without ridge.
REGIMES = [(120, 20, 0.0), (120, 20, 0.3), (40, 90, 0.3), (40, 90, 0.0), (60, 60, 0.05)]


def _data(n, d, seed=0, pi=0.3):
  rng = np.random.default_rng(seed)
  y = np.where(np.arange(n) < max(2, int(pi * n)), 1.0, -1.0)
  x = rng.normal(size=(n, d)) + 0.5 * y[:, None]
  mask = (rng.random(n) < 0.8).astype(float)
  mask[:2] = 1.0
  mask[-2:] = 1.0
  return x, y, mask


@jax.jit
def _fit_weights(x, y, weights, ridge=0.0, mask=None):
  """`lls.fit` once per weight (vmapped): the sweep's reference."""
  return jax.vmap(lambda w: lls.fit(x, y, w, ridge=ridge, mask=mask))(weights)


_SWEEP = jax.jit(lls.fit_sweep)
_FACTOR = jax.jit(lls.factor, static_argnames=("minority_rows", "ridge"))
_SOLVE = jax.jit(lls.solve)


@pytest.mark.parametrize("n,d,ridge", REGIMES)
def test_fit_matches_numpy(x64, n, d, ridge):
  x, y, mask = _data(n, d)
  weights = [0.25, 1.0, 9.0]
  got = _fit_weights(jnp.asarray(x), jnp.asarray(y), jnp.asarray(weights), ridge=ridge,
                     mask=jnp.asarray(mask))
  tol = rtol(x64, f32=5e-3)
  for k, weight in enumerate(weights):
    w_ref, b_ref = class_fit(x, y, weight, ridge=ridge, mask=mask)
    np.testing.assert_allclose(got.w[k], w_ref, atol=tol * np.abs(w_ref).max())
    np.testing.assert_allclose(got.b[k], b_ref, atol=tol * max(1.0, abs(b_ref)))




@pytest.mark.parametrize("n,d,ridge", REGIMES)
def test_sweep_matches_per_weight_solves(x64, n, d, ridge):
  x, y, mask = map(jnp.asarray, _data(n, d, seed=1))
  weights = jnp.array([0.1, 0.5, 1.0, 3.0, 9.0, 40.0])
  swept = _SWEEP(x, y, weights, ridge=ridge, mask=mask)
  chex.assert_shape(swept.w, (6, d))
  chex.assert_shape(swept.b, (6,))
  one = _fit_weights(x, y, weights, ridge=ridge, mask=mask)
  scale = np.abs(np.asarray(one.w)).max(axis=1, keepdims=True)
  assert np.all(np.abs(np.asarray(swept.w) - np.asarray(one.w))
                <= rtol(x64, f32=5e-3, f64=1e-8) * scale)
  np.testing.assert_allclose(swept.b, one.b, atol=rtol(x64, f32=5e-3, f64=1e-8))


# (rows, d, P, ridge): rows > d and rows < d (row-space basis); the P x P form (P < r), the
# r x r form (P >= r) and the full form (None); ridge > 0 (Cholesky) and ridge 0 (eigh:
# least squares for rows > d + 2, the interpolator for rows < d).
FACTOR_CASES = [(60, 12, 30, 0.02), (60, 40, 16, 0.02), (20, 35, 10, 0.02), (20, 35, None, 0.02),
                (60, 40, 16, 0.0), (60, 40, None, 0.0), (20, 35, 20, 0.0)]


@pytest.mark.parametrize("rows,d,minority_rows,ridge", FACTOR_CASES)
def test_factor_solve_matches_numpy(x64, rows, d, minority_rows, ridge):
  """Masked rows, both factorization forms, ridge > 0 and ridge 0 (rows > d + 2: the
  least-squares layer; rows < d: the weight-free minimum-norm interpolator)."""
  x, y, _ = _data(rows, d, seed=rows + d, pi=0.25)
  mask = np.ones(rows)
  mask[[3, 4, rows - 1]] = 0.0
  weights = np.array([0.1, 1.0, 7.0, 300.0])
  factors = _FACTOR(jnp.asarray(x), jnp.asarray(y), ridge=ridge, mask=jnp.asarray(mask),
                    minority_rows=minority_rows)
  r = min(rows, d)
  p = r if minority_rows is None else min(minority_rows, r)
  chex.assert_shape(factors.spectrum, (p,))
  chex.assert_shape(factors.within, (r, r))
  got = _SOLVE(factors, jnp.asarray(weights))
  chex.assert_shape(got.w, (len(weights), d))
  tol = rtol(x64, f32=2e-3, f64=1e-8)
  for k, weight in enumerate(weights):
    w_ref, b_ref = class_fit(x, y, weight, ridge=ridge, mask=mask)
    np.testing.assert_allclose(got.w[k], w_ref, rtol=0, atol=tol * np.abs(w_ref).max())
    np.testing.assert_allclose(got.b[k], b_ref, rtol=0, atol=tol * 10 * max(abs(b_ref), 1))
  # Weights <= 0 give NaN layers, not finite garbage (ridge > 0; at ridge 0 with rows < d
  # every weight gives the interpolator).
  if ridge > 0:
    bad = _SOLVE(factors, jnp.asarray([0.0, -0.5]))
    assert np.all(np.isnan(bad.w)) and np.all(np.isnan(bad.b))


@pytest.mark.parametrize("minority_rows", [None, 8])
def test_rank_deficient_ridgeless_matches_fit(minority_rows):
  """n > d but always-zero columns (and a duplicated column): singularity is decided
  numerically, so ridge 0 gives the minimum-norm least-squares layer of `fit`, never NaN."""
  with jax.enable_x64(True):
    x, y, mask = _data(80, 12, seed=7, pi=0.1)       # 8 minority rows
    x[:, [2, 7]] = 0.0
    x[:, 5] = x[:, 4]
    x, y, mask = map(jnp.asarray, (x, y, mask))
    weights = jnp.array([0.3, 1.0, 6.0])
    factors = _FACTOR(x, y, mask=mask, minority_rows=minority_rows)
    assert not bool(factors.use_interpolator)
    got = _SOLVE(factors, weights)
    want = _fit_weights(x, y, weights, mask=mask)
    assert np.all(np.isfinite(got.w)) and np.all(np.isfinite(got.b))
    np.testing.assert_allclose(got.w, want.w, atol=1e-8)
    np.testing.assert_allclose(got.b, want.b, atol=1e-8)
    np.testing.assert_allclose(np.asarray(got.w)[:, [2, 7]], 0.0, atol=1e-12)
  # float32 too: finite and close to the float64 layers.
  x32, y32, m32 = (jnp.asarray(a, jnp.float32) for a in (x, y, mask))
  got32 = _SWEEP(x32, y32, jnp.asarray(weights, jnp.float32), mask=m32)
  assert np.all(np.isfinite(got32.w))
  np.testing.assert_allclose(got32.w, want.w, atol=2e-3 * np.abs(np.asarray(want.w)).max())


def test_separable_feature_ridgeless_gives_interpolator():
  """n > d + 2, but one feature is constant within each class: the classes are fit exactly,
  so every weight gives the minimum-norm interpolator (as `fit`)."""
  with jax.enable_x64(True):
    x, y, _ = _data(50, 6, seed=8)
    x[:, 0] = 0.7 * y
    x, y = jnp.asarray(x), jnp.asarray(y)
    swept = _SWEEP(x, y, jnp.array([0.5, 5.0]))
    np.testing.assert_allclose(lls.scores(swept, x), jnp.broadcast_to(y, (2, 50)), atol=1e-9)
    want = jax.jit(lls.fit)(x, y, 5.0)
    np.testing.assert_allclose(swept.w[0], want.w, atol=1e-9)
    np.testing.assert_allclose(swept.w[1], want.w, atol=1e-9)


def test_ridgeless_overparameterized_is_weight_free_min_norm_interpolator(x64):
  x, y, _ = map(jnp.asarray, _data(30, 80))
  swept = _SWEEP(x, y, jnp.array([0.2, 1.0, 20.0]))
  assert np.all(np.isfinite(swept.w))
  # Interpolates every row, and is the same for every weight.
  np.testing.assert_allclose(lls.scores(swept, x), jnp.broadcast_to(y, (3, 30)),
                             atol=rtol(x64, f32=2e-3, f64=1e-8))
  np.testing.assert_allclose(swept.w[0], swept.w[2], atol=rtol(x64, f32=1e-4, f64=1e-10))
  # Minimum norm: no interpolator has a smaller |w| (a perturbed one in the null space).
  xc = np.asarray(x - x.mean(0))
  null = np.linalg.svd(xc)[2][-1]
  assert np.linalg.norm(swept.w[0]) < np.linalg.norm(np.asarray(swept.w[0]) + 0.1 * null)


def test_mask_equals_slicing():
  x, y, mask = _data(80, 10, seed=3)
  keep = mask > 0
  masked = lls.fit(jnp.asarray(x), jnp.asarray(y), 4.0, ridge=0.2, mask=jnp.asarray(mask))
  sliced = lls.fit(jnp.asarray(x[keep]), jnp.asarray(y[keep]), 4.0, ridge=0.2)
  np.testing.assert_allclose(masked.w, sliced.w, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(masked.b, sliced.b, rtol=1e-4, atol=1e-6)


def test_upsampling_by_k_equals_weighting_by_k():
  """THEORY.md special case: repeating each minority row k times = weight k (square loss)."""
  x, y, _ = _data(50, 6, seed=4)
  k = 3
  plus = y > 0
  x_up = np.concatenate([x] + [x[plus]] * (k - 1))
  y_up = np.concatenate([y] + [y[plus]] * (k - 1))
  # The ridge term scales with n, so compare ridgeless fits.
  weighted = lls.fit(jnp.asarray(x), jnp.asarray(y), float(k))
  upsampled = lls.fit(jnp.asarray(x_up), jnp.asarray(y_up), 1.0)
  np.testing.assert_allclose(weighted.w, upsampled.w, rtol=1e-4, atol=1e-6)


def test_sweep_over_seeds_and_sizes_compiles_once():
  """One trace serves every data draw and every sample size (sizes are masks)."""
  mix = GaussianMixture.symmetric(pi_plus=0.2, mean_norm=1.5)
  sizes = [40, 60, 100]

  @jax.jit
  @chex.assert_max_traces(n=1)
  def sweep(keys, masks, weights):
    def per_seed(key):
      x, y = mixture.sample(key, mix, n=100, d=16)
      return jax.vmap(lambda m: lls.fit_sweep(x, y, weights, ridge=0.01, mask=m))(masks)
    return jax.vmap(per_seed)(keys)

  _, y = mixture.sample(jax.random.key(0), mix, n=100, d=16)
  masks = subsample.nested_masks(y, sizes)
  for seed in range(3):
    keys = jax.random.split(jax.random.key(seed), 4)
    out = sweep(keys, masks, jnp.linspace(0.5, 8.0, 5) + seed)
    chex.assert_shape(out.w, (4, 3, 5, 16))
    assert np.all(np.isfinite(out.w))


def test_nested_masks_counts():
  y = jnp.where(jnp.arange(200) < 20, 1.0, -1.0)
  masks = subsample.nested_masks(y, [20, 50, 200])
  np.testing.assert_array_equal(masks.sum(1), [20, 50, 200])
  np.testing.assert_array_equal((masks * (y > 0)).sum(1), [2, 5, 20])
  assert np.all(masks[0] <= masks[1])          # nested
  with pytest.raises(ValueError, match="sizes"):
    subsample.nested_masks(y, [500])


@pytest.mark.parametrize("kwargs,match", [
    (dict(y=np.array([1.0, 0.0, -1.0, 1.0])), "labels in"),
    (dict(y=np.ones(4)), "both classes"),
    (dict(weight=0.0), "weight"),
    (dict(weight=-2.0), "weight"),
    (dict(ridge=-0.1), "ridge"),
    (dict(y=np.array([1.0, -1.0, 1.0])), "y: expected shape"),
    (dict(mask=np.ones(3)), "mask: expected shape"),
])
def test_bad_inputs_raise(kwargs, match):
  args = dict(x=np.ones((4, 2)), y=np.array([1.0, -1.0, -1.0, 1.0]), weight=1.0, ridge=0.0,
              mask=None)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    lls.fit(args["x"], args["y"], args["weight"], ridge=args["ridge"], mask=args["mask"])


@pytest.mark.parametrize("weights", [np.array([1.0, 0.0]), np.float64(2.0), np.ones((1, 3))])
def test_sweep_bad_weights_raise(weights):
  """Weights <= 0, a scalar or a [1, K] array: ValueError naming `weights`."""
  x, y, _ = _data(20, 3)
  with pytest.raises(ValueError, match="weights"):
    lls.fit_sweep(jnp.asarray(x), jnp.asarray(y), weights)
  factors = lls.factor(jnp.asarray(x), jnp.asarray(y), ridge=0.1)
  with pytest.raises(ValueError, match="weights"):
    lls.solve(factors, weights)


NOT_FINITE = [np.inf, -np.inf, np.nan, "2"]
NOT_FINITE_IDS = ["inf", "-inf", "nan", "string"]
# Each entry point with one argument replaced by `bad`, and the name the error must give.
ENTRIES = {
    "fit-weight": (lambda x, y, bad: lls.fit(x, y, bad), "weight"),
    "fit-ridge": (lambda x, y, bad: lls.fit(x, y, 2.0, ridge=bad), "ridge"),
    "fit_sweep-weights": (lambda x, y, bad: lls.fit_sweep(x, y, np.array([1.0, bad])),
                          "weights"),
    "fit_sweep-ridge": (lambda x, y, bad: lls.fit_sweep(x, y, np.ones(2), ridge=bad), "ridge"),
    "factor-ridge": (lambda x, y, bad: lls.factor(x, y, ridge=bad), "ridge"),
    "solve-weights": (lambda x, y, bad: lls.solve(lls.factor(x, y, ridge=0.1),
                                                  np.array([1.0, bad])), "weights"),
}


@pytest.mark.parametrize("bad", NOT_FINITE, ids=NOT_FINITE_IDS)
@pytest.mark.parametrize("entry", list(ENTRIES))
def test_non_finite_or_non_numeric_arguments_raise_naming_them(entry, bad):
  call, name = ENTRIES[entry]
  x, y = np.ones((4, 2)) + np.eye(4, 2), np.array([1.0, -1.0, -1.0, 1.0])
  with pytest.raises(ValueError, match=f"^{name}: expected"):
    call(x, y, bad)


def test_half_precision_features_are_upcast_to_float32():
  """jaxlib has no float16 LAPACK solvers: float16 / bfloat16 x fit as float32."""
  x, y, _ = _data(40, 5)
  y = jnp.asarray(y)
  fit = jax.jit(lambda x: lls.fit(x, y, 3.0, ridge=0.1))
  for low in (jnp.asarray(x, jnp.bfloat16), jnp.asarray(x, jnp.float16), x.astype(np.float16)):
    got = fit(low)
    assert got.w.dtype == jnp.float32
    np.testing.assert_allclose(got.w, fit(jnp.asarray(low).astype(jnp.float32)).w, atol=1e-6)
  swept = _SWEEP(low, y, jnp.array([3.0]), ridge=0.1)
  np.testing.assert_allclose(swept.w[0], got.w, rtol=2e-3, atol=1e-5)
  with pytest.raises(ValueError, match="^x: expected real numbers"):
    lls.fit(np.full((4, 2), "a"), np.array([1.0, -1.0, -1.0, 1.0]))


def test_too_few_minority_rows_raises():
  x, y, mask = _data(30, 4)
  kept = int(((y > 0) * mask).sum())
  lls.factor(jnp.asarray(x), jnp.asarray(y), mask=jnp.asarray(mask), minority_rows=kept)
  with pytest.raises(ValueError, match="minority_rows"):
    lls.factor(jnp.asarray(x), jnp.asarray(y), mask=jnp.asarray(mask), minority_rows=kept - 1)
  with pytest.raises(ValueError, match="minority_rows"):
    lls.factor(jnp.asarray(x), jnp.asarray(y), minority_rows=2.5)
