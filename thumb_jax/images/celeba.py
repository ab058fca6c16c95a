"""Binary CelebA (attribute present = +1) from the official zip or folder, or from tfds.

Class +1 = `attribute` present (default Blond_Hair). The official partition
(list_eval_partition.txt: 0/1/2) gives train / val / test. Only rows of
list_attr_celeba.txt whose image exists in `img_align_celeba.zip` (or an extracted
`img_align_celeba/` folder) are used, so reduced copies of the image archive work unchanged.
`max_per_split` caps a split by a seeded subsample (for CPU runs). Images are center-cropped
to a square (178x218 -> 178x178, as is usual for CelebA) unless `center_crop=False`, and
resized to `image_size` x `image_size`. Decoded arrays can be cached in `cache_dir`
(`sources.cached_decoded`); the key covers the image source, the selected file names,
`image_size` and `center_crop` (not the attribute, which only changes labels).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np

from thumb_jax.images import sources
from thumb_jax.images.sources import SPLITS, BinaryDataset, Split

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair",
    "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair",
    "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings",
    "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young")
CELEBA_URL = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"

_CELEBA_HOWTO = (
    f"Download `img_align_celeba.zip` (Img/), `list_attr_celeba.txt` (Anno/) and "
    f"`list_eval_partition.txt` (Eval/) from {CELEBA_URL} into one folder, or use "
    "source='tfds' after tfds.builder('celeb_a', data_dir=...).download_and_prepare().")


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
  sources.check_source(source)
  sources.check_seed(seed)
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
    if rows.shape[0] == 0:
      raise ValueError(
          f"{found.partition}: the {split} split (partition {k}) has none of the "
          f"{int(in_images.sum())} images of {found.images} listed in {found.attributes}; "
          "every split is needed (train, val = the retraining pool, test)")
    available[split] = sources.split_counts(labels_all[rows])
    cap = caps.get(split)
    if cap is not None and cap < rows.shape[0]:
      rows = sources.pick(sources.split_rng(seed, k), rows, cap)
    selected[split] = rows

  split_files = {s: [files[i] for i in selected[s]] for s in SPLITS}
  key = {"dataset": "celeba", "images": str(found.images.resolve()),
         **sources.file_stat(found.images), "image_size": decode["image_size"],
         "center_crop": decode["center_crop"],
         "files": {s: hashlib.sha256("\n".join(split_files[s]).encode()).hexdigest()
                   for s in SPLITS}}

  def compute():
    names_all = [f for s in SPLITS for f in split_files[s]]
    with _reader(found) as read:
      images = sources.decode_all(names_all, read, desc=f"CelebA {found.images.name}", **decode)
    bounds = np.cumsum([0] + [len(split_files[s]) for s in SPLITS])
    return {s: images[bounds[k]:bounds[k + 1]] for k, s in enumerate(SPLITS)}

  images, cache_path, cache_hit = sources.cached_decoded(cache_dir, key, compute)
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
      "counts": {s: sources.split_counts(splits[s].labels) for s in SPLITS},
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

  Raises:
    ValueError: a malformed row or a file listed twice, named by its line in the file.
  """
  lines = _read_lines(path, "attribute")
  names = tuple(lines[1].split()) if len(lines) > 1 else ()
  if not names:
    raise ValueError(f"{path}:2: expected the attribute names on the second line")
  files, tokens, first_line = [], [], {}
  for line_no, line in enumerate(lines[2:], start=3):
    name, *values = line.split() or ("",)
    if not name:
      continue
    if len(values) != len(names):
      raise ValueError(f"{path}:{line_no}: expected `file` + {len(names)} values in "
                       f"{{+1, -1}}, got {len(values)} values in {line.strip()[:100]!r}")
    _check_new(path, "image", name, line_no, first_line)
    files.append(name)
    tokens.append(values)
  flat = np.asarray(tokens, dtype=str).reshape(len(files), len(names))
  bad = ~np.isin(flat, ("1", "+1", "-1"))
  if bad.any():
    row, col = np.argwhere(bad)[0]
    raise ValueError(f"{path}:{first_line[files[row]]}: expected attribute values in "
                     f"{{+1, -1}}, got {str(flat[row, col])!r} for {names[col]} of {files[row]}")
  return names, files, flat.astype(np.int8)


def _read_lines(path, what: str) -> list[str]:
  try:
    with open(path, encoding="utf-8") as f:
      return f.read().splitlines()
  except (OSError, UnicodeDecodeError) as err:
    raise FileNotFoundError(f"{path}: cannot read the CelebA {what} file ({err}). "
                            f"{_CELEBA_HOWTO}") from err


def _check_new(path, what: str, name: str, line_no: int, first_line: dict[str, int]) -> None:
  """Records name's line; a name seen before is a ValueError naming both lines."""
  if name in first_line:
    raise ValueError(f"{path}:{line_no}: {what} {name} is listed twice (lines "
                     f"{first_line[name]} and {line_no}); each image must have one row")
  first_line[name] = line_no


def _read_celeba_partition(path: Path) -> dict[str, int]:
  out, first_line = {}, {}
  for line_no, line in enumerate(_read_lines(path, "partition"), start=1):
    parts = line.split()
    if not parts:
      continue
    if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
      raise ValueError(f"{path}:{line_no}: expected `file 0|1|2`, got {line.strip()!r}")
    _check_new(path, "image", parts[0], line_no, first_line)
    out[parts[0]] = int(parts[1])
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
  tfds = sources.import_tfds()
  labels, encoded, index, available = {}, {}, {}, {}
  for k, split in enumerate(SPLITS):
    tfds_split = {"val": "validation"}.get(split, split)
    # Images stay encoded (SkipDecoding) so that the kept ones go through the same
    # decoder as the official files and the others are never decoded.
    ds, info = sources.tfds_load(tfds, "celeb_a", data_dir, split=tfds_split, with_info=True,
                          decoders={"image": tfds.decode.SkipDecoding()})
    n = int(info.splits[tfds_split].num_examples)
    if n == 0:
      raise ValueError(f"tfds celeb_a in data_dir={data_dir!r}: the {tfds_split} split is "
                       "empty; every split is needed (train, val = the retraining pool, test)")
    keep = np.arange(n)
    if caps.get(split) is not None and caps[split] < n:
      keep = sources.pick(sources.split_rng(seed, k), keep, caps[split])
    keep_set, kept, lab, enc, all_lab = set(keep.tolist()), [], [], [], []
    for i, ex in enumerate(tfds.as_numpy(ds)):
      y = 1 if bool(ex["attributes"][attribute]) else -1
      all_lab.append(y)
      if i in keep_set:
        kept.append(i)
        lab.append(y)
        enc.append(bytes(ex["image"]))
    available[split] = sources.split_counts(np.array(all_lab, np.int8))
    labels[split], encoded[split] = np.array(lab, np.int8), enc
    index[split] = np.array(kept, np.int64)

  key = {"dataset": "celeba", "images": f"tfds:{data_dir}", "image_size": image_size,
         "center_crop": center_crop, "caps": {s: caps.get(s) for s in SPLITS},
         "seed": seed,
         "files": {s: hashlib.sha256(b"".join(hashlib.sha256(e).digest()
                                              for e in encoded[s])).hexdigest()
                   for s in SPLITS}}

  def compute():
    out = {}
    for s in SPLITS:
      out[s] = sources.decode_all(encoded[s], lambda b: b, desc=f"CelebA tfds {s}",
                           image_size=image_size, center_crop=center_crop,
                           num_workers=num_workers, progress=progress)
    return out

  images, cache_path, cache_hit = sources.cached_decoded(cache_dir, key, compute)
  splits = {s: Split(images[s], labels[s], index[s]) for s in SPLITS}
  provenance = {
      "dataset": "celeba", "source": None if data_dir is None else str(data_dir),
      "format": "tfds", "attribute": attribute,
      "classes": {"+1": f"{attribute} = 1", "-1": f"{attribute} = -1"},
      "image_size": image_size, "center_crop": center_crop, "seed": int(seed),
      "max_per_split": {s: caps.get(s) for s in SPLITS}, "available": available,
      "counts": {s: sources.split_counts(splits[s].labels) for s in SPLITS},
      "cache": None if cache_path is None else str(cache_path), "cache_hit": cache_hit,
  }
  return BinaryDataset(splits["train"], splits["val"], splits["test"], provenance)
