"""Backbone fine-tuning configs: functions returning a frozen `Config`.

`paper()` is the default; `cpu()` and `tiny()` start from it and change what they must
(`dataclasses.replace`). Override fields the same way:
`dataclasses.replace(configs.cpu(), epochs=3)`.

The paper's two recipes, selected by `finetune_mode` (both update every parameter):
  "short": "full fine-tuning 10 epochs at lr 1e-3"
  "long":  "fine-tuning 30 epochs at lr 1e-2"
Batch size 128, weight decay 1e-4 and the cosine schedule are this project's choices; the
paper's text does not fix them. `check_resumable` says which fields a resumed run may change.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from typing import Any

from thumb_jax import io, platform

FINETUNE_MODES = {"short": (10, 1e-3), "long": (30, 1e-2)}  # mode -> (epochs, learning_rate)
DATASETS = ("cifar10", "celeba")


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything `train.train_and_evaluate` reads.

  Attributes:
    dataset: "cifar10" (airplane = +1 vs truck) or "celeba" (attribute = +1).
    data_dir: where `datasets.load_dataset` finds the files (None: its default).
    attribute: CelebA attribute that defines class +1.
    image_size: side of the square images fed to the network.
    stage_sizes: BasicBlocks per stage; (3, 4, 6, 3) is ResNet34.
    num_filters: stem width (64 in torchvision ResNets).
    latent_dim: width of the head's hidden layer, i.e. of the embeddings (128/256/512).
    dropout_rate: dropout after the embedding.
    finetune_mode: "short" or "long" (see module docstring); sets the defaults of
      `epochs` and `learning_rate` in `paper()`.
    batch_size: training batch size (the last incomplete batch of an epoch is dropped).
    eval_batch_size: batch size for evaluation and embedding extraction.
    epochs: training epochs.
    learning_rate: AdamW peak learning rate (finite, >= 0).
    weight_decay: AdamW decoupled weight decay (finite, >= 0).
    cosine_schedule: cosine decay of the learning rate to 0 over all steps (else constant).
    seed: root seed (init, shuffles, augmentation, dropout, subsampling).
    prng_impl: JAX PRNG implementation of the run's keys (default
      `thumb_jax.platform.PRNG_IMPL`; "threefry2x32" is JAX's default).
    dtype: compute dtype, "bfloat16" (GPU) or "float32" (CPU); params stay float32.
    init_checkpoint: torchvision `resnet34-b627a593.pth` for ImageNet init, None: random.
    max_train_examples: cap on training images (a seeded random subset), None: all.
    augment: CIFAR: random crop with 4-px zero padding + horizontal flip;
      CelebA: horizontal flip. False: none.
    checkpoints_to_keep: orbax keeps this many most recent epoch checkpoints.
  """
  dataset: str = "cifar10"
  data_dir: str | None = None
  attribute: str = "Blond_Hair"
  image_size: int = 224
  stage_sizes: tuple[int, ...] = (3, 4, 6, 3)
  num_filters: int = 64
  latent_dim: int = 128
  dropout_rate: float = 0.5
  finetune_mode: str = "short"
  batch_size: int = 128
  eval_batch_size: int = 256
  epochs: int = 10
  learning_rate: float = 1e-3
  weight_decay: float = 1e-4
  cosine_schedule: bool = True
  seed: int = 0
  prng_impl: str = platform.PRNG_IMPL
  dtype: str = "bfloat16"
  init_checkpoint: str | None = None
  max_train_examples: int | None = None
  augment: bool = True
  checkpoints_to_keep: int = 2

  def __post_init__(self):
    if self.dataset not in DATASETS:
      raise ValueError(f"dataset: expected one of {DATASETS}, got {self.dataset!r}")
    if self.finetune_mode not in FINETUNE_MODES:
      raise ValueError(f"finetune_mode: expected one of {tuple(FINETUNE_MODES)}, "
                       f"got {self.finetune_mode!r}")
    if self.dtype not in ("float32", "bfloat16", "float16"):
      raise ValueError(f"dtype: expected 'float32', 'bfloat16' or 'float16', got {self.dtype!r}")
    for name in ("image_size", "latent_dim", "batch_size", "eval_batch_size", "epochs",
                 "num_filters", "checkpoints_to_keep"):
      if getattr(self, name) <= 0:
        raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)!r}")
    if self.max_train_examples is not None and self.max_train_examples <= 0:
      raise ValueError(f"max_train_examples: expected None or > 0, got {self.max_train_examples}")
    for name in ("learning_rate", "weight_decay"):
      value = getattr(self, name)
      if not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"dropout_rate: expected a value in [0, 1), got {self.dropout_rate}")

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


# Config fields that cannot change the weights of a run: where the same data is found, how
# evaluation is batched, how many checkpoints are kept. Every other field (epochs, the
# schedule, the model's shape, the seed, ...) must match the saved config.json to resume.
RESUMABLE_CHANGES = ("data_dir", "eval_batch_size", "checkpoints_to_keep")


def check_resumable(saved: Mapping[str, Any], config: Config, *, where: str = "workdir"
                    ) -> None:
  """Raises ValueError naming every field (outside RESUMABLE_CHANGES) that differs.

  Args:
    saved: the config a run was started with, as saved in its config.json.
    config: the config of the run that wants to continue it.
    where: names the saved run in the message.
  """
  now = io.to_jsonable(config.to_dict())
  missing = object()
  changed = sorted(k for k in set(now) | set(saved) if k not in RESUMABLE_CHANGES
                   and saved.get(k, missing) != now.get(k, missing))
  if changed:
    diffs = "; ".join(f"{k}: saved {saved.get(k, '<absent>')!r}, now {now.get(k, '<absent>')!r}"
                      for k in changed)
    raise ValueError(
        f"{where}: cannot resume, the config differs from the saved config.json in "
        f"{changed} ({diffs}). Resume with the saved values or use a new workdir (only "
        f"{', '.join(RESUMABLE_CHANGES)} may change).")


def paper(*, dataset: str = "cifar10", finetune_mode: str = "short",
          init_checkpoint: str | None = None) -> Config:
  """ResNet34 at 224 px, bf16 compute, latent 128, dropout 0.5, AdamW (the default)."""
  if finetune_mode not in FINETUNE_MODES:
    raise ValueError(f"finetune_mode: expected one of {tuple(FINETUNE_MODES)}, "
                     f"got {finetune_mode!r}")
  epochs, lr = FINETUNE_MODES[finetune_mode]
  return Config(dataset=dataset, finetune_mode=finetune_mode, epochs=epochs, learning_rate=lr,
                init_checkpoint=init_checkpoint)


def cpu(*, dataset: str = "cifar10") -> Config:
  """End to end on 2 CPU cores, float32, random initialization.

  CIFAR-10 at its native 32 px: the paper's "short" recipe (10 epochs at lr 1e-3) on the
  5,495 training images. CelebA at 64 px: 3 epochs on a seeded 8,000-image subset of the
  training split. Measured times are in the README (train_backbone + image_llr).
  """
  base = paper(dataset=dataset)
  if dataset == "cifar10":
    return dataclasses.replace(base, image_size=32, batch_size=128, dtype="float32")
  return dataclasses.replace(base, image_size=64, epochs=3, batch_size=64, dtype="float32",
                             max_train_examples=8000)


def tiny(*, dataset: str = "cifar10") -> Config:
  """A 2-stage, 8-channel ResNet on 16 px images for tests."""
  return dataclasses.replace(
      cpu(dataset=dataset), image_size=16, stage_sizes=(1, 1), num_filters=8, latent_dim=16,
      batch_size=8, eval_batch_size=16, epochs=1, cosine_schedule=False,
      max_train_examples=None)

