"""Tests for the experiment helpers, thumb_jax.simulate and the Gaussian entry points.

Entry points are smoke-tested by calling `main` with a tiny config (`--quick`) into
tmp_path; each checks its JSON and PNGs, that the numbers are finite where they must be,
and that theory and simulation agree within a loose stated tolerance.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import (
  bench,
  common,
  downsampling,
  error_vs_delta,
  error_vs_weight,
  gaussian,
  report,
  ridge,
)
from thumb_jax import lls, metrics, simulate, subsample
from thumb_jax import mixture as mixture_lib
from thumb_jax.metrics import ClassErrors
from thumb_jax.mixture import GaussianMixture

# Quick configs use d = 64..96 and 4 seeds. Finite-d bias of the asymptotic theory is
# O(1/sqrt(d)) ~ 0.1 in the worst corners (delta near 1, small minority counts) and the
# 95% interval half-widths reach ~0.05, so the largest |mean sim - theory| must stay below
# 0.15 and the average gap below 0.05.
MAX_GAP = 0.15
MEAN_GAP = 0.05


def load(path: Path) -> dict:
  text = path.read_text()
  assert "NaN" not in text and "Infinity" not in text, "JSON must be strict (NaN -> null)"
  return json.loads(text)


def all_numbers(tree):
  if isinstance(tree, dict):
    for v in tree.values():
      yield from all_numbers(v)
  elif isinstance(tree, list):
    for v in tree:
      yield from all_numbers(v)
  elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
    yield tree


def assert_finite(tree, what):
  values = list(all_numbers(tree))
  assert values, f"{what}: no numbers"
  assert all(math.isfinite(v) for v in values), f"{what}: non-finite values"


# ----------------------------------------------------------------------------- common

@dataclasses.dataclass(frozen=True)
class _Cfg:
  a: int = 1
  b: float = 0.5
  c: tuple[float, ...] = (1.0,)
  flag: bool = False
  name: str = "x"
  maybe: int | None = None


def test_override_parses_by_field_type():
  cfg = common.override(_Cfg(), ["a=3", "b=1e-3", "c=0.1, 0.2", "flag=true", "name=y",
                                 "maybe=4"])
  assert cfg == _Cfg(3, 1e-3, (0.1, 0.2), True, "y", 4)
  assert common.override(_Cfg(maybe=2), ["maybe=none"]).maybe is None


@pytest.mark.parametrize("pair, message", [("zz=1", "unknown key"), ("a", "key=value"),
                                           ("a=1.5", "--set a"), ("flag=maybe", "boolean")])
def test_override_rejects_bad_input(pair, message):
  with pytest.raises(ValueError, match=message):
    common.override(_Cfg(), [pair])


def test_parse_args_quick_then_set(tmp_path):
  cfg, out = common.parse_args(["--out", str(tmp_path / "o"), "--quick", "--set", "a=7"], _Cfg(),
                               quick=lambda c: dataclasses.replace(c, a=2, b=9.0))
  assert (cfg.a, cfg.b) == (7, 9.0) and out.is_dir()


def test_write_json_is_atomic_and_strict(tmp_path):
  path = common.save_results(tmp_path / "r.json", config=_Cfg(),
                             results={"x": np.array([1.0, np.nan]), "y": jnp.float32(2.0)})
  payload = load(path)
  assert payload["results"] == {"x": [1.0, None], "y": 2.0}
  assert payload["config"]["c"] == [1.0] and "jax" in payload["platform"]
  assert [p.name for p in tmp_path.iterdir()] == ["r.json"]        # no temp file left


def test_write_csv(tmp_path):
  path = common.write_csv(tmp_path / "t.csv", [{"a": 1, "b": np.nan}, {"a": 2, "b": 0.5}])
  assert path.read_text().splitlines() == ["a,b", "1,", "2,0.5"]


def test_help_lists_set_keys_and_defaults(capsys):
  with pytest.raises(SystemExit):
    common.parse_args(["--help"], _Cfg())
  text = capsys.readouterr().out
  for line in ("a=1  (int)", "b=0.5  (float)", "c=1  (tuple[float, ...])", "flag=false  (bool)",
               "name=x", "maybe=None  (int | None)"):
    assert line in text, line


def test_out_must_be_a_writable_directory(tmp_path):
  (tmp_path / "file").write_text("x")
  with pytest.raises(ValueError, match="--out"):
    common.parse_args(["--out", str(tmp_path / "file")], _Cfg())


def test_report_intervals_columns_and_timing():
  ci = metrics.mean_ci(np.array([[1.0, 2.0], [3.0, 4.0], [2.0, 3.0]]))
  cols = report.interval_columns("e", ci, 1)
  assert list(cols) == ["e_mean", "e_low", "e_high"] and cols["e_mean"] == 3.0
  assert report.interval_columns("e", report.interval_dict(ci), 1) == cols
  fig, ax = report.plt.subplots()
  bars = report.errorbar(ax, [0, 1], ci)
  np.testing.assert_allclose(bars.lines[0].get_ydata(), ci.mean)
  report.plt.close(fig)
  t = report.time_calls(lambda x: x + 1, jnp.ones(3), repeats=2)
  assert len(t.times_s) == len(t.cpu_s) == 2 and t.median_s >= 0 and t.output[0] == 2
  with pytest.raises(ValueError, match="repeats"):
    report.time_calls(lambda: 0, repeats=0)


# ----------------------------------------------------------------------------- simulation core

MIXTURE = GaussianMixture.symmetric(pi_plus=0.2, mean_norm=1.5)
fit = jax.jit(lls.fit)


def test_pool_labels_match_sample():
  _, y = mixture_lib.sample(jax.random.key(0), MIXTURE, n=37, d=4)
  np.testing.assert_array_equal(simulate.pool_labels(MIXTURE.pi_plus, 37), np.asarray(y))


def test_downsampled_rows_balance_classes():
  y = simulate.pool_labels(MIXTURE.pi_plus, 200)
  full = subsample.nested_masks(y, [200, 100], pi_plus=MIXTURE.pi_plus)
  masks = np.asarray(subsample.downsample_masks(y, full))
  plus = y > 0
  for mask, n in zip(masks, [200, 100]):
    n_plus = mixture_lib.class_counts(n, MIXTURE.pi_plus)[0]
    assert mask[plus].sum() == n_plus and mask[~plus].sum() == n_plus


def test_invalid_sizes_raise():
  with pytest.raises(ValueError, match="num_seeds"):
    simulate.seed_keys(0, 0)
  with pytest.raises(ValueError, match="num_seeds"):
    simulate.seed_keys(0, 1)                      # no interval from one seed
  with pytest.raises(ValueError, match="deltas"):
    simulate.sizes_for([], 10)
  with pytest.raises(ValueError, match="deltas"):
    simulate.sizes_for([0.5, -1.0], 10)


def test_agreement_ignores_undefined_theory():
  errors = ClassErrors(np.array([[0.1, 0.2], [0.2, 0.4]]), np.array([[0.3, 0.1], [0.5, 0.3]]))
  sim = simulate.intervals(errors)
  got = simulate.agreement(sim, ClassErrors(np.array([0.15, np.nan]), np.array([0.4, np.nan])))
  assert got.max_abs_gap == pytest.approx(0.0) and got.frac_within_ci == 1.0
  none = simulate.agreement(sim, ClassErrors(np.full(2, np.nan), np.full(2, np.nan)))
  assert all(np.isnan(v) for v in none)


def _sweep_inputs(sizes, weights, ridges):
  y = simulate.pool_labels(MIXTURE.pi_plus, max(sizes))
  masks = subsample.nested_masks(y, sizes, pi_plus=MIXTURE.pi_plus)
  return masks, jnp.tile(jnp.asarray(weights, jnp.float32), (len(sizes), 1)), jnp.asarray(
      ridges, jnp.float32)


def test_sweep_does_not_retrace_for_new_data():
  d = 8
  @chex.assert_max_traces(n=1)
  def one(key, masks, weights, ridges):
    return simulate.simulate_seed(key, masks, weights, ridges, mixture=MIXTURE, d=d)

  sweep = jax.jit(jax.vmap(one, in_axes=(0, None, None, None)))
  first = sweep(simulate.seed_keys(0, 3), *_sweep_inputs([40, 20], [1.0, 4.0], [0.0, 0.1]))
  second = sweep(simulate.seed_keys(1, 3), *_sweep_inputs([40, 16], [2.0, 3.0], [0.5, 0.0]))
  assert first.err_plus.shape == second.err_plus.shape == (3, 2, 2)
  assert not np.allclose(first.err_plus, second.err_plus)
  # The cached sweep of the experiments behaves the same way.
  cached = simulate.compiled_sweep(MIXTURE, d=d)
  for seed in range(2):
    cached(simulate.seed_keys(seed, 3), *_sweep_inputs([40, 20], [1.0 + seed, 4.0], [0.0, 0.1]))
  assert cached._cache_size() == 1
  assert simulate.compiled_sweep(MIXTURE, d=d) is cached


@pytest.mark.parametrize("x64", [False, True])
def test_sweep_matches_direct_fit_and_exact_errors(x64):
  d, sizes, weights, ridges = 6, [48, 24], [0.5, 4.0], [0.0, 0.2]
  with jax.enable_x64(x64):
    keys = simulate.seed_keys(3, 2)
    masks, w, r = _sweep_inputs(sizes, weights, ridges)
    got = jax.jit(jax.vmap(functools.partial(simulate.simulate_seed, mixture=MIXTURE, d=d),
                           in_axes=(0, None, None, None)))(keys, masks, w, r)
    mu_p, mu_m = mixture_lib.means(MIXTURE, d)
    tol = 1e-8 if x64 else 2e-4  # sweep vs direct solve: different factorizations
    for s in range(2):
      x, y = mixture_lib.sample(keys[s], MIXTURE, n=max(sizes), d=d)
      for i in range(len(sizes)):
        for k, weight in enumerate(weights):
          layer = fit(x, y, weight, ridge=ridges[i], mask=masks[i])
          want = metrics.gaussian_class_errors(layer, mu_p, mu_m)
          np.testing.assert_allclose(got.err_plus[s, i, k], want.err_plus, atol=tol, rtol=tol)
          np.testing.assert_allclose(got.err_minus[s, i, k], want.err_minus, atol=tol, rtol=tol)


def test_covariance_sweep_matches_direct_fit():
  """A general-covariance model through the same sweep: exact errors of the direct fit."""
  mix = mixture_lib.power_law_mixture(jax.random.key(1), d=5, pi_plus=0.3, power_plus=1.0,
                                      power_minus=0.5, mahalanobis_sq=4.0)
  keys = simulate.seed_keys(2, 2)
  masks = subsample.nested_masks(simulate.pool_labels(0.3, 40), [40, 20], pi_plus=0.3)
  weights = np.tile([1.0, 3.0], (2, 1))
  got = simulate.run_covariance_sweep(mix, keys, masks=masks, weights=weights,
                                      ridges=np.array([0.0, 0.1]))
  for s in range(2):
    x, y = mixture_lib.sample(keys[s], mix, n=40)
    for i, ridge_ in enumerate((0.0, 0.1)):
      layer = fit(x, y, 3.0, ridge=ridge_, mask=masks[i])
      want = metrics.gaussian_class_errors(layer, jnp.asarray(mix.mean_plus, jnp.float32),
                                           jnp.asarray(mix.mean_minus, jnp.float32),
                                           cov_plus=jnp.asarray(mix.cov_plus, jnp.float32),
                                           cov_minus=jnp.asarray(mix.cov_minus, jnp.float32))
      np.testing.assert_allclose(got.err_plus[s, i, 1], want.err_plus, atol=2e-4)
      np.testing.assert_allclose(got.err_minus[s, i, 1], want.err_minus, atol=2e-4)


def test_interpolator_rows_ignore_the_weight():
  """Ridge 0 and n < d: lls returns the min-norm interpolator for every weight."""
  d = 24
  masks, w, r = _sweep_inputs([16], [0.5, 3.0, 50.0], [0.0])
  keys = simulate.seed_keys(0, 2)
  errors = simulate.run_sweep(MIXTURE, keys, d=d, masks=masks, weights=w, ridges=r)
  np.testing.assert_allclose(np.ptp(errors.err_plus, axis=-1), 0.0, atol=1e-6)
  # ... and it is the interpolator of the kept rows (not, e.g., a fit that dropped them).
  mu_p, mu_m = mixture_lib.means(MIXTURE, d)
  for s in range(2):
    x, y = mixture_lib.sample(keys[s], MIXTURE, n=masks.shape[1], d=d)
    keep = np.asarray(masks[0]) > 0
    layer = fit(x[keep], y[keep], 1.0, ridge=0.0)
    assert np.allclose(x[keep] @ layer.w + layer.b, y[keep], atol=1e-3)     # interpolates
    want = metrics.gaussian_class_errors(layer, mu_p, mu_m)
    np.testing.assert_allclose(errors.err_plus[s, 0], want.err_plus, atol=2e-4)
    np.testing.assert_allclose(errors.err_minus[s, 0], want.err_minus, atol=2e-4)


# ----------------------------------------------------------------------------- entry points

def _check_outputs(out: Path, pngs, csv):
  for name in pngs:
    assert (out / name).stat().st_size > 1000, name
  assert (out / csv).read_text().count("\n") > 1
  payload = load(out / "results.json")
  assert payload["config"] and payload["platform"]["backend"] == "cpu"
  return payload


def test_error_vs_delta_main(tmp_path):
  out = tmp_path / "evd"
  error_vs_delta.main(["--out", str(out), "--quick"])
  res = _check_outputs(out, ["error_vs_delta.png"], "error_vs_delta.csv")["results"]
  for per in res["per_prior"]:
    assert_finite(per["simulation"], "simulation")
    assert_finite(per["theory"], "theory")
    assert per["agreement"]["max_abs_gap"] < MAX_GAP
    assert per["agreement"]["mean_abs_gap"] < MEAN_GAP


def test_error_vs_weight_main(tmp_path):
  out = tmp_path / "evw"
  error_vs_weight.main(["--out", str(out), "--quick"])
  res = _check_outputs(out, ["error_vs_weight.png", "best_weight.png"],
                       "error_vs_weight.csv")["results"]
  sim, best = res["simulation"], res["best_weights"]
  assert_finite(sim, "simulation")
  assert_finite(best["worst"], "optimal worst-class weight")
  assert_finite(best["balanced"], "optimal balanced weight")
  # The equal-error weight is null where none exists, finite (and positive) where it does.
  eq = best["equal_error"]["weight"]
  assert any(v is None for v in eq) and all(v is None or v > 0 for v in eq)
  assert sim["agreement"]["max_abs_gap"] < MAX_GAP
  assert sim["agreement"]["mean_abs_gap"] < MEAN_GAP


@pytest.fixture(scope="module")
def downsampling_run(tmp_path_factory):
  """The quick config plus delta = 0.2, where the downsampled set has n_down = 2 n_+ = d:
  delta' = 1, where the ridgeless theory is undefined (NaN)."""
  out = tmp_path_factory.mktemp("ds")
  downsampling.main(["--out", str(out), "--quick", "--set", "deltas=0.1,0.2,0.3,0.6"])
  return out, _check_outputs(out, ["downsampling.png"], "downsampling.csv")


def test_downsampling_main(downsampling_run):
  _, payload = downsampling_run
  res = payload["results"]
  sim, summary = res["simulation"], res["summary"]
  for regime in downsampling.REGIMES:
    for method in downsampling.METHODS:
      entry = sim[regime][method]
      defined = np.asarray(entry["theory_defined"])
      assert defined.all() or (regime, method) == ("ridge0", "downsample")
      assert_finite({k: v for k, v in entry.items() if not k.startswith("theory")},
                    f"{regime} {method}")
      for key in ("theory_err_plus", "theory_err_minus", "theory_worst"):
        assert all((v is not None) == ok for v, ok in zip(entry[key], defined)), key
      assert sim[regime]["agreement"][method]["max_abs_gap"] < MAX_GAP
  # The smallest n downsamples into the interpolating regime (delta' > 1).
  assert max(sim["delta_downsampled"]) > 1
  # Ridgeless, downsampling wins at the largest delta (the full fit's interpolation peak);
  # with each method's ridge tuned, the optimally weighted fit wins at every n.
  assert summary["ridge0"]["optimal_minus_downsample_worst_theory"][-1] > 0
  assert max(summary["tuned"]["optimal_minus_downsample_worst_theory"]) < 0
  # Ridges: 0 in the ridgeless regime; tuned ones come from the grid and the tuning picks
  # different ridges for different methods or sizes (not one end of the grid for all).
  grid = payload["config"]["ridge_grid"]
  tuned = [r for method in downsampling.METHODS for r in sim["tuned"][method]["ridge"]]
  assert all(r == 0 for method in downsampling.METHODS for r in sim["ridge0"][method]["ridge"])
  assert all(any(math.isclose(r, g) for g in grid) for r in tuned)
  assert len(set(tuned)) > 1


def test_ridge_main(tmp_path):
  out = tmp_path / "ridge"
  ridge.main(["--out", str(out), "--quick", "--set", "ridges=0,0.1"])
  res = _check_outputs(out, ["ridge.png"], "ridge.csv")["results"]
  for panel in res["panels"]:
    interp, ridged = panel["per_ridge"]
    assert interp["ridge"] == 0 and interp["max_spread_over_weights"] < 1e-5
    assert ridged["max_spread_over_weights"] > 0.02
    for pr in panel["per_ridge"]:
      assert_finite(pr["err_plus"], "err_plus")
      assert pr["agreement"]["max_abs_gap"] < MAX_GAP


def test_downsampling_flags_undefined_theory_at_delta_prime_one(downsampling_run):
  """n_down = 2 n_+ = d: the ridgeless theory is NaN there; the point is flagged, not fatal."""
  out, payload = downsampling_run
  sim, summary = payload["results"]["simulation"], payload["results"]["summary"]
  assert sim["delta_downsampled"][1] == 1.0 and sim["n"][1] == 320
  assert sim["ridge0"]["downsample"]["theory_defined"] == [True, False, True, True]
  assert sim["ridge0"]["downsample"]["theory_worst"][1] is None
  assert summary["ridge0"]["theory_undefined_at_n"] == [320]
  assert summary["tuned"]["theory_undefined_at_n"] == []           # a ridge > 0 is defined
  assert math.isfinite(sim["ridge0"]["downsample"]["worst"]["mean"][1])   # simulated anyway
  assert "theory undefined (delta' = 1, ridge 0) at n = [320]" in downsampling.headline(summary)


@pytest.mark.parametrize("study", [error_vs_delta, error_vs_weight, downsampling, ridge])
@pytest.mark.parametrize("pair", ["num_seeds=0", "num_seeds=1", "d=0", "deltas="])
def test_invalid_sizes_raise_before_running(tmp_path, study, pair):
  with pytest.raises(ValueError, match=rf"^{pair.split('=')[0]}:"):
    study.main(["--out", str(tmp_path), "--quick", "--set", pair])
  assert not (tmp_path / "results.json").exists()


def test_gaussian_main_runs_selected_experiments(tmp_path, monkeypatch):
  calls = []

  class Study:
    """Stands in for a study module: records the config it is run with."""
    config, quick = staticmethod(ridge.config), staticmethod(ridge.quick)

    @staticmethod
    def run(cfg, out):
      calls.append((cfg, out))
      return {"summary": {"ran": True}}

    headline = staticmethod(lambda summary: "ok")

  monkeypatch.setitem(gaussian.STUDIES, "ridge", Study)
  payload = gaussian.main(["--out", str(tmp_path), "--quick", "--set", "experiments=ridge",
                           "--set", "num_seeds=2", "--set", "seed=5"])
  assert set(payload["summary"]) == {"ridge"}
  (cfg, out), = calls
  assert cfg == dataclasses.replace(ridge.quick(ridge.config()), num_seeds=2, seed=5)
  assert out == tmp_path / "ridge"
  assert load(tmp_path / "summary.json")["config"]["num_seeds"] == 2
  with pytest.raises(ValueError, match="unknown"):
    gaussian.main(["--out", str(tmp_path), "--set", "experiments=nope"])
  with pytest.raises(ValueError, match="num_seeds"):
    gaussian.main(["--out", str(tmp_path), "--set", "num_seeds=1"])


def test_bench_main(tmp_path):
  res = bench.main(["--out", str(tmp_path), "--quick", "--set", "repeats=1"])
  assert (tmp_path / "bench.txt").exists() and (tmp_path / "bench.csv").exists()
  load(tmp_path / "results.json")
  for row in res["table"]:
    assert row["max_rel_diff_vs_float64"] < 1e-3, row["method"]
    assert row["median_s"] > 0
  assert all(t["finite_fraction"] == 1.0 for t in res["theory_throughput"])


# ----------------------------------------------------------------------------- recommend_validate

def test_recommend_validate_sklearn_rows(tmp_path):
  """Balanced RidgeClassifier as called (alpha = ridge n) and at the same effective ridge.

  At alpha = ridge n^2 / (2 n_-) the balanced weights n / (2 n_k) give exactly the priors
  row's problem (weight n_- / n_+, penalty ridge n |w|^2): equal errors up to float32.
  """
  from experiments import recommend_validate
  recommend_validate.main(["--out", str(tmp_path), "--quick", "--set", "cases=isotropic",
                           "--set", "d=8", "--set", "deltas=0.5", "--set", "pi_plus=0.25",
                           "--set", "num_seeds=2", "--set", "grid_size=4", "--set", "folds=2",
                           "--set", "ridge=0.5", "--set", "timing_repeats=0"])
  payload = load(tmp_path / "results.json")
  assert {"sklearn", "sklearn_same_ridge"} <= set(payload["method_notes"])
  methods = payload["results"]["isotropic"]["methods"]
  same, priors = methods["sklearn_same_ridge"], methods["priors"]
  np.testing.assert_allclose(same["worst"]["mean"], priors["worst"]["mean"], atol=1e-4)
  np.testing.assert_allclose(same["balanced"]["mean"], priors["balanced"]["mean"], atol=1e-4)
  # As called, the effective ridge is 2 n_- / n = 1.5 times larger: a different fit.
  assert abs(methods["sklearn"]["balanced"]["mean"][0] - priors["balanced"]["mean"][0]) > 1e-4
