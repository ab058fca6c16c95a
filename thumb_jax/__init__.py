"""thumb_jax: optimal loss weighting in last-layer retraining under class imbalance.

Where each idea of the paper lives (README, "Where each idea of the paper lives"):
  mixture          the two-class Gaussian model (isotropic or any covariances), its sampler
  lls              the retrained last layer: weighted ridge least squares, one factorization
                   for every class weight (full or low-rank minority form)
  metrics          exact Gaussian and empirical per-class errors, confidence intervals
  theory           the paper's asymptotic per-class errors (isotropic), optimal weights
  anisotropic      beyond the paper: per-class error theory for any class covariances
  weight_search    the log-weight search both theories share
  simulate         Monte Carlo per-class errors on simulated pools (the Gaussian studies)
  subsample        fixed-shape subsample masks: nested sizes, repeats, downsampling
  embedding_files  embedding .npz files on disk
  retrain          last-layer retraining sweeps on fixed embeddings, methods by name
  plug_in, recommend   beyond the paper: a theory-guided weight for any embeddings
  sklearn, cli     the recommendation as a scikit-learn estimator and a command line
  images/          real images: loaders, Flax ResNet34, fine-tuning, cached embeddings
  devices          a mesh over all devices and processes; sharded batch axes
  io, platform     atomic files and strict JSON; XLA:CPU / BLAS / PRNG workarounds
"""

from thumb_jax import platform as _platform

_platform.configure_xla_cpu()  # before any jax computation: see thumb_jax/platform.py
_platform.sequential_cpu_decompositions()

from thumb_jax import anisotropic, lls, metrics, mixture, recommend, retrain, theory  # noqa: E402
from thumb_jax.mixture import GaussianMixture  # noqa: E402
from thumb_jax.recommend import recommend_weight  # noqa: E402

__all__ = ["GaussianMixture", "anisotropic", "lls", "metrics", "mixture", "recommend",
           "recommend_weight", "retrain", "theory"]
