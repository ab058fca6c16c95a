"""The retraining sweep (thumb_jax.retrain) against NumPy solves, and its image entry point.

One small pool (d = 10, N = 72, minority share 1/4) and test split serve every test. The
main sweep uses exactly the sizes, weights and repeats of `experiments.image_llr --quick`
on that pool (n = 6 < d up to n = 72 > d, the default ridge 1e-3), so the entry-point
smoke test reuses its compilation; a ridge-0 sweep (n > d) runs with 64-bit floats.
"""

import csv
import json
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import rtol
from experiments import image_llr
from thumb_jax import lls, recommend, retrain, theory
from thumb_jax.images import embeddings

D, N_POOL, N_TEST = 10, 72, 160
QUICK = image_llr.quick(image_llr.config())
SEED = QUICK.seed


def _embeddings(n, d, *, seed, pi=0.25, shift=1.2):
  """Anisotropic Gaussian classes with an offset mean, rows shuffled; labels in {+1, -1}."""
  rng = np.random.default_rng(seed)
  y = np.where(np.arange(n) < round(pi * n), 1.0, -1.0)
  x = 3.0 + rng.normal(size=(n, d)) * np.linspace(0.5, 2.0, d) + shift * y[:, None] * np.eye(d)[0]
  order = rng.permutation(n)
  return x[order], y[order]


POOL = _embeddings(N_POOL, D, seed=0)
TEST = _embeddings(N_TEST, D, seed=1)
SIZES = image_llr.choose_sizes(POOL[1], num_sizes=QUICK.num_sizes)        # 6, 21, 72
WEIGHTS = retrain.log_weights(QUICK.num_weights)
REPEATS = QUICK.num_repeats


@pytest.fixture(scope="module")
def result():
  """float32 sweep with the default ridge (1e-3: the smallest size has n < d + 2)."""
  return retrain.run(*POOL, *TEST, sizes=SIZES, weights=WEIGHTS, num_repeats=REPEATS,
                     seed=SEED)


@pytest.fixture(scope="module")
def ridgeless_result():
  """float64 sweep with ridge 0; sizes 40 and 64 share one row-buffer group (one compile)."""
  with jax.enable_x64(True):
    return retrain.run(*POOL, *TEST, sizes=[40, 64], weights=WEIGHTS[::2], num_repeats=2,
                       seed=1, ridge=0.0)


def _masks(y, count_plus, count_minus, *, seed, repeats, x64=False):
  """Masks as `run` draws them (the uniform draws depend on the precision)."""
  with jax.enable_x64(x64):
    masks = jax.jit(retrain.subsample_masks, static_argnames=("num_repeats",))(
        jax.random.key(seed), jnp.asarray(y), jnp.asarray(count_plus),
        jnp.asarray(count_minus), num_repeats=repeats)
    return jax.tree.map(np.asarray, masks)


def numpy_fit(x, y, mask, weight, ridge):
  """float64 lstsq on sqrt(c)-scaled [X, 1] rows, the ridge as augmented rows on w only."""
  keep = mask > 0
  x, y = x[keep], y[keep]
  c = np.where(y > 0, weight, 1.0)
  design = np.sqrt(c)[:, None] * np.c_[x, np.ones(len(x))]
  target = np.sqrt(c) * y
  d = x.shape[1]
  if ridge > 0:
    penalty = np.sqrt(ridge * len(x)) * np.c_[np.eye(d), np.zeros(d)]
    design, target = np.r_[design, penalty], np.r_[target, np.zeros(d)]
  theta = np.linalg.lstsq(design, target, rcond=None)[0]
  return theta[:-1], theta[-1]


def _raw_ridge(res):
  """`run` sets the ridge on pool-scaled features: ridge * scale^2 on the raw ones."""
  return float(res.ridge) * float(res.feature_scale) ** 2


def _assert_layer_close(w, b, reference, tol):
  w_ref, b_ref = reference
  scale = np.abs(w_ref).max()
  np.testing.assert_allclose(w, w_ref, rtol=0, atol=tol * scale)
  # |b| ~ |x| |w| here (the features are offset by 3).
  np.testing.assert_allclose(b, b_ref, rtol=0, atol=tol * max(scale * np.abs(POOL[0]).max(), 1))


def _test_errors(w, b):
  scores = TEST[0] @ w + b
  plus = TEST[1] > 0
  return np.mean(scores[plus] <= 0), np.mean(scores[~plus] > 0)


# ----------------------------------------------------------------------------- (a) grid fits


def test_grid_layers_match_numpy_with_ridge(result):
  """Ridge > 0: n = 6 < d and n = 21, 72 > d, a few subsamples and weights each."""
  chex.assert_shape(result.layers.w, (len(SIZES), REPEATS, len(WEIGHTS), D))
  assert SIZES[0] < D < SIZES[1]
  assert float(result.ridge) == pytest.approx(retrain.DEFAULT_RIDGE)
  masks = _masks(POOL[1], result.count_plus, result.count_minus, seed=SEED, repeats=REPEATS)
  for s in range(len(SIZES)):
    for r in (0, REPEATS - 1):
      for k in (0, 3, len(WEIGHTS) - 1):
        reference = numpy_fit(*POOL, masks.mask[s, r], WEIGHTS[k], _raw_ridge(result))
        _assert_layer_close(result.layers.w[s, r, k], result.layers.b[s, r, k], reference,
                            5e-3)


def test_grid_layers_match_numpy_ridgeless(ridgeless_result):
  """Ridge 0, n > d (the lls path), float64."""
  res = ridgeless_result
  assert float(res.ridge) == 0.0 and res.layers.w.dtype == np.float64
  masks = _masks(POOL[1], res.count_plus, res.count_minus, seed=1, repeats=2, x64=True)
  for s in range(2):
    for k, weight in enumerate(WEIGHTS[::2]):
      reference = numpy_fit(*POOL, masks.mask[s, 1], weight, 0.0)
      _assert_layer_close(res.layers.w[s, 1, k], res.layers.b[s, 1, k], reference, 1e-8)


def test_grid_errors_are_the_test_errors_of_the_layers(result):
  for s, r, k in ((0, 0, 0), (1, 2, 3), (2, 1, 7)):
    err_plus, err_minus = _test_errors(result.layers.w[s, r, k], result.layers.b[s, r, k])
    assert result.errors.err_plus[s, r, k] == pytest.approx(err_plus)
    assert result.errors.err_minus[s, r, k] == pytest.approx(err_minus)


@pytest.mark.parametrize("rows,d,plus_rows", [(60, 12, 30), (60, 40, 16), (20, 35, 10),
                                              (20, 35, 20)])
def test_factor_low_rank_matches_numpy(x64, rows, d, plus_rows):
  """rows > d and rows < d (row-space basis), masked, ridge > 0; the P x P form
  (plus_rows < r) and the r x r form (plus_rows >= r)."""
  x, y = _embeddings(rows, d, seed=rows)
  mask = np.ones(rows)
  mask[[3, 4, rows - 1]] = 0.0
  weights = np.array([0.1, 1.0, 7.0, 300.0])
  factors = jax.jit(lls.factor_low_rank, static_argnames=("ridge", "plus_rows"))(
      jnp.asarray(x), jnp.asarray(y > 0), jnp.asarray(mask), ridge=0.02, plus_rows=plus_rows)
  assert factors.spectrum.shape == (min(plus_rows, min(rows, d)),)
  got = jax.jit(lls.solve_low_rank)(factors, jnp.asarray(weights))
  chex.assert_shape(got.w, (len(weights), d))
  tol = rtol(x64, f32=2e-3, f64=1e-9)
  for k, weight in enumerate(weights):
    w_ref, b_ref = numpy_fit(x, y, mask, weight, 0.02)
    np.testing.assert_allclose(got.w[k], w_ref, rtol=0, atol=tol * np.abs(w_ref).max())
    np.testing.assert_allclose(got.b[k], b_ref, rtol=0, atol=tol * 10 * max(abs(b_ref), 1))
  # Weights <= 0 give NaN layers (as lls.solve_factored), not finite garbage.
  bad = jax.jit(lls.solve_low_rank)(factors, jnp.asarray([0.0, -0.5]))
  assert np.all(np.isnan(bad.w)) and np.all(np.isnan(bad.b))


def test_factor_low_rank_ridgeless_interpolator():
  """Ridge 0 with fewer rows than d + 2: every weight gives lls's minimum-norm interpolator."""
  with jax.enable_x64(True):
    x, y = _embeddings(20, 35, seed=2)
    factors = jax.jit(lls.factor_low_rank, static_argnames=("ridge", "plus_rows"))(
        jnp.asarray(x), jnp.asarray(y > 0), jnp.ones(20), ridge=0.0, plus_rows=8)
    assert bool(factors.use_interpolator)
    got = jax.jit(lls.solve_low_rank)(factors, jnp.asarray([0.5, 4.0]))
    want = jax.jit(lls.fit)(jnp.asarray(x), jnp.asarray(y), 1.0)
    for k in range(2):
      np.testing.assert_allclose(got.w[k], want.w, atol=1e-10)
      np.testing.assert_allclose(got.b[k], want.b, atol=1e-10)
    np.testing.assert_allclose(x @ np.asarray(got.w[0]) + float(got.b[0]), y, atol=1e-8)


def test_plug_in_stats_from_the_factorization_scatter():
  """The sweep feeds recommend.plug_in_stats the factorization's (row-space) scatter."""
  factor = jax.jit(lls.factor_low_rank, static_argnames=("ridge", "plus_rows"))
  stats = jax.jit(recommend.plug_in_stats)
  with jax.enable_x64(True):
    x, y = _embeddings(20, 35, seed=20)          # fewer rows than d: the row-space scatter
    mask = jnp.asarray(np.arange(20) % 7 != 3, jnp.float64)
    x, plus = jnp.asarray(x), jnp.asarray(y > 0)
    within = factor(x, plus, mask, ridge=0.01, plus_rows=10).within
    chex.assert_shape(within, (20, 20))
    chex.assert_trees_all_close(stats(x, plus, mask, scatter=within), stats(x, plus, mask),
                                rtol=1e-9)


# ----------------------------------------------------------------------------- (b) masks


def test_subsample_masks():
  count_plus, count_minus = retrain.size_counts(POOL[1], SIZES)
  np.testing.assert_array_equal(count_plus + count_minus, SIZES)
  np.testing.assert_array_equal(count_plus, [round(0.25 * n) for n in SIZES])
  masks = _masks(POOL[1], count_plus, count_minus, seed=5, repeats=4)
  plus = POOL[1] > 0
  chex.assert_shape(masks.mask, (len(SIZES), 4, N_POOL))
  # Exact class counts per size, in every repeat.
  for cls, count in ((plus, count_plus), (~plus, count_minus)):
    np.testing.assert_array_equal(masks.mask[..., cls].sum(-1),
                                  np.broadcast_to(count[:, None], (len(SIZES), 4)))
  assert set(np.unique(masks.mask)) <= {0.0, 1.0}
  # Nested across sizes within a repeat; different across repeats (below the whole pool).
  assert np.all(np.diff(masks.mask, axis=0) >= 0)
  for s in range(len(SIZES) - 1):
    assert len({masks.mask[s, r].tobytes() for r in range(4)}) == 4
  # Deterministic from the seed; another seed draws other subsamples.
  again = _masks(POOL[1], count_plus, count_minus, seed=5, repeats=4)
  other = _masks(POOL[1], count_plus, count_minus, seed=6, repeats=4)
  np.testing.assert_array_equal(again.mask, masks.mask)
  np.testing.assert_array_equal(again.downsample, masks.downsample)
  assert not np.array_equal(other.mask[0], masks.mask[0])
  # Downsampling: balanced (n_+ rows of each class) and inside the subsample.
  for cls in (plus, ~plus):
    np.testing.assert_array_equal(masks.downsample[..., cls].sum(-1),
                                  np.broadcast_to(count_plus[:, None], (len(SIZES), 4)))
  assert np.all(masks.downsample <= masks.mask)


# ----------------------------------------------------------------------------- (c) methods


def test_method_weights(result):
  methods = result.methods
  prior = result.count_minus / result.count_plus
  np.testing.assert_allclose(methods.prior_ratio.weight, np.broadcast_to(prior[:, None],
                                                                         (len(SIZES), REPEATS)),
                             rtol=1e-6)
  np.testing.assert_array_equal(methods.unweighted.weight, 1.0)
  # The theory weights fall back to the prior ratio where the plug-in is undefined.
  np.testing.assert_allclose(np.where(result.defined, prior[:, None], methods.theory.weight),
                             np.broadcast_to(prior[:, None], result.defined.shape), rtol=1e-6)
  assert np.all(np.isfinite(methods.theory.weight) & (methods.theory.weight > 0))
  assert np.isnan(methods.theory.predicted.err_plus[~result.defined]).all()
  # Where defined, the theory weights are recommend_weight on the subsample itself (raw
  # features and ridge): delta = d / n for `theory`, d_eff = participation ratio for
  # `theory_participation` (falling back to the prior ratio where that is undefined).
  masks = _masks(POOL[1], result.count_plus, result.count_minus, seed=SEED, repeats=REPEATS)
  checked = 0
  for s, r in ((1, 0), (1, 2), (2, 1), (2, 2)):
    keep = np.asarray(masks.mask[s, r]) > 0
    x, y = POOL[0][keep], POOL[1][keep]
    for name, dimension in (("theory", "ambient"), ("theory_participation", "participation")):
      got = float(getattr(methods, name).weight[s, r])
      try:
        want = recommend.recommend_weight(x, y, ridge=_raw_ridge(result),
                                          dimension=dimension).weight
      except recommend.RecommendationUndefined:
        want = float(prior[s])
      else:
        checked += 1
      assert got == pytest.approx(want, rel=2e-3), (name, s, r)
  assert checked >= 4
  # theory_pool: the pool plug-in's optimal weight of each size, the same in every repeat.
  pool_weight = np.where(np.isfinite(result.theory.optimal.weight), result.theory.optimal.weight,
                         methods.theory_pool.weight[:, 0])
  np.testing.assert_allclose(methods.theory_pool.weight,
                             np.broadcast_to(pool_weight[:, None], (len(SIZES), REPEATS)),
                             rtol=1e-6)
  # grid_oracle: the grid argmin (first on ties) of the test worst-class error.
  best = np.argmin(result.errors.worst, axis=-1)
  np.testing.assert_array_equal(methods.grid_oracle.weight, result.weights[best])
  np.testing.assert_array_equal(methods.grid_oracle.errors.worst,
                                np.min(result.errors.worst, axis=-1))


def test_method_layers_match_numpy(result):
  """Each method's layer is the direct fit at its weight; downsampling fits its balanced mask."""
  masks = _masks(POOL[1], result.count_plus, result.count_minus, seed=SEED, repeats=REPEATS)
  ridge = _raw_ridge(result)
  for s, r in ((0, 1), (1, 0), (2, 2)):
    for name in ("prior_ratio", "theory", "theory_participation", "theory_pool"):
      m = getattr(result.methods, name)
      reference = numpy_fit(*POOL, masks.mask[s, r], float(m.weight[s, r]), ridge)
      _assert_layer_close(m.layer.w[s, r], m.layer.b[s, r], reference, 5e-3)
    down = result.methods.downsample
    reference = numpy_fit(*POOL, masks.downsample[s, r], 1.0, ridge)
    _assert_layer_close(down.layer.w[s, r], down.layer.b[s, r], reference, 5e-3)
    assert (down.errors.err_plus[s, r], down.errors.err_minus[s, r]) == pytest.approx(
        _test_errors(down.layer.w[s, r], down.layer.b[s, r]))


# ----------------------------------------------------------------------------- (d) theory


def test_theory_overlay(result):
  curves = result.theory
  np.testing.assert_allclose(curves.delta, D / SIZES, rtol=1e-6)
  ridge = float(result.ridge)
  class_errors = jax.jit(theory.class_errors)
  want = class_errors(curves.mixture, curves.delta[:, None], result.weights[None, :], ridge)
  chex.assert_trees_all_close(curves.errors, want, atol=1e-5)
  prior = (1 - curves.mixture.pi_plus) / curves.mixture.pi_plus
  chex.assert_trees_all_close(curves.prior_ratio,
                              class_errors(curves.mixture, curves.delta, prior, ridge), atol=1e-5)
  chex.assert_trees_all_close(curves.downsample, jax.jit(theory.downsampled_class_errors)(
      curves.mixture, curves.delta, ridge), atol=1e-5)
  # The pool's plug-in pi_+ is the pool's share; its optimum beats every grid weight.
  assert float(curves.mixture.pi_plus) == pytest.approx(0.25)
  assert np.all(curves.optimal.value <= curves.errors.worst.min(axis=-1) + 1e-6)


# ----------------------------------------------------------------------------- (e) bad inputs


def _bad(name):
  x, y = POOL[0].copy(), POOL[1].copy()
  kwargs = {"sizes": [20, 40]}
  if name == "labels":
    y = np.where(y > 0, 1.0, 0.0)
  elif name == "minority":
    y = -y
  elif name == "nonfinite":
    x[5, 2] = np.nan
  elif name == "size_small":
    kwargs = {"sizes": [3, 40]}
  elif name == "size_large":
    kwargs = {"sizes": [20, N_POOL + 1]}
  elif name == "size_few_minority":
    kwargs = {"sizes": [5, 40]}        # round(0.25 * 5) = 1 row of class +1
  return x, y, kwargs


@pytest.mark.parametrize("case,argument", [
    ("labels", "y_pool"), ("minority", "y_pool"), ("nonfinite", "x_pool"),
    ("size_small", "sizes"), ("size_large", "sizes"), ("size_few_minority", "sizes")])
def test_bad_inputs_raise(case, argument):
  x, y, kwargs = _bad(case)
  with pytest.raises(ValueError, match=f"^{argument}"):
    retrain.run(x, y, *TEST, num_repeats=2, **kwargs)


def test_bad_test_split_raises():
  x_test = TEST[0].copy()
  x_test[0, 0] = np.inf
  with pytest.raises(ValueError, match="^x_test"):
    retrain.run(*POOL, x_test, TEST[1], sizes=[40])
  with pytest.raises(ValueError, match="^y_test"):
    retrain.run(*POOL, TEST[0], TEST[1] * 2, sizes=[40])


# ----------------------------------------------------------------------------- (f) entry point


def _write(path, x, labels, provenance=None):
  extra = {} if provenance is None else {"provenance": np.asarray(json.dumps(provenance))}
  np.savez(path, embeddings=x, labels=labels, **extra)


def _labels(y):
  return np.where(y > 0, 7, 3)       # any two values; 7 is the pool's minority


@pytest.mark.parametrize("naming", ["plain", "cache"])
def test_image_llr_main(tmp_path, naming, result):
  folder = tmp_path / "emb"
  folder.mkdir()
  for split, (x, y) in (("val", POOL), ("test", TEST)):
    if naming == "plain":
      _write(folder / f"{split}.npz", x, _labels(y))
    else:
      _write(embeddings.cache_path(folder, dataset="cifar10", split=split, latent_dim=D,
                                   checkpoint_hash="0123456789abcdef0123"), x, _labels(y),
             {"split": split, "source": "test"})
      # Another dataset's files in the same folder are ignored.
      _write(embeddings.cache_path(folder, dataset="celeba-Blond_Hair", split=split,
                                   latent_dim=D, checkpoint_hash="fedcba9876543210"),
             x[:20], _labels(y[:20]))
  out = tmp_path / "out"
  compiled = retrain._run_jit._cache_size()  # pylint: disable=protected-access
  summary = image_llr.main(["--dataset", "cifar10", "--embeddings", str(folder),
                            "--out", str(out), "--quick"])
  # The same shapes and static arguments as the `result` fixture: no new compilation.
  assert retrain._run_jit._cache_size() == compiled  # pylint: disable=protected-access
  for name in ("results.json", "results.csv", "errors_vs_n.png", "errors_vs_weight.png",
               "weights_vs_n.png"):
    assert (out / name).stat().st_size > 0, name
  payload = json.loads((out / "results.json").read_text())
  assert payload["config"]["dataset"] == "cifar10" and payload["config"]["num_repeats"] == 3
  assert payload["labels"] == {"plus (minority)": 7, "minus (majority)": 3}
  assert payload["platform"]["backend"] == "cpu"
  files = payload["embedding_files"]
  assert files["val"]["shape"] == [N_POOL, D]
  if naming == "cache":
    assert files["val"]["file"].startswith("cifar10_val_d10_")
    assert files["test"]["provenance"] == {"split": "test", "source": "test"}
  res = payload["results"]
  np.testing.assert_array_equal(res["n"], SIZES)
  np.testing.assert_allclose(res["delta"], D / SIZES)
  for method in retrain.METHODS:
    m = res["methods"][method]
    for key in ("weight", "err_plus", "err_minus", "worst", "balanced"):
      assert all(math.isfinite(v) for v in m[key]["mean"]), (method, key)
      assert all(lo <= mean + 1e-12 for lo, mean in zip(m[key]["low"], m[key]["mean"]))
  # The same data and seed as the `result` fixture: the same numbers.
  np.testing.assert_allclose(res["methods"]["theory"]["worst"]["mean"],
                             result.methods.theory.errors.worst.mean(axis=1), atol=1e-12)
  for versus in summary["versus_prior_worst"].values():
    assert versus["verdict"][-1].endswith("one subsample)")
  with open(out / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == len(SIZES) * len(retrain.METHODS)
  assert all(math.isfinite(float(row["worst_mean"])) for row in rows)


def test_choose_sizes():
  sizes = image_llr.choose_sizes(POOL[1], num_sizes=12)
  assert sizes[0] == 6 and sizes[-1] == N_POOL and np.all(np.diff(sizes) > 0)
  retrain.size_counts(POOL[1], sizes)       # every size keeps >= 2 rows of each class
  np.testing.assert_array_equal(image_llr.choose_sizes(POOL[1], num_sizes=2, min_size=20,
                                                       max_size=64), [20, 64])
  with pytest.raises(ValueError, match="min_size"):
    image_llr.choose_sizes(POOL[1], num_sizes=3, max_size=N_POOL + 1)


# ----------------------------------------------------------------------------- (g) loading


def test_missing_split_file_is_named(tmp_path):
  _write(tmp_path / "val.npz", *POOL)
  with pytest.raises(ValueError, match=r"^test split: expected .*test\.npz"):
    retrain.load_embedding_splits(tmp_path)
  with pytest.raises(ValueError, match="is not a directory"):
    retrain.load_embedding_splits(tmp_path / "nowhere")


def test_ambiguous_cache_files_are_listed(tmp_path):
  for dataset in ("cifar10", "celeba-Smiling"):
    for split in ("val", "test"):
      _write(embeddings.cache_path(tmp_path, dataset=dataset, split=split, latent_dim=D,
                                   checkpoint_hash="00112233445566778899"), *POOL)
  with pytest.raises(ValueError, match=r"^val split: .*\['celeba-Smiling_val_d10_.*', "
                                       r"'cifar10_val_d10_.*'\]"):
    retrain.load_embedding_splits(tmp_path)
  data = retrain.load_embedding_splits(tmp_path, dataset="celeba")
  assert data["val"][0].shape == (N_POOL, D)


def test_main_rejects_bad_labels_and_arguments(tmp_path):
  labels = np.arange(N_POOL) % 3                          # three classes
  _write(tmp_path / "val.npz", POOL[0], labels)
  _write(tmp_path / "test.npz", *TEST)
  with pytest.raises(ValueError, match="val split.*binary"):
    image_llr.main(["--embeddings", str(tmp_path), "--out", str(tmp_path / "o"), "--quick"])
  _write(tmp_path / "val.npz", *POOL)
  _write(tmp_path / "test.npz", TEST[0], TEST[1] * 5)     # labels the pool does not have
  with pytest.raises(ValueError, match="test split: labels"):
    image_llr.main(["--embeddings", str(tmp_path), "--out", str(tmp_path / "o"), "--quick"])
  with pytest.raises(ValueError, match="--embeddings: required"):
    image_llr.main(["--out", str(tmp_path / "o"), "--quick"])
  with pytest.raises(ValueError, match="--dataset"):
    image_llr.main(["--dataset", "mnist", "--embeddings", str(tmp_path), "--out",
                    str(tmp_path / "o")])
