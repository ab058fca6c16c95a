"""Binary image datasets for last-layer retraining: CIFAR-10 airplane/truck and CelebA.

Every loader returns a `BinaryDataset` of three `Split`s with labels in {+1, -1}
(+1 = the minority class of the paper) and a JSON-friendly `provenance` dict.
All subsampling is seeded by `seed` and uses one independent stream per split,
`np.random.default_rng([seed, k])` with k = 0, 1, 2 for train, val, test.

CIFAR-10 (`load_cifar10_binary`), class +1 = airplane (label 0), -1 = truck (label 9).
CIFAR-10 has no validation split, so the retraining pool comes out of the test split:

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

Images are drawn by their rank among the images of their class in the standard CIFAR-10
order (train = data_batch_1..5, test = test_batch), so a seed selects the same images
from any of the sources:
  * an .npz with x_train, y_train, x_test, y_test (uint8 NHWC, original labels), e.g. the
    two-class `cifar10_airplane_truck.npz` (optional idx_train / idx_test give the order);
  * the official `cifar-10-batches-py` folder, or the `cifar-10-python.tar.gz` download;
  * tensorflow-datasets, `source="tfds"` (`tfds.load("cifar10", download=False)`).

CelebA (`load_celeba`), class +1 = `attribute` present (default Blond_Hair). The official
partition (list_eval_partition.txt: 0/1/2) gives train / val / test. Only rows of
list_attr_celeba.txt whose image exists in `img_align_celeba.zip` (or an extracted
`img_align_celeba/` folder) are used, so reduced copies of the image archive work unchanged.
`max_per_split` caps a split by a seeded subsample (for CPU runs). Images are center-cropped
to a square (178x218 -> 178x178, as is usual for CelebA) unless `center_crop=False`, and
resized to `image_size` x `image_size`. Decoded arrays can be cached in `cache_dir`; the
cache key covers the image source, the selected file names, `image_size` and `center_crop`
(not the attribute, which only changes labels), and files are written atomically.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import hashlib
import io
import json
import os
import pickle
import re
import tarfile
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np

SPLITS = ("train", "val", "test")

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair",
    "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair",
    "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings",
    "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young")
CELEBA_URL = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"

_CIFAR_HOWTO = (
    f"Download {CIFAR10_URL} and pass the .tar.gz or its extracted `cifar-10-batches-py` "
    "folder, pass an .npz with x_train/y_train/x_test/y_test, or use source='tfds' after "
    "tfds.builder('cifar10', data_dir=...).download_and_prepare() on a machine with internet.")
_CELEBA_HOWTO = (
    f"Download `img_align_celeba.zip` (Img/), `list_attr_celeba.txt` (Anno/) and "
    f"`list_eval_partition.txt` (Eval/) from {CELEBA_URL} into one folder, or use "
    "source='tfds' after tfds.builder('celeb_a', data_dir=...).download_and_prepare().")
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


def load_dataset(name: str, *, data_dir: str | os.PathLike | None = None,
                 **kwargs) -> BinaryDataset:
  """Loads "cifar10" (`load_cifar10_binary`) or "celeba" (`load_celeba`).

  Args:
    name: "cifar10" or "celeba".
    data_dir: where the data lives (see the loaders).
    **kwargs: keyword arguments of the loader.

  Returns:
    The loader's `BinaryDataset`.
  """
  if name == "cifar10":
    return load_cifar10_binary(data_dir, **kwargs)
  if name == "celeba":
    return load_celeba(data_dir, **kwargs)
  raise ValueError(f"name: expected 'cifar10' or 'celeba', got {name!r}")


# ----------------------------------------------------------------------------- common


def _counts(labels: np.ndarray) -> dict:
  n_plus, n = int(np.sum(labels == 1)), int(labels.shape[0])
  return {"n": n, "n_plus": n_plus, "n_minus": n - n_plus,
          "pi_plus": n_plus / n if n else float("nan")}


def _rng(seed: int, k: int) -> np.random.Generator:
  return np.random.default_rng([seed, k])


def _pick(rng: np.random.Generator, positions: np.ndarray, k: int) -> np.ndarray:
  """k of `positions` drawn without replacement by rank, returned sorted."""
  return np.sort(positions[rng.permutation(positions.shape[0])[:k]])


def _check_seed(seed) -> None:
  if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
    raise ValueError(f"seed: expected a non-negative int, got {seed!r}")


def _check_source(source: str) -> None:
  if source not in ("auto", "tfds"):
    raise ValueError(f"source: expected 'auto' (files found under data_dir) or 'tfds', "
                     f"got {source!r}")


def _import_tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as err:
    raise ImportError("source='tfds' needs tensorflow-datasets and tensorflow: "
                      "pip install 'thumb_jax[tfds]'") from err
  return tfds


def _tfds_load(tfds, name: str, data_dir, **kwargs):
  try:
    return tfds.load(name, data_dir=None if data_dir is None else os.fspath(data_dir),
                     download=False, **kwargs)
  except (AssertionError, FileNotFoundError) as err:
    raise FileNotFoundError(
        f"tensorflow-datasets found no prepared '{name}' in data_dir={data_dir!r} "
        f"(None = the tfds default): {err}. Run tfds.builder('{name}', "
        f"data_dir=...).download_and_prepare() where there is internet.") from err


def _minority_count(n_majority: int, share: float) -> int:
  """The minority count m closest to m / (m + n_majority) = share."""
  return int(np.floor(n_majority * share / (1.0 - share) + 0.5))


# ----------------------------------------------------------------------------- CIFAR-10


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
  _check_source(source)
  _check_seed(seed)
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
    splits[split] = Split(arrays.images[pos], labels, arrays.index[pos].astype(np.int64))

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
      "counts": {s: _counts(splits[s].labels) for s in SPLITS},
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

  n_train_min = _minority_count(tr_maj.shape[0], minority_share)
  n_val_maj = int(np.floor(val_fraction * te_maj.shape[0] + 0.5))
  n_val_min = _minority_count(n_val_maj, minority_share)
  if n_train_min > tr_min.shape[0] or n_val_min > te_min.shape[0]:
    raise ValueError(
        f"minority_share: {minority_share} needs {n_train_min} train and {n_val_min} val "
        f"minority images, but there are {tr_min.shape[0]} and {te_min.shape[0]}")
  if n_train_min == 0 or n_val_min == 0 or n_val_maj in (0, te_maj.shape[0]):
    raise ValueError(
        f"minority_share={minority_share}, val_fraction={val_fraction}: leaves a class empty "
        f"(train minority {n_train_min}, val majority {n_val_maj}, val minority {n_val_min})")

  train = np.sort(np.concatenate([tr_maj, _pick(_rng(seed, 0), tr_min, n_train_min)]))
  rng = _rng(seed, 1)
  val_maj = _pick(rng, te_maj, n_val_maj)
  val_min = _pick(rng, te_min, n_val_min)
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
  images, labels = np.asarray(images), np.asarray(labels).astype(np.int64).reshape(-1)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
    raise ValueError(f"{where}: expected uint8 images [N, 32, 32, 3], got {images.dtype} "
                     f"{images.shape}")
  if labels.shape[0] != images.shape[0]:
    raise ValueError(f"{where}: {images.shape[0]} images but {labels.shape[0]} labels")
  index = np.arange(labels.shape[0]) if index is None else np.asarray(index, np.int64)
  order = np.argsort(index, kind="stable")
  return _CifarSplit(images[order], labels[order], index[order])


def _read_cifar_npz(path: Path) -> tuple[_CifarSplit, _CifarSplit]:
  try:
    with np.load(path) as f:
      arrays = {k: f[k] for k in f.files}
  except (OSError, ValueError, zipfile.BadZipFile) as err:
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
  try:
    batch = pickle.loads(raw, encoding="bytes")
    data, labels = batch[b"data"], batch[b"labels"]
  except Exception as err:  # pickle raises many types on corrupt input.
    raise FileNotFoundError(f"{where}: not a readable CIFAR-10 batch pickle ({err!r}). "
                            f"{_CIFAR_HOWTO}") from err
  data = np.asarray(data, np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return data, np.asarray(labels, np.int64)


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
  tfds = _import_tfds()
  out = []
  for split in ("train", "test"):
    ex = tfds.as_numpy(_tfds_load(tfds, "cifar10", data_dir, split=split, batch_size=-1))
    labels = np.asarray(ex["label"])
    out.append(_cifar_split(ex["image"], labels, _tfds_index(ex.get("id"), labels.shape[0]),
                            f"tfds cifar10[{split}]"))
  return tuple(out)


# ----------------------------------------------------------------------------- CelebA


def load_celeba(data_dir: str | os.PathLike | None = None, *, source: str = "auto",
                attribute: str = "Blond_Hair", image_size: int = 64,
                center_crop: bool = True,
                max_per_split: int | Mapping[str, int | None] | None = None,
                seed: int = 0, cache_dir: str | os.PathLike | None = None,
                num_workers: int | None = None, progress: bool = True) -> BinaryDataset:
  """Loads CelebA with the official partition and a binary attribute label.

  Args:
    data_dir: folder with `list_attr_celeba.txt`, `list_eval_partition.txt` and
      `img_align_celeba.zip` or an extracted `img_align_celeba/` (the zip wins when both
      exist); also searched: data_dir/celeba and the official Anno/, Eval/, Img/ subfolders.
      For source="tfds", the tfds data_dir (None = the tfds default).
    source: "auto" (files under data_dir) or "tfds" (`celeb_a`).
    attribute: one of the 40 CelebA attributes; +1 where it is present.
    image_size: side of the square output images.
    center_crop: crop the central square before resizing (else the aspect ratio changes).
    max_per_split: None, an int for every split, or {split: int or None} capping a split by
      a seeded subsample without replacement.
    seed: non-negative int seeding the subsamples.
    cache_dir: folder for decoded arrays (created if needed); None disables caching.
    num_workers: decoding threads (default min(8, cpu count)).
    progress: show a tqdm progress bar while decoding.

  Returns:
    A `BinaryDataset` of uint8 [N, image_size, image_size, 3] images.
  """
  _check_source(source)
  _check_seed(seed)
  if not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool) \
      or image_size < 1:
    raise ValueError(f"image_size: expected a positive int, got {image_size!r}")
  caps = _caps(max_per_split)
  decode = dict(image_size=int(image_size), center_crop=bool(center_crop),
                num_workers=num_workers or min(8, os.cpu_count() or 1), progress=progress)
  if source == "tfds":
    return _load_celeba_tfds(data_dir, attribute=attribute, caps=caps, seed=seed,
                             cache_dir=cache_dir, **decode)

  found = _find_celeba(data_dir)
  names, files, values = read_celeba_attributes(found.attributes)
  if attribute not in names:
    raise ValueError(f"attribute: expected one of the {len(names)} CelebA attributes "
                     f"{', '.join(names)}; got {attribute!r}")
  partition = _read_celeba_partition(found.partition)
  present = _list_images(found)
  labels_all = values[:, names.index(attribute)]

  in_images = np.array([f in present for f in files])
  part = np.array([partition.get(f, -1) for f in files], np.int64)
  no_partition = [f for f, p in zip(files, part) if p < 0 and f in present][:3]
  if no_partition:
    raise ValueError(f"{found.partition}: no partition for images {no_partition}")
  selected, available = {}, {}
  for k, split in enumerate(SPLITS):
    rows = np.flatnonzero(in_images & (part == k))
    available[split] = _counts(labels_all[rows])
    cap = caps.get(split)
    if cap is not None and cap < rows.shape[0]:
      rows = _pick(_rng(seed, k), rows, cap)
    selected[split] = rows

  split_files = {s: [files[i] for i in selected[s]] for s in SPLITS}
  key = {"dataset": "celeba", "images": str(found.images.resolve()),
         **_stat(found.images), "image_size": decode["image_size"],
         "center_crop": decode["center_crop"],
         "files": {s: hashlib.sha256("\n".join(split_files[s]).encode()).hexdigest()
                   for s in SPLITS}}

  def compute():
    names_all = [f for s in SPLITS for f in split_files[s]]
    with _reader(found) as read:
      images = _decode_all(names_all, read, desc=f"CelebA {found.images.name}", **decode)
    bounds = np.cumsum([0] + [len(split_files[s]) for s in SPLITS])
    return {s: images[bounds[k]:bounds[k + 1]] for k, s in enumerate(SPLITS)}

  images, cache_path, cache_hit = _cached(cache_dir, key, compute)
  splits = {s: Split(images[s], labels_all[selected[s]].astype(np.int8),
                     np.array([int(Path(f).stem) if Path(f).stem.isdigit() else -1
                               for f in split_files[s]], np.int64)) for s in SPLITS}
  provenance = {
      "dataset": "celeba",
      "source": str(found.images),
      "format": found.kind,
      "attributes_file": str(found.attributes),
      "partition_file": str(found.partition),
      "attribute": attribute,
      "classes": {"+1": f"{attribute} = 1", "-1": f"{attribute} = -1"},
      "image_size": decode["image_size"],
      "center_crop": decode["center_crop"],
      "seed": int(seed),
      "max_per_split": {s: caps.get(s) for s in SPLITS},
      "rows_in_attribute_file": len(files),
      "images_present": int(sum(v["n"] for v in available.values())),
      "available": available,
      "counts": {s: _counts(splits[s].labels) for s in SPLITS},
      "cache": None if cache_path is None else str(cache_path),
      "cache_hit": cache_hit,
  }
  return BinaryDataset(splits["train"], splits["val"], splits["test"], provenance)


class _CelebaFiles(NamedTuple):
  images: Path      # the zip or the extracted folder
  kind: str         # "zip" or "folder"
  attributes: Path  # list_attr_celeba.txt
  partition: Path   # list_eval_partition.txt


def _find_celeba(data_dir) -> _CelebaFiles:
  if data_dir is None:
    raise FileNotFoundError(f"data_dir: no CelebA location given. {_CELEBA_HOWTO}")
  root = Path(data_dir)
  if not root.is_dir():
    raise FileNotFoundError(f"data_dir={str(root)!r}: expected a folder with the CelebA "
                            f"files. {_CELEBA_HOWTO}")
  dirs = [root, root / "celeba", root / "Anno", root / "Eval", root / "Img"]

  def find(name, test):
    for d in dirs:
      if test(d / name):
        return d / name
    return None

  zip_path = find("img_align_celeba.zip", Path.is_file)
  folder = find("img_align_celeba", Path.is_dir)
  attributes = find("list_attr_celeba.txt", Path.is_file)
  partition = find("list_eval_partition.txt", Path.is_file)
  missing = [n for n, p in (("img_align_celeba.zip or img_align_celeba/", zip_path or folder),
                            ("list_attr_celeba.txt", attributes),
                            ("list_eval_partition.txt", partition)) if p is None]
  if missing:
    raise FileNotFoundError(f"data_dir={str(root)!r}: missing {', '.join(missing)} (looked "
                            f"in {', '.join(str(d) for d in dirs)}). {_CELEBA_HOWTO}")
  if zip_path is not None:
    return _CelebaFiles(zip_path, "zip", attributes, partition)
  return _CelebaFiles(folder, "folder", attributes, partition)


def read_celeba_attributes(path: str | os.PathLike) -> tuple[tuple[str, ...], list[str],
                                                             np.ndarray]:
  """Parses `list_attr_celeba.txt`.

  Args:
    path: the file: a count line, a line of attribute names, then `file v1 ... vA` rows.

  Returns:
    (names: A attribute names, files: N file names, values: int8 [N, A] in {+1, -1}).
  """
  try:
    with open(path, encoding="utf-8") as f:
      f.readline()
      names = tuple(f.readline().split())
      files, rows = [], []
      for line in f:
        name, _, rest = line.strip().partition(" ")
        if name:
          files.append(name)
          rows.append(rest)
  except (OSError, UnicodeDecodeError) as err:
    raise FileNotFoundError(f"{path}: cannot read the CelebA attribute file ({err}). "
                            f"{_CELEBA_HOWTO}") from err
  if not names:
    raise ValueError(f"{path}: expected attribute names on the second line")
  try:
    values = np.loadtxt(rows, dtype=np.int8, ndmin=2).reshape(len(files), len(names))
  except ValueError as err:
    raise ValueError(f"{path}: expected rows `file` + {len(names)} values in {{+1, -1}}: "
                     f"{err}") from err
  if not np.all(np.abs(values) == 1):
    raise ValueError(f"{path}: expected attribute values in {{+1, -1}}, found "
                     f"{np.unique(values[np.abs(values) != 1]).tolist()}")
  return names, files, values


def _read_celeba_partition(path: Path) -> dict[str, int]:
  try:
    with open(path, encoding="utf-8") as f:
      out = {}
      for line_no, line in enumerate(f, start=1):
        parts = line.split()
        if not parts:
          continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
          raise ValueError(f"{path}:{line_no}: expected `file 0|1|2`, got {line.strip()!r}")
        out[parts[0]] = int(parts[1])
  except (OSError, UnicodeDecodeError) as err:
    raise FileNotFoundError(f"{path}: cannot read the CelebA partition file ({err}). "
                            f"{_CELEBA_HOWTO}") from err
  return out


def _list_images(found: _CelebaFiles) -> set[str]:
  try:
    if found.kind == "folder":
      return {e.name for e in os.scandir(found.images) if e.is_file()}
    with zipfile.ZipFile(found.images) as zf:
      return {Path(n).name for n in zf.namelist() if not n.endswith("/")}
  except (OSError, zipfile.BadZipFile) as err:
    raise FileNotFoundError(f"{found.images}: cannot read the CelebA images ({err}). "
                            f"{_CELEBA_HOWTO}") from err


@contextlib.contextmanager
def _reader(found: _CelebaFiles) -> Iterator[Callable[[str], bytes]]:
  """Yields a thread-safe file name -> bytes (ZipFile serializes reads of one handle)."""
  if found.kind == "folder":
    yield lambda name: (found.images / name).read_bytes()
    return
  with zipfile.ZipFile(found.images) as zf:
    members = {Path(n).name: n for n in zf.namelist() if not n.endswith("/")}
    yield lambda name: zf.read(members[name])


def _caps(max_per_split) -> dict[str, int | None]:
  if max_per_split is None:
    return {}
  if isinstance(max_per_split, Mapping):
    unknown = sorted(set(max_per_split) - set(SPLITS))
    if unknown:
      raise ValueError(f"max_per_split: expected keys among {SPLITS}, got {unknown}")
    caps = dict(max_per_split)
  else:
    caps = {s: max_per_split for s in SPLITS}
  for s, cap in caps.items():
    if cap is not None and (not isinstance(cap, (int, np.integer)) or isinstance(cap, bool)
                            or cap < 1):
      raise ValueError(f"max_per_split[{s!r}]: expected a positive int or None, got {cap!r}")
  return {s: None if c is None else int(c) for s, c in caps.items()}


def _load_celeba_tfds(data_dir, *, attribute, caps, seed, cache_dir, image_size,
                      center_crop, num_workers, progress) -> BinaryDataset:
  if attribute not in CELEBA_ATTRIBUTES:
    raise ValueError(f"attribute: expected one of the {len(CELEBA_ATTRIBUTES)} CelebA "
                     f"attributes {', '.join(CELEBA_ATTRIBUTES)}; got {attribute!r}")
  tfds = _import_tfds()
  labels, encoded, index, available = {}, {}, {}, {}
  for k, split in enumerate(SPLITS):
    tfds_split = {"val": "validation"}.get(split, split)
    # Images stay encoded (SkipDecoding) so that the kept ones go through the same
    # decoder as the official files and the others are never decoded.
    ds, info = _tfds_load(tfds, "celeb_a", data_dir, split=tfds_split, with_info=True,
                          decoders={"image": tfds.decode.SkipDecoding()})
    n = int(info.splits[tfds_split].num_examples)
    keep = np.arange(n)
    if caps.get(split) is not None and caps[split] < n:
      keep = _pick(_rng(seed, k), keep, caps[split])
    keep_set, kept, lab, enc, all_lab = set(keep.tolist()), [], [], [], []
    for i, ex in enumerate(tfds.as_numpy(ds)):
      y = 1 if bool(ex["attributes"][attribute]) else -1
      all_lab.append(y)
      if i in keep_set:
        kept.append(i)
        lab.append(y)
        enc.append(bytes(ex["image"]))
    available[split] = _counts(np.array(all_lab, np.int8))
    labels[split], encoded[split] = np.array(lab, np.int8), enc
    index[split] = np.array(kept, np.int64)

  key = {"dataset": "celeba", "images": f"tfds:{data_dir}", "image_size": image_size,
         "center_crop": center_crop, "caps": {s: caps.get(s) for s in SPLITS}, "seed": seed,
         "files": {s: hashlib.sha256(b"".join(hashlib.sha256(e).digest()
                                              for e in encoded[s])).hexdigest()
                   for s in SPLITS}}

  def compute():
    out = {}
    for s in SPLITS:
      out[s] = _decode_all(encoded[s], lambda b: b, desc=f"CelebA tfds {s}",
                           image_size=image_size, center_crop=center_crop,
                           num_workers=num_workers, progress=progress)
    return out

  images, cache_path, cache_hit = _cached(cache_dir, key, compute)
  splits = {s: Split(images[s], labels[s], index[s]) for s in SPLITS}
  provenance = {
      "dataset": "celeba", "source": None if data_dir is None else str(data_dir),
      "format": "tfds", "attribute": attribute,
      "classes": {"+1": f"{attribute} = 1", "-1": f"{attribute} = -1"},
      "image_size": image_size, "center_crop": center_crop, "seed": int(seed),
      "max_per_split": {s: caps.get(s) for s in SPLITS}, "available": available,
      "counts": {s: _counts(splits[s].labels) for s in SPLITS},
      "cache": None if cache_path is None else str(cache_path), "cache_hit": cache_hit,
  }
  return BinaryDataset(splits["train"], splits["val"], splits["test"], provenance)


# ----------------------------------------------------------------------------- decoding


def _decode_image(data: bytes, *, image_size: int, center_crop: bool) -> np.ndarray:
  """Encoded image bytes -> uint8 [image_size, image_size, 3]."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(io.BytesIO(data)) as img:
    # JPEG only: decode at 1/2, 1/4 or 1/8 scale in the DCT domain when that still leaves
    # both sides >= image_size (much faster, and the resize below antialiases anyway).
    img.draft("RGB", (image_size, image_size))
    img = img.convert("RGB")
  if center_crop:
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    img = img.crop((left, top, left + s, top + s))
  img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
  return np.asarray(img, np.uint8)


def _decode_all(items: Sequence, read: Callable[[Any], bytes], *, image_size: int,
                center_crop: bool, num_workers: int, progress: bool,
                desc: str = "decode", chunk: int = 1024) -> np.ndarray:
  """Reads and decodes `items` in a thread pool (PIL releases the GIL while decoding).

  Returns:
    uint8 [len(items), image_size, image_size, 3] in the order of `items`.
  """
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  decode = functools.partial(_decode_image, image_size=image_size, center_crop=center_crop)
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


def _stat(path: Path) -> dict:
  st = path.stat()
  return {"bytes": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def _cached(cache_dir, key: dict, compute: Callable[[], dict[str, np.ndarray]]
            ) -> tuple[dict[str, np.ndarray], Path | None, bool]:
  """compute(), or its arrays from `cache_dir` when saved there under the same key.

  Returns:
    (arrays, cache file or None, whether it was a cache hit).
  """
  if cache_dir is None:
    return compute(), None, False
  text = json.dumps({"version": _CACHE_VERSION, **key}, sort_keys=True)
  digest = hashlib.sha256(text.encode()).hexdigest()[:24]
  path = Path(cache_dir) / f"{key['dataset']}_{key['image_size']}px_{digest}.npz"
  if path.is_file():
    try:
      with np.load(path) as f:
        if str(f["key"]) == text:
          return {k: f[k] for k in f.files if k != "key"}, path, True
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
      warnings.warn(f"ignoring unreadable cache {path}: {err}")
  arrays = compute()
  try:
    _save_npz_atomic(path, {"key": np.array(text), **arrays})
  except OSError as err:
    warnings.warn(f"could not write the cache {path}: {err}")
    return arrays, None, False
  return arrays, path, False


def _save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
  """Writes an .npz to a temporary file in the same folder, then renames it into place."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
