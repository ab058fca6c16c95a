"""Devices: one mesh over every device of every process, and batch axes sharded over it.

A sweep's leading batch axis (seeds, retraining sets, grid points, bootstrap draws) is the
one axis that is split across devices; the math inside each batch element is unchanged.
`sharded_vmap(fn)` is `jax.jit(jax.vmap(fn))` with that axis padded to a multiple of the
device count (by repeating its last element, so padding never creates invalid inputs),
placed with `NamedSharding(mesh, P("batch"))`, and the padding dropped from the result.
Results come back replicated, so every process holds the whole answer. On one device
this is exactly `jit(vmap(fn))`.

Multi-host: call `initialize()` first in every process (it reads the standard
`JAX_COORDINATOR_ADDRESS` / `JAX_NUM_PROCESSES` / `JAX_PROCESS_ID` environment variables
or takes them as arguments); every process then builds the same inputs from the same
seed, and each device reads its own slice of them (`jax.make_array_from_callback`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

BATCH = "batch"


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Starts `jax.distributed` when several processes are asked for (arguments or env).

  On CPU the cross-process collectives use gloo. Returns True if distributed mode is on.
  """
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  if num_processes is None and "JAX_NUM_PROCESSES" in os.environ:
    num_processes = int(os.environ["JAX_NUM_PROCESSES"])
  if process_id is None and "JAX_PROCESS_ID" in os.environ:
    process_id = int(os.environ["JAX_PROCESS_ID"])
  if coordinator_address is None or (num_processes or 1) <= 1:
    return False
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  return True


def mesh() -> Mesh:
  """A 1-D mesh named "batch" over all devices of all processes."""
  return Mesh(np.asarray(jax.devices()), (BATCH,))


def describe() -> dict:
  """What a results.json records about where it ran."""
  return {"devices": jax.device_count(), "processes": jax.process_count(),
          "backend": jax.default_backend()}


def padded_size(size: int, multiple: int) -> int:
  """The smallest multiple of `multiple` that is >= size (and >= multiple)."""
  return max(multiple, -(-size // multiple) * multiple)


def _pad(x: np.ndarray, size: int) -> np.ndarray:
  """Pads axis 0 to `size` by repeating the last row."""
  extra = size - x.shape[0]
  return x if extra == 0 else np.concatenate([x, np.repeat(x[-1:], extra, axis=0)])


def _place(x, size: int, sharding: NamedSharding) -> jax.Array:
  """A global array of x padded to `size` on axis 0, each device holding its slice.

  In one process the data stays on device (`device_put`); across processes every process
  holds the same host data and each device reads its slice of it.
  """
  if jax.process_count() == 1:
    x = jnp.asarray(x)
    if size > x.shape[0]:
      x = jnp.concatenate([x, jnp.repeat(x[-1:], size - x.shape[0], axis=0)])
    return jax.device_put(x, sharding)
  if _is_key(x):  # typed PRNG keys travel as their raw data
    return jax.random.wrap_key_data(_place(jax.random.key_data(x), size, sharding),
                                    impl=jax.random.key_impl(x))
  host = _pad(np.asarray(x), size)
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _is_key(x) -> bool:
  return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _replicate(x, sharding: NamedSharding) -> jax.Array:
  if jax.process_count() == 1:
    return jax.device_put(jnp.asarray(x), sharding)
  if _is_key(x):
    return jax.random.wrap_key_data(_replicate(jax.random.key_data(x), sharding),
                                    impl=jax.random.key_impl(x))
  host = np.asarray(x)
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def shard_batch(tree, *, mesh_: Mesh | None = None) -> tuple[Any, int]:
  """Places a tree of arrays with leading size B on the mesh, padded to a device multiple.

  Returns:
    (the placed tree, B): leaves [B', ...] with B' = padded_size(B, devices), sharded on
    axis 0 over "batch".
  """
  the_mesh = mesh_ if mesh_ is not None else mesh()
  size = tree_size(tree)
  padded = padded_size(size, the_mesh.devices.size)
  sharding = NamedSharding(the_mesh, P(BATCH))
  return jax.tree_util.tree_map(lambda x: _place(x, padded, sharding), tree), size


def sharded_vmap(fn: Callable, *, in_axes: Any = 0, mesh_: Mesh | None = None,
                 static_argnames: tuple[str, ...] = ()) -> Callable:
  """`jit(vmap(fn, in_axes))` with the batch axis sharded over all devices (`sharded_map`
  of the vmapped fn)."""
  return sharded_map(fn, in_axes=in_axes, mesh_=mesh_, static_argnames=static_argnames,
                     vmap=True)


def sharded_map(fn: Callable, *, in_axes: Any = 0, mesh_: Mesh | None = None,
                static_argnames: tuple[str, ...] = (), vmap: bool = False) -> Callable:
  """`jit(fn)` for an fn that maps over the leading axis of its batched arguments itself
  (a lax.map of independent items), with that axis sharded over all devices: each device
  runs fn on its own slice. With vmap=True fn is one item and is vmapped per device.

  Args:
    fn: a pure function of arrays (positional) and static keyword arguments.
    in_axes: per positional argument, 0 (batched on its leading axis) or None (shared,
      replicated on every device); a single 0 batches every argument.
    mesh_: the mesh (default: `mesh()`).
    static_argnames: keyword arguments passed to `fn` unchanged (hashable).
    vmap: vmap fn over the batch on each device (False: fn takes the device's batch).

  Returns:
    A callable with fn's positional arguments (and static keywords) whose outputs have
    the batch axis in front, unpadded, as NumPy-convertible replicated jax arrays. The
    batch is padded to a device multiple by repeating its last item, and the padding
    dropped.

  Raises:
    ValueError: batched arguments disagree on the batch size, or it is 0.
  """
  the_mesh = mesh_ if mesh_ is not None else mesh()
  replicated = NamedSharding(the_mesh, P())

  @functools.partial(jax.jit, static_argnames=static_argnames, out_shardings=replicated)
  def run(*args, **static):
    # shard_map: each device vmaps over its own slice of the batch (the math per element
    # is untouched, and loops inside fn never run over the sharded axis).
    spec = tuple(P(BATCH) if ax == 0 else P() for ax in axes(len(args)))
    local = functools.partial(fn, **static)
    if vmap:
      local = jax.vmap(local, in_axes=axes(len(args)))
    # check_vma=False: every output is split over the batch axis anyway, and the check
    # rejects loops whose initial carry is a constant while the body's values vary per
    # device (the fixed points of `anisotropic.class_errors`).
    return jax.shard_map(local, mesh=the_mesh, in_specs=spec, out_specs=P(BATCH),
                         check_vma=False)(*args)

  def axes(count):
    return (in_axes,) * count if isinstance(in_axes, int) or in_axes is None else tuple(in_axes)

  def call(*args, **static):
    batched = [a for a, ax in zip(args, axes(len(args))) if ax == 0]
    sizes = {np.shape(leaf)[0] for a in batched for leaf in jax.tree_util.tree_leaves(a)}
    if len(sizes) != 1 or 0 in sizes:
      raise ValueError(f"sharded_map: batched arguments need one common, non-zero leading "
                       f"size, got {sorted(sizes)}")
    size = sizes.pop()
    placed = [shard_batch(a, mesh_=the_mesh)[0] if ax == 0
              else jax.tree_util.tree_map(lambda x: _replicate(x, replicated), a)
              for a, ax in zip(args, axes(len(args)))]
    out = run(*placed, **static)
    return jax.tree_util.tree_map(lambda x: x[:size], out)

  call.run = run                          # the jitted function
  call._cache_size = run._cache_size      # compiled variants so far (tests: no retracing)
  return call


def sharded_grid(fn: Callable) -> Callable:
  """`jit(fn)` for an elementwise fn(params, *arrays) over broadcastable arrays (a theory
  grid), with the points sharded over all devices when there are several.

  With one device a call is exactly `jax.jit(fn)`'s. Otherwise the arrays are broadcast to
  their common shape S and flattened, the points split over the mesh (`sharded_vmap`,
  padded by repetition, padding dropped), and every output reshaped to S + its own
  trailing shape. `params` (e.g. a GaussianMixture of scalars) is replicated. The device
  count is read at the first call, not here, so module-level wrappers do not start the
  backend before `initialize()`.
  """
  jitted = jax.jit(fn)
  sharded: dict[int, Callable] = {}

  def call(params, *arrays):
    if jax.device_count() == 1:
      return jitted(params, *arrays)
    shape = np.broadcast_shapes(*(np.shape(a) for a in arrays))
    flat = [np.broadcast_to(np.asarray(a), shape).reshape(-1) for a in arrays]
    if len(arrays) not in sharded:
      sharded[len(arrays)] = sharded_vmap(fn, in_axes=(None,) + (0,) * len(arrays))
    out = sharded[len(arrays)](params, *flat)
    return jax.tree_util.tree_map(lambda v: v.reshape(shape + v.shape[1:]), out)

  call.jitted = jitted        # the one-device function
  call.sharded = sharded      # {number of arrays: its sharded_vmap} (tests: no retracing)
  return call


def replicate(tree, *, mesh_: Mesh | None = None):
  """Every leaf on every device of the mesh (parameters, optimizer state)."""
  sharding = NamedSharding(mesh_ if mesh_ is not None else mesh(), P())
  return jax.tree_util.tree_map(lambda x: _replicate(x, sharding), tree)


def check_divisible(name: str, size: int) -> None:
  """A global batch must split evenly over the devices (training is never padded)."""
  if size % jax.device_count():
    raise ValueError(f"{name}: {size} must be a multiple of the {jax.device_count()} devices "
                     f"({jax.process_count()} processes) it is split over")


def process_rows(size: int) -> slice:
  """The rows of a global batch of `size` that this process reads and feeds."""
  per = size // jax.process_count()
  return slice(jax.process_index() * per, (jax.process_index() + 1) * per)


def global_batch(local_tree, *, mesh_: Mesh | None = None):
  """A global batch sharded on axis 0 from each process's rows (`process_rows`).

  In one process this is `device_put` with the batch sharding; across processes each
  process passes only its own rows (`jax.make_array_from_process_local_data`).
  """
  sharding = NamedSharding(mesh_ if mesh_ is not None else mesh(), P(BATCH))
  if jax.process_count() == 1:
    return jax.device_put(local_tree, sharding)
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_tree)


def is_main_process() -> bool:
  """Process 0 writes checkpoints' companions, caches and results; others only compute."""
  return jax.process_index() == 0


def tree_size(tree) -> int:
  """The common leading size of a tree of arrays."""
  return int(jnp.shape(jax.tree_util.tree_leaves(tree)[0])[0])
