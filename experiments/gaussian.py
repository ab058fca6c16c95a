"""The main job: the four Gaussian-mixture studies, simulation against theory, in sequence.

    python -m experiments.gaussian --out out/gaussian [--quick] [--set num_seeds=8]

runs error_vs_delta, error_vs_weight, downsampling and ridge (each into its own
subfolder of --out, with its own defaults or quick variant), prints one headline per
study and writes summary.json. The simulation core is `thumb_jax.simulate`.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Sequence

from experiments import common, downsampling, error_vs_delta, error_vs_weight, ridge

STUDIES = {"error_vs_delta": error_vs_delta, "error_vs_weight": error_vs_weight,
           "downsampling": downsampling, "ridge": ridge}
EXPERIMENTS = tuple(STUDIES)


@dataclasses.dataclass(frozen=True)
class Config:
  seed: int = 0
  num_seeds: int | None = None     # None: each study's default
  experiments: tuple[str, ...] = EXPERIMENTS
  quick: bool = False              # run each study's quick variant


def config() -> Config:
  return Config()


def quick(cfg: Config) -> Config:
  return dataclasses.replace(cfg, quick=True)


def main(argv: Sequence[str] | None = None) -> dict:
  cfg, out = common.parse_args(argv, config(), quick=quick, description=__doc__)
  unknown = [name for name in cfg.experiments if name not in STUDIES]
  if unknown:
    raise ValueError(f"experiments: unknown {unknown}; expected names from {list(STUDIES)}")
  if cfg.num_seeds is not None:
    common.positive_ints(cfg, "num_seeds", minimum=2)
  start = time.perf_counter()
  summaries, timings = {}, {}
  for name in common.progress(cfg.experiments, desc="gaussian experiments"):
    study = STUDIES[name]
    sub = study.quick(study.config()) if cfg.quick else study.config()
    sub = dataclasses.replace(sub, seed=cfg.seed)
    if cfg.num_seeds is not None:
      sub = dataclasses.replace(sub, num_seeds=cfg.num_seeds)
    with common.stopwatch(timings, name):
      result = study.run(sub, out / name)
    summaries[name] = result["summary"]
    print(f"[{name}] {timings[name]:.1f}s  " + study.headline(result["summary"]), flush=True)
  wall = time.perf_counter() - start
  print(f"gaussian: {len(cfg.experiments)} experiments in {wall:.1f}s wall -> {out}", flush=True)
  payload = {"summary": summaries, "seconds": timings, "wall_seconds": wall}
  common.save_results(out / "summary.json", config=cfg, results=payload)
  return payload


if __name__ == "__main__":
  main(sys.argv[1:])
