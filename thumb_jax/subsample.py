"""Subsamples of a retraining pool as fixed-shape 0/1 masks: class counts, nesting, downsampling.

A subsample is a 0/1 mask over the pool's rows, never a slice, so every size has the same
shapes and a sweep over sizes vmaps (STYLE.md, habit 4). For size n it keeps
n_+ = round(pi n) rows of class +1 and n - n_+ of class -1 (`mixture.class_counts`).
Balanced downsampling keeps a subsample's n_+ minority rows and its first n_+ majority rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from thumb_jax import _checks, mixture

RowBuffers = tuple[tuple[int, int, int], ...]


class Subsamples(NamedTuple):
  """0/1 masks over the pool for S sizes x R repeats (float, same dtype as the features).

  mask: [S, R, N] the subsample; downsample: [S, R, N] its balanced downsampling;
  count_plus, count_minus: [S] class counts of each size (int32).
  """
  mask: jax.Array
  downsample: jax.Array
  count_plus: jax.Array
  count_minus: jax.Array


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


def default_sizes(labels, *, num_sizes: int, min_size: int | None = None,
                  max_size: int | None = None) -> np.ndarray:
  """Log-spaced sizes from the smallest feasible n (2 rows per class) to the whole pool.

  Args:
    labels: pool labels [N] in {+1, -1}.
    num_sizes: sizes requested (fewer after rounding duplicates away).
    min_size, max_size: bounds (None: the smallest feasible, the whole pool).

  Returns:
    int sizes [S], ascending, each accepted by `size_counts`.
  """
  y = np.asarray(labels)
  n_pool = y.shape[0]
  pi = float(np.mean(y > 0))
  if min_size is None:
    min_size = next((n for n in range(4, n_pool + 1)
                     if min(mixture.class_counts(n, pi)) >= 2), n_pool)
  max_size = n_pool if max_size is None else max_size
  if not 4 <= min_size <= max_size <= n_pool:
    raise ValueError(f"min_size, max_size: expected 4 <= min_size <= max_size <= {n_pool} "
                     f"(the pool), got {min_size}, {max_size}")
  sizes = np.unique(np.round(np.geomspace(min_size, max_size, num_sizes)).astype(int))
  size_counts(y, sizes)           # raises if a size keeps < 2 rows of a class
  return sizes


def nested_masks(y, sizes, *, pi_plus: float | None = None) -> jax.Array:
  """0/1 masks selecting nested subsamples with fixed class counts from one pool.

  For each size n the mask keeps the first n_plus(n) rows of class +1 and the first
  n_minus(n) rows of class -1 (in row order), with n_plus(n) = round(pi_plus n).
  Rows within a class must be exchangeable (as from `mixture.sample` or after a shuffle).

  Args:
    y: labels [N] in {+1, -1} (concrete).
    sizes: sequence of sample sizes, each <= N.
    pi_plus: minority share of each subsample; default: the pool's share.

  Returns:
    masks [len(sizes), N] of 0./1.
  """
  y = np.asarray(y)
  n_pool = y.shape[0]
  plus = y > 0
  pi = plus.mean() if pi_plus is None else pi_plus
  rank = np.where(plus, np.cumsum(plus) - 1, np.cumsum(~plus) - 1)
  masks = []
  for n in sizes:
    if not 2 <= n <= n_pool:
      raise ValueError(f"sizes: expected every size in [2, {n_pool}], got {n}")
    n_plus, n_minus = mixture.class_counts(int(n), float(pi))
    if n_plus > plus.sum() or n_minus > (~plus).sum():
      raise ValueError(f"sizes: size {n} needs {n_plus} rows of class +1 and {n_minus} "
                       f"of class -1; the pool has {plus.sum()} and {(~plus).sum()}")
    masks.append(np.where(plus, rank < n_plus, rank < n_minus))
  return jnp.asarray(np.stack(masks), dtype=jnp.result_type(float))


def downsample_masks(y, masks, *, order=None) -> jax.Array:
  """Balanced downsampling of each mask: its minority rows and as many majority rows.

  The majority rows kept are the mask's first ones in `order`; with n_+ <= n_- the result
  has n_+ rows of each class and lies inside the mask (pure, traceable).

  Args:
    y: labels [N] in {+1, -1}.
    masks: 0/1 [..., N].
    order: row priority [..., N], a permutation of range(N) broadcastable against `masks`
      (the first entry is the row taken first); default: row order.

  Returns:
    0/1 masks [..., N] in the dtype of `masks`.
  """
  masks = jnp.asarray(masks)
  plus = jnp.asarray(y) > 0
  n_rows = plus.shape[0]
  order = jnp.arange(n_rows) if order is None else jnp.asarray(order)
  order = jnp.broadcast_to(order, masks.shape)
  keep = masks > 0
  kept_minus = (keep & ~plus).astype(jnp.int32)
  rank_in_order = jnp.cumsum(jnp.take_along_axis(kept_minus, order, axis=-1), axis=-1) - 1
  rank = jnp.take_along_axis(rank_in_order, jnp.argsort(order, axis=-1), axis=-1)
  n_plus = jnp.sum(keep & plus, axis=-1, keepdims=True)
  return (keep & (plus | (rank < n_plus))).astype(masks.dtype)


def subsample_masks(key: jax.Array, labels: jax.Array, count_plus: jax.Array,
                    count_minus: jax.Array, *, num_repeats: int, dtype=None) -> Subsamples:
  """Seeded nested subsample masks with fixed class counts (pure; jit it at the call site).

  Repeat r orders the pool's rows uniformly at random, drawn from fold_in(key, r); size s
  keeps the first count_plus[s] rows of class +1 and the first count_minus[s] of class -1
  in that order, so within a repeat the sizes are nested (common random numbers across n)
  and across repeats independent. Downsampling (`downsample_masks` in the same order)
  keeps the rows of either class among the first count_plus[s] (requires
  count_plus <= count_minus).

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

  def draw(r):
    u = jax.random.uniform(jax.random.fold_in(key, r), labels.shape)
    order = jnp.argsort(u)
    # A row's rank within its class: its position when this class's rows come first.
    rank_plus = jnp.argsort(jnp.argsort(jnp.where(plus, u, 2.0 + u)))
    rank_minus = jnp.argsort(jnp.argsort(jnp.where(plus, 2.0 + u, u)))
    return order, jnp.where(plus, rank_plus, rank_minus)

  order, rank = jax.vmap(draw)(jnp.arange(num_repeats))                    # [R, N] each
  count_plus = jnp.asarray(count_plus, jnp.int32)
  count_minus = jnp.asarray(count_minus, jnp.int32)
  limit = jnp.where(plus, count_plus[:, None], count_minus[:, None])      # [S, N]
  mask = (rank[None] < limit[:, None]).astype(dtype)
  return Subsamples(mask, downsample_masks(labels, mask, order=order[None]), count_plus,
                    count_minus)


def buffer_lengths(count_plus, count_minus, pool_size: int) -> RowBuffers:
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


def check_buffers(count_plus, count_minus, row_buffers: RowBuffers) -> None:
  """Raises ValueError where a size keeps more rows than its buffers hold (concrete counts).

  Silent for traced counts (under jit the caller must have checked them).
  """
  if len(row_buffers) != len(count_plus) or any(len(b) != 3 for b in row_buffers):
    raise ValueError(f"row_buffers: expected {len(count_plus)} (rows, downsample_rows, "
                     f"plus_rows) triples, got {row_buffers!r}")
  if not _checks.is_concrete(count_plus, count_minus):
    return
  for s, (p, m, (rows, down_rows, plus_rows)) in enumerate(
      zip(np.asarray(count_plus), np.asarray(count_minus), row_buffers)):
    for what, need, have in (("rows", p + m, rows), ("downsample_rows", 2 * p, down_rows),
                             ("plus_rows", p, plus_rows)):
      if need > have:
        raise ValueError(f"row_buffers: size {s} (n_+ = {p}, n_- = {m}) keeps {need} {what} "
                         f"but its buffer holds {have}; use buffer_lengths(count_plus, "
                         "count_minus, pool_size)")


def gather_rows(x, y, mask, rows: int):
  """The kept rows first, then masked filler: [rows, d], [rows], [rows] (rows >= kept)."""
  if rows >= x.shape[0]:
    return x, y, mask
  keep = jnp.argsort(-mask, stable=True)[:rows]
  return x[keep], y[keep], mask[keep]


class BufferGroups(NamedTuple):
  """Sizes sharing row-buffer lengths, fitted by one loop body each (static)."""
  buffers: tuple[tuple[int, int, int], ...]     # per group
  members: tuple[tuple[int, ...], ...]          # size indices per group
  inverse: np.ndarray                           # group order -> size order


def buffer_groups(row_buffers: RowBuffers) -> BufferGroups:
  """Groups the sizes by their (static) buffer lengths, in order of first appearance."""
  found: dict[tuple[int, int, int], list[int]] = {}
  for s, buffers in enumerate(row_buffers):
    found.setdefault(tuple(int(b) for b in buffers), []).append(s)
  order = [s for members in found.values() for s in members]
  return BufferGroups(tuple(found), tuple(tuple(m) for m in found.values()),
                 np.argsort(np.asarray(order)))


def split_groups(groups: BufferGroups, a):
  """[S, R, ...] -> per group [G_i * R, ...]."""
  return [a[np.asarray(m)].reshape((-1,) + a.shape[2:]) for m in groups.members]


def join_groups(groups: BufferGroups, parts, shape):
  """Per group [G_i * R, ...] -> [S, R, ...] in size order."""
  return jax.tree.map(lambda *p: jnp.concatenate(p).reshape(shape + p[0].shape[1:])[
      groups.inverse], *parts)
