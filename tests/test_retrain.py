"""The retraining sweep (thumb_jax.retrain), its subsamples and embedding files, and its
image entry point, against float64 NumPy solves (tests/reference.py).

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
from reference import class_fit

from experiments import image_llr
from thumb_jax import lls, plug_in, recommend, retrain, subsample, theory
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
SIZES = subsample.default_sizes(POOL[1], num_sizes=QUICK.num_sizes)       # 6, 21, 72
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


_MASKS = jax.jit(retrain.subsample_masks, static_argnames=("num_repeats",))


def _masks(y, count_plus, count_minus, *, seed, repeats, x64=False):
  """Masks as `run` draws them (the uniform draws depend on the precision)."""
  with jax.enable_x64(x64):
    masks = _MASKS(jax.random.key(seed), jnp.asarray(y), jnp.asarray(count_plus),
                   jnp.asarray(count_minus), num_repeats=repeats)
    return jax.tree.map(np.asarray, masks)


@pytest.fixture(scope="module")
def result_masks(result):
  return _masks(POOL[1], result.count_plus, result.count_minus, seed=SEED, repeats=REPEATS)


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


def test_grid_layers_match_numpy_with_ridge(result, result_masks):
  """Ridge > 0: n = 6 < d and n = 21, 72 > d, a few subsamples and weights each."""
  chex.assert_shape(result.layers.w, (len(SIZES), REPEATS, len(WEIGHTS), D))
  assert SIZES[0] < D < SIZES[1]
  assert float(result.ridge) == pytest.approx(retrain.DEFAULT_RIDGE)
  masks = result_masks
  for s in range(len(SIZES)):
    for r in (0, REPEATS - 1):
      for k in (0, 3, len(WEIGHTS) - 1):
        reference = class_fit(*POOL, WEIGHTS[k], ridge=_raw_ridge(result),
                              mask=masks.mask[s, r])
        _assert_layer_close(result.layers.w[s, r, k], result.layers.b[s, r, k], reference,
                            5e-3)


def test_grid_layers_match_numpy_ridgeless(ridgeless_result):
  """Ridge 0, n > d (the lls path), float64."""
  res = ridgeless_result
  assert float(res.ridge) == 0.0 and res.layers.w.dtype == np.float64
  masks = _masks(POOL[1], res.count_plus, res.count_minus, seed=1, repeats=2, x64=True)
  for s in range(2):
    for k, weight in enumerate(WEIGHTS[::2]):
      reference = class_fit(*POOL, weight, mask=masks.mask[s, 1])
      _assert_layer_close(res.layers.w[s, 1, k], res.layers.b[s, 1, k], reference, 1e-8)


def test_grid_errors_are_the_test_errors_of_the_layers(result):
  for s, r, k in ((0, 0, 0), (1, 2, 3), (2, 1, 7)):
    err_plus, err_minus = _test_errors(result.layers.w[s, r, k], result.layers.b[s, r, k])
    assert result.errors.err_plus[s, r, k] == pytest.approx(err_plus)
    assert result.errors.err_minus[s, r, k] == pytest.approx(err_minus)


def test_plug_in_stats_from_the_factorization_scatter():
  """The sweep feeds plug_in.plug_in_stats the factorization's (row-space) scatter."""
  factor = jax.jit(lls.factor, static_argnames=("ridge", "minority_rows"))
  stats = jax.jit(plug_in.plug_in_stats)
  with jax.enable_x64(True):
    x, y = _embeddings(20, 35, seed=20)          # fewer rows than d: the row-space scatter
    mask = jnp.asarray(np.arange(20) % 7 != 3, jnp.float64)
    x, plus = jnp.asarray(x), jnp.asarray(y > 0)
    within = factor(x, jnp.asarray(y), ridge=0.01, mask=mask, minority_rows=10).within
    chex.assert_shape(within, (20, 20))
    chex.assert_trees_all_close(stats(x, plus, mask, scatter=within), stats(x, plus, mask),
                                rtol=1e-9)


# ----------------------------------------------------------------------------- (c) methods


def test_methods_are_returned_by_name(result):
  """One MethodResult per name of METHODS, each [S, R]; the theory methods are named by their
  dimension and are different methods (the ambient and participation plug-ins differ)."""
  assert retrain.METHODS == retrain.Methods._fields
  assert set(retrain.METHODS) >= {"theory_ambient", "theory_participation", "theory_pool"}
  assert "theory" not in retrain.METHODS
  for name in retrain.METHODS:
    m = getattr(result.methods, name)
    assert isinstance(m, retrain.MethodResult), name
    for leaf in (m.weight, m.errors.err_plus, m.predicted.err_minus, m.layer.b, m.defined):
      chex.assert_shape(leaf, (len(SIZES), REPEATS))
    chex.assert_shape(m.layer.w, (len(SIZES), REPEATS, D))
  ambient, participation = result.methods.theory_ambient, result.methods.theory_participation
  both = ambient.defined & participation.defined
  assert both.any() and not np.allclose(ambient.weight[both], participation.weight[both])


def test_method_weights(result, result_masks):
  methods = result.methods
  prior = result.count_minus / result.count_plus
  np.testing.assert_allclose(methods.prior_ratio.weight, np.broadcast_to(prior[:, None],
                                                                         (len(SIZES), REPEATS)),
                             rtol=1e-6)
  np.testing.assert_array_equal(methods.unweighted.weight, 1.0)
  # The subsample theory weights fall back to the prior ratio where the plug-in is undefined.
  for name in ("theory_ambient", "theory_participation"):
    m = getattr(methods, name)
    np.testing.assert_allclose(np.where(m.defined, prior[:, None], m.weight),
                               np.broadcast_to(prior[:, None], m.defined.shape), rtol=1e-6)
    assert np.all(np.isfinite(m.weight) & (m.weight > 0))
    assert np.isnan(m.predicted.err_plus[~m.defined]).all()
    assert np.all(np.isfinite(m.predicted.err_plus[m.defined]))
  # Where defined, the theory weights are recommend_weight on the subsample itself (raw
  # features and ridge): delta = d / n for `theory_ambient`, d_eff = the participation
  # ratio for `theory_participation` (falling back to the prior ratio where undefined).
  masks = result_masks
  checked = 0
  for s, r in ((1, 0), (1, 2), (2, 1), (2, 2)):
    keep = np.asarray(masks.mask[s, r]) > 0
    x, y = POOL[0][keep], POOL[1][keep]
    for name, dimension in (("theory_ambient", "ambient"),
                            ("theory_participation", "participation")):
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


def test_method_layers_match_numpy(result, result_masks):
  """Each method's layer is the direct fit at its weight; downsampling fits its balanced mask."""
  masks = result_masks
  ridge = _raw_ridge(result)
  for s, r in ((0, 1), (1, 0), (2, 2)):
    for name in ("prior_ratio", "theory_ambient", "theory_participation", "theory_pool"):
      m = getattr(result.methods, name)
      reference = class_fit(*POOL, float(m.weight[s, r]), ridge=ridge, mask=masks.mask[s, r])
      _assert_layer_close(m.layer.w[s, r], m.layer.b[s, r], reference, 5e-3)
    down = result.methods.downsample
    reference = class_fit(*POOL, 1.0, ridge=ridge, mask=masks.downsample[s, r])
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


@pytest.mark.parametrize("bad", [np.inf, np.nan, "0.1"], ids=["inf", "nan", "string"])
@pytest.mark.parametrize("argument", ["ridge", "weights"])
def test_non_finite_or_non_numeric_ridge_and_weights_raise(tmp_path, argument, bad):
  value = bad if argument == "ridge" else np.array([1.0, bad], dtype=object)
  with pytest.raises(ValueError, match=f"^{argument}: expected"):
    retrain.run(*POOL, *TEST, sizes=[40], num_repeats=2, **{argument: value})
  if argument == "ridge" and bad != "0.1":
    with pytest.raises(ValueError, match="^ridge: expected a finite"):
      image_llr.main(["--embeddings", str(tmp_path), "--out", str(tmp_path / "o"), "--quick",
                      "--set", f"ridge={bad}"])


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_extreme_feature_scales_give_the_unit_scale_sweep(result, scale):
  """Features at 1e30 overflowed the float32 feature scale (every test error 1.000)."""
  x_pool, x_test = POOL[0] * scale, TEST[0] * scale
  scaled = retrain.run(x_pool, POOL[1], x_test, TEST[1], sizes=SIZES, weights=WEIGHTS,
                       num_repeats=REPEATS, seed=SEED)         # `result`'s compilation
  np.testing.assert_allclose(scaled.feature_scale, result.feature_scale * scale, rtol=1e-5)
  for got, ref in ((scaled.errors, result.errors),
                   (scaled.methods.theory_ambient.errors, result.methods.theory_ambient.errors)):
    assert np.mean(np.abs(np.asarray(got) - np.asarray(ref))) < 1e-3
  w, w_ref = scaled.layers.w * scale, result.layers.w
  assert np.median(np.abs(w - w_ref)) < 1e-3 * np.median(np.abs(w_ref))
  x_pool[3, 1] = np.nan
  with pytest.raises(ValueError, match="^x_pool: expected a finite.*1 NaN/inf"):
    retrain.run(x_pool, POOL[1], x_test, TEST[1], sizes=SIZES)
  with pytest.raises(ValueError, match="^x_pool: every feature is constant"):
    retrain.run(np.full_like(x_test[:N_POOL], scale), POOL[1], x_test, TEST[1], sizes=SIZES)


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
  np.testing.assert_allclose(res["methods"]["theory_ambient"]["worst"]["mean"],
                             result.methods.theory_ambient.errors.worst.mean(axis=1), atol=1e-12)
  for versus in summary["versus_prior_worst"].values():
    assert versus["verdict"][-1].endswith("one subsample)")
  with open(out / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == len(SIZES) * len(retrain.METHODS)
  assert all(math.isfinite(float(row["worst_mean"])) for row in rows)


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


# ----------------------------------------------------------------------------- (g) row buffers


def test_rows_beyond_a_buffer_raise():
  """A size keeping more rows than its gather buffer raises instead of dropping rows."""
  count_plus, count_minus = retrain.size_counts(POOL[1], [20, 40])
  masks = _masks(POOL[1], count_plus, count_minus, seed=0, repeats=1)
  enough = subsample.buffer_lengths(count_plus, count_minus, N_POOL)
  subsample.check_buffers(count_plus, count_minus, enough)
  for which in range(3):
    short = [list(b) for b in enough]
    short[1][which] = (40, 20, 10)[which] - 1            # size 40: n, 2 n_+, n_+ rows
    with pytest.raises(ValueError, match=r"^row_buffers: size 1 .* buffer holds"):
      retrain.sweep(*(jnp.asarray(a) for a in (*POOL, *TEST)), masks, jnp.asarray(WEIGHTS),
                    ridge=1e-3, row_buffers=tuple(tuple(b) for b in short))
  with pytest.raises(ValueError, match="triples"):
    subsample.check_buffers(count_plus, count_minus, enough[:1])
