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

import jax

from thumb_jax import io
from thumb_jax.images import configs, embeddings, train


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", choices=("paper", "cpu", "tiny"), default="cpu")
  p.add_argument("--dataset", choices=configs.DATASETS, default="cifar10")
  p.add_argument("--data_dir", default=None)
  p.add_argument("--workdir", required=True)
  p.add_argument("--attribute", default=None, help="CelebA attribute of class +1")
  p.add_argument("--finetune_mode", choices=tuple(configs.FINETUNE_MODES), default=None,
                 help="paper config only: short = 10 epochs at 1e-3, long = 30 at 1e-2")
  p.add_argument("--init_checkpoint", default=None, help="torchvision resnet34 .pth")
  for name, kind in (("epochs", int), ("batch_size", int), ("learning_rate", float),
                     ("latent_dim", int), ("image_size", int), ("max_train_examples", int),
                     ("seed", int)):
    p.add_argument(f"--{name}", type=kind, default=None)
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
  p.add_argument("--no_augment", action="store_true")
  return p


def config_from_args(args: argparse.Namespace) -> configs.Config:
  if args.config == "paper":
    config = configs.paper(dataset=args.dataset, finetune_mode=args.finetune_mode or "short")
  else:
    config = getattr(configs, args.config)(dataset=args.dataset)
  overrides = {k: getattr(args, k) for k in (
      "data_dir", "attribute", "init_checkpoint", "epochs", "batch_size", "learning_rate",
      "latent_dim", "image_size", "max_train_examples", "seed", "dtype")
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
  config = config_from_args(args)
  workdir = os.path.abspath(args.workdir)
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
             "backend": jax.default_backend()}
  io.write_json(os.path.join(workdir, "summary.json"), summary)
  return summary


if __name__ == "__main__":
  main(sys.argv[1:])
