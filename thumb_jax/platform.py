"""Platform workarounds, all in one place: XLA:CPU scheduling, BLAS threads, PRNG choice.

The one note (README, "Platform notes", has the measurements):

* XLA:CPU since jaxlib 0.10 runs a batched LAPACK call (cholesky, eigh, triangular_solve,
  qr under `vmap`) as a `ParallelBatchMap` on XLA's intra-op thread pool and blocks the
  calling pool thread until its batch is done. When the concurrency-optimized scheduler
  lets as many such calls run at once as the pool has threads (2 on a 2-core machine),
  every thread waits on work that no thread is free to run: the process hangs at 0% CPU
  (`experiments/stress_lapack.py` reproduces it within seconds on jaxlib 0.10.2).
  `configure_xla_cpu()` turns that scheduler off (`--xla_cpu_enable_concurrency_optimized_
  scheduler=false`) before the backend starts; the batched calls then run one after
  another, each still parallel inside. Two *programs* in flight at once can meet the same
  way (seen twice in a test that dispatched a second jitted program while the first still
  ran), so it also turns off CPU async dispatch (`jax_cpu_enable_async_dispatch`): a CPU
  computation finishes before the call returns. It is called when `thumb_jax` is imported.
* OpenBLAS (behind jaxlib's CPU LAPACK kernels) starts as many threads as cores and
  competes with XLA's own pool: a 512 x 512 `eigh` took 3.5 s with 2 OpenBLAS threads and
  0.06 s with 1 on the 2-core machine. `single_threaded_blas()` limits it around a block.
* XLA:CPU compiles threefry's bit generation slowly for large parameter trees; the image
  configs default to the "rbg" PRNG (`PRNG_IMPL`) for the ResNet's keys.
"""

from __future__ import annotations

import os
import sys
import warnings

from threadpoolctl import threadpool_limits

XLA_CPU_FLAGS = ("--xla_cpu_enable_concurrency_optimized_scheduler=false",)
ASYNC_DISPATCH_ENV = "JAX_CPU_ENABLE_ASYNC_DISPATCH"  # set it (true/false) to choose yourself
PRNG_IMPL = "rbg"


def _backend_started() -> bool:
  """True once jax has created a backend (XLA_FLAGS are read only then)."""
  if "jax" not in sys.modules:
    return False
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  except ImportError:  # pragma: no cover - layout of a future jax
    return False
  return bool(getattr(xla_bridge, "_backends", {}))


def configure_xla_cpu() -> bool:
  """Adds `XLA_CPU_FLAGS` to XLA_FLAGS unless the user already chose a value for them.

  Must run before the first jax computation (XLA reads XLA_FLAGS once). Harmless on GPU
  (the flags only concern the CPU backend).

  Returns:
    True if the flags are in effect for this process.
  """
  if not _backend_started():
    import jax  # pylint: disable=g-import-not-at-top

    chosen = os.environ.get(ASYNC_DISPATCH_ENV, "false").strip().lower()  # the user's wins
    jax.config.update("jax_cpu_enable_async_dispatch", chosen in ("1", "true", "yes"))
  current = os.environ.get("XLA_FLAGS", "")
  missing = [f for f in XLA_CPU_FLAGS if f.split("=")[0] not in current]
  if not missing:
    return all(f in current for f in XLA_CPU_FLAGS)
  if _backend_started():
    warnings.warn("thumb_jax was imported after jax started its backend, so XLA_FLAGS "
                  f"{' '.join(missing)} could not be set; batched CPU decompositions may hang "
                  "on jaxlib >= 0.10. Import thumb_jax first, or set XLA_FLAGS yourself.",
                  RuntimeWarning, stacklevel=3)
    return False
  os.environ["XLA_FLAGS"] = " ".join([current, *missing]).strip()
  return True


def single_threaded_blas():
  """A context limiting BLAS libraries (OpenBLAS behind CPU LAPACK) to one thread."""
  return threadpool_limits(1, user_api="blas")
