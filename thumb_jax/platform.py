"""Platform workarounds, all in one place: XLA:CPU scheduling, BLAS threads, PRNG choice.

The one note (README, "Platform notes", has the measurements):

* XLA:CPU since jaxlib 0.10 runs a batched LAPACK call (cholesky, eigh, triangular_solve,
  qr under `vmap`) as a `ParallelBatchMap` on XLA's intra-op thread pool and blocks the
  calling pool thread until its batch is done. When as many such calls run at once as the
  pool has threads (2 on a 2-core machine; side by side in one program, in a while-loop
  body, or in two programs in flight), every thread waits on work that no thread is free
  to run: the process hangs at 0% CPU (`experiments/stress_lapack.py` reproduces it).
  When `thumb_jax` is imported, `sequential_cpu_decompositions()` replaces the batching
  rules of those primitives, on the CPU backend only, by a `lax.map` over the batch, so no
  call is ever batched; `configure_xla_cpu()` also turns off XLA's concurrency-optimized
  scheduler and CPU async dispatch, which covers decompositions called on stacked arrays
  directly (not through vmap). Both must run before the first jax computation.
* OpenBLAS (behind jaxlib's CPU LAPACK kernels) starts as many threads as cores and
  competes with XLA's own pool: a 512 x 512 `eigh` took 3.5 s with 2 OpenBLAS threads and
  0.06 s with 1 on the 2-core machine. `single_threaded_blas()` limits it around a block.
* XLA:CPU compiles threefry's bit generation slowly for large parameter trees; the image
  configs default to the "rbg" PRNG (`PRNG_IMPL`) for the ResNet's keys.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings

from threadpoolctl import ThreadpoolController

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
  """Adds `XLA_CPU_FLAGS` to XLA_FLAGS and turns off CPU async dispatch, unless the user chose.

  Must run before the first jax computation (XLA reads XLA_FLAGS once). Harmless on GPU
  (both concern the CPU backend only). The user's own XLA_FLAGS value for a flag, or
  JAX_CPU_ENABLE_ASYNC_DISPATCH=true, wins.

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


SEQUENTIAL_PRIMITIVES = ("cholesky_p", "eigh_p", "triangular_solve_p", "geqrf_p",
                          "householder_product_p", "lu_p", "svd_p", "qr_p")


def _sequential_rule(prim, original):
  """A batching rule that maps `prim` over the batch with `lax.map` on CPU (else `original`)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  def rule(axis_data, vals, dims, **params):
    if jax.default_backend() != "cpu":
      return original(axis_data, vals, dims, **params)
    mapped = [i for i, d in enumerate(dims) if d is not None]
    if not mapped:
      out = prim.bind(*vals, **params)
      return (out, [None] * len(out)) if prim.multiple_results else (out, None)
    moved = [jnp.moveaxis(v, d, 0) if d is not None else v for v, d in zip(vals, dims)]

    def one(xs):
      full = list(moved)
      for i, x in zip(mapped, xs):
        full[i] = x
      return prim.bind(*full, **params)

    out = jax.lax.map(one, [moved[i] for i in mapped])
    return (out, [0] * len(out)) if prim.multiple_results else (out, 0)

  return rule


def sequential_cpu_decompositions() -> None:
  """Batches of CPU decompositions run one matrix at a time (a `lax.map`), not in parallel.

  jaxlib 0.10 runs a batched decomposition (vmap of cholesky, eigh, triangular_solve, qr,
  lu, svd) as a parallel map that blocks an XLA pool thread; two of them side by side (in
  one program, a while-loop body, or two programs) can take every pool thread and hang.
  Replacing their batching rules, on the CPU backend only, by a `lax.map` over the batch
  removes the parallel map altogether (each call sees one matrix). Idempotent.
  """
  from jax._src.interpreters import batching  # pylint: disable=g-import-not-at-top
  from jax._src.lax import linalg  # pylint: disable=g-import-not-at-top

  for name in SEQUENTIAL_PRIMITIVES:
    prim = getattr(linalg, name, None)
    original = batching.fancy_primitive_batchers.get(prim) if prim is not None else None
    if original is None or getattr(original, "_thumb_jax_sequential", False):
      continue
    rule = _sequential_rule(prim, original)
    rule._thumb_jax_sequential = True
    rule.original = original
    batching.fancy_primitive_batchers[prim] = rule


def single_threaded_blas():
  """A context limiting BLAS libraries (OpenBLAS behind CPU LAPACK) to one thread."""
  return _blas_controller(len(sys.modules)).limit(limits=1, user_api="blas")


@functools.lru_cache(maxsize=1)
def _blas_controller(num_modules: int) -> ThreadpoolController:
  # Finding the loaded libraries reads /proc/self/maps (~3 ms, as long as a whole plug-in
  # recommendation); done again only when new modules (which may load a BLAS) were imported.
  del num_modules
  return ThreadpoolController()
