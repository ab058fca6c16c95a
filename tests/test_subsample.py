"""Subsample masks (thumb_jax.subsample): class counts, nesting, seeds, downsampling, sizes."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from thumb_jax import subsample

N_POOL = 72
# Labels of a shuffled pool with minority share 1/4 (the retraining tests' pool shape).
LABELS = np.random.default_rng(0).permutation(np.where(np.arange(N_POOL) < 18, 1.0, -1.0))
SIZES = np.array([6, 21, 72])
_MASKS = jax.jit(subsample.subsample_masks, static_argnames=("num_repeats",))


def _masks(y, count_plus, count_minus, *, seed, repeats):
  masks = _MASKS(jax.random.key(seed), jnp.asarray(y), jnp.asarray(count_plus),
                 jnp.asarray(count_minus), num_repeats=repeats)
  return jax.tree.map(np.asarray, masks)


def test_subsample_masks():
  count_plus, count_minus = subsample.size_counts(LABELS, SIZES)
  np.testing.assert_array_equal(count_plus + count_minus, SIZES)
  np.testing.assert_array_equal(count_plus, [round(0.25 * n) for n in SIZES])
  masks = _masks(LABELS, count_plus, count_minus, seed=5, repeats=4)
  plus = LABELS > 0
  chex.assert_shape(masks.mask, (len(SIZES), 4, N_POOL))
  # Exact class counts per size, in every repeat.
  for cls, count in ((plus, count_plus), (~plus, count_minus)):
    np.testing.assert_array_equal(masks.mask[..., cls].sum(-1),
                                  np.broadcast_to(count[:, None], (len(SIZES), 4)))
  assert set(np.unique(masks.mask)) <= {0.0, 1.0}
  # Nested across sizes within a repeat; different across repeats (below the whole pool).
  assert np.all(np.diff(masks.mask, axis=0) >= 0)
  for s in range(len(SIZES) - 1):
    assert len({masks.mask[s, r].tobytes() for r in range(4)}) == 4
  # Deterministic from the seed; another seed draws other subsamples.
  again = _masks(LABELS, count_plus, count_minus, seed=5, repeats=4)
  other = _masks(LABELS, count_plus, count_minus, seed=6, repeats=4)
  np.testing.assert_array_equal(again.mask, masks.mask)
  np.testing.assert_array_equal(again.downsample, masks.downsample)
  assert not np.array_equal(other.mask[0], masks.mask[0])
  # Downsampling: balanced (n_+ rows of each class) and inside the subsample.
  for cls in (plus, ~plus):
    np.testing.assert_array_equal(masks.downsample[..., cls].sum(-1),
                                  np.broadcast_to(count_plus[:, None], (len(SIZES), 4)))
  assert np.all(masks.downsample <= masks.mask)


def test_downsample_masks_keep_minority_and_first_majority_rows():
  """The one downsampling rule: every minority row of a mask and its first n_+ majority rows
  in the given order (row order by default), as a loop over rows does it."""
  rng = np.random.default_rng(4)
  y = np.where(rng.random(40) < 0.3, 1.0, -1.0)
  masks = np.asarray(subsample.nested_masks(y, [10, 25, 40]))
  order = rng.permutation(40)
  for given in (None, order):
    got = np.asarray(subsample.downsample_masks(y, masks, order=given))
    walk = np.arange(40) if given is None else given
    for k, mask in enumerate(masks):
      keep = mask > 0
      n_plus = int(np.sum(keep & (y > 0)))
      majority = [i for i in walk if keep[i] and y[i] < 0][:n_plus]
      want = (keep & (y > 0)).astype(float)
      want[majority] = 1.0
      np.testing.assert_array_equal(got[k], want)


def test_default_sizes():
  sizes = subsample.default_sizes(LABELS, num_sizes=12)
  assert sizes[0] == 6 and sizes[-1] == N_POOL and np.all(np.diff(sizes) > 0)
  subsample.size_counts(LABELS, sizes)       # every size keeps >= 2 rows of each class
  np.testing.assert_array_equal(subsample.default_sizes(LABELS, num_sizes=2, min_size=20,
                                                        max_size=64), [20, 64])
  with pytest.raises(ValueError, match="min_size"):
    subsample.default_sizes(LABELS, num_sizes=3, max_size=N_POOL + 1)
