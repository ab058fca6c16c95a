"""Stress check: batched CPU decompositions under jit, many times, under a watchdog.

    python -m experiments.stress_lapack --out out/stress [--iterations 300] [--timeout 60]
    python -m experiments.stress_lapack --out out/stress --no-workaround   # reproduce the hang

Each iteration runs one jitted program holding several independent batched LAPACK calls
(cholesky, eigh, triangular_solve, qr) that XLA:CPU may schedule concurrently, a vmapped
`lls.fit_sweep` over seeds (the Gaussian sweeps' shape), and a vmapped while loop whose
body holds independent triangular solves (the shape that hung the general-covariance
theory's dense path). The work runs in a
child process; the parent kills it after `--timeout` seconds and reports "hang". Without the
workarounds of `thumb_jax.platform` (`--no-workaround` restores XLA's scheduler and
jax's batching rules) jaxlib 0.10.x hangs here; with them, every iteration finishes.
Writes results.json (outcome, seconds, iterations, flags, versions).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from thumb_jax import io

_CHILD = r"""
import sys, time
import os
import thumb_jax  # applies thumb_jax.platform's workarounds unless XLA_FLAGS chose otherwise
import jax, jax.numpy as jnp
if os.environ.get("THUMB_JAX_STRESS_NO_WORKAROUND"):  # put jax's own batching rules back
  from jax._src.interpreters import batching
  from jax._src.lax import linalg
  for name in thumb_jax.platform.SEQUENTIAL_PRIMITIVES:
    prim = getattr(linalg, name, None)
    rule = batching.fancy_primitive_batchers.get(prim) if prim is not None else None
    if rule is not None and hasattr(rule, "original"):
      batching.fancy_primitive_batchers[prim] = rule.original
from thumb_jax import lls

def decompositions(a, b):
  chol = jnp.linalg.cholesky(a)
  return (chol, jnp.linalg.eigh(b)[0], jnp.linalg.qr(b)[0],
          jax.scipy.linalg.solve_triangular(chol, b, lower=True))

program = jax.jit(decompositions)

def sibling_solves(a, b):  # a while loop whose body holds independent triangular solves
  def body(carry):
    i, a, b = carry
    chol = jnp.linalg.cholesky(a)
    x = jax.scipy.linalg.solve_triangular(chol, b, lower=True)
    y = jax.scipy.linalg.solve_triangular(chol, b.T, lower=True)
    z = jax.scipy.linalg.solve_triangular(chol, a[:, :1], lower=True)
    return i + 1, a, b + 1e-3 * (x + y) + 1e-3 * z
  return jax.lax.while_loop(lambda c: c[0] < 8, body, (0, a, b))[2]

looped = jax.jit(jax.vmap(sibling_solves))
sweep = jax.jit(jax.vmap(lambda x, y: lls.fit_sweep(x, y, jnp.geomspace(1.0, 100.0, 8)),
                         in_axes=(0, None)))
z = jax.random.normal(jax.random.key(0), (64, 48, 48))
a = z @ jnp.swapaxes(z, -1, -2) + 48.0 * jnp.eye(48)
x = jax.random.normal(jax.random.key(1), (8, 200, 32))
y = jnp.where(jnp.arange(200) % 5 == 0, 1.0, -1.0)
start = time.perf_counter()
for i in range(int(sys.argv[1])):
  jax.block_until_ready(program(a + i, a - i))
  jax.block_until_ready(sweep(x + 1e-3 * i, y))
  jax.block_until_ready(looped(a + i, a))
print(f"seconds {time.perf_counter() - start:.3f}", flush=True)
"""


def run(*, iterations: int, timeout: float, workaround: bool = True) -> dict:
  """Runs the stress program in a child process; returns its outcome.

  Returns:
    {"outcome": "ok" | "hang" | "error", "seconds", "iterations", "xla_flags", "detail"}.
  """
  if iterations < 1:
    raise ValueError(f"iterations: expected >= 1, got {iterations}")
  if not timeout > 0:
    raise ValueError(f"timeout: expected seconds > 0, got {timeout}")
  env = dict(os.environ)
  flags = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                   if not f.startswith("--xla_cpu_enable_concurrency_optimized_scheduler"))
  setting = "false" if workaround else "true"
  if not workaround:
    env["THUMB_JAX_STRESS_NO_WORKAROUND"] = "1"
  flags = f"{flags} --xla_cpu_enable_concurrency_optimized_scheduler={setting}".strip()
  env["XLA_FLAGS"] = flags
  start = time.perf_counter()
  try:
    done = subprocess.run([sys.executable, "-c", _CHILD, str(iterations)], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
  except subprocess.TimeoutExpired:
    return {"outcome": "hang", "seconds": time.perf_counter() - start,
            "iterations": iterations, "xla_flags": flags, "detail": f"no exit in {timeout} s"}
  outcome = "ok" if done.returncode == 0 else "error"
  detail = done.stdout.strip() if outcome == "ok" else done.stderr.strip()[-2000:]
  return {"outcome": outcome, "seconds": time.perf_counter() - start,
          "iterations": iterations, "xla_flags": flags, "detail": detail}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True, help="output directory (created)")
  parser.add_argument("--iterations", type=int, default=300)
  parser.add_argument("--timeout", type=float, default=60.0, help="watchdog, seconds")
  parser.add_argument("--no-workaround", dest="workaround", action="store_false",
                      help="run with XLA's default scheduler (reproduces the jaxlib 0.10 hang)")
  args = parser.parse_args(argv)
  out = io.check_writable_dir(args.out)
  import jax  # after thumb_jax (imported above) set the flags

  result = run(iterations=args.iterations, timeout=args.timeout, workaround=args.workaround)
  result.update(workaround=args.workaround, jax=jax.__version__)
  io.write_json(out / "results.json", result)
  print(f"{result['outcome']}: {result['seconds']:.1f} s, {args.iterations} iterations, "
        f"XLA_FLAGS={result['xla_flags']!r}")
  return result


if __name__ == "__main__":
  sys.exit(0 if main()["outcome"] == "ok" else 1)
