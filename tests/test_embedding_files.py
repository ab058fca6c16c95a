"""Embedding files (thumb_jax.embedding_files): split discovery, array names, shared key order."""

import numpy as np
import pytest

from thumb_jax import cli, embedding_files
from thumb_jax.images import embeddings

D, N = 10, 24
X = np.random.default_rng(0).standard_normal((N, D))
Y = np.where(np.arange(N) < 6, 1.0, -1.0)


def _write(path, x, labels):
  np.savez(path, embeddings=x, labels=labels)


def test_missing_split_file_is_named(tmp_path):
  _write(tmp_path / "val.npz", X, Y)
  with pytest.raises(ValueError, match=r"^test split: expected .*test\.npz"):
    embedding_files.load_embedding_splits(tmp_path)
  with pytest.raises(ValueError, match="is not a directory"):
    embedding_files.load_embedding_splits(tmp_path / "nowhere")


def test_ambiguous_cache_files_are_listed(tmp_path):
  for dataset in ("cifar10", "celeba-Smiling"):
    for split in ("val", "test"):
      _write(embeddings.cache_path(tmp_path, dataset=dataset, split=split, latent_dim=D,
                                   checkpoint_hash="00112233445566778899"), X, Y)
  with pytest.raises(ValueError, match=r"^val split: .*\['celeba-Smiling_val_d10_.*', "
                                       r"'cifar10_val_d10_.*'\]"):
    embedding_files.load_embedding_splits(tmp_path)
  data = embedding_files.load_embedding_splits(tmp_path, dataset="celeba")
  assert data["val"][0].shape == (N, D)


def test_shared_feature_and_label_key_order(tmp_path):
  """cli and the embedding loader pick the same arrays from a file holding several names."""
  rng = np.random.default_rng(3)
  arrays = {name: rng.standard_normal((12, 3)) for name in embedding_files.FEATURE_KEYS}
  arrays.update({name: np.repeat([k, k + 10], 6) for k, name in
                 enumerate(embedding_files.LABEL_KEYS)})
  for split in ("val", "test"):
    np.savez(tmp_path / f"{split}.npz", **arrays)
  x_cli, y_cli = cli.load_retraining_set(str(tmp_path / "val.npz"))
  x_dir, y_dir = embedding_files.load_embedding_splits(tmp_path)["val"]
  np.testing.assert_array_equal(x_cli, x_dir)
  np.testing.assert_array_equal(y_cli, y_dir)
  np.testing.assert_array_equal(x_dir, arrays[embedding_files.FEATURE_KEYS[0]])
  np.testing.assert_array_equal(y_dir, arrays[embedding_files.LABEL_KEYS[0]])


def test_embedding_loader_accepts_documented_and_cache_names(tmp_path):
  rng = np.random.default_rng(0)
  for split in ("train", "val"):
    np.savez(tmp_path / f"{split}.npz", embeddings=rng.standard_normal((20, 4)),
             labels=rng.integers(0, 2, 20))
  # The images.embeddings cache name, with alternative array names.
  np.savez(tmp_path / f"cifar_test_d4_{'0' * 16}.npz", x=rng.standard_normal((10, 4)),
           y=rng.integers(0, 2, 10))
  data = embedding_files.load_embedding_splits(str(tmp_path))
  assert data["val"][0].shape == (20, 4) and data["test"][1].shape == (10,)
  np.savez(tmp_path / "other_test_x.npz", embeddings=np.ones((3, 4)), labels=np.ones(3))
  with pytest.raises(ValueError, match="exactly one"):
    embedding_files.load_embedding_splits(str(tmp_path))


@pytest.mark.parametrize("damage", ["empty", "not-zip", "truncated", "pickled"])
def test_unreadable_split_file_is_named(tmp_path, damage):
  _write(tmp_path / "test.npz", X, Y)
  path = tmp_path / "val.npz"
  if damage == "pickled":
    np.savez(path, embeddings=np.array([object()] * N), labels=Y)
  else:
    _write(path, X, Y)
    path.write_bytes({"empty": b"", "not-zip": b"x, y\n1, 2\n",
                      "truncated": path.read_bytes()[:300]}[damage])
  with pytest.raises(ValueError, match=rf"^{path}: cannot read it as a NumPy"):
    embedding_files.load_embedding_splits(tmp_path)
