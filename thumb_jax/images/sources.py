"""What the dataset loaders share: the `Split` / `BinaryDataset` types and their helpers.

Every loader (`cifar10.load_cifar10_binary`, `celeba.load_celeba`) returns a
`BinaryDataset` of three `Split`s with labels in {+1, -1} (+1 = the minority class of the
paper) and a JSON-friendly `provenance` dict. All subsampling is seeded by `seed` and uses
one independent stream per split, `np.random.default_rng([seed, k])` with k = 0, 1, 2 for
train, val, test (`split_rng`).

The helpers below are shared by the two loaders: seeded picks, the tensorflow-datasets
import, threaded image decoding and the keyed cache of decoded arrays (`thumb_jax.io`).
"""

from __future__ import annotations

import concurrent.futures
import functools
import io
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from thumb_jax import devices
from thumb_jax import io as tj_io
from thumb_jax.mixture import round_half_up

SPLITS = ("train", "val", "test")
_CACHE_VERSION = 1


class Split(NamedTuple):
  """One split of a binary dataset.

  Attributes:
    images: uint8 [N, H, W, 3] RGB images.
    labels: int8 [N] labels in {+1, -1}; +1 is the minority class (airplane, or the
      CelebA attribute present).
    index: int64 [N] the image's index in its source: the position in the standard CIFAR-10
      order of its split, the CelebA file number (000123.jpg -> 123), or the example's
      position in its tensorflow-datasets split when the source gives no id.
  """
  images: np.ndarray
  labels: np.ndarray
  index: np.ndarray


class BinaryDataset(NamedTuple):
  """Train, validation (the last-layer retraining pool) and test splits.

  Attributes:
    train: the split the backbone is trained on.
    val: the retraining pool for the last layer.
    test: the evaluation split.
    provenance: JSON-friendly dict: dataset, source, format, classes, seed, fractions and
      `counts` = {split: {"n", "n_plus", "n_minus", "pi_plus"}}.
  """
  train: Split
  val: Split
  test: Split
  provenance: dict


# ----------------------------------------------------------------------------- checks, picks


def split_counts(labels: np.ndarray) -> dict:
  """{"n", "n_plus", "n_minus", "pi_plus"} of labels in {+1, -1}."""
  n_plus, n = int(np.sum(labels == 1)), int(labels.shape[0])
  return {"n": n, "n_plus": n_plus, "n_minus": n - n_plus,
          "pi_plus": n_plus / n if n else float("nan")}


def split_rng(seed: int, k: int) -> np.random.Generator:
  """The independent stream of split k (0 train, 1 val, 2 test) of a seed."""
  return np.random.default_rng([seed, k])


def pick(rng: np.random.Generator, positions: np.ndarray, k: int) -> np.ndarray:
  """k of `positions` drawn without replacement by rank, returned sorted."""
  return np.sort(positions[rng.permutation(positions.shape[0])[:k]])


def minority_count(n_majority: int, share: float) -> int:
  """The minority count m closest to m / (m + n_majority) = share (ties round up)."""
  return round_half_up(n_majority * share / (1.0 - share))


def check_seed(seed) -> None:
  if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
    raise ValueError(f"seed: expected a non-negative int, got {seed!r}")


def check_source(source: str) -> None:
  if source not in ("auto", "tfds"):
    raise ValueError(f"source: expected 'auto' (files found under data_dir) or 'tfds', "
                     f"got {source!r}")


# ----------------------------------------------------------------------------- tfds


def import_tfds():
  """tensorflow_datasets, or an ImportError saying how to install it."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as err:
    raise ImportError("source='tfds' needs tensorflow-datasets and tensorflow: "
                      "pip install 'thumb_jax[tfds]'") from err
  return tfds


def tfds_load(tfds, name: str, data_dir, **kwargs):
  """`tfds.load(name, download=False)`; a missing preparation is a FileNotFoundError."""
  try:
    return tfds.load(name, data_dir=None if data_dir is None else os.fspath(data_dir),
                     download=False, **kwargs)
  except (AssertionError, FileNotFoundError) as err:
    raise FileNotFoundError(
        f"tensorflow-datasets found no prepared '{name}' in data_dir={data_dir!r} "
        f"(None = the tfds default): {err}. Run tfds.builder('{name}', "
        f"data_dir=...).download_and_prepare() where there is internet.") from err


# ----------------------------------------------------------------------------- decoding


def decode_image(data: bytes, *, image_size: int, center_crop: bool) -> np.ndarray:
  """Encoded image bytes -> uint8 [image_size, image_size, 3] (optional central square)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(io.BytesIO(data)) as img:
    # JPEG only: decode at 1/2, 1/4 or 1/8 scale in the DCT domain when that still leaves
    # both sides >= image_size (the resize below antialiases anyway).
    img.draft("RGB", (image_size, image_size))
    img = img.convert("RGB")
  if center_crop:
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    img = img.crop((left, top, left + s, top + s))
  img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
  return np.asarray(img, np.uint8)


def decode_all(items: Sequence, read: Callable[[Any], bytes], *, image_size: int,
               center_crop: bool, num_workers: int, progress: bool,
               desc: str = "decode", chunk: int = 1024) -> np.ndarray:
  """Reads and decodes `items` in a thread pool (PIL releases the GIL while decoding).

  Returns:
    uint8 [len(items), image_size, image_size, 3] in the order of `items`.
  """
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  decode = functools.partial(decode_image, image_size=image_size, center_crop=center_crop)
  out = np.empty((len(items), image_size, image_size, 3), np.uint8)

  def work(item):
    try:
      return decode(read(item))
    except Exception as err:  # name the image in the error.
      raise ValueError(f"cannot decode image {item if isinstance(item, str) else '<bytes>'}: "
                       f"{err}") from err

  with concurrent.futures.ThreadPoolExecutor(max(1, num_workers)) as pool, \
      tqdm(total=len(items), desc=desc, unit="img", disable=not progress) as bar:
    for start in range(0, len(items), chunk):
      batch = items[start:start + chunk]
      for i, image in enumerate(pool.map(work, batch)):
        out[start + i] = image
      bar.update(len(batch))
  return out


# ----------------------------------------------------------------------------- cache


def file_stat(path: Path) -> dict:
  """Size and modification time of a file, for cache keys."""
  st = path.stat()
  return {"bytes": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def cached_decoded(cache_dir: str | os.PathLike | None, key: Mapping[str, Any],
                   compute: Callable[[], Mapping[str, np.ndarray]]
                   ) -> tuple[dict[str, np.ndarray], Path | None, bool]:
  """compute(), or its arrays from `cache_dir` when stored there under the same key.

  The file is `{dataset}_{image_size}px_{digest}.npz` (`io.cached_arrays`: written
  atomically, the key checked on read, stale temporaries of killed writes removed).

  Args:
    cache_dir: folder of the cache (created if needed); None disables caching.
    key: JSON-able dict with at least "dataset" and "image_size".
    compute: returns {split: uint8 images}.

  Returns:
    (arrays, the cache file or None when there is none, whether it was a cache hit).
  """
  if cache_dir is None:
    return dict(compute()), None, False
  key = {"version": _CACHE_VERSION, **key}
  path = Path(cache_dir) / f"{key['dataset']}_{key['image_size']}px_{tj_io.key_digest(key)}.npz"
  arrays, hit = tj_io.cached_arrays(path, key, compute, writer=devices.is_main_process())
  return arrays, (path if hit or path.is_file() else None), hit
