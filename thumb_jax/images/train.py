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

import dataclasses
import functools
import json
import os
import tempfile
import time
import warnings
from typing import Any, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax.training import train_state
from tqdm.auto import tqdm

from thumb_jax.images import resnet, torch_convert
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


def run_keys(seed: int, *, impl: str = "rbg") -> RunKeys:
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
@functools.lru_cache(maxsize=None)
def _adamw(learning_rate: float, weight_decay: float,
           total_steps: int | None) -> optax.GradientTransformation:
  lr = (learning_rate if total_steps is None
        else optax.cosine_decay_schedule(learning_rate, total_steps))
  return optax.adamw(lr, weight_decay=weight_decay)


@functools.lru_cache(maxsize=None)
def _jitted_init(model: resnet.ResNet):
  return jax.jit(functools.partial(model.init, train=False))


@functools.lru_cache(maxsize=None)
def _apply_fn(model: resnet.ResNet):
  # Bound methods compare by the identity of their module; equal modules share this one.
  return model.apply


def jitted_steps(*, crop_padding: int, flip: bool, donate: bool = False):
  """(jit(train_step) with the augmentation bound, jit(eval_step)), cached.

  `donate` donates the state's buffers to the train step (useful on GPU; XLA:CPU
  ignores donation with a warning).
  """
  return _jitted_steps(int(crop_padding), bool(flip), bool(donate))


@functools.lru_cache(maxsize=None)
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
  return jax.device_put(state, jax.local_devices()[0])


# ----------------------------------------------------------------------------- steps

def augment(images: jax.Array, key: jax.Array, *, crop_padding: int, flip: bool) -> jax.Array:
  """Random crop after zero padding and random horizontal flip, per image.

  Args:
    images: uint8 [B, H, W, C].
    key: PRNG key.
    crop_padding: pixels of zero padding on each side before a random H x W crop (0: none).
    flip: flip each image left-right with probability 1/2.

  Returns:
    uint8 [B, H, W, C].
  """
  b, h, w, c = images.shape
  crop_key, flip_key = jax.random.split(key)
  if crop_padding > 0:
    p = crop_padding
    padded = jnp.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
    offsets = jax.random.randint(crop_key, (b, 2), 0, 2 * p + 1)
    images = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c)))(
        padded, offsets)
  if flip:
    do_flip = jax.random.bernoulli(flip_key, 0.5, (b,))
    images = jnp.where(do_flip[:, None, None, None], images[:, :, ::-1], images)
  return images


def augmentation_for(config: Config) -> dict:
  """Keyword arguments of `augment` for the config's dataset (the usual recipe per dataset)."""
  if not config.augment:
    return {"crop_padding": 0, "flip": False}
  return {"crop_padding": 4 if config.dataset == "cifar10" else 0, "flip": True}


def train_step(state: TrainState, batch: Batch, key: jax.Array, *, crop_padding: int = 0,
               flip: bool = False) -> tuple[TrainState, StepMetrics]:
  """One AdamW step on the mean cross-entropy of the batch.

  Args:
    state: the train state.
    batch: `Batch` with images uint8 [B, H, W, 3] and labels [B] in {+1, -1} (mask unused).
    key: the run's step key; this step uses fold_in(key, state.step) for augmentation
      and dropout.
    crop_padding, flip: see `augment` (static; bind them with functools.partial).

  Returns:
    (new state with updated params, optimizer state and batch_stats, StepMetrics).
  """
  step_key = jax.random.fold_in(key, state.step)
  aug_key, dropout_key = jax.random.split(step_key)
  images = augment(batch.images, aug_key, crop_padding=crop_padding, flip=flip)
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

def padded_batches(arrays: tuple[np.ndarray, ...], batch_size: int
                   ) -> Iterator[tuple[tuple[np.ndarray, ...], np.ndarray]]:
  """Yields fixed-size batches of `arrays` (same leading size N) and a 0/1 mask [batch_size].

  The last batch is zero-padded to `batch_size`, so a jitted consumer compiles once.
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
  n = len(arrays[0])
  for start in range(0, n, batch_size):
    chunk = tuple(np.asarray(a[start:start + batch_size]) for a in arrays)
    m = len(chunk[0])
    if m < batch_size:
      chunk = tuple(np.concatenate([c, np.zeros((batch_size - m,) + c.shape[1:], c.dtype)])
                    for c in chunk)
    yield chunk, (np.arange(batch_size) < m).astype(np.float32)


def _subset(split, idx: np.ndarray):
  """The rows `idx` of every array field of a Split-like NamedTuple (images, labels, ...)."""
  n = len(split.labels)
  fields = split._fields if hasattr(split, "_fields") else ("images", "labels")
  rows = {f: np.asarray(getattr(split, f))[idx] for f in fields
          if np.ndim(getattr(split, f)) >= 1 and len(getattr(split, f)) == n}
  if hasattr(split, "_replace"):
    return split._replace(**rows)
  return dataclasses.replace(split, **rows)


def cap_train_examples(dataset, *, max_train_examples: int | None, key: jax.Array):
  """Keeps a random subset of `max_train_examples` training rows (in their order); else as is."""
  n = len(dataset.train.labels)
  if max_train_examples is None or n <= max_train_examples:
    return dataset
  idx = np.sort(np.asarray(jax.random.permutation(key, n))[:max_train_examples])
  return dataset._replace(train=_subset(dataset.train, idx))


def resize_images(images: np.ndarray, image_size: int, *, batch_size: int = 512) -> np.ndarray:
  """uint8 [N, H, W, C] -> uint8 [N, image_size, image_size, C], bilinear (antialiased)."""
  resize = jax.jit(lambda x: jnp.clip(jnp.round(jax.image.resize(
      x.astype(jnp.float32), (x.shape[0], image_size, image_size, x.shape[3]), "bilinear")),
      0, 255).astype(jnp.uint8))
  out = np.empty((len(images), image_size, image_size, images.shape[3]), np.uint8)
  for start in range(0, len(images), batch_size):
    out[start:start + batch_size] = np.asarray(resize(images[start:start + batch_size]))
  return out


def load_data(config: Config, *, cache_dir: str | None = None):
  """`data.load_dataset` for the config: images at `image_size`, train capped.

  CIFAR-10 is stored at 32 px and resized here when `image_size` differs (224 px for the
  paper's recipe); CelebA is decoded at `image_size` by the loader, whose training split is
  capped at `max_train_examples` (val and test are kept whole). `cache_dir` holds the
  CelebA loader's decoded arrays.
  """
  from thumb_jax.images import data  # pylint: disable=g-import-not-at-top
  if config.dataset == "celeba":
    dataset = data.load_dataset(
        "celeba", data_dir=config.data_dir, attribute=config.attribute,
        image_size=config.image_size, seed=config.seed, cache_dir=cache_dir,
        max_per_split={"train": config.max_train_examples, "val": None, "test": None})
  else:
    dataset = data.load_dataset("cifar10", data_dir=config.data_dir, seed=config.seed)
  dataset = cap_train_examples(dataset, max_train_examples=config.max_train_examples,
                               key=run_keys(config.seed, impl=config.prng_impl).subsample)
  if dataset.train.images.shape[1] != config.image_size:
    dataset = dataset._replace(**{
        name: getattr(dataset, name)._replace(
            images=resize_images(getattr(dataset, name).images, config.image_size))
        for name in ("train", "val", "test")})
  return dataset


def _check_split(name: str, split, image_size: int) -> None:
  shape = np.shape(split.images)
  if len(shape) != 4 or shape[1:] != (image_size, image_size, 3):
    raise ValueError(f"dataset.{name}.images: expected shape [N, {image_size}, {image_size}, 3] "
                     f"(config.image_size = {image_size}), got {shape}")
  if np.asarray(split.images).dtype != np.uint8:
    raise ValueError(f"dataset.{name}.images: expected uint8, got {np.asarray(split.images).dtype}")
  labels = np.asarray(split.labels)
  if labels.shape != shape[:1] or not np.all((labels == 1) | (labels == -1)):
    raise ValueError(f"dataset.{name}.labels: expected [{shape[0]}] values in {{+1, -1}}, "
                     f"got shape {labels.shape}, values {np.unique(labels)[:5].tolist()}")


# ----------------------------------------------------------------------------- loop

def evaluate(eval_fn, state: TrainState, split, *, batch_size: int) -> dict[str, float]:
  """Loss, accuracy and the per-class errors err_plus / err_minus of a split."""
  total = None
  batches = padded_batches((split.images, split.labels), batch_size)
  for (images, labels), mask in tqdm(batches, desc=f"eval on {len(split.labels)} images",
                                     unit="batch", total=-(-len(split.labels) // batch_size),
                                     leave=False):
    sums = eval_fn(state, Batch(images, labels, mask))
    total = sums if total is None else jax.tree.map(jnp.add, total, sums)
  t = EvalSums(*(float(v) for v in jax.device_get(total)))
  err_plus = t.errors_plus / max(t.count_plus, 1.0)
  err_minus = t.errors_minus / max(t.count_minus, 1.0)
  return {"loss": t.loss / t.count, "accuracy": 1.0 - t.errors / t.count,
          "err_plus": err_plus, "err_minus": err_minus,
          "worst_class_error": max(err_plus, err_minus),
          "balanced_error": 0.5 * (err_plus + err_minus), "n": int(t.count)}


def _write_json(path: str, obj: Any) -> None:
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".json")
  with os.fdopen(fd, "w") as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)


def train_and_evaluate(config: Config, workdir: str, *, dataset=None) -> TrainState:
  """Fine-tunes the model, checkpointing every epoch; resumes from the latest checkpoint.

  Args:
    config: a `configs.Config`.
    workdir: output folder: checkpoints/ (orbax, one per epoch, step = epoch),
      metrics.json (per-epoch train/val metrics, final test metrics), config.json.
    dataset: a `data.BinaryDataset`-like object (.train, .val, .test with .images uint8
      [N, S, S, 3] and .labels in {+1, -1}); None loads it with `load_data(config)`.

  Returns:
    The final TrainState.
  """
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  keys = run_keys(config.seed, impl=config.prng_impl)
  if dataset is None:
    dataset = load_data(config)
  dataset = cap_train_examples(dataset, max_train_examples=config.max_train_examples,
                               key=keys.subsample)
  for name in ("train", "val", "test"):
    _check_split(name, getattr(dataset, name), config.image_size)
  train_images = np.asarray(dataset.train.images)
  train_labels = np.asarray(dataset.train.labels)
  n_train = len(train_labels)
  steps_per_epoch = n_train // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"config.batch_size: {config.batch_size} is larger than the "
                     f"{n_train} training images")

  model = create_model(config)
  state = create_train_state(config, model, key=keys.init, steps_per_epoch=steps_per_epoch)
  manager = ocp.CheckpointManager(
      os.path.join(workdir, "checkpoints"),
      options=ocp.CheckpointManagerOptions(max_to_keep=config.checkpoints_to_keep, create=True))
  start_epoch = manager.latest_step() or 0
  if start_epoch:
    state = manager.restore(start_epoch, args=ocp.args.StandardRestore(state))

  metrics_path = os.path.join(workdir, "metrics.json")
  history = []
  if start_epoch and os.path.exists(metrics_path):
    with open(metrics_path) as f:
      history = [h for h in json.load(f)["epochs"] if h["epoch"] <= start_epoch]
  config_path = os.path.join(workdir, "config.json")
  if start_epoch and os.path.exists(config_path):
    with open(config_path) as f:
      saved = json.load(f)
    changed = sorted(k for k, v in json.loads(json.dumps(config.to_dict())).items()
                     if k != "epochs" and saved.get(k) != v)
    if changed:
      warnings.warn(f"workdir: resuming {workdir} at epoch {start_epoch} with a config that "
                    f"differs from the saved one in {changed}")
  _write_json(config_path, config.to_dict())

  train_fn, eval_fn = jitted_steps(**augmentation_for(config),
                                   donate=jax.default_backend() != "cpu")

  def record(test=None):
    _write_json(metrics_path, {"config": config.to_dict(), "n_train": n_train,
                               "steps_per_epoch": steps_per_epoch, "epochs": history,
                               "test": test})

  for epoch in range(start_epoch, config.epochs):
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(keys.shuffle, epoch), n_train))
    bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", unit="step",
               leave=True, dynamic_ncols=True)
    loss_sum, acc_sum, seen, t0, pending = 0.0, 0.0, 0, time.perf_counter(), None
    for i in bar:
      idx = perm[i * config.batch_size:(i + 1) * config.batch_size]
      state, metrics = train_fn(state, Batch(train_images[idx], train_labels[idx]), keys.step)
      if pending is not None:  # read the previous step's metrics: keeps one step in flight
        m = jax.device_get(pending)
        loss_sum, acc_sum, seen = loss_sum + float(m.loss), acc_sum + float(m.accuracy), seen + 1
        elapsed = time.perf_counter() - t0
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{acc_sum / seen:.3f}",
                        img_s=f"{(i * config.batch_size) / elapsed:.1f}")
      pending = metrics
    m = jax.device_get(pending)
    loss_sum, acc_sum, seen = loss_sum + float(m.loss), acc_sum + float(m.accuracy), seen + 1
    seconds = time.perf_counter() - t0
    bar.close()
    manager.save(epoch + 1, args=ocp.args.StandardSave(state))
    val = evaluate(eval_fn, state, dataset.val, batch_size=config.eval_batch_size)
    history.append({"epoch": epoch + 1, "step": int(state.step), "train_loss": loss_sum / seen,
                    "train_accuracy": acc_sum / seen, "seconds": seconds,
                    "images_per_second": steps_per_epoch * config.batch_size / seconds,
                    "val": val})
    tqdm.write(f"epoch {epoch + 1}: train loss {loss_sum / seen:.4f}, val accuracy "
               f"{val['accuracy']:.4f}, val err+ {val['err_plus']:.4f}, err- "
               f"{val['err_minus']:.4f} ({seconds:.0f} s)")
    manager.wait_until_finished()
    record()

  test = evaluate(eval_fn, state, dataset.test, batch_size=config.eval_batch_size)
  record(test)
  manager.close()
  return state
