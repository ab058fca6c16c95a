"""Solvers against NumPy float64 references, sweep against per-weight solves."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import rtol
from thumb_jax import GaussianMixture, lls, mixture

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


def numpy_reference(x, y, c, ridge):
  """float64 reference: augmented least squares; min-norm interpolator via centring.

  Ridge > 0: solve [X 1]' C [X 1] + ridge n P (P zeroes the intercept entry).
  Ridge = 0: weighted centring eliminates b; lstsq returns the minimum-norm w.
  """
  keep = c > 0
  n = keep.sum()
  if ridge > 0:
    xa = np.c_[x, np.ones(len(x))]
    pen = np.eye(xa.shape[1]) * ridge * n
    pen[-1, -1] = 0.0
    theta = np.linalg.solve(xa.T @ (c[:, None] * xa) + pen, xa.T @ (c * y))
    return theta[:-1], theta[-1]
  xbar, ybar = c @ x / c.sum(), c @ y / c.sum()
  root = np.sqrt(c)
  w = np.linalg.lstsq(root[:, None] * (x - xbar), root * (y - ybar), rcond=None)[0]
  return w, ybar - xbar @ w


@pytest.mark.parametrize("n,d,ridge", REGIMES)
@pytest.mark.parametrize("weight", [0.25, 1.0, 9.0])
def test_fit_matches_numpy(x64, n, d, ridge, weight):
  x, y, mask = _data(n, d)
  c = np.where(y > 0, weight, 1.0) * mask
  w_ref, b_ref = numpy_reference(x, y, c, ridge)
  got = jax.jit(lls.fit, static_argnames=())(jnp.asarray(x), jnp.asarray(y), weight,
                                           ridge=ridge, mask=jnp.asarray(mask))
  tol = rtol(x64, f32=5e-3)
  scale = np.abs(w_ref).max()
  np.testing.assert_allclose(got.w, w_ref, atol=tol * scale)
  np.testing.assert_allclose(got.b, b_ref, atol=tol * max(1.0, abs(b_ref)))


@pytest.mark.parametrize("n,d,ridge", REGIMES)
def test_sweep_matches_per_weight_solves(x64, n, d, ridge):
  x, y, mask = map(jnp.asarray, _data(n, d, seed=1))
  weights = jnp.array([0.1, 0.5, 1.0, 3.0, 9.0, 40.0])
  swept = jax.jit(lls.fit_sweep)(x, y, weights, ridge=ridge, mask=mask)
  chex.assert_shape(swept.w, (6, d))
  chex.assert_shape(swept.b, (6,))
  for k, weight in enumerate(weights):
    one = lls.fit(x, y, weight, ridge=ridge, mask=mask)
    scale = float(jnp.abs(one.w).max())
    np.testing.assert_allclose(swept.w[k], one.w, atol=rtol(x64, f32=5e-3, f64=1e-8) * scale)
    np.testing.assert_allclose(swept.b[k], one.b, atol=rtol(x64, f32=5e-3, f64=1e-8))


def test_ridgeless_overparameterized_is_weight_free_min_norm_interpolator(x64):
  x, y, _ = map(jnp.asarray, _data(30, 80))
  swept = lls.fit_sweep(x, y, jnp.array([0.2, 1.0, 20.0]))
  assert np.all(np.isfinite(swept.w))
  # Interpolates every row, and is the same for every weight.
  np.testing.assert_allclose(lls.scores(swept, x), jnp.broadcast_to(y, (3, 30)),
                             atol=rtol(x64, f32=2e-3, f64=1e-8))
  np.testing.assert_allclose(swept.w[0], swept.w[2], atol=rtol(x64, f32=1e-4, f64=1e-10))
  # Minimum norm: no interpolator has a smaller |w| (compare with a perturbed one in the null space).
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
  masks = mixture.nested_masks(y, sizes)
  for seed in range(3):
    keys = jax.random.split(jax.random.key(seed), 4)
    out = sweep(keys, masks, jnp.linspace(0.5, 8.0, 5) + seed)
    chex.assert_shape(out.w, (4, 3, 5, 16))
    assert np.all(np.isfinite(out.w))


def test_nested_masks_counts():
  y = jnp.where(jnp.arange(200) < 20, 1.0, -1.0)
  masks = mixture.nested_masks(y, [20, 50, 200])
  np.testing.assert_array_equal(masks.sum(1), [20, 50, 200])
  np.testing.assert_array_equal((masks * (y > 0)).sum(1), [2, 5, 20])
  assert np.all(masks[0] <= masks[1])          # nested
  with pytest.raises(ValueError, match="sizes"):
    mixture.nested_masks(y, [500])


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


def test_sweep_bad_weights_raise():
  x, y, _ = _data(20, 3)
  with pytest.raises(ValueError, match="weights"):
    lls.fit_sweep(jnp.asarray(x), jnp.asarray(y), jnp.array([1.0, 0.0]))
