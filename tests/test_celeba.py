"""thumb_jax.images.celeba, image decoding and the decoded-array cache, on files the tests write."""

import io
import os
import shutil
import stat
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from thumb_jax import io as tj_io
from thumb_jax.images import celeba, datasets, sources

sys.path.insert(0, os.path.dirname(__file__))
from test_image_data import assert_datasets_equal

N_FILES, N_PRESENT = 16, 12
PARTITION = [0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 1, 2, 0]  # per file 000001..000016
BLOND = [1, -1, -1, 1, -1, -1, 1, -1, -1, -1, 1, -1, 1, 1, 1, 1]
SMILING = [-1] * 8 + [1] * 8


def _jpeg(seed, size=(30, 36)):
  rng = np.random.default_rng(seed)
  img = np.full((size[1], size[0], 3), rng.integers(0, 256, 3), np.uint8)
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, "JPEG", quality=95)
  return buf.getvalue()


def _write_celeba(root, layout="zip"):
  root.mkdir(parents=True, exist_ok=True)
  names = [f"{i + 1:06d}.jpg" for i in range(N_FILES)]
  if layout == "zip":
    with zipfile.ZipFile(root / "img_align_celeba.zip", "w") as zf:
      for i, name in enumerate(names[:N_PRESENT]):
        zf.writestr(f"img_align_celeba/{name}", _jpeg(i))
  else:
    (root / "img_align_celeba").mkdir()
    for i, name in enumerate(names[:N_PRESENT]):
      (root / "img_align_celeba" / name).write_bytes(_jpeg(i))
  attrs = list(celeba.CELEBA_ATTRIBUTES)
  lines = [str(N_FILES), " ".join(attrs) + " "]
  for i, name in enumerate(names):
    values = [-1] * len(attrs)
    values[attrs.index("Blond_Hair")] = BLOND[i]
    values[attrs.index("Smiling")] = SMILING[i]
    lines.append(name + "".join(f" {v:2d}" for v in values))  # official: "-1" and " 1"
  (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
  (root / "list_eval_partition.txt").write_text(
      "".join(f"{n} {p}\n" for n, p in zip(names, PARTITION)))
  return root


def _expected(split, labels=BLOND):
  k = sources.SPLITS.index(split)
  files = [i + 1 for i in range(N_PRESENT) if PARTITION[i] == k]
  return np.array(files), np.array([labels[f - 1] for f in files])


@pytest.fixture(name="celeba_root", scope="module")
def fixture_celeba_root(tmp_path_factory):
  """PARENT/celeba with the zip layout, written once; tests must not edit it."""
  return _write_celeba(tmp_path_factory.mktemp("celeba_parent") / "celeba")


def test_celeba_zip_uses_present_images_and_partition(celeba_root):
  root = celeba_root
  ds = celeba.load_celeba(root.parent, image_size=8, progress=False)  # finds root/celeba
  for split in sources.SPLITS:
    s = getattr(ds, split)
    files, labels = _expected(split)
    np.testing.assert_array_equal(s.index, files)
    np.testing.assert_array_equal(s.labels, labels)
    assert s.labels.dtype == np.int8
    assert s.images.shape == (len(files), 8, 8, 3) and s.images.dtype == np.uint8
    assert ds.provenance["counts"][split]["n_plus"] == int(np.sum(labels == 1))
  # Solid-colour JPEGs stay (nearly) that colour.
  first = np.asarray(Image.open(io.BytesIO(_jpeg(0))))[0, 0]
  np.testing.assert_allclose(ds.train.images[0].reshape(-1, 3).mean(0), first, atol=3)
  assert ds.provenance["format"] == "zip"
  assert ds.provenance["rows_in_attribute_file"] == N_FILES
  assert ds.provenance["images_present"] == N_PRESENT
  assert ds.provenance["source"] == str(root / "img_align_celeba.zip")

  smiling = datasets.load_dataset("celeba", data_dir=root, attribute="Smiling", image_size=8,
                                  progress=False)
  np.testing.assert_array_equal(smiling.val.labels, _expected("val", SMILING)[1])


def test_celeba_folder_matches_zip(tmp_path, celeba_root):
  zipped = celeba.load_celeba(celeba_root, image_size=8, progress=False)
  folder = celeba.load_celeba(_write_celeba(tmp_path / "b", layout="folder"), image_size=8,
                              progress=False)
  assert folder.provenance["format"] == "folder"
  assert_datasets_equal(zipped, folder)


def test_celeba_max_per_split_seeded(celeba_root):
  def load(seed, caps):
    return celeba.load_celeba(celeba_root, image_size=4, max_per_split=caps, seed=seed,
                              progress=False)
  a = load(0, {"train": 3})
  assert (len(a.train.labels), len(a.val.labels), len(a.test.labels)) == (3, 3, 3)
  assert set(a.train.index) <= set(_expected("train")[0])
  assert a.provenance["available"]["train"]["n"] == 6
  assert_datasets_equal(a, load(0, {"train": 3}))
  assert any(not np.array_equal(a.train.index, load(s, {"train": 3}).train.index)
             for s in (1, 2, 3))
  assert len(load(0, 2).test.labels) == 2
  with pytest.raises(ValueError, match="max_per_split"):
    load(0, {"valid": 2})
  with pytest.raises(ValueError, match="max_per_split"):
    load(0, 0)


def test_celeba_unknown_attribute_lists_valid_names(celeba_root):
  with pytest.raises(ValueError, match="Blond_Hair") as err:
    celeba.load_celeba(celeba_root, attribute="Blonde_Hair", progress=False)
  assert "Wearing_Necktie" in str(err.value) and "'Blonde_Hair'" in str(err.value)


def test_celeba_missing_files(tmp_path):
  root = _write_celeba(tmp_path)
  (root / "list_attr_celeba.txt").unlink()
  with pytest.raises(FileNotFoundError, match=r"list_attr_celeba\.txt.*CelebA"):
    celeba.load_celeba(root, progress=False)
  with pytest.raises(FileNotFoundError, match="nowhere"):
    celeba.load_celeba(tmp_path / "nowhere", progress=False)
  root2 = _write_celeba(tmp_path / "corrupt")
  (root2 / "img_align_celeba.zip").write_bytes(b"not a zip")
  with pytest.raises(FileNotFoundError, match="img_align_celeba.zip"):
    celeba.load_celeba(root2, progress=False)
  with pytest.raises(ValueError, match="image_size"):
    celeba.load_celeba(root2, image_size=0)


def _attribute_lines():
  """list_attr_celeba.txt of 3 files and 2 attributes, with a blank line after file 1."""
  return ["3", "Blond_Hair Smiling", "000001.jpg  1 -1", "", "000002.jpg -1 -1",
          "000003.jpg  1  1"]


@pytest.mark.parametrize("row,bad,pattern", [
    ("000002.jpg -1", 5, r"expected `file` \+ 2 values in \{\+1, -1\}, got 1 values"),
    ("000002.jpg -1  0", 5, r"expected attribute values in \{\+1, -1\}, got '0' for Smiling"),
    ("000002.jpg -1 yes", 5, r"expected .*, got 'yes' for Smiling of 000002.jpg"),
    ("000001.jpg -1 -1", 5, r"image 000001.jpg is listed twice \(lines 3 and 5\)")],
    ids=["short row", "zero", "word", "duplicate"])
def test_attribute_file_errors_give_the_real_line(tmp_path, row, bad, pattern):
  lines = _attribute_lines()
  lines[bad - 1] = row
  path = tmp_path / "list_attr_celeba.txt"
  path.write_text("\n".join(lines) + "\n")
  with pytest.raises(ValueError, match=rf"list_attr_celeba.txt:{bad}: {pattern}"):
    celeba.read_celeba_attributes(path)


def test_attribute_file_parses(tmp_path):
  path = tmp_path / "list_attr_celeba.txt"
  path.write_text("\n".join(_attribute_lines()) + "\n")
  names, files, values = celeba.read_celeba_attributes(path)
  assert names == ("Blond_Hair", "Smiling") and files == ["000001.jpg", "000002.jpg",
                                                          "000003.jpg"]
  np.testing.assert_array_equal(values, [[1, -1], [-1, -1], [1, 1]])
  assert values.dtype == np.int8


def _celeba_with_partition(root, dest, partition_text):
  """A copy of `root` (images and attributes) with another partition file."""
  dest.mkdir()
  for name in ("img_align_celeba.zip", "list_attr_celeba.txt"):
    shutil.copy(root / name, dest / name)
  (dest / "list_eval_partition.txt").write_text(partition_text)
  return dest


def test_duplicate_partition_row_gives_its_lines(tmp_path, celeba_root):
  names = [f"{i + 1:06d}.jpg" for i in range(N_FILES)]
  text = "".join(f"{n} {p}\n" for n, p in zip(names, PARTITION)) + "000002.jpg 2\n"
  root = _celeba_with_partition(celeba_root, tmp_path / "dup", text)
  with pytest.raises(ValueError, match=rf"list_eval_partition.txt:{N_FILES + 1}: image "
                                       rf"000002.jpg is listed twice \(lines 2 and "):
    celeba.load_celeba(root, image_size=4, progress=False)


@pytest.mark.parametrize("split", sources.SPLITS)
def test_empty_split_is_found_before_decoding(tmp_path, celeba_root, monkeypatch, split):
  # Every present image of `split` moved to another split: the split is empty.
  k = sources.SPLITS.index(split)
  other = (k + 1) % 3
  names = [f"{i + 1:06d}.jpg" for i in range(N_FILES)]
  text = "".join(f"{n} {other if p == k else p}\n" for n, p in zip(names, PARTITION))
  root = _celeba_with_partition(celeba_root, tmp_path / split, text)
  monkeypatch.setattr(sources, "decode_image", lambda *a, **k: pytest.fail("decoded"))
  with pytest.raises(ValueError, match=rf"list_eval_partition.txt: the {split} split "
                                       rf"\(partition {k}\) has none of the {N_PRESENT} images"):
    celeba.load_celeba(root, image_size=4, progress=False)


def test_celeba_cache_hit_and_keys(tmp_path, monkeypatch, celeba_root):
  cache = tmp_path / "cache"
  old_mask = os.umask(0o022)
  try:
    first = celeba.load_celeba(celeba_root, image_size=8, cache_dir=cache, progress=False)
  finally:
    os.umask(old_mask)
  assert not first.provenance["cache_hit"]
  assert [p.name for p in cache.iterdir()] == [Path(first.provenance["cache"]).name]
  assert stat.S_IMODE(os.stat(first.provenance["cache"]).st_mode) == 0o644

  def fail(*args, **kwargs):
    raise AssertionError("decoded although the arrays are cached")
  monkeypatch.setattr(sources, "decode_image", fail)
  again = celeba.load_celeba(celeba_root, image_size=8, cache_dir=cache, progress=False)
  assert again.provenance["cache_hit"]
  assert_datasets_equal(first, again)
  # The attribute only changes labels, so it shares the cached images.
  smiling = celeba.load_celeba(celeba_root, image_size=8, cache_dir=cache, attribute="Smiling",
                               progress=False)
  assert smiling.provenance["cache_hit"]
  # Another image size is another key, so it decodes (and fails here).
  with pytest.raises(ValueError, match="cannot decode"):
    celeba.load_celeba(celeba_root, image_size=6, cache_dir=cache, progress=False)
  assert len(list(cache.iterdir())) == 1


def test_cache_write_failure_and_stale_temporaries(tmp_path, monkeypatch, celeba_root):
  cache = tmp_path / "cache"

  def broken_fsync(fd):
    raise OSError("disk full")
  with monkeypatch.context() as m:
    m.setattr(tj_io.os, "fsync", broken_fsync)
    with pytest.warns(UserWarning, match="disk full"):
      ds = celeba.load_celeba(celeba_root, image_size=8, cache_dir=cache, progress=False)
  assert ds.provenance["cache"] is None and len(ds.train.labels) == 6
  assert list(cache.iterdir()) == []  # the failed write removed its temporary file
  # A write killed before its rename leaves `.NAME.*.tmp`; the next load removes it.
  stale = cache / ".celeba_8px_0123.npz.abc.tmp"
  stale.write_bytes(b"partial")
  ds = celeba.load_celeba(celeba_root, image_size=8, cache_dir=cache, progress=False)
  assert [p.name for p in cache.iterdir()] == [Path(ds.provenance["cache"]).name]


def test_decode_center_crop():
  # 10 wide, 30 tall: red top third, green middle, blue bottom; PNG so pixels are exact.
  img = np.zeros((30, 10, 3), np.uint8)
  img[:10, :, 0] = img[10:20, :, 1] = img[20:, :, 2] = 255
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, "PNG")
  cropped = sources.decode_image(buf.getvalue(), image_size=5, center_crop=True)
  np.testing.assert_array_equal(cropped, np.broadcast_to([0, 255, 0], (5, 5, 3)))
  squashed = sources.decode_image(buf.getvalue(), image_size=6, center_crop=False)
  assert squashed.shape == (6, 6, 3)
  assert squashed[0, 0, 0] == 255 and squashed[-1, 0, 2] == 255



def test_tfds_celeba(monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")
  sizes = {"train": 7, "validation": 4, "test": 5}

  class Info:
    splits = {s: type("S", (), {"num_examples": n}) for s, n in sizes.items()}

  def fake_load(name, *, split, data_dir, download, with_info, decoders):
    assert (name, download, with_info) == ("celeb_a", False, True) and "image" in decoders
    examples = [{"image": _jpeg(i, size=(178, 218)),
                 "attributes": {a: a == "Blond_Hair" and i % 3 == 0
                                for a in celeba.CELEBA_ATTRIBUTES}}
                for i in range(sizes[split])]
    return examples, Info()
  monkeypatch.setattr(tfds, "load", fake_load)
  monkeypatch.setattr(tfds, "as_numpy", lambda x: x)
  ds = celeba.load_celeba(None, source="tfds", image_size=8, max_per_split={"train": 5},
                        progress=False)
  assert [len(getattr(ds, s).labels) for s in sources.SPLITS] == [5, 4, 5]
  np.testing.assert_array_equal(ds.val.labels, [1, -1, -1, 1])
  np.testing.assert_array_equal(ds.train.labels, np.where(ds.train.index % 3 == 0, 1, -1))
  assert ds.train.images.shape == (5, 8, 8, 3)
  assert ds.provenance["available"]["train"]["n"] == 7
  with pytest.raises(ValueError, match="Wearing_Hat"):
    celeba.load_celeba(None, source="tfds", attribute="blond", progress=False)
