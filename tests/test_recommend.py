"""Plug-in recommendation: recovery on Gaussian data, bootstrap, bad inputs, the CLI."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from thumb_jax import GaussianMixture, cli, io, mixture, plug_in, recommend, theory

# Unequal class variances and a 1:4 imbalance; D2 = |mu_+ - mu_-|^2 = 4.
MIX = GaussianMixture(pi_plus=0.2, mean_plus_sq=1.0, mean_minus_sq=1.0, mean_inner=-1.0,
                      var_plus=1.5, var_minus=1.0)


def _draw(seed, n, d, mix=MIX):
  x, y = mixture.sample(jax.random.key(seed), mix, n=n, d=d)
  return np.asarray(x), np.asarray(y)


def test_stats_recover_mixture_as_n_grows(x64):
  """Unbiased D2, traces and a debiased participation ratio (d = 32, isotropic).

  Tolerances: 4 standard deviations of one draw, from 20-seed runs
  (sd of D2: 1.3 at n = 128, 0.2 at n = 4096; of tr/d: 0.08 and 0.011; of PR: 0.36 and 0.01).
  """
  d = 32
  stats = jax.jit(plug_in.plug_in_stats, static_argnames="effective_rank")
  for n, tol_d2, tol_var, tol_pr in [(128, 5.2, 0.32, 1.5), (4096, 0.8, 0.045, 0.05)]:
    x, y = _draw(1, n, d)
    s = stats(jnp.asarray(x), jnp.asarray(y > 0))
    assert abs(float(s.mean_diff_sq) - 4.0) < tol_d2
    assert abs(float(s.trace_plus) / d - 1.5) < tol_var
    assert abs(float(s.trace_minus) / d - 1.0) < tol_var / 2
    assert abs(float(s.participation) - d) < tol_pr


def test_participation_ratio_is_debiased_for_power_law_spectrum():
  """Naive (tr S)^2 / tr S^2 is biased low at n ~ 2d; the debiased one is not.

  Power law lambda_j ~ j^-1/2, d = 32, true PR 21.3; n = 64, mean over 8 draws
  (the naive ratio is about PR / (1 + PR / (n - 2)) = 16).
  """
  d, n = 32, 64
  lam = 1.0 / np.sqrt(np.arange(1, d + 1))
  true_pr = lam.sum() ** 2 / (lam ** 2).sum()
  debiased, naive = [], []
  for seed in range(8):
    z = np.random.default_rng(seed).standard_normal((n, d)) * np.sqrt(lam)
    y = np.where(np.arange(n) < n // 4, 1.0, -1.0)
    x = z + 0.5 * y[:, None]
    s = plug_in.plug_in_stats(jnp.asarray(x, jnp.float32), jnp.asarray(y > 0))
    debiased.append(float(s.participation))
    xc = np.concatenate([x[y > 0] - x[y > 0].mean(0), x[y < 0] - x[y < 0].mean(0)])
    ev = np.linalg.eigvalsh(xc.T @ xc)
    naive.append(ev.sum() ** 2 / (ev ** 2).sum())
  assert abs(np.mean(debiased) - true_pr) < 1.5
  assert np.mean(naive) < true_pr - 3.5


@pytest.mark.parametrize("ridge", [0.0, 1e-2])
def test_weight_converges_to_theory_weight(ridge):
  """At delta = 1/4 with d = 16 -> 256 the plug-in weight approaches the true optimum.

  From 8-seed runs: |log(w / w*)| at most 0.72 (d = 16) and 0.10 (d = 256); the excess
  predicted worst-class error at most 0.028 and 0.003. Tolerances: about 2x those.
  """
  best = theory.optimal_weight(MIX, 0.25, ridge)
  for d, tol_log, tol_excess in [(16, 1.5, 0.06), (256, 0.2, 0.006)]:
    x, y = _draw(0, 4 * d, d)
    rec = recommend.recommend_weight(x, y, ridge=ridge, dimension="participation")
    assert abs(np.log(rec.weight / float(best.weight))) < tol_log
    true = theory.class_errors(MIX, 0.25, rec.weight, ridge)
    assert max(float(true.err_plus), float(true.err_minus)) - float(best.value) < tol_excess
    if d == 256:
      assert abs(rec.delta - 0.25) < 0.01
      np.testing.assert_allclose(rec.mixture.var_plus, 1.5, rtol=0.05)


def test_whitened_recovers_mahalanobis_and_weight_for_anisotropic_noise():
  """Power-law noise (lambda_j ~ 1/j, d = 64), random mean direction with Mahalanobis 16.

  "whitened" estimates dmu' Sigma^-1 dmu (unbiased; sd about 1.2 at n = 5120) and, as the
  ridgeless fit is affine invariant, the true optimal weight of the isotropic model with
  |mu|^2 = 16 / 4 (from one draw: 9.3 vs 9.5). "participation" sees |dmu|^2 = 6.6 against an
  energy-weighted noise level 4.8 and predicts a worst-class error near 0.28 instead of 0.03.
  """
  d, n = 64, 5120
  lam = 1.0 / np.arange(1, d + 1)
  lam *= d / lam.sum()
  u = np.random.default_rng(1).standard_normal(d)
  dmu = u * np.sqrt(16.0 / np.sum(u ** 2 / lam))
  rng = np.random.default_rng(2)
  y = np.where(np.arange(n) < n // 10, 1.0, -1.0)
  x = y[:, None] * dmu / 2 + rng.standard_normal((n, d)) * np.sqrt(lam)
  white = recommend.recommend_weight(x, y, ridge=0.0, dimension="whitened")
  assert abs(4 * white.mixture.mean_plus_sq - 16.0) < 4 * 1.2
  np.testing.assert_allclose([white.mixture.var_plus, white.mixture.var_minus], 1.0, atol=0.05)
  assert white.dimension == d and white.ridge_used == 0.0
  truth = theory.optimal_weight(GaussianMixture.symmetric(pi_plus=0.1, mean_norm=2.0), d / n)
  assert abs(np.log(white.weight / float(truth.weight))) < 0.3
  assert abs(float(white.errors.worst) - float(truth.value)) < 0.01
  pr = recommend.recommend_weight(x, y, ridge=0.0, dimension="participation")
  assert float(pr.errors.worst) > 0.2        # the isotropic plug-in's miscalibration
  with pytest.raises(ValueError, match="needs n > d"):
    rows = np.r_[0:10, 600:650]
    recommend.recommend_weight(x[rows], y[rows], ridge=0.1, dimension="whitened")


def test_recommendation_fields_and_dimensions():
  x, y = _draw(3, 400, 40)
  prior = recommend.recommend_weight(x, y, ridge=1e-3, dimension="ambient")
  assert prior.dimension == 40 and prior.delta == pytest.approx(0.1)
  assert prior.prior_weight == pytest.approx(4.0)
  assert prior.count_plus == 80 and prior.count_minus == 320 and prior.ambient_dim == 40
  assert prior.labels == recommend.LabelMap(plus=1.0, minus=-1.0)
  assert prior.at_search_limit in (True, False)
  assert np.isnan(prior.interval[0]) and prior.bootstrap_weights.shape == (0,)
  # The predicted worst error at the recommended weight beats the ratio of priors.
  assert float(prior.errors.worst) <= float(prior.prior_errors.worst) + 1e-6
  fixed = recommend.recommend_weight(x, y, ridge=1e-3, dimension=20)
  assert fixed.dimension == 20 and fixed.delta == pytest.approx(0.05)
  rank = recommend.recommend_weight(x, y, ridge=1e-3, dimension="effective_rank")
  assert 20 < rank.dimension <= 40
  balanced = recommend.recommend_weight(x, y, ridge=1e-3, objective="balanced")
  assert balanced.objective == "balanced" and balanced.weight > 0
  report = json.loads(io.dumps(prior.as_dict()))
  assert report["bootstrap"]["interval"] == [None, None]


def test_arbitrary_labels_and_translation_invariance():
  x, y = _draw(4, 300, 20)
  names = np.where(y > 0, "rare", "common")
  shifted = recommend.recommend_weight(x + 100.0, names, ridge=1e-3)
  base = recommend.recommend_weight(x, y, ridge=1e-3)
  assert shifted.labels == recommend.LabelMap(plus="rare", minus="common")
  np.testing.assert_allclose(shifted.weight, base.weight, rtol=1e-3)
  # The less frequent label is +1 whatever its value; a tie takes the larger label.
  _, mapping = recommend.encode_labels(np.array([5, 5, 5, 7]))
  assert mapping == (7, 5)
  _, mapping = recommend.encode_labels(np.array([7, 5, 5, 7, 7]))
  assert mapping == (5, 7)
  _, mapping = recommend.encode_labels(np.array(["b", "a", "a", "b"]))
  assert mapping == ("b", "a")


def test_bootstrap_shape_determinism_and_interval():
  x, y = _draw(5, 500, 25)
  a = recommend.recommend_weight(x, y, ridge=1e-3, bootstrap=24, seed=7)
  b = recommend.recommend_weight(x, y, ridge=1e-3, bootstrap=24, seed=7)
  c = recommend.recommend_weight(x, y, ridge=1e-3, bootstrap=24, seed=8)
  assert a.bootstrap_weights.shape == (24,)
  np.testing.assert_array_equal(a.bootstrap_weights, b.bootstrap_weights)
  assert not np.array_equal(a.bootstrap_weights, c.bootstrap_weights)
  assert np.all(np.isfinite(a.bootstrap_weights))
  lo, hi = a.interval
  assert lo < hi and lo <= np.median(a.bootstrap_weights) <= hi
  # The point estimate lies inside (or within 30% of) the bootstrap spread.
  assert 0.7 * lo < a.weight < 1.3 * hi


@pytest.mark.parametrize("features,labels,match", [
    (np.full((10, 3), np.nan), np.r_[np.ones(5), -np.ones(5)], "features: expected finite"),
    (np.r_[np.ones((9, 3)), [[np.inf, 0, 0]]], np.r_[np.ones(5), -np.ones(5)],
     "features: expected finite.*row 9"),
    (np.ones((10, 3)), np.ones(10), "labels: expected two classes, found only one"),
    (np.ones((9, 3)), np.repeat([0, 1, 2], 3), "labels: expected a binary problem, found 3"),
    (np.ones((10, 3)), np.r_[1, -np.ones(9)], "labels: class 1.* has 1 sample"),
    (np.ones((10, 3)), np.r_[np.ones(5), -np.ones(4)], r"labels: expected shape \[10\]"),
    (np.ones((10,)), np.r_[np.ones(5), -np.ones(5)], r"features: expected shape \[n, d\]"),
    (np.array([["a"] * 3] * 10), np.r_[np.ones(5), -np.ones(5)], "features: expected a numeric"),
    (np.ones((10, 3)), np.r_[np.ones(5), np.nan, -np.ones(4)], "labels: expected finite"),
])
def test_bad_inputs(features, labels, match):
  with pytest.raises(ValueError, match=match):
    recommend.recommend_weight(features, labels, ridge=0.1)


def test_bad_arguments_and_undefined_cases():
  x, y = _draw(6, 60, 4)
  for kwargs, match in [({"dimension": "rank"}, "dimension: expected"),
                        ({"dimension": 0}, "dimension: expected"),
                        ({"objective": "mean"}, "objective: expected"),
                        ({"ridge": -1.0}, "ridge: expected"),
                        ({"bootstrap": -1}, "bootstrap: expected"),
                        ({"level": 1.5}, "level: expected")]:
    with pytest.raises(ValueError, match=match):
      recommend.recommend_weight(x, y, **kwargs)
  # ridge 0 with d >= n - 1: the fit interpolates, weights have no effect.
  xw, yw = _draw(6, 20, 30)
  with pytest.raises(recommend.RecommendationUndefined, match="interpolates"):
    recommend.recommend_weight(xw, yw, ridge=0.0)
  # No class signal: equal sample class means, so the debiased |mu_+ - mu_-|^2 is < 0.
  noise = np.random.default_rng(0).standard_normal((60, 30))
  noise[:10] -= noise[:10].mean(0)
  noise[10:] -= noise[10:].mean(0)
  with pytest.raises(recommend.RecommendationUndefined, match="no class separation"):
    recommend.recommend_weight(noise, np.r_[np.ones(10), -np.ones(50)], ridge=0.1)
  # delta_eff >= 1 with ridge 0 (an explicit dimension larger than n).
  with pytest.raises(recommend.RecommendationUndefined, match="delta_eff"):
    recommend.recommend_weight(x, y, ridge=0.0, dimension=100)


def test_cli_writes_report(tmp_path, capsys):
  x, y = _draw(7, 500, 25)      # the bootstrap test's shapes: its compilation is reused
  path = tmp_path / "emb.npz"
  np.savez(path, embeddings=x, labels=np.where(y > 0, 3, 8))
  out = tmp_path / "sub" / "report.json"
  report = cli.main(["recommend", "--features", str(path), "--ridge", "0.001",
                     "--bootstrap", "24", "--out", str(out)])
  printed = capsys.readouterr().out
  assert "recommended minority weight" in printed and "delta_eff" in printed
  saved = json.loads(out.read_text())
  assert saved == json.loads(io.dumps(report))
  rec = saved["recommendation"]
  assert rec["labels"] == {"plus (minority)": 3, "minus (majority)": 8}
  assert rec["count_plus"] == 100 and len(rec["bootstrap"]["weights"]) == 24
  direct = recommend.recommend_weight(x, np.where(y > 0, 3, 8), ridge=0.001)
  assert rec["weight"] == pytest.approx(direct.weight, rel=1e-6)
  # .npy features with separate labels and explicit keys.
  np.save(tmp_path / "x.npy", x)
  np.savez(tmp_path / "y.npz", target=y)
  report = cli.main(["recommend", "--features", str(tmp_path / "x.npy"), "--labels",
                     str(tmp_path / "y.npz"), "--labels-key", "target", "--ridge", "0.001",
                     "--dimension", "ambient"])
  assert report["recommendation"]["effective_dimension"] == 25


def test_cli_auto_ridge_and_general_model(tmp_path, capsys):
  """One command gives (method, weight, ridge), every option's predicted errors and intervals."""
  x, y = _draw(8, 160, 16)
  path = tmp_path / "emb.npz"
  np.savez(path, x=x, y=y)
  report = cli.main(["recommend", "--features", str(path), "--ridge", "auto", "--model",
                     "general", "--out", str(tmp_path / "r.json")])
  printed = capsys.readouterr().out
  assert "recommendation (general model, worst)" in printed
  assert "predicted worst-class error by ridge" in printed and "general model: span 16" in printed
  rec = report["recommendation"]
  direct = recommend.recommend_weight(x, y, ridge="auto", model="general")
  assert rec["model"] == "general" and rec["ridge_auto"] is True
  assert rec["choice"] == {"method": direct.method, "weight": pytest.approx(direct.choice[1]),
                           "ridge": pytest.approx(direct.ridge)}
  assert len(rec["options"]) == len(recommend.RIDGE_GRID)
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["recommend", "--features", str(path), "--ridge", "best"])
  assert exit_info.value.code == 2 and "--ridge" in capsys.readouterr().err


def test_cli_bad_input_exits_2(tmp_path, capsys):
  np.savez(tmp_path / "bad.npz", feats=np.ones((10, 2)), labels=np.ones(10))
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["recommend", "--features", str(tmp_path / "bad.npz")])
  assert exit_info.value.code == 2
  assert "--features-key" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    cli.main(["recommend", "--features", str(tmp_path / "bad.npz"), "--features-key", "feats"])
  assert "only one" in capsys.readouterr().err
  # --out is checked before anything is computed: a directory, or a path under a file.
  np.savez(tmp_path / "ok.npz", x=np.ones((10, 2)), y=np.r_[np.ones(5), -np.ones(5)])
  (tmp_path / "file").write_text("")
  for out in (tmp_path, tmp_path / "file" / "report.json"):
    with pytest.raises(SystemExit) as exit_info:
      cli.main(["recommend", "--features", str(tmp_path / "ok.npz"), "--out", str(out)])
    assert exit_info.value.code == 2
    assert "--out" in capsys.readouterr().err


@pytest.mark.parametrize("ridge", [np.inf, -np.inf, np.nan, "0.1", None, np.ones(2)],
                         ids=["inf", "-inf", "nan", "string", "none", "array"])
def test_non_finite_or_non_numeric_ridge_raises_naming_it(ridge):
  x, y = _draw(6, 60, 4)
  with pytest.raises(ValueError, match="^ridge: expected"):
    recommend.recommend_weight(x, y, ridge=ridge)


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_extreme_feature_scales_give_the_unit_scale_recommendation(scale):
  """Features are centred and scaled in float64 first: 1e30 no longer overflows float32 into
  'no class separation detectable (nan)'. The ridge scales with the features' variance."""
  x, y = _draw(3, 400, 40)      # the shapes of test_recommendation_fields_and_dimensions
  base = recommend.recommend_weight(x, y, ridge=1e-3)
  scaled = recommend.recommend_weight(x * scale, y, ridge=1e-3 * scale ** 2)
  np.testing.assert_allclose(scaled.weight, base.weight, rtol=1e-3)
  np.testing.assert_allclose(scaled.errors, base.errors, rtol=1e-3, atol=1e-6)
  np.testing.assert_allclose(scaled.mixture.var_plus, base.mixture.var_plus * scale ** 2,
                             rtol=1e-3)
  np.testing.assert_allclose(scaled.ridge_used, 1e-3 * scale ** 2, rtol=1e-6)
  x = x.copy()
  x[5, 7] = np.nan
  with pytest.raises(ValueError, match="features: expected finite.*row 5"):
    recommend.recommend_weight(x * scale, y, ridge=1e-3)


@pytest.mark.parametrize("content", [b"", b"not a zip archive\n", "truncated"],
                         ids=["empty", "not-zip", "truncated"])
def test_cli_unreadable_npz_exits_2_with_one_line_naming_the_file(tmp_path, capsys, content):
  path = tmp_path / "emb.npz"
  if content == "truncated":
    np.savez(path, x=np.ones((50, 4)), y=np.r_[np.ones(25), -np.ones(25)])
    content = path.read_bytes()[:200]
  path.write_bytes(content)
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["recommend", "--features", str(path)])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and str(path) in err and "cannot read" in err


def test_recommend_validate_main_smoke(tmp_path, monkeypatch):
  """The validation entry point end to end on a fake embeddings folder; a rerun reads the
  finished case back (no recomputation, same results), another config recomputes."""
  from experiments import recommend_validate
  x, y = _draw(5, 400, 12)
  order = np.random.default_rng(0).permutation(400)      # the sampler puts class +1 first
  x, y = x[order], y[order]
  emb = tmp_path / "emb"
  emb.mkdir()
  for split, rows in (("val", slice(0, 300)), ("test", slice(300, None))):
    np.savez(emb / f"{split}.npz", embeddings=x[rows], labels=np.where(y[rows] > 0, 7, 2))
  out = tmp_path / "out"
  args = ["--out", str(out), "--quick", "--embeddings", str(emb), "--set", "cases=",
          "--set", "deltas=0.2,0.5", "--set", "num_seeds=2", "--set", "d=16", "--set", "folds=2",
          "--set", "grid_size=8", "--set", "timing_repeats=1"]
  results = recommend_validate.main(args)
  assert set(results) == {"embeddings"}     # the Gaussian cases: test_experiments_gaussian.py
  for name in ("results.json", "results.csv", "embeddings.png", "timing.png"):
    assert (out / name).is_file(), name
  payload = json.loads((out / "results.json").read_text())
  for case in payload["results"].values():
    for method, m in case["methods"].items():
      assert all(v is not None and 0 <= v <= 1 for v in m["worst"]["mean"]), (method, m["worst"])
  assert (out / "cases" / "embeddings.npz").is_file()

  def fail(*a, **k):
    raise AssertionError("a finished case was computed again")

  monkeypatch.setattr(recommend_validate, "run_case", fail)
  recommend_validate.main(args)
  assert json.loads((out / "results.json").read_text())["results"] == payload["results"]
  with pytest.raises(AssertionError, match="computed again"):
    recommend_validate.main(args[:-2] + ["--set", "timing_repeats=0"])
