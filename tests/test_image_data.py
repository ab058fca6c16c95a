"""Tests for thumb_jax.images.data on small files written in tmp_path."""

import io
import pickle
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from thumb_jax.images import data

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# ----------------------------------------------------------------------------- CIFAR-10

# Fake CIFAR-10: 100 train images (60 trucks, 30 airplanes, 10 cats) and 70 test images
# (40 trucks, 20 airplanes, 10 cats), in a shuffled class order.
N_TRUCK_TR, N_AIR_TR, N_TRUCK_TE, N_AIR_TE = 60, 30, 40, 20


def _fake_cifar_arrays(seed=0):
  rng = np.random.default_rng(seed)
  out = {}
  for split, counts in (("train", (N_AIR_TR, N_TRUCK_TR, 10)),
                        ("test", (N_AIR_TE, N_TRUCK_TE, 10))):
    labels = rng.permutation(np.repeat([0, 9, 3], counts))
    out[split] = (rng.integers(0, 256, (labels.shape[0], 32, 32, 3), dtype=np.uint8), labels)
  return out


def _write_batches(folder, arrays):
  folder.mkdir(parents=True)
  (x, y), (xt, yt) = arrays["train"], arrays["test"]
  parts = [(f"data_batch_{i + 1}", x[20 * i:20 * (i + 1)], y[20 * i:20 * (i + 1)])
           for i in range(5)] + [("test_batch", xt, yt)]
  for name, images, labels in parts:
    # Same structure as the official Python 2 pickles: bytes keys, CHW rows of 3072.
    batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in labels],
             b"data": images.transpose(0, 3, 1, 2).reshape(-1, 3072),
             b"filenames": [b"x.png"] * len(labels)}
    with open(folder / name, "wb") as f:
      pickle.dump(batch, f)
  return folder


def _write_two_class_npz(path, arrays):
  """Like the shared cifar10_airplane_truck.npz: only labels 0 and 9, plus idx_*."""
  out = {}
  for split in ("train", "test"):
    x, y = arrays[split]
    keep = np.flatnonzero((y == 0) | (y == 9))
    out.update({f"x_{split}": x[keep], f"y_{split}": y[keep], f"idx_{split}": keep})
  np.savez(path, **out)
  return path


@pytest.fixture(name="cifar")
def fixture_cifar(tmp_path):
  arrays = _fake_cifar_arrays()
  folder = _write_batches(tmp_path / "cifar-10-batches-py", arrays)
  npz = _write_two_class_npz(tmp_path / "two_class.npz", arrays)
  return arrays, folder, npz


def _assert_datasets_equal(a, b):
  for split in data.SPLITS:
    for field in data.Split._fields:
      np.testing.assert_array_equal(getattr(getattr(a, split), field),
                                    getattr(getattr(b, split), field), err_msg=split + field)


def test_cifar_split_counts_labels_and_images(cifar):
  arrays, folder, _ = cifar
  ds = data.load_cifar10_binary(folder, minority_share=0.2, val_fraction=0.5, seed=3)
  # train: all 60 trucks + round(60 * 0.2 / 0.8) = 15 airplanes; val: 20 trucks + 5
  # airplanes; test: every other test truck and airplane.
  expected = {"train": (15, 60), "val": (5, 20), "test": (15, 20)}
  for split, (n_plus, n_minus) in expected.items():
    s = getattr(ds, split)
    assert s.images.shape == (n_plus + n_minus, 32, 32, 3) and s.images.dtype == np.uint8
    assert s.labels.dtype == np.int8
    assert (int(np.sum(s.labels == 1)), int(np.sum(s.labels == -1))) == (n_plus, n_minus)
    counts = ds.provenance["counts"][split]
    assert (counts["n_plus"], counts["n_minus"], counts["n"]) == (n_plus, n_minus,
                                                                  n_plus + n_minus)
    # Each image is the source image of its index, with +1 exactly for airplanes.
    x, y = arrays["train" if split == "train" else "test"]
    np.testing.assert_array_equal(s.images, x[s.index])
    np.testing.assert_array_equal(s.labels, np.where(y[s.index] == 0, 1, -1))
    assert np.all(np.diff(s.index) > 0)
  # val and test partition the test airplanes and trucks.
  both = np.concatenate([ds.val.index, ds.test.index])
  _, y_test = arrays["test"]
  np.testing.assert_array_equal(np.sort(both), np.flatnonzero((y_test == 0) | (y_test == 9)))
  assert ds.provenance["format"] == "pickle" and ds.provenance["seed"] == 3
  assert ds.provenance["classes"]["+1"].startswith("airplane")


def test_cifar_default_counts_full_size():
  # The split of the real two classes (5000 + 5000 train, 1000 + 1000 test), labels only.
  y_train = np.repeat([0, 9], 5000)
  y_test = np.tile([9, 0], 1000)
  pos = data.cifar10_split_positions(y_train, y_test)
  assert (np.sum(y_train[pos["train"]] == 0), np.sum(y_train[pos["train"]] == 9)) == (495, 5000)
  assert (np.sum(y_test[pos["val"]] == 0), np.sum(y_test[pos["val"]] == 9)) == (49, 500)
  assert (np.sum(y_test[pos["test"]] == 0), np.sum(y_test[pos["test"]] == 9)) == (951, 500)
  assert 128 / 512 == 0.25 and len(pos["val"]) >= 512


def test_cifar_seed_determinism(cifar):
  _, folder, _ = cifar
  a = data.load_cifar10_binary(folder, minority_share=0.2, seed=0)
  _assert_datasets_equal(a, data.load_cifar10_binary(folder, minority_share=0.2, seed=0))
  b = data.load_cifar10_binary(folder, minority_share=0.2, seed=1)
  assert not np.array_equal(a.train.index, b.train.index)
  assert not np.array_equal(a.val.index, b.val.index)


def test_cifar_sources_select_the_same_images(cifar, tmp_path):
  _, folder, npz = cifar
  ref = data.load_cifar10_binary(folder, minority_share=0.2, seed=5)
  tar_path = tmp_path / "cifar-10-python.tar.gz"
  with tarfile.open(tar_path, "w:gz") as tar:
    tar.add(folder, arcname="cifar-10-batches-py")
  for where, fmt in ((npz, "npz"), (tmp_path, "pickle"), (tar_path, "tar")):
    ds = data.load_cifar10_binary(where, minority_share=0.2, seed=5)
    assert ds.provenance["format"] == fmt
    _assert_datasets_equal(ds, ref)
  (folder / "data_batch_1").unlink()  # the parent now only holds the tar.gz as a source
  assert data.load_dataset("cifar10", data_dir=tmp_path, minority_share=0.2,
                           seed=5).provenance["format"] == "tar"


def test_cifar_missing_and_unreadable(tmp_path, cifar):
  _, folder, _ = cifar
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match=r"empty.*cifar-10-python\.tar\.gz"):
    data.load_cifar10_binary(empty)
  with pytest.raises(FileNotFoundError, match="data_dir"):
    data.load_cifar10_binary(None)
  (folder / "data_batch_3").unlink()
  with pytest.raises(FileNotFoundError, match="data_batch_3"):
    data.load_cifar10_binary(folder)
  bad = tmp_path / "bad.npz"
  bad.write_bytes(b"not an npz")
  with pytest.raises(FileNotFoundError, match="bad.npz"):
    data.load_cifar10_binary(bad)
  np.savez(tmp_path / "wrong.npz", x_train=np.zeros(1))
  with pytest.raises(ValueError, match="y_train"):
    data.load_cifar10_binary(tmp_path / "wrong.npz")


def test_cifar_bad_arguments(cifar):
  _, folder, _ = cifar
  for kwargs, pattern in (({"minority_share": 0.0}, "minority_share"),
                          ({"val_fraction": 1.0}, "val_fraction"),
                          ({"minority_share": 0.5}, "minority_share"),  # needs 60 of 30
                          ({"seed": -1}, "seed"),
                          ({"source": "web"}, "source"),
                          ({"majority_label": 0}, "differ")):
    with pytest.raises(ValueError, match=pattern):
      data.load_cifar10_binary(folder, **kwargs)
  with pytest.raises(ValueError, match="'cifar10' or 'celeba'"):
    data.load_dataset("imagenet", data_dir=folder)


# ----------------------------------------------------------------------------- CelebA

# 12 JPEGs in the zip; the attribute and partition files also list 4 images that are not.
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
  attrs = list(data.CELEBA_ATTRIBUTES)
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
  k = data.SPLITS.index(split)
  files = [i + 1 for i in range(N_PRESENT) if PARTITION[i] == k]
  return np.array(files), np.array([labels[f - 1] for f in files])


def test_celeba_zip_uses_present_images_and_partition(tmp_path):
  root = _write_celeba(tmp_path / "celeba")
  ds = data.load_celeba(tmp_path, image_size=8, progress=False)  # finds root/celeba
  for split in data.SPLITS:
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

  smiling = data.load_dataset("celeba", data_dir=root, attribute="Smiling", image_size=8,
                              progress=False)
  np.testing.assert_array_equal(smiling.val.labels, _expected("val", SMILING)[1])


def test_celeba_folder_matches_zip(tmp_path):
  zipped = data.load_celeba(_write_celeba(tmp_path / "a"), image_size=8, progress=False)
  folder = data.load_celeba(_write_celeba(tmp_path / "b", layout="folder"), image_size=8,
                            progress=False)
  assert folder.provenance["format"] == "folder"
  _assert_datasets_equal(zipped, folder)


def test_celeba_max_per_split_seeded(tmp_path):
  root = _write_celeba(tmp_path)

  def load(seed, caps):
    return data.load_celeba(root, image_size=4, max_per_split=caps, seed=seed,
                            progress=False)
  a = load(0, {"train": 3})
  assert (len(a.train.labels), len(a.val.labels), len(a.test.labels)) == (3, 3, 3)
  assert set(a.train.index) <= set(_expected("train")[0])
  assert a.provenance["available"]["train"]["n"] == 6
  _assert_datasets_equal(a, load(0, {"train": 3}))
  assert any(not np.array_equal(a.train.index, load(s, {"train": 3}).train.index)
             for s in (1, 2, 3))
  assert len(load(0, 2).test.labels) == 2
  with pytest.raises(ValueError, match="max_per_split"):
    load(0, {"valid": 2})
  with pytest.raises(ValueError, match="max_per_split"):
    load(0, 0)


def test_celeba_unknown_attribute_lists_valid_names(tmp_path):
  root = _write_celeba(tmp_path)
  with pytest.raises(ValueError, match="Blond_Hair") as err:
    data.load_celeba(root, attribute="Blonde_Hair", progress=False)
  assert "Wearing_Necktie" in str(err.value) and "'Blonde_Hair'" in str(err.value)


def test_celeba_missing_files(tmp_path):
  root = _write_celeba(tmp_path)
  (root / "list_attr_celeba.txt").unlink()
  with pytest.raises(FileNotFoundError, match=r"list_attr_celeba\.txt.*CelebA"):
    data.load_celeba(root, progress=False)
  with pytest.raises(FileNotFoundError, match="nowhere"):
    data.load_celeba(tmp_path / "nowhere", progress=False)
  root2 = _write_celeba(tmp_path / "corrupt")
  (root2 / "img_align_celeba.zip").write_bytes(b"not a zip")
  with pytest.raises(FileNotFoundError, match="img_align_celeba.zip"):
    data.load_celeba(root2, progress=False)
  with pytest.raises(ValueError, match="image_size"):
    data.load_celeba(root2, image_size=0)


def test_celeba_cache_hit_and_atomic_write(tmp_path, monkeypatch):
  root = _write_celeba(tmp_path / "celeba")
  cache = tmp_path / "cache"
  first = data.load_celeba(root, image_size=8, cache_dir=cache, progress=False)
  assert not first.provenance["cache_hit"]
  assert [p.name for p in cache.iterdir()] == [Path(first.provenance["cache"]).name]

  def fail(*args, **kwargs):
    raise AssertionError("decoded although the arrays are cached")
  monkeypatch.setattr(data, "_decode_image", fail)
  again = data.load_celeba(root, image_size=8, cache_dir=cache, progress=False)
  assert again.provenance["cache_hit"]
  _assert_datasets_equal(first, again)
  # The attribute only changes labels, so it shares the cached images.
  smiling = data.load_celeba(root, image_size=8, cache_dir=cache, attribute="Smiling",
                             progress=False)
  assert smiling.provenance["cache_hit"]
  # Another image size is another key, so it decodes (and fails here).
  with pytest.raises(ValueError, match="cannot decode"):
    data.load_celeba(root, image_size=6, cache_dir=cache, progress=False)
  assert len(list(cache.iterdir())) == 1


def test_cache_write_failure_leaves_no_temp_file(tmp_path, monkeypatch):
  root = _write_celeba(tmp_path / "celeba")
  cache = tmp_path / "cache"

  def broken_savez(f, **arrays):
    f.write(b"partial")
    raise OSError("disk full")
  monkeypatch.setattr(data.np, "savez", broken_savez)
  with pytest.warns(UserWarning, match="disk full"):
    ds = data.load_celeba(root, image_size=8, cache_dir=cache, progress=False)
  assert ds.provenance["cache"] is None and len(ds.train.labels) == 6
  assert list(cache.iterdir()) == []


def test_decode_center_crop():
  # 10 wide, 30 tall: red top third, green middle, blue bottom; PNG so pixels are exact.
  img = np.zeros((30, 10, 3), np.uint8)
  img[:10, :, 0] = img[10:20, :, 1] = img[20:, :, 2] = 255
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, "PNG")
  cropped = data._decode_image(buf.getvalue(), image_size=5, center_crop=True)
  np.testing.assert_array_equal(cropped, np.broadcast_to([0, 255, 0], (5, 5, 3)))
  squashed = data._decode_image(buf.getvalue(), image_size=6, center_crop=False)
  assert squashed.shape == (6, 6, 3)
  assert squashed[0, 0, 0] == 255 and squashed[-1, 0, 2] == 255


# ----------------------------------------------------------------------------- tfds


def test_tfds_cifar10(cifar, monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")
  arrays, folder, _ = cifar
  calls = []

  def fake_load(name, *, split, data_dir, download, batch_size):
    calls.append((name, split, data_dir, download, batch_size))
    x, y = arrays[split]
    order = np.random.default_rng(1).permutation(len(y))  # tfds stores a shuffled order
    ids = np.array([f"{split}_{i:05d}".encode() for i in order])
    return {"image": x[order], "label": y[order], "id": ids}
  monkeypatch.setattr(tfds, "load", fake_load)
  monkeypatch.setattr(tfds, "as_numpy", lambda x: x)
  ds = data.load_dataset("cifar10", data_dir="/tfds", source="tfds", minority_share=0.2)
  assert calls == [("cifar10", "train", "/tfds", False, -1),
                   ("cifar10", "test", "/tfds", False, -1)]
  assert ds.provenance["format"] == "tfds"
  _assert_datasets_equal(ds, data.load_cifar10_binary(folder, minority_share=0.2))


def test_tfds_celeba(monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")
  sizes = {"train": 7, "validation": 4, "test": 5}

  class Info:
    splits = {s: type("S", (), {"num_examples": n}) for s, n in sizes.items()}

  def fake_load(name, *, split, data_dir, download, with_info, decoders):
    assert (name, download, with_info) == ("celeb_a", False, True) and "image" in decoders
    examples = [{"image": _jpeg(i, size=(178, 218)),
                 "attributes": {a: a == "Blond_Hair" and i % 3 == 0
                                for a in data.CELEBA_ATTRIBUTES}}
                for i in range(sizes[split])]
    return examples, Info()
  monkeypatch.setattr(tfds, "load", fake_load)
  monkeypatch.setattr(tfds, "as_numpy", lambda x: x)
  ds = data.load_celeba(None, source="tfds", image_size=8, max_per_split={"train": 5},
                        progress=False)
  assert [len(getattr(ds, s).labels) for s in data.SPLITS] == [5, 4, 5]
  np.testing.assert_array_equal(ds.val.labels, [1, -1, -1, 1])
  np.testing.assert_array_equal(ds.train.labels, np.where(ds.train.index % 3 == 0, 1, -1))
  assert ds.train.images.shape == (5, 8, 8, 3)
  assert ds.provenance["available"]["train"]["n"] == 7
  with pytest.raises(ValueError, match="Wearing_Hat"):
    data.load_celeba(None, source="tfds", attribute="blond", progress=False)


def test_tfds_missing(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
  with pytest.raises(ImportError, match=r"thumb_jax\[tfds\]"):
    data.load_cifar10_binary(None, source="tfds")
  monkeypatch.undo()
  tfds = pytest.importorskip("tensorflow_datasets")

  def not_prepared(name, **kwargs):
    raise AssertionError(f"Dataset {name}: could not find data in /nowhere.")
  monkeypatch.setattr(tfds, "load", not_prepared)
  with pytest.raises(FileNotFoundError, match="download_and_prepare"):
    data.load_celeba("/nowhere", source="tfds", progress=False)


# ----------------------------------------------------------------------------- shared data


@pytest.mark.skipif(not SHARED.is_dir(), reason="no offline shared data")
def test_shared_data_counts():
  cifar = data.load_cifar10_binary(SHARED)
  counts = cifar.provenance["counts"]
  assert [(counts[s]["n_plus"], counts[s]["n_minus"]) for s in data.SPLITS] == [
      (495, 5000), (49, 500), (951, 500)]
  celeba = data.load_celeba(SHARED, image_size=16, max_per_split=4, progress=False)
  available = celeba.provenance["available"]
  assert [available[s]["n"] for s in data.SPLITS] == [37540, 4535, 4640]
  np.testing.assert_allclose([available[s]["pi_plus"] for s in data.SPLITS],
                             [0.142, 0.146, 0.119], atol=5e-4)
  assert celeba.train.images.shape == (4, 16, 16, 3)
