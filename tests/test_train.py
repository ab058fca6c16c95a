"""The fine-tuning loop on fake data: one step, augmentation, resume after interruption."""

import dataclasses
import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from thumb_jax.images import configs, train


class Split(NamedTuple):
  images: np.ndarray
  labels: np.ndarray


class FakeDataset(NamedTuple):
  train: Split
  val: Split
  test: Split
  provenance: dict


def fake_dataset(size=16, n_train=40, n_eval=12, seed=0):
  """Class +1 images are brighter, so a few steps can learn something."""
  rng = np.random.default_rng(seed)

  def split(n):
    labels = np.where(np.arange(n) % 4 == 0, 1, -1)
    base = rng.integers(0, 160, (n, size, size, 3))
    images = (base + 80 * (labels[:, None, None, None] > 0)).astype(np.uint8)
    return Split(images, labels)

  return FakeDataset(split(n_train), split(n_eval), split(n_eval), {"source": "fake"})


def test_config_variants():
  assert configs.paper().image_size == 224 and configs.paper().dtype == "bfloat16"
  assert configs.paper(finetune_mode="long").epochs == 30
  assert configs.paper(finetune_mode="long").learning_rate == 1e-2
  assert configs.cpu().image_size == 32 and configs.cpu().dtype == "float32"
  assert configs.cpu(dataset="celeba").image_size == 64
  assert configs.cpu(dataset="celeba").max_train_examples is not None
  with pytest.raises(ValueError, match="finetune_mode"):
    configs.paper(finetune_mode="medium")
  with pytest.raises(ValueError, match="dataset"):
    configs.Config(dataset="mnist")


def test_augment_crop_and_flip():
  images = jnp.arange(2 * 8 * 8 * 3, dtype=jnp.uint8).reshape(2, 8, 8, 3)
  same = train.augment(images, jax.random.key(0), crop_padding=0, flip=False)
  np.testing.assert_array_equal(same, images)
  out = jax.jit(lambda x, k: train.augment(x, k, crop_padding=4, flip=True))(
      images, jax.random.key(1))
  assert out.shape == images.shape and out.dtype == jnp.uint8
  flipped = train.augment(images, jax.random.key(2), crop_padding=0, flip=True)
  for a, b in zip(np.asarray(flipped), np.asarray(images)):
    assert np.array_equal(a, b) or np.array_equal(a, b[:, ::-1])


def test_one_train_step_and_eval_step():
  config = configs.tiny()
  data = fake_dataset()
  model = train.create_model(config)
  state = train.create_train_state(config, model, key=jax.random.key(0, impl="rbg"),
                                   steps_per_epoch=5)
  # The same cached jit(train_step) that train_and_evaluate uses for this config.
  step, evaluate = train.jitted_steps(**train.augmentation_for(config))
  batch = train.Batch(data.train.images[:8], data.train.labels[:8])
  new_state, metrics = step(state, batch, jax.random.key(1, impl="rbg"))
  assert np.isfinite(float(metrics.loss)) and 0.0 <= float(metrics.accuracy) <= 1.0
  assert int(new_state.step) == 1
  old, new = jax.device_get((state.params, new_state.params))
  assert all(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new)))
  old, new = jax.device_get((state.batch_stats, new_state.batch_stats))
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new)))
  sums = evaluate(new_state, train.Batch(
      data.val.images[:8], data.val.labels[:8], np.array([1.0] * 6 + [0.0] * 2, np.float32)))
  assert float(sums.count) == 6.0
  assert float(sums.count_plus) + float(sums.count_minus) == 6.0


def test_check_split_names_the_problem(tmp_path):
  data = fake_dataset(size=8)
  with pytest.raises(ValueError, match=r"dataset.train.images: expected shape \[N, 16, 16, 3\]"):
    train.train_and_evaluate(configs.tiny(), str(tmp_path), dataset=data)


def test_resume_after_interruption_matches_uninterrupted(tmp_path):
  config = dataclasses.replace(configs.tiny(), epochs=2)
  data = fake_dataset()

  full = train.train_and_evaluate(config, str(tmp_path / "full"), dataset=data)
  # "Interrupted" after epoch 1: a run with epochs=1, then the same workdir with epochs=2.
  train.train_and_evaluate(dataclasses.replace(config, epochs=1), str(tmp_path / "resumed"),
                           dataset=data)
  resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"), dataset=data)

  steps_per_epoch = 40 // 8
  assert int(full.step) == int(resumed.step) == 2 * steps_per_epoch  # epoch 1 not repeated
  # Same computations on the same machine: equal to float32 round-off (in practice bitwise).
  for a, b in zip(jax.tree.leaves((full.params, full.batch_stats)),
                  jax.tree.leaves((resumed.params, resumed.batch_stats))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)

  with open(tmp_path / "resumed" / "metrics.json") as f:
    metrics = json.load(f)
  assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
  assert metrics["test"]["n"] == 12 and 0.0 <= metrics["test"]["err_plus"] <= 1.0
  # Resuming with a different config (beyond epochs) is allowed but warned about.
  with pytest.warns(UserWarning, match=r"differs from the saved one in \['learning_rate'\]"):
    train.train_and_evaluate(dataclasses.replace(config, learning_rate=0.5),
                             str(tmp_path / "resumed"), dataset=data)
  with open(tmp_path / "full" / "metrics.json") as f:
    full_metrics = json.load(f)
  assert full_metrics["epochs"][1]["train_loss"] == pytest.approx(
      metrics["epochs"][1]["train_loss"], rel=1e-5)
