"""Data for training and embedding: padded batches, caps, resizing, checks, augmentation.

Everything runs on the host except `augment`, which the jitted train step applies on the
device to uint8 images.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np


def padded_batches(arrays: tuple[np.ndarray, ...], batch_size: int
                   ) -> Iterator[tuple[tuple[np.ndarray, ...], np.ndarray]]:
  """Yields fixed-size batches of `arrays` (same leading size N) and a 0/1 mask [batch_size].

  The last batch is zero-padded to `batch_size`, so a jitted consumer compiles once.
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
  n = len(arrays[0])
  for start in range(0, n, batch_size):
    chunk = tuple(np.asarray(a[start:start + batch_size]) for a in arrays)
    m = len(chunk[0])
    if m < batch_size:
      chunk = tuple(np.concatenate([c, np.zeros((batch_size - m,) + c.shape[1:], c.dtype)])
                    for c in chunk)
    yield chunk, (np.arange(batch_size) < m).astype(np.float32)


def subset(split, idx: np.ndarray):
  """The rows `idx` of every array field of a Split-like NamedTuple (images, labels, ...)."""
  n = len(split.labels)
  fields = split._fields if hasattr(split, "_fields") else ("images", "labels")
  rows = {f: np.asarray(getattr(split, f))[idx] for f in fields
          if np.ndim(getattr(split, f)) >= 1 and len(getattr(split, f)) == n}
  if hasattr(split, "_replace"):
    return split._replace(**rows)
  return dataclasses.replace(split, **rows)


def cap_train_examples(dataset, *, max_train_examples: int | None, key: jax.Array):
  """Keeps a random subset of `max_train_examples` training rows (in their order); else as is."""
  n = len(dataset.train.labels)
  if max_train_examples is None or n <= max_train_examples:
    return dataset
  idx = np.sort(np.asarray(jax.random.permutation(key, n))[:max_train_examples])
  return dataset._replace(train=subset(dataset.train, idx))


def resize_images(images: np.ndarray, image_size: int, *, batch_size: int = 512) -> np.ndarray:
  """uint8 [N, H, W, C] -> uint8 [N, image_size, image_size, C], bilinear (antialiased)."""
  resize = jax.jit(lambda x: jnp.clip(jnp.round(jax.image.resize(
      x.astype(jnp.float32), (x.shape[0], image_size, image_size, x.shape[3]), "bilinear")),
      0, 255).astype(jnp.uint8))
  out = np.empty((len(images), image_size, image_size, images.shape[3]), np.uint8)
  for start in range(0, len(images), batch_size):
    out[start:start + batch_size] = np.asarray(resize(images[start:start + batch_size]))
  return out


def check_split(name: str, split, image_size: int) -> None:
  """Raises ValueError unless split has uint8 images [N > 0, S, S, 3] and labels in {+1, -1}."""
  shape = np.shape(split.images)
  if len(shape) >= 1 and shape[0] == 0:
    raise ValueError(f"dataset.{name}: the split is empty (no images); every split is needed "
                     "(train to fit, val for the epoch metrics, test for the final ones)")
  if len(shape) != 4 or shape[1:] != (image_size, image_size, 3):
    raise ValueError(f"dataset.{name}.images: expected shape [N, {image_size}, {image_size}, 3] "
                     f"(config.image_size = {image_size}), got {shape}")
  if np.asarray(split.images).dtype != np.uint8:
    raise ValueError(f"dataset.{name}.images: expected uint8, got {np.asarray(split.images).dtype}")
  labels = np.asarray(split.labels)
  if labels.shape != shape[:1] or not np.all((labels == 1) | (labels == -1)):
    raise ValueError(f"dataset.{name}.labels: expected [{shape[0]}] values in {{+1, -1}}, "
                     f"got shape {labels.shape}, values {np.unique(labels)[:5].tolist()}")


def augment(images: jax.Array, key: jax.Array, *, crop_padding: int, flip: bool) -> jax.Array:
  """Random crop after zero padding and random horizontal flip, per image.

  Args:
    images: uint8 [B, H, W, C].
    key: PRNG key.
    crop_padding: pixels of zero padding on each side before a random H x W crop (0: none).
    flip: flip each image left-right with probability 1/2.

  Returns:
    uint8 [B, H, W, C].
  """
  b, h, w, c = images.shape
  crop_key, flip_key = jax.random.split(key)
  if crop_padding > 0:
    p = crop_padding
    padded = jnp.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
    offsets = jax.random.randint(crop_key, (b, 2), 0, 2 * p + 1)
    images = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c)))(
        padded, offsets)
  if flip:
    do_flip = jax.random.bernoulli(flip_key, 0.5, (b,))
    images = jnp.where(do_flip[:, None, None, None], images[:, :, ::-1], images)
  return images


def augmentation_for(config) -> dict:
  """Keyword arguments of `augment` for the config's dataset (the usual recipe per dataset)."""
  if not config.augment:
    return {"crop_padding": 0, "flip": False}
  return {"crop_padding": 4 if config.dataset == "cifar10" else 0, "flip": True}
