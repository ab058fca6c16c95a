"""Embedding extraction and its disk cache; the entry points (smoke test, --help, bad inputs)."""

import contextlib
import json
import os
import re
import stat
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from thumb_jax import platform
from thumb_jax.images import configs, embeddings, resnet, train

sys.path.insert(0, os.path.dirname(__file__))
from test_train import fake_dataset  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope="module")
def tiny_model_and_variables():
  """The tiny config's model and a fresh init (the init train_and_evaluate compiles)."""
  config = configs.tiny()
  model = train.create_model(config)
  state = train.create_train_state(config, model, key=jax.random.key(0, impl=platform.PRNG_IMPL),
                                   steps_per_epoch=1)
  return model, {"params": state.params, "batch_stats": state.batch_stats}


def test_padded_last_batch_equals_unpadded(tiny_model_and_variables):
  model, variables = tiny_model_and_variables
  images = np.random.default_rng(0).integers(0, 256, (11, 16, 16, 3), dtype=np.uint8)
  emb = embeddings.extract_embeddings(variables, model, images, batch_size=4)  # 4 + 4 + 3 (pad)
  assert emb.shape == (11, 16) and emb.dtype == np.float32
  # One zero-padded batch of 16 (the tiny config's eval_batch_size: compiled once for both).
  one_batch = embeddings.extract_embeddings(variables, model, images, batch_size=16)
  # Eval mode: batch norm uses running statistics, so rows do not depend on batch mates.
  np.testing.assert_allclose(emb, one_batch, rtol=1e-5, atol=1e-6)
  _, direct = jax.jit(lambda v, x: model.apply(v, x, train=False))(
      variables, resnet.normalize_images(images[8:]))
  np.testing.assert_allclose(emb[8:], np.asarray(direct), rtol=1e-5, atol=1e-6)


def test_params_hash_sees_every_change(tiny_model_and_variables):
  _, variables = tiny_model_and_variables
  h = embeddings.params_hash(variables)
  assert h == embeddings.params_hash(jax.tree.map(np.asarray, variables))
  changed = jax.tree.map(np.array, variables)
  changed["params"]["head_out"]["bias"][0] += 1e-6
  assert embeddings.params_hash(changed) != h
  changed = jax.tree.map(np.array, variables)
  changed["batch_stats"]["backbone"]["bn1"]["var"][0] += 1e-6
  assert embeddings.params_hash(changed) != h


def test_cache_miss_hit_and_keys(tmp_path):
  calls = []

  def compute(value=1.0):
    def fn():
      calls.append(value)
      return embeddings.Embeddings(np.full((5, 8), value, np.float32),
                                   np.array([1, -1, -1, 1, -1]), {"source": "fake"},
                                   np.arange(5))
    return fn

  key = dict(dataset="cifar10", split="val", latent_dim=8, checkpoint_hash="ab" * 32)
  first = embeddings.cached_embeddings(tmp_path, **key, compute_fn=compute())
  assert calls == [1.0]
  again = embeddings.cached_embeddings(tmp_path, **key, compute_fn=compute(2.0))
  assert calls == [1.0]  # hit: compute_fn not called
  np.testing.assert_array_equal(again.embeddings, first.embeddings)
  np.testing.assert_array_equal(again.labels, [1, -1, -1, 1, -1])
  np.testing.assert_array_equal(again.index, np.arange(5))
  assert again.provenance == {"source": "fake"}

  for change in (dict(dataset="celeba-Blond_Hair"), dict(split="test"),
                 dict(checkpoint_hash="cd" * 32)):
    embeddings.cached_embeddings(tmp_path, **{**key, **change}, compute_fn=compute(3.0))
  assert calls == [1.0, 3.0, 3.0, 3.0]
  with pytest.raises(ValueError, match=r"compute_fn: expected embeddings \[N, 16\]"):
    embeddings.cached_embeddings(tmp_path, **{**key, "latent_dim": 16}, compute_fn=compute())
  assert calls[-1] == 1.0  # a new latent_dim missed (and was checked)
  assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp") or f.endswith(".tmp")]
  assert len(os.listdir(tmp_path)) == 4

  # A killed write's temporary is removed; an unreadable entry is recomputed with a warning.
  stale = tmp_path / ".cifar10_val_d8_x.npz.abc.tmp"
  stale.write_bytes(b"partial")
  path = embeddings.cache_path(tmp_path, **key)
  with open(path, "wb") as f:
    f.write(b"not an npz")
  with pytest.warns(UserWarning, match="unreadable"):
    embeddings.cached_embeddings(tmp_path, **key, compute_fn=compute(4.0))
  assert calls[-1] == 4.0 and not stale.exists()
  np.testing.assert_array_equal(
      embeddings.cached_embeddings(tmp_path, **key, compute_fn=compute()).embeddings, 4.0)


@contextlib.contextmanager
def umask(mask):
  old = os.umask(mask)
  try:
    yield
  finally:
    os.umask(old)


def mode(path) -> int:
  return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask,expected", [(0o022, 0o644), (0o077, 0o600)])
def test_cache_entry_mode_honours_the_umask(tmp_path, mask, expected):
  with umask(mask):
    embeddings.cached_embeddings(
        tmp_path, dataset="cifar10", split="val", latent_dim=2, checkpoint_hash="ab" * 32,
        compute_fn=lambda: embeddings.Embeddings(np.zeros((3, 2)), np.array([1, -1, 1]), {}))
  (entry,) = tmp_path.iterdir()
  assert mode(entry) == expected


def test_images_package_writes_only_through_thumb_jax_io():
  # Every file write under thumb_jax/images goes through thumb_jax.io (atomic, umask mode).
  folder = Path(embeddings.__file__).parent
  direct = re.compile(r"open\([^)]*['\"][wax]b?\+?['\"]|np\.save|savez|\.write_(text|bytes)\(|"
                      r"json\.dump\(|pickle\.dump|\.tofile\(")
  found = [f"{f.name}:{n}: {line.strip()}" for f in sorted(folder.glob("*.py"))
           for n, line in enumerate(f.read_text().splitlines(), 1) if direct.search(line)]
  assert not found, found


def test_train_backbone_main_smoke(tmp_path, monkeypatch):
  from experiments import train_backbone  # pylint: disable=g-import-not-at-top
  data = fake_dataset()
  with umask(0o022):
    summary = train_backbone.main(["--config", "tiny", "--workdir", str(tmp_path)],
                                  dataset=data)
  for name in ("config.json", "metrics.json", "summary.json"):
    assert mode(tmp_path / name) == 0o644, name
  for split in ("train", "val", "test"):
    with np.load(summary["embeddings"][split]) as f:
      n = len(getattr(data, split).labels)
      assert f["embeddings"].shape == (n, configs.tiny().latent_dim)
      assert json.loads(str(f["provenance"]))["split"] == split
    assert mode(summary["embeddings"][split]) == 0o644
  assert os.path.exists(tmp_path / "metrics.json")
  # A second run finds the checkpoint (nothing to train) and every embedding in the cache.
  monkeypatch.setattr(embeddings, "extract_embeddings",
                      lambda *a, **k: pytest.fail("cache miss on rerun"))
  again = train_backbone.main(["--config", "tiny", "--workdir", str(tmp_path)], dataset=data)
  assert again["checkpoint_hash"] == summary["checkpoint_hash"]


@pytest.mark.parametrize("learning_rate,error,pattern", [
    ("nan", ValueError, r"learning_rate: expected a finite number >= 0, got nan"),
    ("1e30", FloatingPointError, r"diverged: the training loss is nan at epoch 1/1, step \d+/5 "
                                 r"\(global step \d+\), with learning_rate=1e\+30")],
    ids=["nan", "1e30"])
def test_train_backbone_refuses_or_stops_a_diverging_run(tmp_path, learning_rate, error,
                                                         pattern):
  from experiments import train_backbone  # pylint: disable=g-import-not-at-top
  with pytest.raises(error, match=pattern):
    train_backbone.main(["--config", "tiny", "--workdir", str(tmp_path),
                         "--learning_rate", learning_rate], dataset=fake_dataset())
  # No embeddings, summary, metrics or checkpoint of the diverged weights.
  left = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")}
  assert left <= {"config.json", "checkpoints"}, left


def test_train_backbone_missing_init_checkpoint(tmp_path, monkeypatch):
  from experiments import train_backbone  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(sys.modules, "torch", None)  # the file is checked before torch is needed
  monkeypatch.setattr(train, "load_data", lambda *a, **k: pytest.fail("data loaded"))
  with pytest.raises(FileNotFoundError, match=r"--init_checkpoint: .*r34.pth' does not exist"):
    train_backbone.main(["--config", "tiny", "--workdir", str(tmp_path / "run"),
                         "--init_checkpoint", str(tmp_path / "r34.pth")])
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("module", ["train_backbone", "bench_train"])
def test_help_explains_every_flag(module, capsys):
  import importlib  # pylint: disable=g-import-not-at-top
  entry = importlib.import_module(f"experiments.{module}")
  parser = entry._parser()  # pylint: disable=protected-access
  for action in parser._actions:  # pylint: disable=protected-access
    if action.dest == "help":
      continue
    assert action.help, action.option_strings
    assert "default" in action.help or action.required, action.option_strings
  with pytest.raises(SystemExit) as exit_info:
    entry.main(["--help"])
  assert exit_info.value.code == 0
  text = capsys.readouterr().out
  for action in parser._actions:  # pylint: disable=protected-access
    assert action.option_strings[-1] in text


def test_cache_names_are_found_by_split(tmp_path):
  from thumb_jax import embedding_files
  paths = {split: embeddings.cache_path(tmp_path, dataset="celeba-Blond_Hair", split=split,
                                        latent_dim=4, checkpoint_hash="ab" * 32)
           for split in ("train", "val", "test")}
  assert os.path.basename(paths["val"]) == "celeba-Blond-Hair_val_d4_abababababababab.npz"
  for split, path in paths.items():
    np.savez(path, embeddings=np.zeros((3, 4)), labels=np.array([1, -1, 1]))
    assert embedding_files.find_split_file(tmp_path, split) == path
  assert set(embedding_files.load_embedding_splits(tmp_path)) == {"val", "test"}
  # A dataset name selects by the whole first field: cifar10 is not a prefix match of cifar100.
  for name in ("cifar10", "cifar100"):
    np.savez(embeddings.cache_path(tmp_path, dataset=name, split="val", latent_dim=4,
                                   checkpoint_hash="cd" * 32),
             embeddings=np.zeros((3, 4)), labels=np.array([1, -1, 1]))
  for name in ("cifar10", "cifar100"):
    found = embedding_files.find_split_file(tmp_path, "val", dataset=name)
    assert os.path.basename(found).startswith(name + "_")
  found = embedding_files.find_split_file(tmp_path, "val", dataset="celeba-Blond_Hair")
  assert found == paths["val"]
