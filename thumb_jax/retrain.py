"""Last-layer retraining sweeps on fixed embeddings: every sample size, repeat and weight at once.

Given a retraining pool (x_pool [N, d], y_pool [N], class +1 = minority) and a test split,
`sweep` retrains the weighted least-squares last layer (`lls`) on S x R subsamples of the
pool (S sample sizes, R seeded repeats) for K class weights, plus a few weighting methods
per subsample, and returns the per-class test errors. Everything is one jitted call:

    masks  = retrain.subsample_masks(key, y_pool, count_plus, count_minus, num_repeats=R)
    result = jax.jit(retrain.sweep, static_argnames=retrain.STATIC)(
        x_pool, y_pool, x_test, y_test, masks, weights, ridge=1e-3)

or, from host arrays, `retrain.run(...)` (builds the masks, picks the ridge, jits once per
shape and returns NumPy arrays).

Subsamples. For size n the subsample keeps n_+ = round(pi n) rows of class +1 and n - n_+ of
class -1 (`mixture.class_counts`, pi = the pool's minority share: the pool's class balance,
fixed counts). Repeat r draws one uniformly random order of each class of the pool from
`fold_in(key, r)`; every size takes the first rows of that order, so within a repeat the
subsamples are nested (common random numbers across n), across repeats independent. A
subsample is a 0/1 mask over the pool, never a slice, so every (size, repeat) has the same
shapes and the whole grid is one jitted computation (`jax.lax.map` over subsamples). The
downsampling mask keeps the subsample's n_+ minority rows and the first n_+ of its majority
rows (balanced, n' = 2 n_+; nested inside the subsample).

Factorization. Per subsample, `lls.factor_low_rank` (one Cholesky of the within-class scatter
plus a P x P eigendecomposition, P = the minority row buffer >= n_+, or r x r when P >= r:
the minority's scatter has rank below n_+) serves every weight at O(d P) each; its scatter
also feeds the plug-in statistics, so each subsample's rows are multiplied out once.

Features. The pool and the test split are centred by the pool mean and divided by one scalar,
feature_scale = sqrt(tr Cov(x_pool) / d). The intercept is unpenalized, so this changes no
classifier for ridge = 0; for ridge > 0 it makes `ridge` relative to the mean per-coordinate
variance (ridge lam on the scaled features is lam * feature_scale^2 on the raw ones). The
returned layers are mapped back to raw coordinates.

Ridge. The objective is sum_i c_i (y_i - w.x_i - b)^2 + ridge * n * |w|^2 (THEORY.md). With
ridge 0 the fit interpolates for n - 2 < d and the ridgeless theory needs delta = d / n < 1;
`default_ridge` therefore returns 1e-3 when any size has n < d + 2 and 0 otherwise, one ridge
for the whole sweep (so curves over n stay comparable).

Methods, per subsample (each evaluated by an extra solve from the subsample's factorization,
except downsampling, which is its own fit):
  unweighted            weight 1.
  prior_ratio           n_- / n_+ (the subsample's ratio of priors; scikit-learn's 'balanced').
  theory                `theory.optimal_weight` (worst-class objective by default) of the
                        plug-in isotropic mixture (`recommend.plug_in_stats` / `surrogate`:
                        debiased squared mean difference, class traces) estimated on the
                        subsample itself, with delta = d / n (d = the embedding width; with
                        dimension="participation", d_eff as below). This is what a
                        practitioner holding only the subsample can do.
  theory_participation  the same with d_eff = the debiased participation ratio of the
                        subsample's within-class covariance (recommend's default),
                        delta = d_eff / n.
  theory_pool           "oracle-ish": the plug-in estimated once on the whole retraining pool
                        (more data than the subsample has), delta = d / n for the subsample's n.
  downsample            weight 1 on the balanced downsampled subsample.
  grid_oracle           the grid weight with the smallest worst-class *test* error, chosen on
                        the test split (a hindsight lower bound, not a method).
Where a plug-in is undefined (debiased squared mean difference <= 0, or ridge 0 with
delta >= 1) the theory methods fall back to the prior ratio (theory_pool: the pool's);
`defined` marks where the `theory` method's own weight was used. The plug-in never sees the test split (nor the backbone's training split).

Theory overlay. `TheoryCurves` holds the pool plug-in's predicted per-class errors
(`theory.class_errors` at delta = d / n) for every grid weight and size, its optimal weight,
and its predictions for the prior ratio and for downsampling, to set beside the measured ones.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from thumb_jax import lls, mixture, recommend, theory
from thumb_jax.metrics import ClassErrors, empirical_class_errors

METHODS = ("unweighted", "prior_ratio", "theory", "theory_participation", "theory_pool",
           "downsample", "grid_oracle")
STATIC = ("ridge", "objective", "dimension", "batch_size", "row_buffers")
DEFAULT_RIDGE = 1e-3


class Subsamples(NamedTuple):
  """0/1 masks over the pool for S sizes x R repeats (float, same dtype as the features).

  mask: [S, R, N] the subsample; downsample: [S, R, N] its balanced downsampling;
  count_plus, count_minus: [S] class counts of each size (int32).
  """
  mask: jax.Array
  downsample: jax.Array
  count_plus: jax.Array
  count_minus: jax.Array


class MethodResult(NamedTuple):
  """One weighting method on every subsample.

  weight: [S, R] the class weight used (1 for downsampling).
  errors: ClassErrors [S, R] measured on the test split.
  predicted: ClassErrors [S, R] the plug-in theory's prediction for that weight (NaN where
    the method makes none).
  layer: LastLayer (w [S, R, d], b [S, R]) in raw feature coordinates.
  """
  weight: jax.Array
  errors: ClassErrors
  predicted: ClassErrors
  layer: lls.LastLayer


class Methods(NamedTuple):
  """`MethodResult` per method (module docstring)."""
  unweighted: MethodResult
  prior_ratio: MethodResult
  theory: MethodResult
  theory_participation: MethodResult
  theory_pool: MethodResult
  downsample: MethodResult
  grid_oracle: MethodResult


class TheoryCurves(NamedTuple):
  """Predictions of the plug-in mixture estimated on the whole pool (delta = d / n).

  mixture: GaussianMixture of scalars (midpoint frame, see `recommend`).
  delta: [S] d / n.
  errors: ClassErrors [S, K] at every grid weight.
  optimal: theory.OptimalWeight [S] (its weight is the theory_pool method's weight).
  prior_ratio: ClassErrors [S] at the pool's ratio of priors.
  downsample: ClassErrors [S] after balanced downsampling (theory.downsampled_class_errors).
  """
  mixture: mixture.GaussianMixture
  delta: jax.Array
  errors: ClassErrors
  optimal: theory.OptimalWeight
  prior_ratio: ClassErrors
  downsample: ClassErrors


class RetrainResult(NamedTuple):
  """Everything `sweep` measures (shapes with S sizes, R repeats, K weights).

  sizes, count_plus, count_minus: [S]; weights: [K].
  errors: ClassErrors [S, R, K], test errors of the grid of weights.
  layers: LastLayer (w [S, R, K, d], b [S, R, K]) in raw coordinates.
  methods: Methods.
  defined: bool [S, R], the per-subsample plug-in (theory method) was defined.
  theory: TheoryCurves.
  ridge: [] the ridge used (on the scaled features); feature_scale: [] (module docstring).
  """
  sizes: jax.Array
  count_plus: jax.Array
  count_minus: jax.Array
  weights: jax.Array
  errors: ClassErrors
  layers: lls.LastLayer
  methods: Methods
  defined: jax.Array
  theory: TheoryCurves
  ridge: jax.Array
  feature_scale: jax.Array


# ----------------------------------------------------------------------------- embedding files


def cache_field(text: str) -> str:
  """A field of an embedding cache name: characters other than letters, digits, '.' and '-'
  become '-' (celeba-Blond_Hair -> celeba-Blond-Hair), so '_' only separates fields."""
  return re.sub(r"[^A-Za-z0-9.-]+", "-", text)


def find_split_file(directory: str | os.PathLike, split: str, *,
                    dataset: str | None = None) -> str:
  """{split}.npz in `directory`, else its one cache-named file for `split` (ValueError otherwise).

  Cache names: `thumb_jax.images.embeddings.cache_path` writes
  {dataset}_{split}_d{k}_{hash}.npz (fields through `cache_field`); {split}_*.npz is
  accepted too. With `dataset` given, only names whose first field is that dataset, or it
  plus "-..." (celeba matches celeba-Blond-Hair; cifar10 does not match cifar100), count.
  """
  folder = os.fspath(directory)
  exact = os.path.join(folder, f"{split}.npz")
  if os.path.exists(exact):
    return exact
  if not os.path.isdir(folder):
    raise ValueError(f"directory: {folder} is not a directory (expected the embedding files)")
  field = cache_field(split)
  patterns = (f"{field}_*.npz", f"*_{field}_*.npz")
  matches = sorted({m for pattern in patterns for m in glob.glob(os.path.join(folder, pattern))})
  if dataset is not None:
    want = cache_field(dataset)
    first_field = lambda m: os.path.basename(m).split("_")[0]
    matches = [m for m in matches
               if first_field(m) == want or first_field(m).startswith(want + "-")]
  if len(matches) != 1:
    which = f"{dataset}*_{split}_d*.npz" if dataset else f"*_{split}_d*.npz"
    raise ValueError(f"{split} split: expected {exact} or exactly one {which} (cache name) in "
                     f"{folder}, found {[os.path.basename(m) for m in matches]}")
  return matches[0]


def load_embedding_splits(directory: str | os.PathLike,
                          splits: Sequence[str] = ("val", "test"), *,
                          dataset: str | None = None) -> dict:
  """Reads {split}.npz files: `embeddings` [N, d] and `labels` [N] (two values).

  Tolerated: the cache names of thumb_jax.images.embeddings (see `find_split_file`; exactly
  one per split, or per split and `dataset`), and the array names x / features and y / targets.
  By default only `val` (the retraining pool) and `test` (evaluation) are read; `train`
  (the backbone's training split, whose embeddings the network has fit) is not needed.

  Returns:
    {split: (x [N, d] float64, labels [N])}.
  """
  out = {}
  for split in splits:
    path = find_split_file(directory, split, dataset=dataset)
    with np.load(path, allow_pickle=False) as f:
      names = list(f.keys())
      xkey = next((k for k in ("embeddings", "x", "features") if k in names), None)
      ykey = next((k for k in ("labels", "y", "targets") if k in names), None)
      if xkey is None or ykey is None:
        raise ValueError(f"{path}: expected arrays 'embeddings' and 'labels', found {names}")
      x, y = np.asarray(f[xkey], np.float64), np.asarray(f[ykey])
    if x.ndim != 2 or y.shape != (x.shape[0],):
      raise ValueError(f"{path}: expected embeddings [N, d] and labels [N], got {x.shape}, "
                       f"{y.shape}")
    out[split] = (x, y)
  widths = {split: x.shape[1] for split, (x, _) in out.items()}
  if len(set(widths.values())) > 1:
    raise ValueError(f"{directory}: the splits have different embedding widths {widths}")
  return out



class RetrainingData(NamedTuple):
  """A retraining pool (the val split) and a test split, labels in {+1, -1}.

  +1 is the pool's less frequent label (`recommend.encode_labels`); `labels` maps back to
  the file's values. `files`: split -> {"file", "shape", "provenance"} (the cache's JSON
  provenance of the backbone and data, when the file has one).
  """
  x_pool: np.ndarray        # [N, d]
  y_pool: np.ndarray        # [N]
  x_test: np.ndarray        # [M, d]
  y_test: np.ndarray        # [M]
  labels: recommend.LabelMap
  files: dict


def _file_record(path: str, x: np.ndarray) -> dict:
  with np.load(path, allow_pickle=False) as f:
    text = str(f["provenance"]) if "provenance" in f.files else None
  try:
    provenance = None if text is None else json.loads(text)
  except json.JSONDecodeError:
    provenance = text
  return {"file": os.path.basename(path), "shape": list(x.shape), "provenance": provenance}


def encode_pool_and_test(labels_pool, labels_test) -> tuple[np.ndarray, np.ndarray,
                                                             recommend.LabelMap]:
  """Labels -> {+1, -1}, +1 = the pool's minority; the test split must use the same two values.

  Returns:
    (y_pool [N], y_test [M], LabelMap).

  Raises:
    ValueError naming the split: not two classes in the pool, unknown or one-class test labels.
  """
  try:
    y_pool, mapping = recommend.encode_labels(labels_pool)
  except ValueError as err:
    raise ValueError(f"val split (the retraining pool): {err}") from None
  labels_test = np.asarray(labels_test)
  unknown = sorted(set(np.unique(labels_test).tolist()) - {mapping.plus, mapping.minus})
  if unknown:
    raise ValueError(f"test split: labels {unknown[:5]} are not among the pool's labels "
                     f"{[mapping.plus, mapping.minus]}")
  y_test = np.where(labels_test == mapping.plus, 1.0, -1.0)
  if np.all(y_test > 0) or np.all(y_test < 0):
    raise ValueError("test split: expected both classes, found only one")
  return y_pool, y_test, mapping


def load_retraining_data(directory: str | os.PathLike, *,
                         dataset: str | None = None) -> RetrainingData:
  """The val (retraining pool) and test embeddings of `directory`, labels encoded.

  See `load_embedding_splits` for the file names and `encode_pool_and_test` for the labels.
  """
  arrays = load_embedding_splits(directory, ("val", "test"), dataset=dataset)
  (x_pool, labels_pool), (x_test, labels_test) = arrays["val"], arrays["test"]
  y_pool, y_test, mapping = encode_pool_and_test(labels_pool, labels_test)
  files = {split: _file_record(find_split_file(directory, split, dataset=dataset),
                               arrays[split][0]) for split in ("val", "test")}
  return RetrainingData(x_pool, y_pool, x_test, y_test, mapping, files)


# ----------------------------------------------------------------------------- subsamples


def size_counts(labels, sizes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
  """Fixed class counts (n_+, n_-) per size with the pool's class balance (host side).

  Args:
    labels: pool labels [N] in {+1, -1} (concrete).
    sizes: sample sizes, each in [4, N].

  Returns:
    (count_plus [S], count_minus [S]) int32.

  Raises:
    ValueError: a size out of range, or one that leaves a class with fewer than 2 rows.
  """
  y = np.asarray(labels)
  if y.ndim != 1 or not np.all((y == 1) | (y == -1)):
    raise ValueError("labels: expected a 1-D array of values in {+1, -1}")
  n_pool, pool_plus = y.shape[0], int(np.sum(y > 0))
  pool_minus = n_pool - pool_plus
  if pool_plus < 2 or pool_minus < 2:
    raise ValueError(f"labels: expected at least 2 rows per class, got {pool_plus} of +1 and "
                     f"{pool_minus} of -1")
  sizes = [int(n) for n in np.atleast_1d(np.asarray(sizes))]
  if not sizes:
    raise ValueError("sizes: expected at least one size")
  pi = pool_plus / n_pool
  plus, minus = [], []
  for n in sizes:
    if not 4 <= n <= n_pool:
      raise ValueError(f"sizes: expected every size in [4, {n_pool}] (the pool), got {n}")
    n_plus, n_minus = mixture.class_counts(n, pi)
    if n_plus < 2 or n_minus < 2:
      raise ValueError(f"sizes: size {n} keeps {n_plus} rows of class +1 (pool share "
                       f"{pi:.3f}); at least 2 per class are needed")
    plus.append(min(n_plus, pool_plus))
    minus.append(min(n_minus, pool_minus))
  return np.asarray(plus, np.int32), np.asarray(minus, np.int32)


def subsample_masks(key: jax.Array, labels: jax.Array, count_plus: jax.Array,
                    count_minus: jax.Array, *, num_repeats: int,
                    dtype=None) -> Subsamples:
  """Seeded nested subsample masks with fixed class counts (pure; jit it at the call site).

  Repeat r ranks the rows of each class in a uniformly random order drawn from
  fold_in(key, r); size s keeps the rows of class +1 ranked below count_plus[s] and those of
  class -1 ranked below count_minus[s]. Downsampling keeps rows of either class ranked below
  count_plus[s] (requires count_plus <= count_minus).

  Args:
    key: PRNG key.
    labels: [N] in {+1, -1}.
    count_plus, count_minus: [S] integer class counts (see `size_counts`); may be traced.
    num_repeats: R (static).
    dtype: mask dtype (default: the default float dtype).

  Returns:
    Subsamples with masks [S, R, N].
  """
  dtype = jnp.result_type(float) if dtype is None else dtype
  plus = labels > 0

  def ranks(r):
    u = jax.random.uniform(jax.random.fold_in(key, r), labels.shape)
    # Sorting by (other class last, u) puts this class's rows first in random order;
    # the position of a row in that order is its rank within its class.
    rank_plus = jnp.argsort(jnp.argsort(jnp.where(plus, u, 2.0 + u)))
    rank_minus = jnp.argsort(jnp.argsort(jnp.where(plus, 2.0 + u, u)))
    return jnp.where(plus, rank_plus, rank_minus)

  rank = jax.vmap(ranks)(jnp.arange(num_repeats))                          # [R, N]
  count_plus = jnp.asarray(count_plus, jnp.int32)
  count_minus = jnp.asarray(count_minus, jnp.int32)
  limit = jnp.where(plus, count_plus[:, None], count_minus[:, None])      # [S, N]
  mask = (rank[None] < limit[:, None]).astype(dtype)
  downsample = (rank[None] < count_plus[:, None, None]).astype(dtype)
  return Subsamples(mask, downsample, count_plus, count_minus)


def buffer_lengths(count_plus, count_minus,
                   pool_size: int) -> tuple[tuple[int, int, int], ...]:
  """Per size, (B, B_down, B_plus): the next power of two >= n (resp. 2 n_+, n_+), capped.

  B and B_down are capped at the pool, B_plus at B. At most 2x the kept rows, with few
  distinct lengths (each distinct triple compiles its own loop body).
  """
  def bucket(n, cap):
    return int(min(cap, 2 ** int(np.ceil(np.log2(max(int(n), 1))))))

  out = []
  for p, m in zip(np.asarray(count_plus), np.asarray(count_minus)):
    rows = bucket(p + m, pool_size)
    out.append((rows, bucket(2 * p, pool_size), bucket(p, rows)))
  return tuple(out)


def default_ridge(sizes: Sequence[int], dim: int) -> float:
  """0 if every size has n >= d + 2 (a nonsingular within-class scatter), else 1e-3."""
  return 0.0 if min(int(n) for n in sizes) >= dim + 2 else DEFAULT_RIDGE


# ----------------------------------------------------------------------------- the sweep


def _nan_errors(shape, dtype) -> ClassErrors:
  nan = jnp.full(shape, jnp.nan, dtype)
  return ClassErrors(nan, nan)


def _flat_surrogate(sur: recommend.Surrogate, shape) -> recommend.Surrogate:
  """Every field broadcast to `shape` and flattened."""
  return jax.tree.map(lambda a: jnp.broadcast_to(a, shape).reshape(-1), sur)


def _theory_weights(surrogates: Sequence[recommend.Surrogate], ridge: float,
                    objective: str) -> list[tuple[theory.OptimalWeight, jax.Array]]:
  """`recommend.surrogate_weight` of each surrogate (1-D fields), all in one vmapped search.

  One search over the concatenation compiles the scalar theory once per sweep instead of
  once per call site and row-buffer group.

  Returns:
    Per surrogate (OptimalWeight, defined) (see `recommend.surrogate_weight`).
  """
  joined = jax.tree.map(lambda *parts: jnp.concatenate(parts), *surrogates)
  best, defined = jax.vmap(lambda s: recommend.surrogate_weight(s, ridge, objective))(joined)
  out, start = [], 0
  for sur in surrogates:
    stop = start + sur.delta.shape[0]
    out.append((jax.tree.map(lambda a, i=start, j=stop: a[i:j], best), defined[start:stop]))
    start = stop
  return out


def sweep(x_pool: jax.Array, y_pool: jax.Array, x_test: jax.Array, y_test: jax.Array,
          subsamples: Subsamples, weights: jax.Array, *, ridge: float = 0.0,
          objective: str = "worst", dimension: str = "ambient",
          batch_size: int = 8,
          row_buffers: tuple[tuple[int, int, int], ...] | None = None) -> RetrainResult:
  """Retrains the last layer on every subsample for every weight and method (pure).

  Jit it with `static_argnames=retrain.STATIC`; `ridge` must be a Python float (a ridge > 0
  lets `lls.factor_low_rank` skip its ridgeless-interpolator branch).

  Derivation of the cost: per subsample one `lls.factor_low_rank` (O(B r^2 + r^3 / 3 + r^2 P
  + P^3), r = min(B, d), P = B_plus) serves the K grid weights and the five method weights
  (O(r P) each) and, through its within-class scatter, the plug-in statistics; a scalar
  search per subsample and method (all in one vectorized call); one Cholesky solve for
  downsampling.

  Args:
    x_pool: retraining pool embeddings [N, d].
    y_pool: pool labels [N] in {+1, -1} (+1 = minority).
    x_test: test embeddings [M, d].
    y_test: test labels [M] in {+1, -1}.
    subsamples: from `subsample_masks` (masks [S, R, N]).
    weights: grid of minority weights [K] > 0.
    ridge: ridge >= 0 on the scaled features (module docstring).
    objective: "worst" or "balanced", the objective of the theory weights.
    dimension: d_eff of the `theory` / `theory_pool` methods and of the overlay: "ambient"
      (delta = d / n, the default) or "participation".
    batch_size: subsamples whose method weights are solved and scored together (memory ~
      batch_size * 5 * (M + d) floats); the factorizations go one subsample at a time.
    row_buffers: static, per size, (B, B_down, B_plus): the subsample's kept rows (at most
      B) and its balanced downsampling's (at most B_down) are gathered into buffers of these
      lengths, and its minority rows (at most B_plus) into a third one (see `buffer_lengths`).
      They must bound the counts; None: all N rows, masked.

  Returns:
    RetrainResult.
  """
  n_pool, d = x_pool.shape
  if y_pool.shape != (n_pool,) or x_test.ndim != 2 or x_test.shape[1] != d \
      or y_test.shape != x_test.shape[:1]:
    raise ValueError(f"expected x_pool [N, d], y_pool [N], x_test [M, d], y_test [M]; got "
                     f"{x_pool.shape}, {y_pool.shape}, {x_test.shape}, {y_test.shape}")
  num_sizes, num_repeats, n_mask = subsamples.mask.shape
  if n_mask != n_pool:
    raise ValueError(f"subsamples.mask: expected [S, R, {n_pool}], got {subsamples.mask.shape}")
  if not isinstance(ridge, (int, float)) or ridge < 0:
    raise ValueError(f"ridge: expected a Python float >= 0 (static), got {ridge!r}")
  ridge = float(ridge)
  dtype = x_pool.dtype
  weights = jnp.asarray(weights, dtype)

  # Centre and scale by the pool (see module docstring).
  center = jnp.mean(x_pool, axis=0)
  scale = jnp.sqrt(jnp.sum(jnp.var(x_pool, axis=0)) / d)
  x = (x_pool - center) / scale
  xt = (x_test - center) / scale
  is_plus = y_pool > 0
  sizes = (subsamples.count_plus + subsamples.count_minus).astype(dtype)

  # Pool plug-in ("oracle-ish" weights and the theory overlay), once.
  pool = recommend.surrogate(recommend.plug_in_stats(x, is_plus), dimension, d)
  pool_mix = pool.mixture
  delta = pool.dimension / sizes                                              # [S]
  curves = theory.class_errors(pool_mix, delta[:, None], weights[None, :], ridge)
  pool_prior = theory.prior_ratio(pool_mix.pi_plus)
  prior_curve = theory.class_errors(pool_mix, delta, pool_prior, ridge)
  down_curve = theory.downsampled_class_errors(pool_mix, delta, ridge)

  def errors_of(layer):
    return empirical_class_errors(lls.scores(layer, xt), y_test)

  # Three steps over the S * R subsamples:
  #   1. per subsample (one at a time): the factorization, whose within-class scatter also
  #      gives the plug-in statistics, the K grid weights, and the downsampling fit;
  #   2. every theory weight (per subsample and on the pool) in one vectorized search;
  #   3. per subsample, batched: the five method weights from the stored factorizations.
  # Step 1 maps over one subsample at a time because jaxlib 0.10.0-0.10.2's CPU LAPACK kernels
  # (excluded by pyproject.toml; the sweep stays safe if one is installed anyway),
  # given a batch of matrices, split it over XLA's intra-op thread pool and block a pool
  # thread until the chunks finish; two such calls in flight at once on a 2-thread pool
  # deadlock (observed: a batched cholesky and a batched eigh, both waiting forever).
  # Steps 2 and 3 call no LAPACK and are vmapped (step 3 in batches of `batch_size`).
  #
  # Row buffers: a subsample of size n needs only its n kept rows. Sizes that share buffer
  # lengths (static, `row_buffers`) gather their kept rows (kept first, then masked
  # filler) into [B, d], so the Gram matrices cost O(B d min(B, d)) instead of O(N d^2) and
  # the factorization works in the row space when B < d. Masks stay the source of truth.

  def gather(mask, rows: int):
    if rows >= n_pool:
      return x, is_plus, mask
    keep = jnp.argsort(-mask, stable=True)[:rows]
    return x[keep], is_plus[keep], mask[keep]

  def fit(item, rows, down_rows, plus_rows):
    mask, down_mask = item
    xs, plus, m = gather(mask, rows)
    factors = lls.factor_low_rank(xs, plus, m, ridge=ridge, plus_rows=plus_rows)
    stats = recommend.plug_in_stats(xs, plus, m, scatter=factors.within)
    layers = lls.solve_low_rank(factors, weights)
    xd, plus_d, md = gather(down_mask, down_rows)
    down = lls.solve_low_rank(lls.factor_low_rank(xd, plus_d, md, ridge=ridge, plus_rows=0),
                              jnp.ones((1,), dtype))
    down = lls.LastLayer(down.w[0], down.b[0])
    return factors, stats, layers, errors_of(layers), down, errors_of(down)

  def fit_methods(factors, method_weights):
    layers = lls.solve_low_rank(factors, method_weights)
    return layers, errors_of(layers)

  if row_buffers is None:
    row_buffers = ((n_pool, n_pool, n_pool),) * num_sizes
  if len(row_buffers) != num_sizes or any(len(b) != 3 for b in row_buffers):
    raise ValueError(f"row_buffers: expected {num_sizes} (rows, downsample_rows, plus_rows) "
                     f"triples, got {row_buffers!r}")
  groups: dict[tuple[int, int, int], list[int]] = {}
  for s, buffers in enumerate(row_buffers):
    groups.setdefault(tuple(int(b) for b in buffers), []).append(s)
  order = [s for members in groups.values() for s in members]
  inverse = np.argsort(np.asarray(order))

  def per_group(a):
    """[S, R, ...] -> per group [G_i * R, ...]."""
    return [a[np.asarray(members)].reshape((-1,) + a.shape[2:]) for members in groups.values()]

  def regroup(parts):
    """Per group [G_i * R, ...] -> [S, R, ...] in size order."""
    return jax.tree.map(lambda *p: jnp.concatenate(p).reshape(
        (num_sizes, num_repeats) + p[0].shape[1:])[inverse], *parts)

  # 1. Factorizations, plug-in statistics, grid weights, downsampling.
  first = [jax.lax.map(
      lambda item, key=key: fit(item, key[0], key[1], min(key[2], key[0])), (masks, down))
      for key, masks, down in zip(groups, per_group(subsamples.mask),
                                  per_group(subsamples.downsample))]
  factors = [f[0] for f in first]                       # per group (shapes differ)
  stats, layers, errs, down, down_errs = regroup([f[1:] for f in first])

  # 2. Every theory weight: per subsample (d_eff = `dimension` and "participation") and on
  # the pool per size, one search.
  shape = (num_sizes, num_repeats)
  pool_per_size = pool._replace(delta=delta)
  (best, ok), (best_pr, ok_pr), (pool_best, pool_ok) = _theory_weights(
      [_flat_surrogate(recommend.surrogate(stats, dimension, d), shape),
       _flat_surrogate(recommend.surrogate(stats, "participation", d), shape),
       _flat_surrogate(pool_per_size, (num_sizes,))], ridge, objective)
  best, best_pr = (jax.tree.map(lambda a: a.reshape(shape), b) for b in (best, best_pr))
  ok, ok_pr = ok.reshape(shape), ok_pr.reshape(shape)
  prior = stats.count_minus / stats.count_plus                                # [S, R]
  pool_weight = jnp.where(pool_ok, pool_best.weight, pool_prior)              # [S]
  method_weights = jnp.stack([
      jnp.ones_like(prior), prior, jnp.where(ok, best.weight, prior),
      jnp.where(ok_pr, best_pr.weight, prior),
      jnp.broadcast_to(pool_weight[:, None], shape)], axis=-1).astype(dtype)  # [S, R, 5]
  nan = jnp.full(shape, jnp.nan, dtype)
  predicted = ClassErrors(
      jnp.stack([nan, nan, jnp.where(ok, best.err_plus, nan),
                 jnp.where(ok_pr, best_pr.err_plus, nan), nan], axis=-1),
      jnp.stack([nan, nan, jnp.where(ok, best.err_minus, nan),
                 jnp.where(ok_pr, best_pr.err_minus, nan), nan], axis=-1))

  # 3. The method weights, from the stored factorizations.
  method_layers, method_errs = regroup([
      jax.lax.map(lambda item: fit_methods(*item), (f, w),
                  batch_size=max(1, min(batch_size, w.shape[0])))
      for f, w in zip(factors, per_group(method_weights))])

  # Back to raw coordinates: w.(x - c) / s + b = (w / s).x + (b - c.w / s).
  def raw(layer):
    w = layer.w / scale
    return lls.LastLayer(w, layer.b - w @ center)

  grid, down, method_layers = raw(layers), raw(down), raw(method_layers)

  def method(i):
    return MethodResult(method_weights[..., i],
                        ClassErrors(method_errs.err_plus[..., i], method_errs.err_minus[..., i]),
                        ClassErrors(predicted.err_plus[..., i], predicted.err_minus[..., i]),
                        lls.LastLayer(method_layers.w[..., i, :], method_layers.b[..., i]))

  # Hindsight best grid weight on the test split (ties: the first, i.e. the smallest weight).
  best_k = jnp.argmin(jnp.nan_to_num(errs.worst, nan=jnp.inf), axis=-1)         # [S, R]
  take = lambda a: jnp.take_along_axis(a, best_k[..., None], axis=-1)[..., 0]
  oracle = MethodResult(
      weights[best_k], ClassErrors(take(errs.err_plus), take(errs.err_minus)),
      _nan_errors(best_k.shape, dtype),
      lls.LastLayer(jnp.take_along_axis(grid.w, best_k[..., None, None], axis=-2)[..., 0, :],
                    take(grid.b)))
  pool_pred = ClassErrors(
      jnp.broadcast_to(pool_best.err_plus[:, None], best_k.shape),
      jnp.broadcast_to(pool_best.err_minus[:, None], best_k.shape))
  theory_pool = method(4)._replace(predicted=jax.tree.map(
      lambda p: jnp.where(pool_ok[:, None], p, jnp.nan), pool_pred))
  down_pred = ClassErrors(jnp.broadcast_to(down_curve.err_plus[:, None], best_k.shape),
                          jnp.broadcast_to(down_curve.err_minus[:, None], best_k.shape))
  methods = Methods(
      unweighted=method(0), prior_ratio=method(1), theory=method(2),
      theory_participation=method(3), theory_pool=theory_pool,
      downsample=MethodResult(jnp.ones(best_k.shape, dtype), down_errs, down_pred, down),
      grid_oracle=oracle)
  curves = TheoryCurves(pool_mix, delta, curves, pool_best, prior_curve, down_curve)
  return RetrainResult(sizes, subsamples.count_plus, subsamples.count_minus, weights,
                       errs, grid, methods, ok, curves, jnp.asarray(ridge, dtype), scale)


def _run(x_pool, y_pool, x_test, y_test, key, count_plus, count_minus, weights, *,
         num_repeats, ridge, objective, dimension, batch_size, row_buffers):
  masks = subsample_masks(key, y_pool, count_plus, count_minus, num_repeats=num_repeats,
                          dtype=x_pool.dtype)
  return sweep(x_pool, y_pool, x_test, y_test, masks, weights, ridge=ridge,
               objective=objective, dimension=dimension, batch_size=batch_size,
               row_buffers=row_buffers)


# Jitted at its only use site: one compile per (shapes, static arguments) per process.
_run_jit = jax.jit(_run, static_argnames=("num_repeats",) + STATIC)


def single_threaded_blas():
  """A context limiting OpenBLAS (behind jaxlib's CPU LAPACK kernels) to one thread.

  On the 2-core development machine a 512 x 512 `jnp.linalg.eigh` takes about 3.5 s with
  OpenBLAS's default 2 threads competing with XLA's own pool and 0.06 s with 1 thread.
  Uses threadpoolctl when installed (it comes with scikit-learn); otherwise does nothing
  (then set OPENBLAS_NUM_THREADS=1 before starting Python).
  """
  try:
    from threadpoolctl import threadpool_limits  # pylint: disable=g-import-not-at-top
  except ImportError:
    return contextlib.nullcontext()
  return threadpool_limits(1, user_api="blas")


def log_weights(num: int = 32, *, low: float = 0.1, high: float = 1000.0) -> np.ndarray:
  """A log-spaced weight grid [num] from `low` to `high`.

  It need not contain 1: the unweighted and prior-ratio methods get their own solves.
  """
  return np.geomspace(low, high, num)


def run(x_pool, y_pool, x_test, y_test, *, sizes: Sequence[int], weights=None,
        num_repeats: int = 10, seed: int = 0, ridge: float | None = None,
        objective: str = "worst", dimension: str = "ambient",
        batch_size: int = 8) -> RetrainResult:
  """`sweep` from host arrays: validates, builds the masks, one jitted call, NumPy results.

  Args:
    x_pool: [N, d] retraining pool embeddings; y_pool: [N] in {+1, -1} (+1 = minority).
    x_test: [M, d]; y_test: [M] in {+1, -1}.
    sizes: sample sizes (each in [4, N]); the pool's class balance with fixed counts.
    weights: grid [K] > 0 (default `log_weights()`, 32 weights from 0.1 to 1000).
    num_repeats: R subsamples per size.
    seed: root seed of the subsamples.
    ridge: None picks `default_ridge(sizes, d)` (1e-3 if any n < d + 2, else 0).
    objective, dimension, batch_size: see `sweep`.

  Returns:
    RetrainResult of NumPy arrays.
  """
  x_pool = np.asarray(x_pool)
  x_test = np.asarray(x_test)
  dtype = jnp.result_type(float)
  for name, x in (("x_pool", x_pool), ("x_test", x_test)):
    if x.ndim != 2 or not np.all(np.isfinite(x)):
      raise ValueError(f"{name}: expected a finite 2-D array [n, d], got shape {x.shape}")
  y_pool = np.asarray(y_pool).astype(np.float64)
  y_test = np.asarray(y_test).astype(np.float64)
  for name, y, x in (("y_pool", y_pool, x_pool), ("y_test", y_test, x_test)):
    if y.shape != x.shape[:1] or not np.all((y == 1) | (y == -1)):
      raise ValueError(f"{name}: expected [{x.shape[0]}] labels in {{+1, -1}}")
  if x_test.shape[1] != x_pool.shape[1]:
    raise ValueError(f"x_test: expected width {x_pool.shape[1]}, got {x_test.shape[1]}")
  if objective not in ("worst", "balanced"):
    raise ValueError(f"objective: expected 'worst' or 'balanced', got {objective!r}")
  if dimension not in ("ambient", "participation"):
    raise ValueError(f"dimension: expected 'ambient' or 'participation', got {dimension!r}")
  count_plus, count_minus = size_counts(y_pool, sizes)
  if np.any(count_plus > count_minus):
    raise ValueError("y_pool: class +1 must be the minority (count_plus <= count_minus)")
  weights = log_weights() if weights is None else np.asarray(weights, np.float64)
  if weights.ndim != 1 or not np.all(weights > 0):
    raise ValueError("weights: expected a 1-D array of values > 0")
  ridge = default_ridge(count_plus + count_minus, x_pool.shape[1]) if ridge is None \
      else float(ridge)
  if ridge < 0:
    raise ValueError(f"ridge: expected >= 0, got {ridge}")
  with single_threaded_blas():
    result = _run_jit(
        jnp.asarray(x_pool, dtype), jnp.asarray(y_pool, dtype),
        jnp.asarray(x_test, dtype), jnp.asarray(y_test, dtype),
        jax.random.key(seed), jnp.asarray(count_plus), jnp.asarray(count_minus),
        jnp.asarray(weights, dtype), num_repeats=int(num_repeats), ridge=ridge,
        objective=objective, dimension=dimension, batch_size=int(batch_size),
        row_buffers=buffer_lengths(count_plus, count_minus, x_pool.shape[0]))
    return jax.tree.map(np.asarray, result)
