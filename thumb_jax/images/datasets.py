"""The two binary image datasets of the paper behind one call: `load_dataset(name, ...)`."""

from __future__ import annotations

import os

from thumb_jax.images import celeba, cifar10
from thumb_jax.images.sources import BinaryDataset


def load_dataset(name: str, *, data_dir: str | os.PathLike | None = None,
                 **kwargs) -> BinaryDataset:
  """Loads "cifar10" (`cifar10.load_cifar10_binary`) or "celeba" (`celeba.load_celeba`).

  Args:
    name: "cifar10" or "celeba".
    data_dir: where the data lives (see the loaders).
    **kwargs: keyword arguments of the loader.

  Returns:
    The loader's `BinaryDataset`.
  """
  if name == "cifar10":
    return cifar10.load_cifar10_binary(data_dir, **kwargs)
  if name == "celeba":
    return celeba.load_celeba(data_dir, **kwargs)
  raise ValueError(f"name: expected 'cifar10' or 'celeba', got {name!r}")
