"""float64 NumPy reference for weighted ridge least squares with an unpenalized intercept.

The one oracle the solver tests compare against (THEORY.md, "Estimator"):

    (w, b) = argmin sum_i c_i (y_i - w.x_i - b)^2 + ridge * n * |w|^2,   n = #{i: c_i > 0}.

Weighted centring eliminates b (b = ybar - xbar.w with c-weighted means); w is then the
least-squares solution of the centred rows stacked on sqrt(ridge n) I, which `lstsq`
returns with minimum norm, so ridge 0 with a singular system gives the minimum-norm
interpolator (the ridge -> 0+ limit).
"""

import numpy as np


def weighted_fit(x, y, c, ridge=0.0):
  """x [n, d], y [n], sample weights c [n] >= 0, ridge >= 0 -> (w [d], b) in float64."""
  x, y, c = (np.asarray(a, np.float64) for a in (x, y, c))
  keep = c > 0
  x, y, c = x[keep], y[keep], c[keep]
  xbar, ybar = c @ x / c.sum(), c @ y / c.sum()
  root = np.sqrt(c)
  design, target = root[:, None] * (x - xbar), root * (y - ybar)
  d = x.shape[1]
  if ridge > 0:
    design = np.r_[design, np.sqrt(ridge * len(x)) * np.eye(d)]
    target = np.r_[target, np.zeros(d)]
  w = np.linalg.lstsq(design, target, rcond=None)[0]
  return w, ybar - xbar @ w


def class_fit(x, y, weight, *, ridge=0.0, mask=None):
  """Class weights c_+ = weight, c_- = 1 (labels y in {+1, -1}), times an optional 0/1 mask."""
  y = np.asarray(y, np.float64)
  c = np.where(y > 0, float(weight), 1.0)
  if mask is not None:
    c = c * np.asarray(mask, np.float64)
  return weighted_fit(x, y, c, ridge)
