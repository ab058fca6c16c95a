"""Fine-tunes the ResNet backbone, then caches train / val / test embeddings.

  python -m experiments.train_backbone --config cpu --dataset cifar10 \
      --data_dir ../shared/data/cifar10_airplane_truck.npz --workdir OUT

Writes into --workdir: checkpoints/ (one per epoch; rerunning resumes), metrics.json,
config.json, embeddings/{dataset}_{split}_d{latent_dim}_{hash}.npz and summary.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from thumb_jax import devices, io
from thumb_jax.images import configs, embeddings, torch_convert, train

# Config fields a flag may override, with their help text; each defaults to the --config's.
_OVERRIDES = {
    "epochs": (int, "training epochs"),
    "batch_size": (int, "training batch size (an epoch's last incomplete batch is dropped)"),
    "learning_rate": (float, "AdamW peak learning rate (finite, >= 0)"),
    "latent_dim": (int, "width of the head's hidden layer, i.e. of the cached embeddings"),
    "image_size": (int, "side of the square images fed to the network (pixels)"),
    "max_train_examples": (int, "train on a seeded random subset of this many images "
                                "(None: all)"),
    "seed": (int, "root seed of the init, shuffles, augmentation, dropout and subsampling"),
}


def _config_defaults(field: str) -> str:
  """`field` in each --config for cifar10 (and celeba where it differs), for --help."""
  parts = []
  for name in ("paper", "cpu", "tiny"):
    values = {d: getattr(getattr(configs, name)(dataset=d), field) for d in configs.DATASETS}
    text = f"{name} {values['cifar10']}"
    if name == "paper":
      long = getattr(configs.paper(finetune_mode="long"), field)
      text += "" if long == values["cifar10"] else f" (--finetune_mode long: {long})"
    if values["celeba"] != values["cifar10"]:
      text += f" (celeba {values['celeba']})"
    parts.append(text)
  return "default: the --config's: " + ", ".join(parts)


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", choices=("paper", "cpu", "tiny"), default="cpu",
                 help="recipe to start from (thumb_jax.images.configs): paper = ResNet34 at "
                      "224 px in bfloat16; cpu = float32 at 32 px (CIFAR-10) or 64 px "
                      "(CelebA); tiny = a 2-stage ResNet on 16 px for tests (default: cpu)")
  p.add_argument("--dataset", choices=configs.DATASETS, default="cifar10",
                 help="cifar10 = airplane (+1) vs truck; celeba = --attribute present (+1) "
                      "(default: cifar10)")
  p.add_argument("--data_dir", default=None,
                 help="CIFAR-10: an .npz, the cifar-10-batches-py folder or the .tar.gz; "
                      "CelebA: the folder with img_align_celeba.zip, list_attr_celeba.txt "
                      "and list_eval_partition.txt (default: none; the loader then says "
                      "where to get the data)")
  p.add_argument("--workdir", required=True,
                 help="output folder (required): checkpoints/, config.json, metrics.json, "
                      "embeddings/, summary.json, data_cache/; rerunning resumes")
  p.add_argument("--attribute", default=None,
                 help="CelebA attribute of class +1 (default: "
                      f"{configs.Config.attribute})")
  p.add_argument("--finetune_mode", choices=tuple(configs.FINETUNE_MODES), default=None,
                 help="--config paper only: short = 10 epochs at lr 1e-3, long = 30 epochs at "
                      "lr 1e-2 (default: short)")
  p.add_argument("--init_checkpoint", default=None,
                 help="torchvision resnet34-b627a593.pth for an ImageNet-initialized "
                      "backbone; needs torch (default: none, random initialization)")
  for name, (kind, text) in _OVERRIDES.items():
    p.add_argument(f"--{name}", type=kind, default=None,
                   help=f"{text} ({_config_defaults(name)})")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                 help=f"compute dtype; parameters stay float32 ({_config_defaults('dtype')})")
  p.add_argument("--no_augment", action="store_true",
                 help="turn off augmentation (CIFAR-10: 4-px padded random crop and "
                      "horizontal flip; CelebA: horizontal flip) (default: augment)")
  return p


def config_from_args(args: argparse.Namespace) -> configs.Config:
  if args.config == "paper":
    config = configs.paper(dataset=args.dataset, finetune_mode=args.finetune_mode or "short")
  else:
    config = getattr(configs, args.config)(dataset=args.dataset)
  overrides = {k: getattr(args, k) for k in (
      "data_dir", "attribute", "init_checkpoint", "dtype", *_OVERRIDES)
      if getattr(args, k) is not None}
  if args.no_augment:
    overrides["augment"] = False
  return dataclasses.replace(config, **overrides)


def main(argv: list[str] | None = None, *, dataset=None) -> dict:
  """Runs the fine-tuning and the embedding extraction; returns the summary dict.

  Args:
    argv: command-line flags (None: sys.argv[1:]).
    dataset: a `datasets.BinaryDataset`-like object to use instead of loading one (tests).
  """
  args = _parser().parse_args(argv)
  devices.initialize()  # multi-host: JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID
  config = config_from_args(args)
  workdir = os.path.abspath(args.workdir)
  if config.init_checkpoint:  # before the data is loaded
    torch_convert.check_checkpoint_file(config.init_checkpoint, name="--init_checkpoint")
  if dataset is None:
    dataset = train.load_data(config, cache_dir=os.path.join(workdir, "data_cache"))
  state = train.train_and_evaluate(config, workdir, dataset=dataset)

  model = train.create_model(config)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  checkpoint_hash = embeddings.params_hash(variables)
  name = config.dataset if config.dataset == "cifar10" else f"celeba-{config.attribute}"
  cache_dir = os.path.join(workdir, "embeddings")
  files = {}
  for split in ("train", "val", "test"):
    provenance = {"data": getattr(dataset, "provenance", None), "split": split,
                  "config": config.to_dict(), "checkpoint_hash": checkpoint_hash,
                  "checkpoint_step": int(state.step), "workdir": workdir}
    emb = embeddings.cached_embeddings(
        cache_dir, dataset=name, split=split, latent_dim=config.latent_dim,
        checkpoint_hash=checkpoint_hash,
        compute_fn=lambda split=split, provenance=provenance: embeddings.split_embeddings(
            variables, model, getattr(dataset, split), batch_size=config.eval_batch_size,
            provenance=provenance))
    files[split] = embeddings.cache_path(cache_dir, dataset=name, split=split,
                                         latent_dim=config.latent_dim,
                                         checkpoint_hash=checkpoint_hash)
    print(f"{split}: embeddings {emb.embeddings.shape} -> {files[split]}")
  with open(os.path.join(workdir, "metrics.json")) as f:
    test = json.load(f)["test"]
  summary = {"checkpoint_hash": checkpoint_hash, "embeddings": files, "test": test,
             **devices.describe()}
  if devices.is_main_process():
    io.write_json(os.path.join(workdir, "summary.json"), summary)
  return summary


if __name__ == "__main__":
  main(sys.argv[1:])
