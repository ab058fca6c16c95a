"""Binary CIFAR-10 (airplane = +1 vs truck = -1) from an .npz, the pickles, the tar.gz or tfds.

Class +1 = airplane (label 0), -1 = truck (label 9). CIFAR-10 has no validation split, so
the retraining pool comes out of the test split:

  train  the CIFAR train split, all trucks, plus round(n_truck * s / (1 - s)) airplanes
         drawn at random, so airplanes are a share s = `minority_share` of the split:
         5000 trucks + 495 airplanes = 5495 images for s = 0.09.
  val    the retraining pool: round(`val_fraction` * 1000) test trucks drawn at random
         plus round(n_val_truck * s / (1 - s)) test airplanes drawn at random, the same
         imbalance as train: 500 trucks + 49 airplanes = 549 images for the defaults,
         enough for delta = 128 / n to reach 0.25 at n = 512.
  test   every other test image of both classes, kept whole: 500 trucks + 951 airplanes.
         Per-class errors do not depend on the class proportions of the test set, so
         keeping all remaining airplanes only lowers the variance of the minority error.

Counts round half up (`thumb_jax.mixture.round_half_up`). Images are drawn by their rank
among the images of their class in the standard CIFAR-10 order (train = data_batch_1..5,
test = test_batch), so a seed selects the same images from any of the sources:
  * an .npz with x_train, y_train, x_test, y_test (uint8 NHWC, original labels), e.g. the
    two-class `cifar10_airplane_truck.npz` (optional idx_train / idx_test give the order);
  * the official `cifar-10-batches-py` folder, or the `cifar-10-python.tar.gz` download;
  * tensorflow-datasets, `source="tfds"` (`tfds.load("cifar10", download=False)`).
"""

from __future__ import annotations

import os
import pickle
import re
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from thumb_jax.images import sources
from thumb_jax.images.sources import SPLITS, BinaryDataset, Split
from thumb_jax.mixture import round_half_up

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"

_CIFAR_HOWTO = (
    f"Download {CIFAR10_URL} and pass the .tar.gz or its extracted `cifar-10-batches-py` "
    "folder, pass an .npz with x_train/y_train/x_test/y_test, or use source='tfds' after "
    "tfds.builder('cifar10', data_dir=...).download_and_prepare() on a machine with internet.")


class _CifarSplit(NamedTuple):
  images: np.ndarray  # uint8 [N, 32, 32, 3]
  labels: np.ndarray  # int64 [N] original CIFAR labels
  index: np.ndarray   # int64 [N] position in the standard CIFAR-10 order, ascending


def load_cifar10_binary(data_dir: str | os.PathLike | None = None, *, source: str = "auto",
                        minority_share: float = 0.09, val_fraction: float = 0.5,
                        seed: int = 0, minority_label: int = 0,
                        majority_label: int = 9) -> BinaryDataset:
  """Loads binary CIFAR-10 with the imbalanced train / val and whole test splits.

  See the module docstring for the split design.

  Args:
    data_dir: an .npz file, a `cifar-10-batches-py` folder, the `cifar-10-python.tar.gz`
      download, or a folder holding one of `cifar-10-batches-py/`,
      `cifar10_airplane_truck.npz`, `cifar-10-python.tar.gz`; for source="tfds", the tfds
      data_dir (None = the tfds default).
    source: "auto" (files under data_dir) or "tfds".
    minority_share: share s of the minority class in train and val, in (0, 1).
    val_fraction: fraction of the test majority class moved to val, in (0, 1).
    seed: non-negative int seeding every subsample.
    minority_label: CIFAR label of class +1 (default 0, airplane).
    majority_label: CIFAR label of class -1 (default 9, truck).

  Returns:
    A `BinaryDataset` of uint8 [N, 32, 32, 3] images.
  """
  sources.check_source(source)
  sources.check_seed(seed)
  if not 0.0 < minority_share < 1.0:
    raise ValueError(f"minority_share: expected a value in (0, 1), got {minority_share!r}")
  if not 0.0 < val_fraction < 1.0:
    raise ValueError(f"val_fraction: expected a value in (0, 1), got {val_fraction!r}")
  for name, label in (("minority_label", minority_label), ("majority_label", majority_label)):
    if label not in range(10):
      raise ValueError(f"{name}: expected a CIFAR-10 label in 0..9, got {label!r}")
  if minority_label == majority_label:
    raise ValueError(f"minority_label and majority_label must differ, both are {minority_label}")

  if source == "tfds":
    fmt, path = "tfds", data_dir
    train, test = _read_cifar_tfds(data_dir)
  else:
    fmt, path = _find_cifar(data_dir)
    train, test = {"npz": _read_cifar_npz, "pickle": _read_cifar_pickles,
                   "tar": _read_cifar_tar}[fmt](path)

  picks = cifar10_split_positions(
      train.labels, test.labels, minority_label=minority_label,
      majority_label=majority_label, minority_share=minority_share,
      val_fraction=val_fraction, seed=seed, where=str(path))
  splits = {}
  for split, arrays in (("train", train), ("val", test), ("test", test)):
    pos = picks[split]
    labels = np.where(arrays.labels[pos] == minority_label, 1, -1).astype(np.int8)
    splits[split] = Split(arrays.images[pos], labels,
                          arrays.index[pos].astype(np.int64))

  provenance = {
      "dataset": "cifar10",
      "source": None if path is None else str(path),
      "format": fmt,
      "classes": {"+1": f"{CIFAR10_CLASSES[minority_label]} (CIFAR label {minority_label})",
                  "-1": f"{CIFAR10_CLASSES[majority_label]} (CIFAR label {majority_label})"},
      "seed": int(seed),
      "minority_share": float(minority_share),
      "val_fraction": float(val_fraction),
      "val_from": "test",
      "counts": {s: sources.split_counts(splits[s].labels) for s in SPLITS},
  }
  return BinaryDataset(splits["train"], splits["val"], splits["test"], provenance)


def cifar10_split_positions(train_labels: np.ndarray, test_labels: np.ndarray, *,
                            minority_label: int = 0, majority_label: int = 9,
                            minority_share: float = 0.09, val_fraction: float = 0.5,
                            seed: int = 0, where: str = "the data") -> dict[str, np.ndarray]:
  """Positions of the train / val / test images, for labels in the standard CIFAR order.

  Args:
    train_labels: int [N_train] CIFAR labels of the train split, in the standard order
      (other classes may be present or absent).
    test_labels: int [N_test] CIFAR labels of the test split, in the standard order.
    minority_label: label of class +1.
    majority_label: label of class -1.
    minority_share: share of the minority in train and val.
    val_fraction: fraction of the test majority moved to val.
    seed: non-negative int.
    where: names the data in error messages.

  Returns:
    {"train": positions in train_labels, "val" and "test": positions in test_labels},
    each sorted int64.
  """
  train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
  tr_min = np.flatnonzero(train_labels == minority_label)
  tr_maj = np.flatnonzero(train_labels == majority_label)
  te_min = np.flatnonzero(test_labels == minority_label)
  te_maj = np.flatnonzero(test_labels == majority_label)
  for name, pos in (("train", tr_min), ("train", tr_maj), ("test", te_min), ("test", te_maj)):
    if pos.shape[0] == 0:
      raise ValueError(f"{where}: the {name} split has no images of CIFAR labels "
                       f"{minority_label} and {majority_label} (one of them is missing)")

  n_train_min = sources.minority_count(tr_maj.shape[0], minority_share)
  n_val_maj = round_half_up(val_fraction * te_maj.shape[0])
  n_val_min = sources.minority_count(n_val_maj, minority_share)
  if n_train_min > tr_min.shape[0] or n_val_min > te_min.shape[0]:
    raise ValueError(
        f"minority_share: {minority_share} needs {n_train_min} train and {n_val_min} val "
        f"minority images, but there are {tr_min.shape[0]} and {te_min.shape[0]}")
  if n_train_min == 0 or n_val_min == 0 or n_val_maj in (0, te_maj.shape[0]):
    raise ValueError(
        f"minority_share={minority_share}, val_fraction={val_fraction}: leaves a class empty "
        f"(train minority {n_train_min}, val majority {n_val_maj}, val minority {n_val_min})")

  train_min = sources.pick(sources.split_rng(seed, 0), tr_min, n_train_min)
  train = np.sort(np.concatenate([tr_maj, train_min]))
  rng = sources.split_rng(seed, 1)
  val_maj = sources.pick(rng, te_maj, n_val_maj)
  val_min = sources.pick(rng, te_min, n_val_min)
  val = np.sort(np.concatenate([val_maj, val_min]))
  test = np.setdiff1d(np.concatenate([te_maj, te_min]), val)
  return {"train": train.astype(np.int64), "val": val.astype(np.int64),
          "test": test.astype(np.int64)}


def _find_cifar(data_dir) -> tuple[str, Path]:
  if data_dir is None:
    raise FileNotFoundError(f"data_dir: no CIFAR-10 location given. {_CIFAR_HOWTO}")
  path = Path(data_dir)
  if path.is_file():
    if path.suffix == ".npz":
      return "npz", path
    if path.name.endswith((".tar.gz", ".tgz", ".tar")):
      return "tar", path
    raise FileNotFoundError(f"data_dir={str(path)!r} is a file but neither an .npz nor a "
                            f".tar.gz. {_CIFAR_HOWTO}")
  candidates = (("pickle", path, "data_batch_1"),
                ("pickle", path / "cifar-10-batches-py", "data_batch_1"),
                ("npz", path / "cifar10_airplane_truck.npz", None),
                ("tar", path / "cifar-10-python.tar.gz", None))
  for fmt, where, member in candidates:
    if (where / member if member else where).is_file():
      return fmt, where
  looked = ", ".join(str(w / m if m else w) for _, w, m in candidates)
  raise FileNotFoundError(f"data_dir={str(path)!r}: no CIFAR-10 data found (looked for "
                          f"{looked}). {_CIFAR_HOWTO}")


def _cifar_split(images: np.ndarray, labels: np.ndarray, index: np.ndarray | None,
                 where: str) -> _CifarSplit:
  images, labels = np.asarray(images), _integer_labels(np.asarray(labels).reshape(-1), where)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
    raise ValueError(f"{where}: expected uint8 images [N, 32, 32, 3], got {images.dtype} "
                     f"{images.shape}")
  if labels.shape[0] != images.shape[0]:
    raise ValueError(f"{where}: {images.shape[0]} images but {labels.shape[0]} labels")
  index = np.arange(labels.shape[0]) if index is None else np.asarray(index, np.int64)
  order = np.argsort(index, kind="stable")
  return _CifarSplit(images[order], labels[order], index[order])


def _integer_labels(labels: np.ndarray, where: str) -> np.ndarray:
  """int64 labels, or a ValueError naming `where` (strings, fractions, objects)."""
  if labels.dtype.kind in "iu":
    return labels.astype(np.int64)
  if labels.dtype.kind == "f" and np.all(np.isfinite(labels)) and np.all(labels % 1 == 0):
    return labels.astype(np.int64)
  raise ValueError(f"{where}: expected integer CIFAR-10 labels 0..9, got dtype {labels.dtype} "
                   f"(first values {labels[:3].tolist()})")


def _check_not_empty(path: Path) -> None:
  if path.stat().st_size == 0:
    raise FileNotFoundError(f"{path}: the file is empty (0 bytes; an interrupted download or "
                            f"copy?). {_CIFAR_HOWTO}")


def _read_cifar_npz(path: Path) -> tuple[_CifarSplit, _CifarSplit]:
  _check_not_empty(path)
  try:
    with np.load(path) as f:
      arrays = {k: f[k] for k in f.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
    raise FileNotFoundError(f"data_dir={str(path)!r}: cannot read the .npz ({err}). "
                            f"{_CIFAR_HOWTO}") from err
  missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
  if missing:
    raise ValueError(f"{path}: expected arrays x_train, y_train, x_test, y_test, missing "
                     f"{missing} (found {sorted(arrays)})")
  return tuple(_cifar_split(arrays[f"x_{s}"], arrays[f"y_{s}"], arrays.get(f"idx_{s}"),
                            f"{path}[{s}]") for s in ("train", "test"))


def _unpickle_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
  # The official batches are Python 2 pickles: {b"data": uint8 [N, 3072], b"labels": [N]},
  # each row channel-major (1024 red, 1024 green, 1024 blue values, row by row).
  if not raw:
    raise FileNotFoundError(f"{where}: the file is empty (0 bytes; an interrupted download or "
                            f"copy?). {_CIFAR_HOWTO}")
  try:
    batch = pickle.loads(raw, encoding="bytes")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
  except Exception as err:  # pickle raises many types on corrupt input.
    raise FileNotFoundError(f"{where}: not a readable CIFAR-10 batch pickle ({err!r}). "
                            f"{_CIFAR_HOWTO}") from err
  if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
    raise ValueError(f"{where}: expected b'data' uint8 [N, 3072], got {data.dtype} {data.shape}")
  return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _read_cifar_batches(read: Callable[[str], bytes], where: str) -> tuple[_CifarSplit, ...]:
  out = []
  for split, names in (("train", [f"data_batch_{i}" for i in range(1, 6)]),
                       ("test", ["test_batch"])):
    parts = [_unpickle_batch(read(n), f"{where}/{n}") for n in names]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    out.append(_cifar_split(images, labels, None, f"{where}[{split}]"))
  return tuple(out)


def _read_cifar_pickles(folder: Path) -> tuple[_CifarSplit, _CifarSplit]:
  def read(name):
    try:
      return (folder / name).read_bytes()
    except OSError as err:
      raise FileNotFoundError(f"{folder / name}: missing or unreadable CIFAR-10 batch "
                              f"({err.strerror}). {_CIFAR_HOWTO}") from err
  return _read_cifar_batches(read, str(folder))


def _read_cifar_tar(path: Path) -> tuple[_CifarSplit, _CifarSplit]:
  _check_not_empty(path)
  try:
    with tarfile.open(path) as tar:
      members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}

      def read(name):
        if name not in members:
          raise FileNotFoundError(f"{path}: the archive has no member */{name}. "
                                  f"{_CIFAR_HOWTO}")
        return tar.extractfile(members[name]).read()
      return _read_cifar_batches(read, str(path))
  except (tarfile.TarError, OSError, EOFError) as err:
    if isinstance(err, FileNotFoundError):
      raise
    raise FileNotFoundError(f"data_dir={str(path)!r}: cannot read the tar archive ({err}). "
                            f"{_CIFAR_HOWTO}") from err


def _tfds_index(ids, n: int) -> np.ndarray | None:
  """Standard-order index from tfds ids like b"train_00042", or None without ids."""
  if ids is None:
    return None
  out = np.empty(n, np.int64)
  for i, x in enumerate(ids):
    m = re.search(r"(\d+)$", x.decode() if isinstance(x, bytes) else str(x))
    if m is None:
      return None
    out[i] = int(m.group(1))
  return out


def _read_cifar_tfds(data_dir) -> tuple[_CifarSplit, _CifarSplit]:
  tfds = sources.import_tfds()
  out = []
  for split in ("train", "test"):
    ex = tfds.as_numpy(sources.tfds_load(tfds, "cifar10", data_dir, split=split,
                                          batch_size=-1))
    labels = np.asarray(ex["label"])
    out.append(_cifar_split(ex["image"], labels, _tfds_index(ex.get("id"), labels.shape[0]),
                            f"tfds cifar10[{split}]"))
  return tuple(out)
