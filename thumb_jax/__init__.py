"""thumb_jax: optimal loss weighting in last-layer retraining under class imbalance.

Where each idea of the paper lives:
  mixture      the two-class Gaussian model and its sampler
  lls          the retrained last layer: weighted ridge least squares, one-factorization sweeps
  metrics      exact Gaussian and empirical per-class errors, confidence intervals
  theory       asymptotic per-class errors, downsampling, optimal and equal-error weights
  anisotropic  beyond the paper: per-class error theory for any class covariances
  recommend    beyond the paper: a theory-guided weight for any embeddings
  retrain      last-layer retraining sweeps on fixed embeddings (sizes x repeats x weights)
  images/      real images: data loaders, Flax ResNet34, fine-tuning, cached embeddings
  sklearn, cli the recommendation as a scikit-learn estimator and a command line
"""

from thumb_jax import platform as _platform

_platform.configure_xla_cpu()  # before any jax computation: see thumb_jax/platform.py

from thumb_jax import anisotropic, lls, metrics, mixture, recommend, retrain, theory  # noqa: E402
from thumb_jax.mixture import GaussianMixture  # noqa: E402
from thumb_jax.recommend import recommend_weight  # noqa: E402

__all__ = ["GaussianMixture", "anisotropic", "lls", "metrics", "mixture", "recommend",
           "recommend_weight", "retrain", "theory"]
