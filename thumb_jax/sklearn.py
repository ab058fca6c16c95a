"""A scikit-learn compatible weighted least-squares classifier (the retrained last layer).

    from thumb_jax.sklearn import WeightedLeastSquaresClassifier
    clf = WeightedLeastSquaresClassifier(class_weight="theory", ridge=1e-3).fit(X, y)
    # The theory's joint choice: weight, ridge, and weighting or downsampling.
    clf = WeightedLeastSquaresClassifier(class_weight="theory", ridge="auto", model="general",
                                         method="auto").fit(X, y)

It fits `thumb_jax.lls.fit`: square loss on +1 / -1 targets, the less frequent label
as +1 with class weight c_+ and the other with c_- = 1, an unpenalized intercept and
the penalty ridge * n * |w|^2 (n = number of training rows). Binary only.
Requires the optional dependency scikit-learn (`pip install thumb_jax[sklearn]`).
"""

from __future__ import annotations

import math
import numbers
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

from thumb_jax import lls, recommend


def _finite_number(value) -> bool:
  """A real, finite number (not a bool, a string or an array)."""
  return (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and math.isfinite(value))


# Jitted at its only use site: one compile per data shape (faster than op-by-op dispatch).
_fit = jax.jit(lls.fit)


class WeightedLeastSquaresClassifier(ClassifierMixin, BaseEstimator):
  """Class-weighted ridge least-squares classifier with theory-guided weights.

  Parameters:
    class_weight: minority weight c_+ (a positive number; c_- = 1), "priors" (c_+ = n_- / n_+,
      scikit-learn's "balanced"), "theory" (`thumb_jax.recommend.recommend_weight`), or a
      dict {label: weight} for both labels (fitted as c_+ / c_- with ridge / c_-, the same
      minimizer).
    ridge: ridge >= 0; the objective adds ridge * n * |w|^2. With class_weight="theory" also
      "auto": the ridge the theory predicts best (`recommend_weight(ridge="auto")`).
    objective: what "theory" minimizes, "worst" (worst-class error) or "balanced".
    dimension: the effective dimension "theory" uses ("participation", "effective_rank",
      "ambient", "whitened" or a positive number; see thumb_jax.recommend).
    model: the theory "theory" uses, "isotropic" or "general" (any class covariances).
    method: "weighting" (always fit with a class weight) or "auto": with class_weight="theory",
      follow the recommendation, which may be to downsample the majority at random (seeded
      by random_state) to n_+ rows and fit with weight 1.
    random_state: seed of that downsampling (an int).

  Attributes (after fit):
    classes_: [2] labels, sorted; decision_function > 0 predicts classes_[1].
    minority_: the label fitted as +1 (the less frequent).
    weight_: the minority weight c_+ used (relative to c_- = 1).
    coef_: [1, d] and intercept_: [1] of decision_function (sign oriented to classes_[1]).
    recommendation_: the Recommendation when class_weight="theory" (None otherwise).
    ridge_: the ridge used; method_: "weighting" or "downsampling".
    n_features_in_ (and feature_names_in_ for named columns).

  With class_weight="theory", data that admit no recommendation (no detectable class
  separation, or ridge = 0 with more features than samples, where the weight has no
  effect) fall back to "priors" with a UserWarning.
  """

  def __init__(self, class_weight=1.0, ridge=0.0, objective="worst", dimension="participation",
               model="isotropic", method="weighting", random_state=0):
    self.class_weight = class_weight
    self.ridge = ridge
    self.objective = objective
    self.dimension = dimension
    self.model = model
    self.method = method
    self.random_state = random_state

  def __sklearn_tags__(self):
    tags = super().__sklearn_tags__()
    tags.classifier_tags.multi_class = False
    return tags

  def _check_params(self):
    cw = self.class_weight
    valid = (isinstance(cw, dict) or cw in ("priors", "theory")
             if isinstance(cw, (str, dict)) else _finite_number(cw) and cw > 0)
    if not valid:
      raise ValueError("class_weight: expected a finite positive number, 'priors', 'theory' or "
                       f"a dict {{label: weight}}, got {cw!r}")
    if isinstance(self.ridge, str) and self.ridge == "auto":
      if cw != "theory":
        raise ValueError(f"ridge: 'auto' needs class_weight='theory', got class_weight={cw!r}")
    elif not _finite_number(self.ridge) or not self.ridge >= 0:
      raise ValueError(f"ridge: expected a finite number >= 0 or 'auto', got {self.ridge!r}")
    if self.objective not in ("worst", "balanced"):
      raise ValueError(f"objective: expected 'worst' or 'balanced', got {self.objective!r}")
    if self.model not in recommend.MODELS:
      raise ValueError(f"model: expected one of {list(recommend.MODELS)}, got {self.model!r}")
    if self.method not in ("weighting", "auto"):
      raise ValueError(f"method: expected 'weighting' or 'auto', got {self.method!r}")
    if (isinstance(self.random_state, bool)
        or not isinstance(self.random_state, (int, np.integer))):
      raise ValueError(f"random_state: expected an integer, got {self.random_state!r}")

  def _minority_weight(self, x, labels, n_plus, n_minus, ridge):
    """(c_+ / c_-, ridge / c_-, recommendation or None) for the chosen class_weight."""
    cw = self.class_weight
    prior = n_minus / n_plus
    if cw == "priors":
      return prior, ridge, None
    if cw == "theory":
      try:
        rec = recommend.recommend_weight(x, labels, ridge=ridge, objective=self.objective,
                                         dimension=self.dimension, model=self.model)
      except recommend.RecommendationUndefined as err:
        if ridge == "auto":       # 1e-3 x the mean feature variance, the validation's ridge
          ridge = 1e-3 * float(np.mean(np.var(np.asarray(x, np.float64), axis=0)))
        warnings.warn(f"class_weight='theory' undefined here ({err}); using 'priors' at "
                      f"ridge {ridge:.3g}", UserWarning, stacklevel=3)
        return prior, ridge, None
      return rec.weight, rec.ridge, rec
    if isinstance(cw, dict):
      missing = [c for c in self.classes_ if c not in cw]
      if missing:
        raise ValueError(f"class_weight: the dict has no weight for labels {missing}")
      c_plus, c_minus = cw[self.minority_], cw[self._majority]
      if not (_finite_number(c_plus) and _finite_number(c_minus) and c_plus > 0
              and c_minus > 0):
        raise ValueError(f"class_weight: expected finite positive weights, got {cw!r}")
      c_plus, c_minus = float(c_plus), float(c_minus)
      # c_- [sum (c_+/c_-) ... + (ridge/c_-) n |w|^2] has the same minimizer.
      return c_plus / c_minus, ridge / c_minus, None
    return float(cw), ridge, None

  def fit(self, X, y):
    """Fits the last layer. X [n, d] numeric, y [n] with exactly two labels."""
    self._check_params()
    X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], y_numeric=False)
    y_type = type_of_target(y, input_name="y", raise_unknown=True)
    if y_type != "binary":
      raise ValueError("Only binary classification is supported. The type of the target "
                       f"is {y_type}.")
    self.classes_, counts = np.unique(y, return_counts=True)
    if self.classes_.shape[0] < 2:
      raise ValueError("Classifier can't train when only one class is present: found one "
                       f"class ({self.classes_[0]!r}); two are needed")
    minority = 1 if counts[1] <= counts[0] else 0     # recommend.encode_labels' rule
    self.minority_ = self.classes_[minority]
    self._majority = self.classes_[1 - minority]
    weight, ridge, self.recommendation_ = self._minority_weight(
        X, y, counts[minority], counts[1 - minority],
        self.ridge if isinstance(self.ridge, str) else float(self.ridge))
    self.ridge_ = float(ridge)
    self.method_ = "weighting"
    rec = self.recommendation_
    if self.method == "auto" and rec is not None and rec.method == "downsampling":
      # All minority rows and as many majority rows, drawn at random; weight 1.
      rng = np.random.default_rng(self.random_state)
      plus = np.flatnonzero(y == self.minority_)
      minus = rng.choice(np.flatnonzero(y != self.minority_), plus.shape[0], replace=False)
      keep = np.sort(np.concatenate([plus, minus]))
      X, y, weight, self.method_ = X[keep], y[keep], 1.0, "downsampling"
    self.weight_ = float(weight)
    signs = np.where(y == self.minority_, 1.0, -1.0)
    # Centre and scale in float64 first: the fit is translation invariant, float32 loses
    # digits on features with a large common offset and overflows on features near 1e20;
    # x / s with ridge / s^2 has the same minimizer in s w (s a power of two: exact).
    centre = X.mean(axis=0, dtype=np.float64)
    centred = X - centre
    scale = lls.host_scale(centred)
    dtype = jnp.result_type(float)
    layer = _fit(jnp.asarray(centred / scale, dtype), jnp.asarray(signs, dtype), self.weight_,
                 ridge=ridge / scale ** 2)
    w = np.asarray(layer.w, np.float64) / scale
    b = float(layer.b) - float(centre @ w)
    orient = 1.0 if minority == 1 else -1.0            # positive scores -> classes_[1]
    self.coef_ = orient * w[None, :]
    self.intercept_ = np.array([orient * b])
    return self

  def decision_function(self, X):
    """Scores [n]; > 0 predicts classes_[1]."""
    check_is_fitted(self)
    X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
    return np.asarray(X, np.float64) @ self.coef_[0] + self.intercept_[0]

  def predict(self, X):
    """Labels [n] from classes_."""
    scores = self.decision_function(X)
    return self.classes_[(scores > 0).astype(int)]
