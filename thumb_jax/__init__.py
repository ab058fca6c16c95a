"""thumb_jax: optimal loss weighting in last-layer retraining under class imbalance.

Where each idea of the paper lives:
  mixture   the two-class Gaussian model and its sampler
  lls       the retrained last layer: weighted ridge least squares, one-factorization sweeps
  metrics   exact Gaussian and empirical per-class errors, confidence intervals
  theory    asymptotic per-class errors, downsampling, optimal and equal-error weights
"""

from thumb_jax import lls, metrics, mixture, theory
from thumb_jax.mixture import GaussianMixture

__all__ = ["GaussianMixture", "lls", "metrics", "mixture", "theory"]
