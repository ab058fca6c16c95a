"""The fine-tuning loop on fake data: one step, augmentation, resume, divergence, bad inputs."""

import dataclasses
import json
import shutil
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from thumb_jax import platform
from thumb_jax.images import configs, input_pipeline, train


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


CONFIG = dataclasses.replace(configs.tiny(), epochs=2)
STEPS_PER_EPOCH = 40 // CONFIG.batch_size


@pytest.fixture(name="full_run", scope="module")
def fixture_full_run(tmp_path_factory):
  """(workdir, final state) of an uninterrupted 2-epoch run on `fake_dataset()`."""
  workdir = tmp_path_factory.mktemp("full")
  return workdir, train.train_and_evaluate(CONFIG, str(workdir), dataset=fake_dataset())


def test_config_variants():
  assert configs.paper().image_size == 224 and configs.paper().dtype == "bfloat16"
  assert configs.paper(finetune_mode="long").epochs == 30
  assert configs.paper(finetune_mode="long").learning_rate == 1e-2
  assert configs.cpu().image_size == 32 and configs.cpu().dtype == "float32"
  assert configs.cpu(dataset="celeba").image_size == 64
  assert configs.cpu(dataset="celeba").max_train_examples is not None
  assert configs.tiny().prng_impl == platform.PRNG_IMPL
  with pytest.raises(ValueError, match="finetune_mode"):
    configs.paper(finetune_mode="medium")
  with pytest.raises(ValueError, match="dataset"):
    configs.Config(dataset="mnist")


def test_augment_crop_and_flip():
  images = jnp.arange(2 * 8 * 8 * 3, dtype=jnp.uint8).reshape(2, 8, 8, 3)
  key = lambda seed: jax.random.key(seed, impl=platform.PRNG_IMPL)
  same = input_pipeline.augment(images, key(0), crop_padding=0, flip=False)
  np.testing.assert_array_equal(same, images)
  out = jax.jit(lambda x, k: input_pipeline.augment(x, k, crop_padding=4, flip=True))(
      images, key(1))
  assert out.shape == images.shape and out.dtype == jnp.uint8
  flipped = input_pipeline.augment(images, key(2), crop_padding=0, flip=True)
  for a, b in zip(np.asarray(flipped), np.asarray(images)):
    assert np.array_equal(a, b) or np.array_equal(a, b[:, ::-1])


def test_one_train_step_and_eval_step():
  config = configs.tiny()
  data = fake_dataset()
  model = train.create_model(config)
  state = train.create_train_state(config, model, key=jax.random.key(0, impl=platform.PRNG_IMPL),
                                   steps_per_epoch=5)
  # The same cached jit(train_step) that train_and_evaluate uses for this config.
  step, evaluate = train.jitted_steps(**input_pipeline.augmentation_for(config))
  batch = train.Batch(data.train.images[:8], data.train.labels[:8])
  new_state, metrics = step(state, batch, jax.random.key(1, impl=platform.PRNG_IMPL))
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


@pytest.mark.parametrize("field,value", [("learning_rate", float("nan")),
                                         ("learning_rate", float("inf")),
                                         ("learning_rate", -1e-3),
                                         ("weight_decay", float("nan"))])
def test_config_refuses_non_finite_hyperparameters(field, value):
  with pytest.raises(ValueError, match=rf"{field}: expected a finite number >= 0, got {value}"):
    dataclasses.replace(configs.tiny(), **{field: value})


def _empty(data, name):
  split = getattr(data, name)
  return data._replace(**{name: Split(split.images[:0], split.labels[:0])})


@pytest.mark.parametrize("problem,pattern", [
    ("image size", r"dataset.train.images: expected shape \[N, 16, 16, 3\]"),
    ("empty train", r"dataset.train: the split is empty"),
    ("empty val", r"dataset.val: the split is empty"),
    ("empty test", r"dataset.test: the split is empty")],
    ids=["image size", "empty train", "empty val", "empty test"])
def test_bad_dataset_is_refused_before_training(tmp_path, monkeypatch, problem, pattern):
  data = (fake_dataset(size=8) if problem == "image size"
          else _empty(fake_dataset(), problem.split()[1]))
  monkeypatch.setattr(train, "jitted_steps", lambda **k: pytest.fail("training started"))
  with pytest.raises(ValueError, match=pattern):
    train.train_and_evaluate(configs.tiny(), str(tmp_path), dataset=data)


def test_missing_init_checkpoint_is_named_before_anything_is_written(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # the file is checked before torch is needed
  config = dataclasses.replace(configs.tiny(), init_checkpoint=str(tmp_path / "r34.pth"))
  with pytest.raises(FileNotFoundError, match=r"config.init_checkpoint: .*r34.pth' does not "):
    train.train_and_evaluate(config, str(tmp_path / "run"), dataset=fake_dataset())
  assert not (tmp_path / "run").exists()


class Interrupted(Exception):
  pass


def test_resume_after_interruption_matches_uninterrupted(full_run, tmp_path, monkeypatch):
  full_dir, full = full_run
  data = fake_dataset()
  # Interrupted 2 steps into epoch 2 (after the epoch-1 checkpoint), then run again.
  def interrupt(call, state, metrics):
    if call > STEPS_PER_EPOCH + 2:
      raise Interrupted
    return state, metrics

  interrupting_steps = _steps_with(interrupt)
  with monkeypatch.context() as m:
    m.setattr(train, "jitted_steps", interrupting_steps)
    with pytest.raises(Interrupted):
      train.train_and_evaluate(CONFIG, str(tmp_path), dataset=data)
  saved_config = (tmp_path / "config.json").read_bytes()
  stale = tmp_path / ".metrics.json.abc.tmp"  # as a JSON write killed mid-way leaves it
  stale.write_text("{")
  resumed = train.train_and_evaluate(CONFIG, str(tmp_path), dataset=data)
  assert not stale.exists()

  assert int(full.step) == int(resumed.step) == 2 * STEPS_PER_EPOCH  # epoch 1 not repeated
  # Same computations on the same machine: equal to float32 round-off (in practice bitwise).
  for a, b in zip(jax.tree.leaves((full.params, full.batch_stats)),
                  jax.tree.leaves((resumed.params, resumed.batch_stats))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  metrics = json.loads((tmp_path / "metrics.json").read_text())
  assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
  assert metrics["test"]["n"] == 12 and 0.0 <= metrics["test"]["err_plus"] <= 1.0
  full_metrics = json.loads((full_dir / "metrics.json").read_text())
  assert full_metrics["epochs"][1]["train_loss"] == pytest.approx(
      metrics["epochs"][1]["train_loss"], rel=1e-5)
  assert (tmp_path / "config.json").read_bytes() == saved_config  # not rewritten


def test_resume_refuses_a_changed_config(full_run, tmp_path):
  full_dir, _ = full_run
  saved_config = (full_dir / "config.json").read_bytes()
  data = fake_dataset()
  # Each of these would re-stretch the schedule or change the weights' shapes or values.
  for change, fields in (({"epochs": 3}, r"\['epochs'\]"),
                         ({"latent_dim": 32}, r"\['latent_dim'\]"),
                         ({"learning_rate": 0.5, "seed": 1}, r"\['learning_rate', 'seed'\]")):
    with pytest.raises(ValueError, match=r"cannot resume, the config differs .* in " + fields):
      train.train_and_evaluate(dataclasses.replace(CONFIG, **change), str(full_dir),
                               dataset=data)
  with pytest.raises(ValueError, match="trained on 40 images and this dataset has 48"):
    train.train_and_evaluate(CONFIG, str(full_dir), dataset=fake_dataset(n_train=48))
  assert (full_dir / "config.json").read_bytes() == saved_config

  # Fields that cannot change the weights may differ; config.json keeps the saved values.
  copy = shutil.copytree(full_dir, tmp_path / "copy")
  train.train_and_evaluate(dataclasses.replace(CONFIG, data_dir="/elsewhere",
                                               checkpoints_to_keep=5), str(copy), dataset=data)
  assert (copy / "config.json").read_bytes() == saved_config
  assert json.loads((copy / "metrics.json").read_text())["config"]["data_dir"] == "/elsewhere"


def _steps_with(hook):
  """A `train.jitted_steps` whose train step's output passes through hook(call, state, metrics)."""
  jitted_steps = train.jitted_steps

  def steps(**kwargs):
    train_fn, eval_fn = jitted_steps(**kwargs)
    calls = []

    def hooked(*args):
      calls.append(1)
      return hook(len(calls), *train_fn(*args))
    return hooked, eval_fn
  return steps


@pytest.mark.parametrize("where", ["loss", "weights"])
def test_divergence_in_epoch_2_stops_and_saves_nothing_of_it(tmp_path, monkeypatch, where):
  # "loss": step 2 of epoch 2 reports a NaN loss; "weights": the last step of epoch 2 leaves
  # NaN weights behind a finite loss (the last update shows in no loss).
  def poison(call, state, metrics):
    if where == "loss" and call == STEPS_PER_EPOCH + 2:
      return state, metrics._replace(loss=jnp.float32(jnp.nan))
    if where == "weights" and call == 2 * STEPS_PER_EPOCH:
      return state.replace(params=jax.tree.map(lambda a: a * jnp.nan, state.params)), metrics
    return state, metrics

  monkeypatch.setattr(train, "jitted_steps", _steps_with(poison))
  step = 2 if where == "loss" else STEPS_PER_EPOCH
  with pytest.raises(FloatingPointError, match=(
      rf"diverged: .* at epoch 2/2, step {step}/{STEPS_PER_EPOCH} \(global step "
      rf"{STEPS_PER_EPOCH + step}\), with learning_rate=0.001, .*batch_size=8.* keeps those "
      r"of epochs up to 1")):
    train.train_and_evaluate(CONFIG, str(tmp_path), dataset=fake_dataset())
  with ocp.CheckpointManager(tmp_path / "checkpoints") as manager:
    assert manager.all_steps() == [1]
  metrics = json.loads((tmp_path / "metrics.json").read_text())
  assert [e["epoch"] for e in metrics["epochs"]] == [1] and metrics["test"] is None


@pytest.mark.parametrize("kill", ["during the validation pass", "after the checkpoint commits"])
def test_kill_at_the_end_of_an_epoch_keeps_its_metrics(full_run, tmp_path, monkeypatch, kill):
  full_dir, _ = full_run
  data = fake_dataset()
  with monkeypatch.context() as m:
    if kill == "during the validation pass":
      evaluate, calls = train.evaluate, []

      def killed(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # epoch 2's validation pass
          raise Interrupted
        return evaluate(*args, **kwargs)
      m.setattr(train, "evaluate", killed)
    else:
      save = ocp.CheckpointManager.save

      def killed(self, step, *args, **kwargs):
        saved = save(self, step, *args, **kwargs)
        self.wait_until_finished()
        if step == 2:
          raise Interrupted
        return saved
      m.setattr(ocp.CheckpointManager, "save", killed)
    with pytest.raises(Interrupted):
      train.train_and_evaluate(CONFIG, str(tmp_path), dataset=data)
  train.train_and_evaluate(CONFIG, str(tmp_path), dataset=data)
  metrics = json.loads((tmp_path / "metrics.json").read_text())
  full_metrics = json.loads((full_dir / "metrics.json").read_text())
  assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
  for got, want in zip(metrics["epochs"], full_metrics["epochs"]):
    assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5)
    assert got["val"] == pytest.approx(want["val"], rel=1e-5)
  assert metrics["test"] == pytest.approx(full_metrics["test"], rel=1e-5)
