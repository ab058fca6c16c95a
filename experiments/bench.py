"""Benchmark: one-factorization weight sweep against per-weight solvers, theory throughput.

    python -m experiments.bench --out out/bench [--quick] [--set main_job=false]

The full sweep (default: d = 512, n = 2048, 64 weights, 8 seeds, float32, ridge 1e-3,
the same ridge everywhere so every solver is defined and they agree):

  fit_sweep            jax.jit(jax.vmap(lls.fit_sweep)) over seeds: one factorization per
                       seed, O(d^2) per weight.
  fit_sweep, lax.map   the same, seeds looped by lax.map: batched (vmap) against one seed's
                       factorization at a time (with a Python ridge > 0, lls.factor traces no
                       interpolator branch, so both run the same per-seed work).
  per-weight lls.fit   jax.jit(jax.vmap(lls.fit)) over seeds, called once per weight.
  per-weight Cholesky  class Grams shared (computed once), then per weight one Cholesky
                       solve of (omega G_+ + G_-) theta = omega r_+ + r_-, jitted and vmapped
                       over seeds, called once per weight.
  batched Cholesky     the same, vmapped over weights too (one call).
  scikit-learn         Ridge(alpha=ridge * n, fit_intercept=True).fit(x, y, sample_weight=c)
                       in a loop over seeds and weights.
  NumPy float64        per seed and weight: form X~' C X~ + ridge n P and np.linalg.solve.

Coefficients (w, b) are compared with the NumPy float64 loop (max over seeds and weights
of |theta - theta_ref| / |theta_ref|). Times are medians over repeats after a warm-up
call (which includes compilation; reported separately). Also: the theory's throughput
(theory.class_errors on a delta x weight grid, jitted) and the wall time of the main job
(`python -m experiments.gaussian` in a subprocess).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import cho_factor, cho_solve

from experiments import common, report
from thumb_jax import io, lls, theory
from thumb_jax import mixture as mixture_lib
from thumb_jax.mixture import GaussianMixture

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Config:
  seed: int = 0
  d: int = 512
  n: int = 2048
  num_weights: int = 64
  num_seeds: int = 8
  pi_plus: float = 0.1
  mean_norm: float = 2.0
  ridge: float = 1e-3
  weight_min: float = 0.5
  weight_max: float = 100.0
  repeats: int = 5            # median over these (fast methods)
  slow_repeats: int = 1       # per-weight lls.fit, scikit-learn, NumPy loops
  sklearn: bool = True
  torch: bool = True          # the PyTorch row (skipped when torch is not installed)
  theory_deltas: int = 1000
  theory_weights: int = 1000
  main_job: bool = True       # time `python -m experiments.gaussian` in a subprocess
  main_job_quick: bool = False


def config() -> Config:
  return Config()


def quick(cfg: Config) -> Config:
  return dataclasses.replace(cfg, d=32, n=128, num_weights=4, num_seeds=2, repeats=2,
                             theory_deltas=50, theory_weights=20, main_job=False)


# ----------------------------------------------------------------------------- solvers

def sweep_vmap(cfg: Config) -> Callable:
  return jax.jit(jax.vmap(functools.partial(lls.fit_sweep, ridge=cfg.ridge), in_axes=(0, 0, None)))


def sweep_map(cfg: Config) -> Callable:
  def run(x, y, weights):
    return jax.lax.map(lambda xy: lls.fit_sweep(xy[0], xy[1], weights, ridge=cfg.ridge), (x, y))
  return jax.jit(run)


def per_weight_fit(cfg: Config) -> Callable:
  fit = jax.jit(jax.vmap(functools.partial(lls.fit, ridge=cfg.ridge), in_axes=(0, 0, None)))

  def run(x, y, weights):
    layers = [fit(x, y, w) for w in weights]                       # one call per weight
    return lls.LastLayer(jnp.stack([f.w for f in layers], 1), jnp.stack([f.b for f in layers], 1))
  return run


def class_grams(x, y, *, ridge):
  """Augmented design X~ = [X, 1]: G_+ = X~_+' X~_+, G_- = X~_-' X~_- + ridge n P, r_k = X~_k' y_k.

  With c_+ = omega, c_- = 1 the normal equations of the weighted ridge problem are
  (omega G_+ + G_-) theta = omega r_+ + r_-, theta = (w, b); P zeroes the intercept entry.
  """
  n, d = x.shape
  xt = jnp.concatenate([x, jnp.ones((n, 1), x.dtype)], axis=1)
  plus = (y > 0).astype(x.dtype)
  g_plus = xt.T @ (plus[:, None] * xt)
  penalty = ridge * n * jnp.diag(jnp.ones(d + 1, x.dtype).at[-1].set(0.0))
  g_minus = xt.T @ ((1 - plus)[:, None] * xt) + penalty
  return g_plus, g_minus, xt.T @ (plus * y), xt.T @ ((1 - plus) * y)


def cholesky_solve(g_plus, g_minus, r_plus, r_minus, weight):
  theta = cho_solve(cho_factor(weight * g_plus + g_minus, lower=True), weight * r_plus + r_minus)
  return lls.LastLayer(theta[:-1], theta[-1])


def per_weight_cholesky(cfg: Config) -> Callable:
  grams = jax.jit(jax.vmap(functools.partial(class_grams, ridge=cfg.ridge)))
  solve = jax.jit(jax.vmap(cholesky_solve, in_axes=(0, 0, 0, 0, None)))

  def run(x, y, weights):
    g = grams(x, y)
    layers = [solve(*g, w) for w in weights]
    return lls.LastLayer(jnp.stack([f.w for f in layers], 1), jnp.stack([f.b for f in layers], 1))
  return run


def batched_cholesky(cfg: Config) -> Callable:
  def run(x, y, weights):
    g = class_grams(x, y, ridge=cfg.ridge)
    return jax.vmap(cholesky_solve, in_axes=(None, None, None, None, 0))(*g, weights)
  return jax.jit(jax.vmap(run, in_axes=(0, 0, None)))


def sklearn_loop(cfg: Config) -> Callable:
  from sklearn.linear_model import Ridge

  def run(x, y, weights):
    x, y = np.asarray(x), np.asarray(y)
    w = np.zeros((x.shape[0], len(weights), x.shape[2]))
    b = np.zeros((x.shape[0], len(weights)))
    for s in range(x.shape[0]):
      for k, weight in enumerate(np.asarray(weights)):
        c = np.where(y[s] > 0, weight, 1.0).astype(x.dtype)
        model = Ridge(alpha=cfg.ridge * x.shape[1], fit_intercept=True).fit(x[s], y[s],
                                                                            sample_weight=c)
        w[s, k], b[s, k] = model.coef_, model.intercept_
    return lls.LastLayer(w, b)
  return run


def torch_loop(cfg: Config) -> Callable:
  """PyTorch float32: the weighted normal equations per weight, solved for all seeds at once."""
  import torch  # pylint: disable=g-import-not-at-top

  def run(x, y, weights):
    xt = torch.from_numpy(np.array(x, np.float32))          # copies: writable for torch
    yt = torch.from_numpy(np.array(y, np.float32))
    num_seeds, n, d = xt.shape
    xa = torch.cat([xt, torch.ones(num_seeds, n, 1)], dim=2)          # intercept column
    penalty = cfg.ridge * n * torch.diag(torch.cat([torch.ones(d), torch.zeros(1)]))
    ws, bs = [], []
    for weight in np.asarray(weights, np.float32):
      c = torch.where(yt > 0, float(weight), 1.0)
      gram = xa.transpose(1, 2) @ (c[..., None] * xa) + penalty
      theta = torch.linalg.solve(gram, xa.transpose(1, 2) @ (c * yt)[..., None])[..., 0]
      ws.append(theta[:, :d])
      bs.append(theta[:, d])
    return lls.LastLayer(torch.stack(ws, 1).numpy(), torch.stack(bs, 1).numpy())
  return run


def numpy_loop(cfg: Config) -> Callable:
  def run(x, y, weights):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    num_seeds, n, d = x.shape
    penalty = cfg.ridge * n * np.diag(np.r_[np.ones(d), 0.0])
    w = np.zeros((num_seeds, len(weights), d))
    b = np.zeros((num_seeds, len(weights)))
    for s in range(num_seeds):
      xt = np.concatenate([x[s], np.ones((n, 1))], axis=1)
      for k, weight in enumerate(np.asarray(weights, np.float64)):
        c = np.where(y[s] > 0, weight, 1.0)
        theta = np.linalg.solve(xt.T @ (c[:, None] * xt) + penalty, xt.T @ (c * y[s]))
        w[s, k], b[s, k] = theta[:-1], theta[-1]
    return lls.LastLayer(w, b)
  return run


# ----------------------------------------------------------------------------- timing

def relative_difference(layer: lls.LastLayer, ref: lls.LastLayer) -> float:
  theta = np.concatenate([np.asarray(layer.w, np.float64),
                          np.asarray(layer.b, np.float64)[..., None]], -1)
  theta_ref = np.concatenate([np.asarray(ref.w), np.asarray(ref.b)[..., None]], -1)
  return float(np.max(np.linalg.norm(theta - theta_ref, axis=-1)
                      / np.linalg.norm(theta_ref, axis=-1)))


def theory_throughput(cfg: Config, *, x64: bool, repeats: int) -> dict:
  mixture = GaussianMixture.symmetric(pi_plus=cfg.pi_plus, mean_norm=cfg.mean_norm)
  with jax.enable_x64(x64):
    dtype = jnp.float64 if x64 else jnp.float32
    deltas = jnp.linspace(0.01, 0.99, cfg.theory_deltas, dtype=dtype)
    weights = jnp.logspace(-1, 3, cfg.theory_weights, dtype=dtype)
    errors = jax.jit(lambda d, w: theory.class_errors(mixture, d[:, None], w[None, :]))
    t = report.time_calls(errors, deltas, weights, repeats=repeats)
    finite = float(np.mean(np.isfinite(np.asarray(t.output.err_plus))))
  points = cfg.theory_deltas * cfg.theory_weights
  return {"points": points, "x64": x64, "first_call_s": t.first_s, "median_s": t.median_s,
          "points_per_s": points / t.median_s, "finite_fraction": finite, "times_s": t.times_s}


def main_job_wall(cfg: Config) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    cmd = [sys.executable, "-m", "experiments.gaussian", "--out", tmp]
    if cfg.main_job_quick:
      cmd.append("--quick")
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    inner = None
    summary = Path(tmp) / "summary.json"
    if summary.exists():
      inner = json.loads(summary.read_text())["results"]["seconds"]
  return {"command": " ".join(["python"] + cmd[1:3] + ["--out", "DIR"] + cmd[5:]),
          "returncode": proc.returncode, "wall_s": wall, "per_experiment_s": inner,
          "stdout_tail": proc.stdout[-2000:], "stderr_tail": proc.stderr[-2000:]}


# ----------------------------------------------------------------------------- entry point

def make_data(cfg: Config):
  mixture = GaussianMixture.symmetric(pi_plus=cfg.pi_plus, mean_norm=cfg.mean_norm)
  keys = jax.random.split(jax.random.key(cfg.seed), cfg.num_seeds)
  x, y = jax.jit(jax.vmap(lambda k: mixture_lib.sample(k, mixture, n=cfg.n, d=cfg.d)))(keys)
  weights = jnp.geomspace(cfg.weight_min, cfg.weight_max, cfg.num_weights, dtype=x.dtype)
  return x, y, weights


def run(cfg: Config, out) -> dict:
  out = common.ensure_dir(out)
  x, y, weights = make_data(cfg)
  methods = {
      "fit_sweep (jit+vmap over seeds)": (sweep_vmap(cfg), cfg.repeats),
      "fit_sweep (jit, lax.map over seeds)": (sweep_map(cfg), cfg.repeats),
      "per-weight jit(vmap(lls.fit))": (per_weight_fit(cfg), cfg.slow_repeats),
      "per-weight Cholesky, shared Grams": (per_weight_cholesky(cfg), cfg.repeats),
      "batched Cholesky, shared Grams": (batched_cholesky(cfg), cfg.repeats),
      "NumPy float64 loop": (numpy_loop(cfg), cfg.slow_repeats),
  }
  if cfg.sklearn:
    methods["scikit-learn Ridge loop"] = (sklearn_loop(cfg), cfg.slow_repeats)
  if cfg.torch and importlib.util.find_spec("torch") is not None:
    methods["PyTorch per-weight solve (seeds batched)"] = (torch_loop(cfg), cfg.slow_repeats)
  rows, outputs = [], {}
  for name, (fn, repeats) in common.progress(methods.items(), desc="bench", total=len(methods)):
    t = report.time_calls(fn, x, y, weights, repeats=repeats)
    outputs[name] = t.output
    rows.append({"method": name, "median_s": t.median_s, "first_call_s": t.first_s,
                 "repeats": repeats, "times_s": t.times_s})
  ref = outputs["NumPy float64 loop"]
  sweep = next(r for r in rows if r["method"].startswith("fit_sweep (jit+vmap"))
  for row in rows:
    row["max_rel_diff_vs_float64"] = relative_difference(outputs[row["method"]], ref)
    row["time_vs_fit_sweep"] = row["median_s"] / sweep["median_s"]
  results = {
      "table": rows,
      "theory_throughput": [theory_throughput(cfg, x64=False, repeats=cfg.repeats),
                            theory_throughput(cfg, x64=True, repeats=cfg.repeats)],
      "main_job": main_job_wall(cfg) if cfg.main_job else None,
  }
  common.write_csv(Path(out) / "bench.csv",
                   [{k: v for k, v in r.items() if k != "times_s"} for r in rows])
  common.save_results(Path(out) / "results.json", config=cfg, results=results, experiment="bench")
  return results


def format_table(cfg: Config, results: dict) -> str:
  lines = [f"weight sweep: d={cfg.d} n={cfg.n} weights={cfg.num_weights} seeds={cfg.num_seeds} "
           f"float32 ridge={cfg.ridge:g}",
           f"{'method':40s} {'median s':>10s} {'first s':>9s} {'x fit_sweep':>12s} "
           f"{'max rel diff':>13s}"]
  for r in results["table"]:
    lines.append(f"{r['method']:40s} {r['median_s']:10.3f} {r['first_call_s']:9.2f} "
                 f"{r['time_vs_fit_sweep']:12.1f} {r['max_rel_diff_vs_float64']:13.1e}")
  for t in results["theory_throughput"]:
    precision = "float64" if t["x64"] else "float32"
    lines.append(f"theory.class_errors, {t['points']:.2g} points, {precision}: "
                 f"{t['median_s'] * 1e3:.1f} ms -> {t['points_per_s']:.3g} points/s "
                 f"(first call {t['first_call_s']:.2f} s)")
  job = results["main_job"]
  if job is not None:
    lines.append(f"main job `{job['command']}`: {job['wall_s']:.1f} s wall "
                 f"(returncode {job['returncode']})")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
  cfg, out = common.parse_args(argv, config(), quick=quick, description=__doc__)
  results = run(cfg, out)
  text = format_table(cfg, results)
  io.write_text(Path(out) / "bench.txt", text + "\n")
  print(text)
  return results


if __name__ == "__main__":
  main(sys.argv[1:])
