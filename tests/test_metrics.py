"""Per-class error metrics: empirical counts (NaN scores are errors) and t-intervals."""

import jax.numpy as jnp
import numpy as np
import pytest

from thumb_jax import metrics

LABELS = jnp.array([1.0, 1.0, -1.0, -1.0])


@pytest.mark.parametrize("bad", [jnp.nan, -jnp.nan])
def test_nan_scores_count_as_errors_for_both_classes(bad):
  """A NaN layer (e.g. a failed solve) must never be scored as correct."""
  scores = jnp.full((4,), bad)
  errs = metrics.empirical_class_errors(scores, LABELS)
  np.testing.assert_array_equal([errs.err_plus, errs.err_minus], [1.0, 1.0])


def test_scores_are_thresholded_at_zero_with_infinities_and_masks():
  scores = jnp.array([[0.5, -jnp.inf, -0.2, jnp.inf], [0.0, 1.0, 0.0, -1.0]])
  errs = metrics.empirical_class_errors(scores, LABELS)
  np.testing.assert_array_equal(errs.err_plus, [0.5, 0.5])        # score 0 predicts -1
  np.testing.assert_array_equal(errs.err_minus, [0.5, 0.0])
  masked = metrics.empirical_class_errors(scores, LABELS, jnp.array([1.0, 0.0, 1.0, 0.0]))
  np.testing.assert_array_equal(masked.err_plus, [0.0, 1.0])
  np.testing.assert_array_equal(masked.err_minus, [0.0, 0.0])


def test_mean_ci_is_the_student_t_interval():
  values = np.random.default_rng(0).normal(0.3, 0.1, size=(10, 3))
  ci = metrics.mean_ci(values)
  se = values.std(0, ddof=1) / np.sqrt(10)
  np.testing.assert_allclose(ci.standard_error, se, rtol=1e-12)
  np.testing.assert_allclose(ci.half_width, 2.262157 * se, rtol=1e-6)   # t_{0.975, 9}
  np.testing.assert_allclose(ci.high - ci.low, 2 * ci.half_width, rtol=1e-12)


def test_normal_tail_errors_are_nan_where_rounding_could_move_them():
  z = np.array([-1.0, 0.0, np.inf, -np.inf, np.nan, 0.0])
  slack = np.array([0.0, 1e-6, 1.0, 1.0, 0.0, 1e-2])
  errors, log_errors = metrics.normal_tail_errors(z, -z, slack, slack)
  np.testing.assert_allclose(errors.err_plus[:4], [0.158655, 0.5, 1.0, 0.0], atol=1e-6)
  np.testing.assert_allclose(errors.err_minus[:2], [0.841345, 0.5], atol=1e-6)
  np.testing.assert_allclose(log_errors.err_plus[:2], np.log([0.158655, 0.5]), atol=1e-5)
  # NaN z, or a slack of 1e-2 at z = 0 (Phi moves by 8e-3 > ROUNDING_TOL): NaN.
  assert np.isnan(errors.err_plus[4:]).all() and np.isnan(log_errors.err_minus[4:]).all()
