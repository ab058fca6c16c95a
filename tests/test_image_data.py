"""thumb_jax.images.datasets and .cifar10 on small files the tests write (CelebA: test_celeba)."""

import pickle
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from thumb_jax.images import celeba, cifar10, datasets, sources

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
    batch = {b"batch_label": name.encode(), b"labels": np.asarray(labels).tolist(),
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


@pytest.fixture(name="cifar", scope="module")
def fixture_cifar(tmp_path_factory):
  """(arrays, the batches folder, the two-class .npz), written once; tests must not edit them."""
  root = tmp_path_factory.mktemp("cifar")
  arrays = _fake_cifar_arrays()
  folder = _write_batches(root / "cifar-10-batches-py", arrays)
  npz = _write_two_class_npz(root / "two_class.npz", arrays)
  return arrays, folder, npz


def _copy(folder, dest):
  return Path(shutil.copytree(folder, dest))


def assert_datasets_equal(a, b):
  for split in sources.SPLITS:
    for field in sources.Split._fields:
      np.testing.assert_array_equal(getattr(getattr(a, split), field),
                                    getattr(getattr(b, split), field), err_msg=split + field)


def test_cifar_split_counts_labels_and_images(cifar):
  arrays, folder, _ = cifar
  ds = cifar10.load_cifar10_binary(folder, minority_share=0.2, val_fraction=0.5, seed=3)
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
  pos = cifar10.cifar10_split_positions(y_train, y_test)
  assert (np.sum(y_train[pos["train"]] == 0), np.sum(y_train[pos["train"]] == 9)) == (495, 5000)
  assert (np.sum(y_test[pos["val"]] == 0), np.sum(y_test[pos["val"]] == 9)) == (49, 500)
  assert (np.sum(y_test[pos["test"]] == 0), np.sum(y_test[pos["test"]] == 9)) == (951, 500)
  assert 128 / 512 == 0.25 and len(pos["val"]) >= 512


def test_counts_round_half_up():
  # 5 test trucks * val_fraction 0.5 = 2.5 -> 3 (half to even would give 2); the minority
  # count m = n * s / (1 - s) ties too: 2 (10) trucks at s = 0.2 ask for 0.5 (2.5) airplanes.
  pos = cifar10.cifar10_split_positions(np.repeat([0, 9], [3, 4]), np.repeat([0, 9], [4, 5]),
                                        minority_share=0.2, val_fraction=0.5)
  y_test = np.repeat([0, 9], [4, 5])
  assert (np.sum(y_test[pos["val"]] == 9), np.sum(y_test[pos["val"]] == 0)) == (3, 1)
  assert sources.minority_count(2, 0.2) == 1 and sources.minority_count(10, 0.2) == 3


def test_cifar_seed_determinism(cifar):
  _, folder, _ = cifar
  a = cifar10.load_cifar10_binary(folder, minority_share=0.2, seed=0)
  assert_datasets_equal(a, cifar10.load_cifar10_binary(folder, minority_share=0.2, seed=0))
  b = cifar10.load_cifar10_binary(folder, minority_share=0.2, seed=1)
  assert not np.array_equal(a.train.index, b.train.index)
  assert not np.array_equal(a.val.index, b.val.index)


def test_cifar_sources_select_the_same_images(cifar, tmp_path):
  _, shared_folder, npz = cifar
  folder = _copy(shared_folder, tmp_path / "cifar-10-batches-py")
  ref = cifar10.load_cifar10_binary(folder, minority_share=0.2, seed=5)
  tar_path = tmp_path / "cifar-10-python.tar.gz"
  with tarfile.open(tar_path, "w:gz") as tar:
    tar.add(folder, arcname="cifar-10-batches-py")
  for where, fmt in ((npz, "npz"), (tmp_path, "pickle"), (tar_path, "tar")):
    ds = cifar10.load_cifar10_binary(where, minority_share=0.2, seed=5)
    assert ds.provenance["format"] == fmt
    assert_datasets_equal(ds, ref)
  (folder / "data_batch_1").unlink()  # the parent now only holds the tar.gz as a source
  assert datasets.load_dataset("cifar10", data_dir=tmp_path, minority_share=0.2,
                               seed=5).provenance["format"] == "tar"


def test_cifar_missing_and_unreadable(tmp_path, cifar):
  folder = _copy(cifar[1], tmp_path / "batches")
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match=r"empty.*cifar-10-python\.tar\.gz"):
    cifar10.load_cifar10_binary(empty)
  with pytest.raises(FileNotFoundError, match="data_dir"):
    cifar10.load_cifar10_binary(None)
  (folder / "data_batch_3").unlink()
  with pytest.raises(FileNotFoundError, match="data_batch_3"):
    cifar10.load_cifar10_binary(folder)
  bad = tmp_path / "bad.npz"
  bad.write_bytes(b"not an npz")
  with pytest.raises(FileNotFoundError, match="bad.npz"):
    cifar10.load_cifar10_binary(bad)
  np.savez(tmp_path / "wrong.npz", x_train=np.zeros(1))
  with pytest.raises(ValueError, match="y_train"):
    cifar10.load_cifar10_binary(tmp_path / "wrong.npz")


@pytest.mark.parametrize("fmt", ["npz", "tar", "pickle"])
def test_cifar_empty_file_is_named(tmp_path, cifar, fmt):
  if fmt == "pickle":
    empty = _copy(cifar[1], tmp_path / "batches") / "data_batch_2"
    where = empty.parent
  else:
    empty = where = tmp_path / {"npz": "data.npz", "tar": "cifar-10-python.tar.gz"}[fmt]
  empty.write_bytes(b"")
  with pytest.raises(FileNotFoundError, match=rf"{empty.name}: the file is empty"):
    cifar10.load_cifar10_binary(where)


@pytest.mark.parametrize("fmt", ["npz", "pickle"])
@pytest.mark.parametrize("kind", ["names", "fractions"])
def test_cifar_non_integer_labels_are_named(tmp_path, cifar, fmt, kind):
  arrays = dict(_fake_cifar_arrays())
  x, y = arrays["train"]
  bad = (np.array(cifar10.CIFAR10_CLASSES)[y] if kind == "names" else y + 0.5)
  arrays["train"] = (x, bad)
  if fmt == "npz":
    where = tmp_path / "bad.npz"
    np.savez(where, x_train=x, y_train=bad, x_test=arrays["test"][0], y_test=arrays["test"][1])
    pattern = r"bad.npz\[train\]: expected integer CIFAR-10 labels 0..9, got dtype"
  else:
    if kind == "names":
      arrays["train"] = (x, [n.encode() for n in bad])  # the pickles hold bytes
    where = tmp_path / "batches"
    _write_batches(where, arrays)
    pattern = r"batches\[train\]: expected integer CIFAR-10 labels 0..9, got dtype"
  with pytest.raises(ValueError, match=pattern):
    cifar10.load_cifar10_binary(where)


def test_cifar_bad_arguments(cifar):
  _, folder, _ = cifar
  for kwargs, pattern in (({"minority_share": 0.0}, "minority_share"),
                          ({"val_fraction": 1.0}, "val_fraction"),
                          ({"minority_share": 0.5}, "minority_share"),  # needs 60 of 30
                          ({"seed": -1}, "seed"),
                          ({"source": "web"}, "source"),
                          ({"majority_label": 0}, "differ")):
    with pytest.raises(ValueError, match=pattern):
      cifar10.load_cifar10_binary(folder, **kwargs)
  with pytest.raises(ValueError, match="'cifar10' or 'celeba'"):
    datasets.load_dataset("imagenet", data_dir=folder)


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
  ds = datasets.load_dataset("cifar10", data_dir="/tfds", source="tfds", minority_share=0.2)
  assert calls == [("cifar10", "train", "/tfds", False, -1),
                   ("cifar10", "test", "/tfds", False, -1)]
  assert ds.provenance["format"] == "tfds"
  assert_datasets_equal(ds, cifar10.load_cifar10_binary(folder, minority_share=0.2))


def test_tfds_missing(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
  with pytest.raises(ImportError, match=r"thumb_jax\[tfds\]"):
    cifar10.load_cifar10_binary(None, source="tfds")
  monkeypatch.undo()
  tfds = pytest.importorskip("tensorflow_datasets")

  def not_prepared(name, **kwargs):
    raise AssertionError(f"Dataset {name}: could not find data in /nowhere.")
  monkeypatch.setattr(tfds, "load", not_prepared)
  with pytest.raises(FileNotFoundError, match="download_and_prepare"):
    celeba.load_celeba("/nowhere", source="tfds", progress=False)
