"""Smoke tests of experiments.anisotropic and experiments.bench_anisotropic, and their helpers."""

import json
import math

import jax
import numpy as np
import pytest

from experiments import anisotropic as experiment
from experiments import anisotropic_real as real
from experiments import anisotropic_theory, bench_anisotropic
from thumb_jax import anisotropic as an
from thumb_jax import mixture as mixture_lib


def _finite(*values):
  """Every number in every (nested) value is finite (JSON writes NaN as None)."""
  flat = [v for value in values for v in np.ravel(np.asarray(value, dtype=object))]
  return all(v is not None and math.isfinite(float(v)) for v in flat)


def _fake_embeddings(directory, *, d=12, pool=256, pool_plus=64, test=300, seed=0):
  """val.npz / test.npz from one anisotropic Gaussian model; labels 3 (minority) and 7."""
  rng = np.random.default_rng(seed)
  scale = np.arange(1, d + 1) ** -0.5 * 1.5
  dmu = rng.normal(size=d) * scale

  def draw(n, n_plus):
    y = np.where(np.arange(n) < n_plus, 3, 7)
    x = rng.normal(size=(n, d)) * scale + np.where(y[:, None] == 3, 1.0, 0.0) * dmu + 5.0
    return x, y

  for split, (n, n_plus) in (("val", (pool, pool_plus)), ("test", (test, test // 2))):
    x, y = draw(n, n_plus)
    np.savez(directory / f"{split}.npz", embeddings=x.astype(np.float32), labels=y)
  return directory


# ---------------------------------------------------------------------------------------
# Entry points.


def test_main_quick_with_embeddings(tmp_path):
  emb = _fake_embeddings(tmp_path)
  out = tmp_path / "out"
  # Sizes 256 and 200 of a 256-row pool share one row buffer in retrain (one compilation).
  experiment.main(["--out", str(out), "--quick", "--set", f"embeddings={emb}",
                   "--set", "embedding_max_delta=0.06", "--set", "embedding_num_sizes=2"])
  for name in ("results.json", "a_simulation.csv", "a_curves.csv", "b_shortcut.csv",
               "c_embeddings.csv", "a_simulation.png", "b_shortcut.png", "c_embeddings.png"):
    assert (out / name).stat().st_size > 0, name
  payload = json.loads((out / "results.json").read_text())
  assert payload["config"]["embeddings"] == str(emb)
  summary = payload["results"]["summary"]

  a = summary["simulation"]
  assert a["general_converged"]
  assert _finite(a["max_abs_gap"], a["iso_max_abs_gap"], a["iso_eff_max_abs_gap"], a["d_eff"])
  sim = payload["results"]["simulation"]
  assert _finite(sim["general"]["err_plus"], sim["curve_general"]["err_minus"],
                 sim["errors"]["err_plus"]["mean"])

  assert set(summary["shortcut"]) == {"power=0", "power=1", "power=2"}
  for entry in summary["shortcut"].values():
    for choice in ("iso", "iso_eff", "prior_ratio"):
      assert _finite(entry[choice]["max_excess_worst"])
      assert entry[choice]["max_excess_worst"] >= -1e-6      # the general optimum is optimal
  for s in payload["results"]["shortcut"]:
    assert _finite(s["weight"]["general"], s["worst"]["iso_eff"])

  c = summary["embeddings"]
  assert c["scale_check"]["relative_difference"] < 1e-5
  assert c["scale_check"]["refit_relative_difference"] < 1e-3
  for name in real.PLUG_INS:
    assert _finite(c[name]["mean_abs_diff"], c[name]["worst_lost"])
    assert len(c[name]["best_weight_matches"]) == 2
  # The general plug-in is exact in form here (Gaussian classes): a loose sanity bound.
  assert c["general"]["mean_abs_diff"] < 0.1
  rows = (out / "c_embeddings.csv").read_text().splitlines()
  assert len(rows) == 1 + 2 * 8                              # header + sizes x weights


def test_bench_main_tiny(tmp_path):
  results = bench_anisotropic.main(["--out", str(tmp_path), "--quick", "--set", "repeats=1"])
  assert (tmp_path / "results.json").exists()
  for path in ("eigenbasis", "generalized", "dense"):
    assert results[path]["points_per_s"] > 0 and results[path]["all_converged"]
  assert results["generalized_vs_dense_max_abs_diff"] < 1e-4


# ---------------------------------------------------------------------------------------
# Helpers.


def test_power_law_mixture_has_the_requested_structure():
  d = 30
  ev = mixture_lib.power_law_spectrum(d, 1.0)
  np.testing.assert_allclose(ev.mean(), 1.0)
  assert np.all(np.diff(ev) < 0)
  key = jax.random.key(0)
  for commuting in (False, True):
    mix = mixture_lib.power_law_mixture(key, d=d, pi_plus=0.2, power_plus=1.0, power_minus=0.5,
                                       mahalanobis_sq=9.0, mean_alignment=0.5,
                                       commuting=commuting)
    mix.validate()
    pooled = 0.2 * mix.cov_plus + 0.8 * mix.cov_minus
    dmu = mix.mean_plus - mix.mean_minus
    np.testing.assert_allclose(dmu @ np.linalg.solve(pooled, dmu), 9.0, rtol=1e-8)
    np.testing.assert_allclose(np.linalg.eigvalsh(mix.cov_plus), np.sort(ev), rtol=1e-8)
    commutator = mix.cov_plus @ mix.cov_minus - mix.cov_minus @ mix.cov_plus
    assert (np.abs(commutator).max() < 1e-10) == commuting


def test_embedding_sizes_and_imbalance():
  y = np.where(np.arange(500) < 100, 1.0, -1.0)
  sizes = real.embedding_sizes(y, 64, max_delta=2.0, num_sizes=5)
  assert sizes[0] == 500 and sizes[-1] == 32 and np.all(np.diff(sizes) < 0)
  assert list(real.embedding_sizes(y, 64, max_delta=0.01, num_sizes=5)) == [500]
  keep = real.imbalance_pool(jax.random.key(0), y, 0.1)
  assert np.sum(y[keep] < 0) == 400 and np.sum(y[keep] > 0) == round(0.1 * 400 / 0.9)
  with pytest.raises(ValueError, match="embedding_pi_plus"):
    real.imbalance_pool(jax.random.key(0), y, 0.5)
  np.testing.assert_array_equal(anisotropic_theory.ridge_for([0.5, 1.0, 2.0], 0.1), [0.0, 0.1, 0.1])


def test_debiased_means_remove_the_sampling_bias_of_the_mean_difference():
  """E|dmu_hat|^2 = |dmu|^2 + tr S_+ / n_+ + tr S_- / n_-: the rescaled length is unbiased."""
  d, n_plus, n_minus = 50, 40, 160
  rng = np.random.default_rng(0)
  dmu = np.zeros(d)
  dmu[0] = 2.0
  lengths = []
  for _ in range(200):
    xp = rng.normal(size=(n_plus, d)) + dmu
    xm = rng.normal(size=(n_minus, d))
    est = an.CovarianceMixture(0.2, xp.mean(0), xm.mean(0), np.eye(d), np.eye(d))
    fixed = real.debiased_means(est, n_plus, n_minus)
    diff = fixed.mean_plus - fixed.mean_minus
    lengths.append(diff @ diff)
    np.testing.assert_allclose(fixed.mean_plus + fixed.mean_minus, xp.mean(0) + xm.mean(0))
  np.testing.assert_allclose(np.mean(lengths), 4.0, atol=0.15)
