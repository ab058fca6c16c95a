"""WeightedLeastSquaresClassifier: scikit-learn conformance and agreement with the solvers."""

import warnings

import jax
import numpy as np
import pytest
from sklearn.linear_model import RidgeClassifier
from sklearn.utils.estimator_checks import parametrize_with_checks

from thumb_jax import lls, mixture, recommend
from thumb_jax.sklearn import WeightedLeastSquaresClassifier

ESTIMATORS = [
    WeightedLeastSquaresClassifier(),
    WeightedLeastSquaresClassifier(class_weight="theory", ridge=1e-3),
]


def _expected_failed_checks(estimator):
  """None at present: the binary-only tag (classifier_tags.multi_class = False) makes
  scikit-learn 1.9 run its classifier checks on binary data and check the binary-only
  error message instead, and a {label: weight} dict class_weight is supported.
  """
  return {}


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=_expected_failed_checks)
def test_sklearn_conformance(estimator, check):
  # class_weight="theory" on the checks' tiny random data often has no detectable class
  # signal and falls back to "priors" with a UserWarning, by design.
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "class_weight='theory' undefined", UserWarning)
    check(estimator)


def _data(seed=0, n=200, d=6, pi_plus=0.2, shift=1.0):
  rng = np.random.default_rng(seed)
  y = np.where(np.arange(n) < pi_plus * n, 1.0, -1.0)
  x = rng.standard_normal((n, d)) + shift * y[:, None] * np.linspace(1, 0, d) + 3.0
  return x, y


@pytest.mark.parametrize("ridge", [0.0, 0.05])
def test_matches_ridge_classifier_with_class_weights(ridge):
  """Same objective as RidgeClassifier(alpha = ridge * n, class_weight={+1: w, -1: 1})."""
  x, y = _data()
  ours = WeightedLeastSquaresClassifier(class_weight=3.0, ridge=ridge).fit(x, y)
  ref = RidgeClassifier(alpha=ridge * len(y), class_weight={1.0: 3.0, -1.0: 1.0},
                        solver="svd").fit(x, y)
  np.testing.assert_allclose(ours.coef_.ravel(), ref.coef_.ravel(), rtol=2e-3, atol=1e-5)
  np.testing.assert_allclose(ours.intercept_.ravel(), np.ravel(ref.intercept_), rtol=2e-3,
                             atol=1e-5)
  np.testing.assert_array_equal(ours.predict(x), ref.predict(x))
  # "priors" = scikit-learn's "balanced" at ridge 0 (only the ratio matters there).
  if ridge == 0:
    ours = WeightedLeastSquaresClassifier(class_weight="priors").fit(x, y)
    ref = RidgeClassifier(alpha=0.0, class_weight="balanced", solver="svd").fit(x, y)
    np.testing.assert_allclose(ours.coef_.ravel(), ref.coef_.ravel(), rtol=2e-3, atol=1e-5)
    assert ours.weight_ == pytest.approx(4.0)


def test_matches_lls_fit_and_orientation():
  """Minority = +1 internally; decision_function > 0 always means classes_[1]."""
  x, y = _data(1)
  layer = lls.fit(np.asarray(x - x.mean(0), np.float32), np.asarray(y, np.float32), 2.5,
                  ridge=0.01)
  # Minority label "b" sorts last: scores keep the sign of the +1 fit.
  clf = WeightedLeastSquaresClassifier(class_weight=2.5, ridge=0.01).fit(
      x, np.where(y > 0, "b", "a"))
  assert clf.minority_ == "b" and list(clf.classes_) == ["a", "b"]
  np.testing.assert_allclose(clf.coef_[0], np.asarray(layer.w), rtol=1e-3, atol=1e-5)
  # Minority label "a" sorts first: the same fit with the sign flipped.
  flipped = WeightedLeastSquaresClassifier(class_weight=2.5, ridge=0.01).fit(
      x, np.where(y > 0, "a", "b"))
  assert flipped.minority_ == "a"
  np.testing.assert_allclose(flipped.coef_, -clf.coef_, rtol=1e-6)
  np.testing.assert_array_equal(flipped.predict(x) == "a", clf.predict(x) == "b")
  # A dict class_weight is the same minimizer as (c_+ / c_-, ridge / c_-).
  as_dict = WeightedLeastSquaresClassifier(class_weight={"b": 5.0, "a": 2.0}, ridge=0.02).fit(
      x, np.where(y > 0, "b", "a"))
  np.testing.assert_allclose(as_dict.coef_, clf.coef_, rtol=2e-3, atol=1e-6)
  assert as_dict.weight_ == pytest.approx(2.5)


def test_theory_weight_uses_recommendation():
  x, y = _data(2, n=400, d=8)
  clf = WeightedLeastSquaresClassifier(class_weight="theory", ridge=1e-3,
                                       objective="balanced", dimension="ambient").fit(x, y)
  rec = recommend.recommend_weight(x, y, ridge=1e-3, objective="balanced", dimension="ambient")
  assert clf.recommendation_.weight == pytest.approx(rec.weight)
  assert clf.weight_ == pytest.approx(rec.weight)
  assert WeightedLeastSquaresClassifier().fit(x, y).recommendation_ is None
  # No detectable signal: falls back to the ratio of priors with a warning.
  x0 = np.random.default_rng(0).standard_normal((40, 3))
  y0 = np.where(np.arange(40) < 10, 1, 0)
  x0[y0 == 1] -= x0[y0 == 1].mean(0)
  x0[y0 == 0] -= x0[y0 == 0].mean(0)
  with pytest.warns(UserWarning, match="using 'priors'"):
    clf = WeightedLeastSquaresClassifier(class_weight="theory", ridge=0.1).fit(x0, y0)
  assert clf.weight_ == pytest.approx(3.0)


def test_theory_auto_ridge_general_model_and_method():
  """ridge="auto", model="general", method="auto": the estimator fits the recommendation's
  (method, weight, ridge); a downsampling recommendation keeps all n_+ minority rows and
  n_+ random majority rows at weight 1."""
  x, y = _data(3, n=160, d=16)
  clf = WeightedLeastSquaresClassifier(class_weight="theory", ridge="auto", model="general",
                                       method="auto").fit(x, y)
  rec = recommend.recommend_weight(x, y, ridge="auto", model="general")
  assert clf.recommendation_.model == "general" and clf.ridge_ == pytest.approx(rec.ridge)
  assert clf.method_ == rec.method
  assert clf.weight_ == pytest.approx(rec.choice[1])
  # Isotropic Gaussian, pi_+ = 0.15, delta = 0.6, a tiny ridge: the theory says downsample.
  # (tests/test_recommend_general.py's case: same draw)
  mix = mixture.GaussianMixture.symmetric(pi_plus=0.15, mean_norm=2.0)
  x2, y2 = (np.asarray(v, np.float64) for v in mixture.sample(jax.random.key(1), mix, n=27, d=16))
  down = WeightedLeastSquaresClassifier(class_weight="theory", ridge=1e-3, method="auto",
                                        random_state=5).fit(x2, y2)
  assert down.recommendation_.method == "downsampling"
  assert down.method_ == "downsampling" and down.weight_ == 1.0 and down.ridge_ == 1e-3
  plus = np.flatnonzero(y2 > 0)
  keep = np.sort(np.r_[plus, np.random.default_rng(5).choice(np.flatnonzero(y2 < 0), len(plus),
                                                             replace=False)])
  ref = WeightedLeastSquaresClassifier(class_weight=1.0, ridge=1e-3).fit(x2[keep], y2[keep])
  np.testing.assert_allclose(down.coef_, ref.coef_, rtol=1e-5, atol=1e-7)
  # The default method="weighting" keeps weighting whatever the theory prefers.
  weighted = WeightedLeastSquaresClassifier(class_weight="theory", ridge=1e-3).fit(x2, y2)
  assert weighted.method_ == "weighting"
  assert weighted.weight_ == pytest.approx(down.recommendation_.weight)


@pytest.mark.parametrize("params,match", [
    ({"ridge": "auto"}, "ridge: 'auto' needs class_weight='theory'"),
    ({"class_weight": "theory", "ridge": "best"}, "ridge: expected"),
    ({"model": "gaussian"}, "model: expected"),
    ({"method": "downsampling"}, "method: expected"),
    ({"random_state": "a"}, "random_state: expected"),
    ({"class_weight": 0.0}, "class_weight: expected"),
    ({"class_weight": "balanced"}, "class_weight: expected"),
    ({"ridge": -1.0}, "ridge: expected"),
    ({"objective": "mean"}, "objective: expected"),
    ({"class_weight": {1.0: 2.0}}, "no weight for labels"),
])
def test_bad_parameters(params, match):
  x, y = _data(3, n=40)
  with pytest.raises(ValueError, match=match):
    WeightedLeastSquaresClassifier(**params).fit(x, y)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan, "2"],
                         ids=["inf", "-inf", "nan", "string"])
@pytest.mark.parametrize("param", ["class_weight", "ridge", "class_weight_dict"])
def test_non_finite_or_non_numeric_parameters_raise_naming_them(param, bad):
  x, y = _data(3, n=40)
  params = ({"class_weight": {1.0: bad, -1.0: 1.0}} if param == "class_weight_dict"
            else {param: bad})
  with pytest.raises(ValueError, match=f"^{param.removesuffix('_dict')}: expected"):
    WeightedLeastSquaresClassifier(**params).fit(x, y)


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_extreme_feature_scales_fit_like_unit_scale(scale):
  """Features are centred and scaled in float64 before the float32 solve (1e30 overflowed)."""
  x, y = _data(3, n=40)
  base = WeightedLeastSquaresClassifier(class_weight=4.0, ridge=0.05).fit(x, y)
  scaled = WeightedLeastSquaresClassifier(class_weight=4.0, ridge=0.05 * scale ** 2).fit(
      x * scale, y)
  np.testing.assert_allclose(scaled.coef_ * scale, base.coef_, rtol=1e-4)
  np.testing.assert_allclose(scaled.intercept_, base.intercept_, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(scaled.predict(x * scale), base.predict(x))


def test_multiclass_and_one_class_rejected():
  x = np.random.default_rng(0).standard_normal((30, 2))
  with pytest.raises(ValueError, match="Only binary classification is supported"):
    WeightedLeastSquaresClassifier().fit(x, np.repeat([0, 1, 2], 10))
  with pytest.raises(ValueError, match="only one class"):
    WeightedLeastSquaresClassifier().fit(x, np.zeros(30))
