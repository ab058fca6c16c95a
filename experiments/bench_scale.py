"""Scaling benchmark: the solver sweep, the Gaussian simulation, the retraining sweep and the
recommendation's bootstrap on 1, 2, 4, 8 devices.

    python -m experiments.bench_scale --out out/bench_scale [--devices 1,2,4,8] [--quick]

Each device count runs in a fresh process (on CPU, `--xla_force_host_platform_device_count`
makes virtual devices; on a GPU machine the real devices are used and `--devices` is
ignored). Timed: `lls.fit_sweep` vmapped over seeds with the seed axis sharded
(`devices.sharded_vmap`), `simulate.run_sweep` (the Gaussian studies' engine, seeds
sharded), `retrain.run` (the image studies' LLR sweep, repeats sharded; host conversions
included) and `recommend_weight(bootstrap=B)` (the B resamples sharded; the point estimate
and host conversions included). Writes results.json (median seconds per call, speed-up and
efficiency against one device, the platform) and scaling.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from experiments import common
from experiments.report import plt
from thumb_jax import io

_CHILD = r"""
import json, sys
import thumb_jax
import jax, jax.numpy as jnp, numpy as np
from experiments import report
from thumb_jax import GaussianMixture, devices, lls, recommend, retrain, simulate, subsample

cfg = json.loads(sys.argv[1])
seeds, n, d, k = cfg["seeds"], cfg["n"], cfg["d"], cfg["weights"]
x = jax.random.normal(jax.random.key(0), (seeds, n, d))
y = jnp.where(jnp.arange(n) % 10 == 0, 1.0, -1.0)
weights = jnp.geomspace(1.0, 100.0, k)
sweep = devices.sharded_vmap(lambda x, y, w: lls.fit_sweep(x, y, w, ridge=1e-3),
                             in_axes=(0, None, None))
solver = report.time_calls(sweep, x, y, weights, repeats=cfg["repeats"])

mix = GaussianMixture.symmetric(pi_plus=0.1, mean_norm=2.0)
labels = simulate.pool_labels(0.1, n)
masks = subsample.nested_masks(labels, [n, n // 2, n // 4])
keys = simulate.seed_keys(0, seeds)
w = np.tile(np.geomspace(1.0, 100.0, k), (3, 1))
run = lambda keys: simulate.run_sweep(mix, keys, d=d, masks=masks, weights=w, ridges=np.zeros(3))
gaussian = report.time_calls(run, keys, repeats=cfg["repeats"])
yp = np.where(np.arange(n) % 10 == 0, 1.0, -1.0)
xp = np.asarray(x[0]) + 0.3 * yp[:, None]
sizes = np.unique(np.geomspace(40, n, 6).astype(int))
llr = lambda: retrain.run(xp, yp, xp, yp, sizes=sizes, weights=np.geomspace(0.1, 1000, k),
                          num_repeats=seeds, ridge=1e-3)
retraining = report.time_calls(llr, repeats=cfg["repeats"])
boot = lambda: recommend.recommend_weight(xp, yp, ridge=1e-3, bootstrap=cfg["bootstrap"],
                                          batch_size=8).bootstrap_weights
bootstrap = report.time_calls(boot, repeats=cfg["repeats"])
print("RESULT", json.dumps({**devices.describe(), "solver_s": solver.median_s,
                            "solver_first_s": solver.first_s, "gaussian_s": gaussian.median_s,
                            "gaussian_first_s": gaussian.first_s,
                            "retrain_s": retraining.median_s,
                            "retrain_first_s": retraining.first_s,
                            "bootstrap_s": bootstrap.median_s,
                            "bootstrap_first_s": bootstrap.first_s}))
"""


NAMES = ("solver", "gaussian", "retrain", "bootstrap")


def _child(count: int | None, cfg: dict) -> dict:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  if count is not None:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={count}"
  done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(cfg)], env=env,
                        capture_output=True, text=True, timeout=1800, check=False)
  if done.returncode:
    raise RuntimeError(f"bench_scale child ({count} devices) failed:\n{done.stderr[-3000:]}")
  line = next(ln for ln in done.stdout.splitlines() if ln.startswith("RESULT"))
  return json.loads(line[len("RESULT"):])


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True, help="output directory (created)")
  parser.add_argument("--devices", default="1,2,4,8", help="virtual CPU device counts")
  parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
  args = parser.parse_args(argv)
  out = io.check_writable_dir(args.out)
  try:
    counts = [int(v) for v in args.devices.split(",") if v.strip()]
  except ValueError:
    counts = []
  if not counts or min(counts) < 1:
    raise ValueError(f"--devices: expected comma-separated integers >= 1, got {args.devices!r}")
  cfg = ({"seeds": 8, "n": 256, "d": 32, "weights": 8, "bootstrap": 8, "repeats": 3}
         if args.quick else
         {"seeds": 16, "n": 1024, "d": 128, "weights": 32, "bootstrap": 64, "repeats": 3})
  import jax  # after thumb_jax (via common) set the XLA flags

  on_cpu = jax.default_backend() == "cpu"
  rows = [_child(c if on_cpu else None, cfg) for c in (counts if on_cpu else [None])]
  base = rows[0]
  for row in rows:
    for name in NAMES:
      row[f"{name}_speedup"] = base[f"{name}_s"] / row[f"{name}_s"]
      row[f"{name}_efficiency"] = row[f"{name}_speedup"] / (row["devices"] / base["devices"])
  common.save_results(out / "results.json", config=cfg, results={"rows": rows})
  fig, ax = plt.subplots(figsize=(4.5, 3.2))
  for name in NAMES:
    ax.plot([r["devices"] for r in rows], [r[f"{name}_speedup"] for r in rows], "o-",
            label=name)
  ax.set_xlabel("devices")
  ax.set_ylabel("speed-up over 1 device")
  ax.legend()
  common.save_figure(fig, out / "scaling.png")
  for r in rows:
    print(f"{r['devices']} devices: " + ", ".join(
        f"{name} {r[f'{name}_s']:.3f} s (x{r[f'{name}_speedup']:.2f})" for name in NAMES))
  return {"rows": rows}


if __name__ == "__main__":
  main()
