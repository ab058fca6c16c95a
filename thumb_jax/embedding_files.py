"""Embedding files on disk: finding each split's .npz, reading its arrays, encoding its labels.

One search order for the array names serves every reader (`load_embedding_splits`, the
command line `thumb_jax.cli`): features are the first of `FEATURE_KEYS` and labels the
first of `LABEL_KEYS` that a file holds. The cache of `thumb_jax.images.embeddings` names
its files {dataset}_{split}_d{k}_{hash}.npz, fields made safe by `cache_field`.
"""

from __future__ import annotations

import glob
import json
import os
import re
import zipfile
import zlib
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from thumb_jax import _checks, recommend

FEATURE_KEYS = ("embeddings", "x", "features")
LABEL_KEYS = ("labels", "y", "targets")


def cache_field(text: str) -> str:
  """A field of an embedding cache name: characters other than letters, digits, '.' and '-'
  become '-' (celeba-Blond_Hair -> celeba-Blond-Hair), so '_' only separates fields."""
  return re.sub(r"[^A-Za-z0-9.-]+", "-", text)


def array_key(names: Sequence[str], candidates: Sequence[str]) -> str | None:
  """The first of `candidates` among an archive's array `names`, else None."""
  return next((k for k in candidates if k in names), None)


def load_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Every array of an .npz (or the one array of an .npy, under the key ""), read eagerly.

  Raises:
    ValueError naming the file when it cannot be read: empty, truncated, not a zip archive
    or .npy file, or holding pickled objects.
  """
  path = os.fspath(path)
  try:
    loaded = np.load(path, allow_pickle=False)
    if isinstance(loaded, np.ndarray):
      return {"": loaded}
    with loaded:
      return {key: np.asarray(loaded[key]) for key in loaded.files}
  except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as err:
    reason = (str(err).splitlines() or [type(err).__name__])[0]
    raise ValueError(f"{path}: cannot read it as a NumPy .npz/.npy file ({reason})") from None


def find_split_file(directory: str | os.PathLike, split: str, *,
                    dataset: str | None = None) -> str:
  """{split}.npz in `directory`, else its one cache-named file for `split` (ValueError otherwise).

  Cache names are {dataset}_{split}_d{k}_{hash}.npz (fields through `cache_field`);
  {split}_*.npz is accepted too. With `dataset` given, only names whose first field is that
  dataset, or it plus "-..." (celeba matches celeba-Blond-Hair; cifar10 does not match
  cifar100), count.
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
  """Reads each split's features [N, d] and labels [N] (array names: `FEATURE_KEYS`, `LABEL_KEYS`).

  File names: see `find_split_file` (exactly one per split, or per split and `dataset`).
  By default only `val` (the retraining pool) and `test` (evaluation) are read; `train`
  (the backbone's training split, whose embeddings the network has fit) is not needed.

  Returns:
    {split: (x [N, d] float64, labels [N])}.
  """
  out = {}
  for split in splits:
    path = find_split_file(directory, split, dataset=dataset)
    f = load_arrays(path)
    names = list(f)
    xkey, ykey = array_key(names, FEATURE_KEYS), array_key(names, LABEL_KEYS)
    if xkey is None or ykey is None:
      raise ValueError(f"{path}: expected arrays named one of {list(FEATURE_KEYS)} and one "
                       f"of {list(LABEL_KEYS)}, found {names}")
    x, y = _checks.real(f"{path}: {xkey}", f[xkey]).astype(np.float64), f[ykey]
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
