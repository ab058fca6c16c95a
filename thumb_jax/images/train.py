"""Fine-tuning the ResNet backbone + MLP head with cross-entropy (the paper's first stage).

`train_step` and `eval_step` are pure and unjitted; `train_and_evaluate` jits them. One
root key per run, split once into init / shuffle / step / subsample keys; the epoch's
shuffle is `fold_in(shuffle, epoch)` and a step's augmentation and dropout keys come from
`fold_in(step_key, state.step)`, so a run resumed from its epoch checkpoint replays exactly
the steps an uninterrupted run would take.

Images travel to the device as uint8; augmentation (CIFAR: 4-px zero-padded random crop
and horizontal flip; CelebA: horizontal flip) and ImageNet normalization run there.
Labels are +1 / -1 (class +1 = minority); the network's class index is (y > 0).
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax.training import train_state
from tqdm.auto import tqdm

from thumb_jax import devices, io, platform
from thumb_jax.images import configs, datasets, input_pipeline, resnet, torch_convert
from thumb_jax.images.configs import Config


class TrainState(train_state.TrainState):
  """flax TrainState plus the batch-norm running statistics."""
  batch_stats: Any = None


class Batch(NamedTuple):
  """images uint8 [B, H, W, 3]; labels [B] in {+1, -1}; mask [B] (1 = real, 0 = padding)."""
  images: jax.Array
  labels: jax.Array
  mask: jax.Array | None = None


class StepMetrics(NamedTuple):
  """Mean cross-entropy and accuracy of one training batch (scalars)."""
  loss: jax.Array
  accuracy: jax.Array


class EvalSums(NamedTuple):
  """Sums over the real (mask = 1) examples of a batch; add them up over batches."""
  loss: jax.Array
  count: jax.Array
  errors: jax.Array
  count_plus: jax.Array
  errors_plus: jax.Array
  count_minus: jax.Array
  errors_minus: jax.Array


class RunKeys(NamedTuple):
  init: jax.Array
  shuffle: jax.Array
  step: jax.Array
  subsample: jax.Array


def run_keys(seed: int, *, impl: str = platform.PRNG_IMPL) -> RunKeys:
  """The run's root key `key(seed, impl=impl)` split once."""
  return RunKeys(*jax.random.split(jax.random.key(seed, impl=impl), 4))


# ----------------------------------------------------------------------------- model

def create_model(config: Config) -> resnet.ResNet:
  return resnet.ResNet(stage_sizes=tuple(config.stage_sizes), num_filters=config.num_filters,
                       latent_dim=config.latent_dim, dropout_rate=config.dropout_rate,
                       dtype=jnp.dtype(config.dtype))


def make_optimizer(config: Config, *, steps_per_epoch: int) -> optax.GradientTransformation:
  """AdamW at `learning_rate`, cosine-decayed to 0 over all steps if `cosine_schedule`."""
  total_steps = config.epochs * steps_per_epoch if config.cosine_schedule else None
  return _adamw(config.learning_rate, config.weight_decay, total_steps)


# jit caches by function identity, and a TrainState's treedef holds its `tx` and
# `apply_fn`; the helpers below return the same objects for the same arguments, so
# repeated `train_and_evaluate` calls in one process (resumes, seed sweeps, tests)
# reuse the compiled init, train and eval steps instead of compiling them again.
@functools.cache
def _adamw(learning_rate: float, weight_decay: float,
           total_steps: int | None) -> optax.GradientTransformation:
  lr = (learning_rate if total_steps is None
        else optax.cosine_decay_schedule(learning_rate, total_steps))
  return optax.adamw(lr, weight_decay=weight_decay)


@functools.cache
def _jitted_init(model: resnet.ResNet):
  return jax.jit(functools.partial(model.init, train=False))


@functools.cache
def _apply_fn(model: resnet.ResNet):
  # Bound methods compare by the identity of their module; equal modules share this one.
  return model.apply


def jitted_steps(*, crop_padding: int, flip: bool, donate: bool = False):
  """(jit(train_step) with the augmentation bound, jit(eval_step)), cached.

  `donate` donates the state's buffers to the train step (useful on GPU; XLA:CPU
  ignores donation with a warning).
  """
  return _jitted_steps(int(crop_padding), bool(flip), bool(donate))


@functools.cache
def _jitted_steps(crop_padding: int, flip: bool, donate: bool):
  train_fn = jax.jit(functools.partial(train_step, crop_padding=crop_padding, flip=flip),
                     donate_argnums=(0,) if donate else ())
  return train_fn, jax.jit(eval_step)


def create_train_state(config: Config, model: resnet.ResNet, *, key: jax.Array,
                       steps_per_epoch: int) -> TrainState:
  """Random init, then the torchvision backbone from `config.init_checkpoint` if given."""
  size = config.image_size
  variables = _jitted_init(model)({"params": key}, jnp.zeros((1, size, size, 3), jnp.float32))
  if config.init_checkpoint:
    backbone = torch_convert.load_torchvision_backbone(
        config.init_checkpoint, stage_sizes=config.stage_sizes, num_filters=config.num_filters)
    variables = torch_convert.with_backbone(variables, backbone)
  state = TrainState.create(apply_fn=_apply_fn(model), params=variables["params"],
                            batch_stats=variables["batch_stats"],
                            tx=make_optimizer(config, steps_per_epoch=steps_per_epoch))
  # Make a fresh state look like a restored one (step an int32 array, not a weakly typed
  # Python int; arrays committed to the device, as orbax restores them): jit's cache key
  # includes both, so otherwise a resumed run compiles the train step again.
  state = state.replace(step=jnp.zeros((), jnp.int32))
  return devices.replicate(state)  # data parallel: the state on every device


# ----------------------------------------------------------------------------- steps

def train_step(state: TrainState, batch: Batch, key: jax.Array, *, crop_padding: int = 0,
               flip: bool = False) -> tuple[TrainState, StepMetrics]:
  """One AdamW step on the mean cross-entropy of the batch.

  Args:
    state: the train state.
    batch: `Batch` with images uint8 [B, H, W, 3] and labels [B] in {+1, -1} (mask unused).
    key: the run's step key; this step uses fold_in(key, state.step) for augmentation
      and dropout.
    crop_padding, flip: see `input_pipeline.augment` (static; bind them with functools.partial).

  Returns:
    (new state with updated params, optimizer state and batch_stats, StepMetrics).
  """
  step_key = jax.random.fold_in(key, state.step)
  aug_key, dropout_key = jax.random.split(step_key)
  images = input_pipeline.augment(batch.images, aug_key, crop_padding=crop_padding,
                                  flip=flip)
  x = resnet.normalize_images(images)
  targets = (batch.labels > 0).astype(jnp.int32)

  def loss_fn(params):
    (logits, _), updates = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats}, x, train=True,
        rngs={"dropout": dropout_key}, mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
    return loss, (logits, updates["batch_stats"])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == targets)
  return state, StepMetrics(loss=loss, accuracy=accuracy)


def eval_step(state: TrainState, batch: Batch) -> EvalSums:
  """Loss and per-class error counts in eval mode (running BN statistics, no dropout)."""
  logits, _ = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                             resnet.normalize_images(batch.images), train=False)
  targets = (batch.labels > 0).astype(jnp.int32)
  mask = (jnp.ones(targets.shape, jnp.float32) if batch.mask is None
          else batch.mask.astype(jnp.float32))
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  wrong = (jnp.argmax(logits, -1) != targets).astype(jnp.float32) * mask
  plus = (targets == 1).astype(jnp.float32) * mask
  minus = (targets == 0).astype(jnp.float32) * mask
  return EvalSums(loss=jnp.sum(loss * mask), count=jnp.sum(mask), errors=jnp.sum(wrong),
                  count_plus=jnp.sum(plus), errors_plus=jnp.sum(wrong * plus),
                  count_minus=jnp.sum(minus), errors_minus=jnp.sum(wrong * minus))


# ----------------------------------------------------------------------------- data

def load_data(config: Config, *, cache_dir: str | None = None):
  """`datasets.load_dataset` for the config: images at `image_size`, train capped.

  CIFAR-10 is stored at 32 px and resized here when `image_size` differs (224 px for the
  paper's recipe); CelebA is decoded at `image_size` by the loader, whose training split is
  capped at `max_train_examples` (val and test are kept whole). `cache_dir` holds the
  CelebA loader's decoded arrays.
  """
  if config.dataset == "celeba":
    dataset = datasets.load_dataset(
        "celeba", data_dir=config.data_dir, attribute=config.attribute,
        image_size=config.image_size, seed=config.seed, cache_dir=cache_dir,
        max_per_split={"train": config.max_train_examples, "val": None, "test": None})
  else:
    dataset = datasets.load_dataset("cifar10", data_dir=config.data_dir, seed=config.seed)
  dataset = input_pipeline.cap_train_examples(
      dataset, max_train_examples=config.max_train_examples,
      key=run_keys(config.seed, impl=config.prng_impl).subsample)
  if dataset.train.images.shape[1] != config.image_size:
    dataset = dataset._replace(**{
        name: split._replace(images=input_pipeline.resize_images(split.images,
                                                                 config.image_size))
        for name, split in (("train", dataset.train), ("val", dataset.val),
                            ("test", dataset.test))})
  return dataset


# ----------------------------------------------------------------------------- loop

def evaluate(eval_fn, state: TrainState, split, *, batch_size: int) -> dict[str, float]:
  """Loss, accuracy and the per-class errors err_plus / err_minus of a split."""
  total = None
  batches = input_pipeline.padded_batches((split.images, split.labels), batch_size)
  rows = devices.process_rows(batch_size)
  for (images, labels), mask in tqdm(batches, desc=f"eval on {len(split.labels)} images",
                                     unit="batch", total=-(-len(split.labels) // batch_size),
                                     leave=False):
    sums = eval_fn(state, devices.global_batch(Batch(images[rows], labels[rows], mask[rows])))
    total = sums if total is None else jax.tree.map(jnp.add, total, sums)
  t = EvalSums(*(float(v) for v in jax.device_get(total)))
  err_plus = t.errors_plus / max(t.count_plus, 1.0)
  err_minus = t.errors_minus / max(t.count_minus, 1.0)
  return {"loss": t.loss / t.count, "accuracy": 1.0 - t.errors / t.count,
          "err_plus": err_plus, "err_minus": err_minus,
          "worst_class_error": max(err_plus, err_minus),
          "balanced_error": 0.5 * (err_plus + err_minus), "n": int(t.count)}


def train_and_evaluate(config: Config, workdir: str, *, dataset=None) -> TrainState:
  """Fine-tunes the model, checkpointing every epoch; resumes from the latest checkpoint.

  A run is resumed only with the config it was started with (`configs.check_resumable`:
  the fields in `configs.RESUMABLE_CHANGES` may differ) and as many training images, so
  the resumed steps are exactly those of an uninterrupted run. config.json is written when
  a run starts and never rewritten; metrics.json records the config of the latest call.

  Args:
    config: a `configs.Config`.
    workdir: output folder: checkpoints/ (orbax, one per epoch, step = epoch),
      metrics.json (per-epoch train/val metrics, written before the epoch's checkpoint
      commits, so every committed epoch has its entry; final test metrics), config.json.
    dataset: a `sources.BinaryDataset`-like object (.train, .val, .test with .images
      uint8 [N, S, S, 3] and .labels in {+1, -1}); None loads it with `load_data(config)`.

  Returns:
    The final TrainState.

  Raises:
    ValueError: the dataset does not fit the config (an empty split included), or the
      workdir holds checkpoints of a run with another config or another number of
      training images.
    FileNotFoundError: `config.init_checkpoint` is not a file.
    FloatingPointError: a training loss or the weights at the end of an epoch are not
      finite; the epoch is neither checkpointed nor recorded.
  """
  if config.init_checkpoint:  # before anything is written or trained
    torch_convert.check_checkpoint_file(config.init_checkpoint, name="config.init_checkpoint")
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  if devices.is_main_process():  # the one writer: JSON writes killed in an earlier run
    io.remove_stale_temporaries(workdir)
  config_path = os.path.join(workdir, "config.json")
  metrics_path = os.path.join(workdir, "metrics.json")
  manager = ocp.CheckpointManager(
      os.path.join(workdir, "checkpoints"),
      options=ocp.CheckpointManagerOptions(max_to_keep=config.checkpoints_to_keep, create=True))
  try:
    start_epoch = manager.latest_step() or 0
    saved_metrics = {}
    if start_epoch:
      if not os.path.exists(config_path):
        raise ValueError(f"workdir: {workdir} holds checkpoints but no config.json, so "
                         "resuming it cannot be checked; use a new workdir")
      with open(config_path) as f:
        configs.check_resumable(json.load(f), config, where=f"workdir {workdir}")
      if os.path.exists(metrics_path):
        with open(metrics_path) as f:
          saved_metrics = json.load(f)
    elif devices.is_main_process():
      io.write_json(config_path, config.to_dict())
    return _train(config, workdir, manager, start_epoch=start_epoch,
                  saved_metrics=saved_metrics, dataset=dataset)
  finally:
    manager.close()


def _train(config: Config, workdir: str, manager: ocp.CheckpointManager, *,
           start_epoch: int, saved_metrics: Mapping[str, Any], dataset) -> TrainState:
  """The body of `train_and_evaluate` once the workdir is checked."""
  keys = run_keys(config.seed, impl=config.prng_impl)
  if dataset is None:
    dataset = load_data(config)
  dataset = input_pipeline.cap_train_examples(
      dataset, max_train_examples=config.max_train_examples, key=keys.subsample)
  for name in ("train", "val", "test"):
    input_pipeline.check_split(name, getattr(dataset, name), config.image_size)
  train_images = np.asarray(dataset.train.images)
  train_labels = np.asarray(dataset.train.labels)
  n_train = len(train_labels)
  steps_per_epoch = n_train // config.batch_size
  devices.check_divisible("config.batch_size", config.batch_size)
  devices.check_divisible("config.eval_batch_size", config.eval_batch_size)
  if steps_per_epoch == 0:
    raise ValueError(f"config.batch_size: {config.batch_size} is larger than the "
                     f"{n_train} training images")
  if saved_metrics.get("n_train", n_train) != n_train:
    raise ValueError(f"dataset: cannot resume {workdir}, its run trained on "
                     f"{saved_metrics['n_train']} images and this dataset has {n_train}")

  model = create_model(config)
  state = create_train_state(config, model, key=keys.init, steps_per_epoch=steps_per_epoch)
  if start_epoch:
    state = manager.restore(start_epoch, args=ocp.args.StandardRestore(state))
  history = [h for h in saved_metrics.get("epochs", []) if h["epoch"] <= start_epoch]

  train_fn, eval_fn = jitted_steps(**input_pipeline.augmentation_for(config),
                                   donate=jax.default_backend() != "cpu")

  def record(test=None):
    if not devices.is_main_process():
      return
    io.write_json(os.path.join(workdir, "metrics.json"),
                  {"config": config.to_dict(), "n_train": n_train,
                   "steps_per_epoch": steps_per_epoch, "epochs": history, "test": test})

  rows = devices.process_rows(config.batch_size)  # this process's share of each batch
  for epoch in range(start_epoch, config.epochs):
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(keys.shuffle, epoch), n_train))
    bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}", unit="step",
               leave=True, dynamic_ncols=True)
    loss_sum, acc_sum, seen, t0, pending = 0.0, 0.0, 0, time.perf_counter(), None
    for i in range(steps_per_epoch + 1):
      if i < steps_per_epoch:
        idx = perm[i * config.batch_size:(i + 1) * config.batch_size][rows]
        batch = devices.global_batch(Batch(train_images[idx], train_labels[idx]))
        state, metrics = train_fn(state, batch, keys.step)
      if pending is not None:  # read the previous step's metrics: keeps one step in flight
        m = jax.device_get(pending)
        if not np.isfinite(float(m.loss)):
          raise _diverged(config, workdir, epoch=epoch, step=i, steps_per_epoch=steps_per_epoch,
                          what=f"the training loss is {float(m.loss)}")
        loss_sum, acc_sum, seen = loss_sum + float(m.loss), acc_sum + float(m.accuracy), seen + 1
        bar.update()
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{acc_sum / seen:.3f}",
                        img_s=f"{(i * config.batch_size) / (time.perf_counter() - t0):.1f}")
      pending = metrics
    seconds = time.perf_counter() - t0
    bar.close()
    # The last step's update is in no loss: check the weights themselves before saving them.
    weights = jax.tree.leaves(jax.device_get((state.params, state.batch_stats)))
    if not all(np.isfinite(a).all() for a in weights):
      raise _diverged(config, workdir, epoch=epoch, step=steps_per_epoch, steps_per_epoch=
                      steps_per_epoch, what="the weights are not finite after the last step")
    val = evaluate(eval_fn, state, dataset.val, batch_size=config.eval_batch_size)
    history.append({"epoch": epoch + 1, "step": int(state.step), "train_loss": loss_sum / seen,
                    "train_accuracy": acc_sum / seen, "seconds": seconds,
                    "images_per_second": steps_per_epoch * config.batch_size / seconds,
                    "val": val})
    tqdm.write(f"epoch {epoch + 1}: train loss {loss_sum / seen:.4f}, val accuracy "
               f"{val['accuracy']:.4f}, val err+ {val['err_plus']:.4f}, err- "
               f"{val['err_minus']:.4f} ({seconds:.0f} s)")
    # Metrics first: a run killed before the checkpoint commits resumes from the previous
    # one and replaces them; one killed after the commit finds them.
    record()
    manager.save(epoch + 1, args=ocp.args.StandardSave(state))
    manager.wait_until_finished()

  test = evaluate(eval_fn, state, dataset.test, batch_size=config.eval_batch_size)
  record(test)
  return state


def _diverged(config: Config, workdir: str, *, epoch: int, step: int, steps_per_epoch: int,
              what: str) -> FloatingPointError:
  """The error that stops a diverged run: where, with which hyperparameters, what is kept."""
  kept = (f"{workdir} keeps those of epochs up to {epoch}" if epoch
          else f"{workdir} holds no checkpoint")
  return FloatingPointError(
      f"training diverged: {what} at epoch {epoch + 1}/{config.epochs}, step "
      f"{step}/{steps_per_epoch} (global step {epoch * steps_per_epoch + step}), with "
      f"learning_rate={config.learning_rate}, weight_decay={config.weight_decay}, "
      f"cosine_schedule={config.cosine_schedule}, batch_size={config.batch_size}, "
      f"dtype={config.dtype}, seed={config.seed}, init_checkpoint={config.init_checkpoint}. "
      f"No checkpoint or metrics of epoch {epoch + 1} were written ({kept}). Lower the "
      f"learning rate{'' if config.dtype == 'float32' else ' or compute in float32'} and "
      "start again in a new workdir.")
