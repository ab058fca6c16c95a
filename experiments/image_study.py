"""The real-image study end to end: backbones per latent width and seed, embeddings, LLR sweeps.

    python -m experiments.image_study --dataset cifar10 \
        --data_dir ../shared/data/cifar10_airplane_truck.npz \
        --workdir runs/cifar10 --out out/image_study/cifar10 [--set other_width_seeds=1]

For each latent width d (the head's embedding width, how the paper varies the model size)
and backbone seed, the stages are:

  1. fine-tune a ResNet34 + MLP head (`--set backbone=cpu|paper|tiny`, the configs of
     `thumb_jax.images.configs`) in WORKDIR/backbones/d{d}_seed{seed}/ (orbax checkpoints
     every epoch: a killed run resumes);
  2. extract the retraining-pool and test embeddings of each split preset (cached by the
     checkpoint's hash in WORKDIR/embeddings/);
  3. run the LLR sweep of `experiments.image_llr` on them (sizes x 10 nested repeats x the
     weight grid, every method of `thumb_jax.retrain`) and the general-covariance plug-in
     theory (`experiments.image_study_theory`), cached per cell in WORKDIR/cells/.

WORKDIR/sets/{preset}_d{d}_seed{seed}/ links each backbone's val / test embeddings under the
names `image_llr`, `anisotropic` and `recommend_validate` read (`--embeddings DIR`).
Then `experiments.image_study_report` pools the cells: between-backbone and
between-subsample spreads, paired comparisons with the prior ratio per backbone, the
collapse of the best weight onto delta or delta_eff, figures, CSV and one results.json
in --out. Rerunning skips every finished stage.

Data splits. The data split is fixed by `split_seed` for every backbone, so backbones
differ only by their training randomness (initialization, batch order, augmentation,
dropout) and every backbone is compared on the same pool and test images.
  CIFAR-10 (the training split, 5000 trucks + 495 airplanes, is the same for both):
    paper     a seeded 10% of the two-class test split (182 trucks + 18 airplanes, the
              training split's 91 / 9) is the retraining pool; the other 1,800 test images
              are the test split. Our reading of the paper's protocol.
    extended  half of the test trucks and 9% airplanes (500 + 49 = 549) is the pool, the
              other 1,451 test images the test split; reaches delta = 0.25 at d = 128.
  CelebA: one preset, `official`: the official validation partition is the pool and the
    official test partition the test split.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments import anisotropic_real, anisotropic_theory, common, image_llr, image_study_report
from thumb_jax import embedding_files, io, platform, plug_in, retrain, subsample
from thumb_jax.images import configs, datasets, embeddings, input_pipeline, train

# CIFAR-10 presets: the retraining pool's share of the two-class test split's majority
# (`cifar10.load_cifar10_binary(val_fraction=...)`). "paper": 10% of the 2,000 test images
# at the training split's 91 / 9, i.e. 182 of the 1,000 trucks (and 18 airplanes).
CIFAR_PRESETS = {"paper": 0.182, "extended": 0.5}
PRESETS = {"cifar10": tuple(CIFAR_PRESETS), "celeba": ("official",)}
BACKBONES = ("cpu", "paper", "tiny")


@dataclasses.dataclass(frozen=True)
class Config:
  dataset: str = "cifar10"
  data_dir: str = ""                  # required: see train_backbone --data_dir
  workdir: str = ""                   # required: backbones, embeddings and cells (resumable)
  backbone: str = "cpu"               # configs.cpu / paper / tiny
  latent: tuple[int, ...] = (128, 256, 512)
  seeds: tuple[int, ...] = (0, 1, 2)  # backbone seeds at the first width
  other_width_seeds: int = 3          # widths after the first train seeds[:this]
  presets: tuple[str, ...] = ()       # () = every preset of the dataset
  split_seed: int = 0                 # the data split, shared by every backbone
  epochs: int | None = None           # None: the backbone config's
  max_train_examples: int | None = None  # None: the backbone config's
  # The LLR sweep, as in experiments.image_llr.
  num_sizes: int = 10
  num_repeats: int = 10
  num_weights: int = 32
  weight_low: float = 0.1
  weight_high: float = 1000.0
  ridge: float | None = None          # None: retrain.default_ridge
  objective: str = "worst"
  batch_size: int = 8
  seed: int = 0                       # subsamples (the same for every backbone)


def config() -> Config:
  return Config()


def quick(cfg: Config) -> Config:
  return dataclasses.replace(cfg, backbone="tiny", latent=(16, 32), seeds=(0, 1),
                             other_width_seeds=1, num_sizes=3, num_repeats=3, num_weights=8)


def check_config(cfg: Config) -> None:
  """Raises ValueError naming the flag or field that is invalid."""
  if cfg.dataset not in PRESETS:
    raise ValueError(f"--dataset: expected one of {tuple(PRESETS)}, got {cfg.dataset!r}")
  for name in ("data_dir", "workdir"):
    if not getattr(cfg, name):
      raise ValueError(f"--{name}: required")
  if cfg.backbone not in BACKBONES:
    raise ValueError(f"backbone: expected one of {BACKBONES}, got {cfg.backbone!r}")
  if not cfg.latent or any(d < 2 for d in cfg.latent) or len(set(cfg.latent)) != len(cfg.latent):
    raise ValueError(f"latent: expected distinct widths >= 2, got {cfg.latent}")
  if not cfg.seeds or any(s < 0 for s in cfg.seeds) or len(set(cfg.seeds)) != len(cfg.seeds):
    raise ValueError(f"seeds: expected distinct seeds >= 0, got {cfg.seeds}")
  if not 1 <= cfg.other_width_seeds:
    raise ValueError(f"other_width_seeds: expected >= 1, got {cfg.other_width_seeds}")
  unknown = set(cfg.presets) - set(PRESETS[cfg.dataset])
  if unknown:
    raise ValueError(f"presets: expected a subset of {PRESETS[cfg.dataset]} for "
                     f"{cfg.dataset}, got {sorted(unknown)}")
  common.positive_ints(cfg, "num_sizes", "num_repeats", "num_weights", "batch_size")
  for name in ("epochs", "max_train_examples"):
    if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
      raise ValueError(f"{name}: expected none or an integer >= 1, got {getattr(cfg, name)}")
  image_llr.check_config(image_llr.Config(
      dataset=cfg.dataset, embeddings="-", num_weights=cfg.num_weights,
      weight_low=cfg.weight_low, weight_high=cfg.weight_high, ridge=cfg.ridge,
      objective=cfg.objective))


def presets(cfg: Config) -> tuple[str, ...]:
  return cfg.presets or PRESETS[cfg.dataset]


def plan(cfg: Config) -> list[tuple[int, int]]:
  """(width, seed) of every backbone, the first width first (its seeds in order)."""
  first, *rest = cfg.latent
  return ([(first, s) for s in cfg.seeds]
          + [(d, s) for d in rest for s in cfg.seeds[:cfg.other_width_seeds]])


# ----------------------------------------------------------------------------- stage 1: backbones

def backbone_config(cfg: Config, width: int, seed: int) -> configs.Config:
  """The fine-tuning config of one backbone: the chosen recipe at `width` and `seed`."""
  base = getattr(configs, cfg.backbone)(dataset=cfg.dataset)
  changes = {"latent_dim": width, "seed": seed, "data_dir": os.path.abspath(cfg.data_dir)}
  for name in ("epochs", "max_train_examples"):
    if getattr(cfg, name) is not None:
      changes[name] = getattr(cfg, name)
  return dataclasses.replace(base, **changes)


def load_split_data(cfg: Config, preset: str, *, image_size: int,
                    max_train_examples: int | None):
  """The dataset of a preset at `image_size`, split by `split_seed` (not the backbone seed)."""
  if cfg.dataset == "cifar10":
    data = datasets.load_dataset("cifar10", data_dir=cfg.data_dir, seed=cfg.split_seed,
                                 val_fraction=CIFAR_PRESETS[preset])
  else:
    data = datasets.load_dataset(
        "celeba", data_dir=cfg.data_dir, image_size=image_size, seed=cfg.split_seed,
        cache_dir=os.path.join(cfg.workdir, "data_cache"),
        max_per_split={"train": max_train_examples, "val": None, "test": None})
  if data.train.images.shape[1] != image_size:
    data = data._replace(**{
        name: split._replace(images=input_pipeline.resize_images(split.images, image_size))
        for name, split in (("train", data.train), ("val", data.val), ("test", data.test))})
  return data


def backbone_dir(cfg: Config, width: int, seed: int) -> str:
  return os.path.join(cfg.workdir, "backbones", f"d{width}_seed{seed}")


def _finished(cfg: Config, width: int, seed: int) -> dict | None:
  """The backbone's study_summary.json if it and every embedding file it names exist."""
  path = os.path.join(backbone_dir(cfg, width, seed), "study_summary.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    summary = json.load(f)
  files = [p for preset in presets(cfg) for p in summary["embeddings"].get(preset, {}).values()]
  complete = all(p in summary["embeddings"] for p in presets(cfg)) and all(
      os.path.exists(p) for p in files)
  same = summary.get("config") == io.to_jsonable(backbone_config(cfg, width, seed).to_dict())
  return summary if complete and same else None


def train_backbone(cfg: Config, width: int, seed: int, data: dict) -> dict:
  """Fine-tunes (or resumes) one backbone and extracts each preset's embeddings.

  Args:
    data: {preset: BinaryDataset} (`load_split_data`); the first preset's training split
      trains the backbone (every preset has the same one).

  Returns:
    {"workdir", "width", "seed", "checkpoint_hash", "test" (the backbone's test metrics on
    the first preset's test split), "train_seconds", "images_per_second", "config",
    "embeddings": {preset: {"val": file, "test": file}}}, also written to
    study_summary.json in the backbone's folder (the marker of a finished backbone).
  """
  workdir = backbone_dir(cfg, width, seed)
  bconfig = backbone_config(cfg, width, seed)
  state = train.train_and_evaluate(bconfig, workdir, dataset=data[presets(cfg)[0]])
  model = train.create_model(bconfig)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  checkpoint_hash = embeddings.params_hash(variables)
  cache_dir = os.path.join(cfg.workdir, "embeddings")
  files: dict = {}
  for preset in presets(cfg):
    files[preset] = {}
    for split in ("val", "test"):
      where = {"dataset": f"{cfg.dataset}-{preset}", "split": split, "latent_dim": width,
               "checkpoint_hash": checkpoint_hash}
      provenance = {"data": data[preset].provenance, "split": split, "preset": preset,
                    "config": bconfig.to_dict(), "checkpoint_hash": checkpoint_hash,
                    "workdir": workdir}
      embeddings.cached_embeddings(
          cache_dir, **where,
          compute_fn=lambda split=split, provenance=provenance, preset=preset:
          embeddings.split_embeddings(variables, model, getattr(data[preset], split),
                                      batch_size=bconfig.eval_batch_size,
                                      provenance=provenance))
      files[preset][split] = embeddings.cache_path(cache_dir, **where)
  with open(os.path.join(workdir, "metrics.json")) as f:
    metrics = json.load(f)
  summary = {"workdir": workdir, "width": width, "seed": seed,
             "checkpoint_hash": checkpoint_hash, "test": metrics["test"],
             "train_seconds": float(sum(e["seconds"] for e in metrics["epochs"])),
             "images_per_second": float(np.median([e["images_per_second"]
                                                   for e in metrics["epochs"]])),
             "config": bconfig.to_dict(), "embeddings": files}
  summary = json.loads(io.dumps(summary))
  io.write_json(os.path.join(workdir, "study_summary.json"), summary)
  return summary


def train_backbones(cfg: Config, *, data: dict | None = None) -> dict[tuple[int, int], dict]:
  """Stages 1 and 2 for every backbone of `plan(cfg)`; finished ones are read back.

  Args:
    data: {preset: BinaryDataset} to use instead of loading the files (tests); None loads
      them (once, and only if some backbone is unfinished).
  """
  summaries = {}
  for width, seed in common.progress(plan(cfg), desc="backbones", total=len(plan(cfg))):
    summary = _finished(cfg, width, seed)
    if summary is None:
      if data is None:  # the images do not depend on the width or the seed
        bconfig = backbone_config(cfg, width, seed)
        data = {p: load_split_data(cfg, p, image_size=bconfig.image_size,
                                   max_train_examples=bconfig.max_train_examples)
                for p in presets(cfg)}
      summary = train_backbone(cfg, width, seed, data)
    summaries[width, seed] = summary
  return summaries


# ----------------------------------------------------------------------------- stage 3: cells

# The per-repeat numbers a cell keeps of each method (S sizes x R repeats each).
CELL_METHODS = (*retrain.METHODS, "theory_general")


def cell_path(cfg: Config, preset: str, width: int, seed: int) -> str:
  return os.path.join(cfg.workdir, "cells", f"{preset}_d{width}_seed{seed}.json")


def cell_key(cfg: Config, preset: str, backbone: dict) -> dict:
  """What a cell's numbers depend on: a cached cell with another key is recomputed."""
  fields = ("num_sizes", "num_repeats", "num_weights", "weight_low", "weight_high", "ridge",
            "objective", "batch_size", "seed")
  return {"preset": preset, "width": backbone["width"], "backbone_seed": backbone["seed"],
          "checkpoint_hash": backbone["checkpoint_hash"],
          **{k: getattr(cfg, k) for k in fields}}


def general_plug_in(x_pool, y_pool, result: retrain.RetrainResult) -> dict:
  """The general-covariance theory estimated on the whole pool, at every (n, grid weight).

  Coordinates and ridge are retrain's (centred by the pool mean, divided by its feature
  scale), as in `experiments.anisotropic_real`; the theory's weight at each n is the grid
  weight of least predicted worst-class error, so its measured errors are the grid's.
  """
  z = (x_pool - x_pool.mean(0)) / anisotropic_real.feature_scale(x_pool)
  sizes = np.asarray(result.sizes, np.float64)
  weights = np.asarray(result.weights, np.float64)
  with jax.enable_x64(True), platform.single_threaded_blas():
    est, plug, basis = anisotropic_real.pool_plug_in(z, y_pool)
    n_, w_ = np.meshgrid(sizes, weights, indexing="ij")
    pred = anisotropic_theory.general_errors(est, n_.ravel(), w_.ravel(),
                                             np.full(n_.size, float(result.ridge)))
  err_plus = pred.err_plus.reshape(n_.shape)
  err_minus = pred.err_minus.reshape(n_.shape)
  worst = np.nan_to_num(np.maximum(err_plus, err_minus), nan=np.inf)
  return {"err_plus": err_plus, "err_minus": err_minus, "best_index": np.argmin(worst, axis=1),
          "d_span": int(basis.shape[1]), "d_eff": float(plug.d_eff)}


def run_cell(cfg: Config, preset: str, backbone: dict) -> dict:
  """Stage 3 for one (preset, backbone): the LLR sweep and the general plug-in (cached)."""
  width, seed = backbone["width"], backbone["seed"]
  path = cell_path(cfg, preset, width, seed)
  key = cell_key(cfg, preset, backbone)
  if os.path.exists(path):
    with open(path) as f:
      cached = json.load(f)
    if cached.get("key") == key:
      return cached
  files = backbone["embeddings"][preset]
  pool, test = (embedding_files.load_arrays(files[s]) for s in ("val", "test"))
  x_pool, x_test = pool["embeddings"].astype(np.float64), test["embeddings"].astype(np.float64)
  y_pool, y_test, _ = embedding_files.encode_pool_and_test(pool["labels"], test["labels"])
  sizes = subsample.default_sizes(y_pool, num_sizes=cfg.num_sizes)
  result = retrain.run(
      x_pool, y_pool, x_test, y_test, sizes=sizes,
      weights=retrain.log_weights(cfg.num_weights, low=cfg.weight_low, high=cfg.weight_high),
      num_repeats=cfg.num_repeats, seed=cfg.seed, ridge=cfg.ridge, objective=cfg.objective,
      batch_size=cfg.batch_size)
  general = general_plug_in(x_pool, y_pool, result)
  grid = result.errors
  methods = {}
  for name in retrain.METHODS:
    m = getattr(result.methods, name)
    methods[name] = {"weight": m.weight, "err_plus": m.errors.err_plus,
                     "err_minus": m.errors.err_minus}
  rows = np.arange(len(sizes))
  k = general["best_index"]
  methods["theory_general"] = {
      "weight": np.broadcast_to(np.asarray(result.weights)[k][:, None], grid.err_plus.shape[:2]),
      "err_plus": np.asarray(grid.err_plus)[rows, :, k],
      "err_minus": np.asarray(grid.err_minus)[rows, :, k]}
  cell = {
      "key": key, "preset": preset, "width": width, "backbone_seed": seed,
      "backbone_test": backbone["test"],
      "pool_size": int(x_pool.shape[0]), "pool_plus": int(np.sum(y_pool > 0)),
      "test_size": int(x_test.shape[0]), "test_plus": int(np.sum(y_test > 0)),
      "n": np.asarray(result.sizes), "n_plus": np.asarray(result.count_plus),
      "n_minus": np.asarray(result.count_minus), "weights": np.asarray(result.weights),
      "ridge": float(result.ridge), "feature_scale": float(result.feature_scale),
      # The pool's debiased participation ratio (the d_eff of theory_participation).
      "d_eff_participation": float(plug_in.plug_in_stats(
          jnp.asarray(x_pool - x_pool.mean(0)), jnp.asarray(y_pool > 0)).participation),
      "general": {"d_span": general["d_span"], "d_eff": general["d_eff"],
                  "err_plus": general["err_plus"], "err_minus": general["err_minus"]},
      "grid_mean": {"err_plus": np.mean(grid.err_plus, axis=1),
                    "err_minus": np.mean(grid.err_minus, axis=1),
                    "worst": np.mean(np.maximum(grid.err_plus, grid.err_minus), axis=1)},
      "methods": methods}
  cell = json.loads(io.dumps(cell))
  io.write_json(path, cell)
  return cell


def run_cells(cfg: Config, backbones: dict[tuple[int, int], dict]) -> list[dict]:
  """Stage 3 for every preset and backbone (cached cells are read back)."""
  todo = [(p, b) for p in presets(cfg) for b in backbones.values()]
  return [run_cell(cfg, p, b) for p, b in common.progress(todo, desc="LLR cells",
                                                           total=len(todo))]


# ----------------------------------------------------------------------------- entry point


def link_sets(cfg: Config, backbones: dict[tuple[int, int], dict]) -> list[str]:
  """WORKDIR/sets/{preset}_d{width}_seed{seed}/{val,test}.npz: relative links to each
  backbone's embedding files, the folder layout `image_llr`, `anisotropic` and
  `recommend_validate` read (`--embeddings DIR`). Returns the folders."""
  folders = []
  for (width, seed), b in sorted(backbones.items()):
    for preset, files in b["embeddings"].items():
      folder = os.path.join(cfg.workdir, "sets", f"{preset}_d{width}_seed{seed}")
      os.makedirs(folder, exist_ok=True)
      for split, target in files.items():
        link = os.path.join(folder, f"{split}.npz")
        if os.path.lexists(link):
          os.remove(link)
        os.symlink(os.path.relpath(target, folder), link)
      folders.append(folder)
  return folders


def backbone_table(backbones: dict[tuple[int, int], dict]) -> list[dict]:
  """One row per backbone: its test errors, training time and rate."""
  return [{"width": w, "seed": s, "test_err_plus": b["test"]["err_plus"],
           "test_err_minus": b["test"]["err_minus"], "test_accuracy": b["test"]["accuracy"],
           "train_seconds": b["train_seconds"], "images_per_second": b["images_per_second"],
           "checkpoint_hash": b["checkpoint_hash"][:16]}
          for (w, s), b in sorted(backbones.items())]


def run(cfg: Config, out, *, data: dict | None = None) -> dict:
  """All stages, then the pooled report (figures, CSV, results.json, tables.md) in `out`.

  Args:
    cfg: the study's Config.
    out: output folder.
    data: {preset: BinaryDataset} instead of loading `cfg.data_dir` (tests).
  """
  check_config(cfg)
  cfg = dataclasses.replace(cfg, workdir=os.path.abspath(cfg.workdir))
  out = common.ensure_dir(out)
  timings: dict = {}
  with common.stopwatch(timings, "backbones_and_embeddings"):
    backbones = train_backbones(cfg, data=data)
  link_sets(cfg, backbones)
  with common.stopwatch(timings, "cells"):
    cells = run_cells(cfg, backbones)
  results: dict = {"backbones": backbone_table(backbones), "presets": {}}
  tables, rows = [], []
  with common.stopwatch(timings, "report"):
    for preset, groups in image_study_report.by_preset(cells).items():
      widths = {w: image_study_report.summarize_width(g) for w, g in groups.items()}
      collapse = image_study_report.collapse(widths)
      first = groups[min(groups)][0]
      title = (f"{cfg.dataset} ({preset}): pool N = {first['pool_size']} "
               f"({first['pool_plus']} minority), test M = {first['test_size']}, "
               f"{cfg.num_repeats} nested subsamples per n, ridge {first['ridge']:.3g}")
      common.save_figure(image_study_report.plot_errors(preset, widths, title),
                         Path(out) / f"errors_vs_delta_{preset}.png")
      common.save_figure(image_study_report.plot_weights(preset, widths, collapse, title),
                         Path(out) / f"weights_vs_delta_{preset}.png")
      rows += image_study_report.csv_rows(preset, widths)
      tables.append(image_study_report.markdown_table(preset, widths))
      tables.append(image_study_report.collapse_text(preset, collapse))
      results["presets"][preset] = {
          "pool_size": first["pool_size"], "pool_plus": first["pool_plus"],
          "test_size": first["test_size"], "test_plus": first["test_plus"],
          "widths": widths, "collapse": collapse}
  common.write_csv(Path(out) / "results.csv", rows)
  io.write_text(Path(out) / "tables.md", "\n\n".join(tables) + "\n")
  common.save_results(Path(out) / "results.json", config=cfg, results=results,
                      experiment="image_study", seconds=timings)
  print("\n\n".join(tables))
  return results


def main(argv: Sequence[str] | None = None) -> dict:
  cfg, out = common.parse_args(argv, config(), quick=quick, description=__doc__,
                               flags=("dataset", "data_dir", "workdir", "latent", "seeds"))
  return run(cfg, out)


if __name__ == "__main__":
  main(sys.argv[1:])
