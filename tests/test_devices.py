"""Sharded sweeps equal their one-device results, on virtual devices and across processes.

Each check runs in a fresh Python process: the device count (XLA_FLAGS) and
`jax.distributed` are fixed when jax starts, and the rest of the suite keeps one device.
"""

import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from multidevice import four_device_row

_SWEEP = textwrap.dedent("""
    import sys
    import thumb_jax
    from thumb_jax import devices
    if len(sys.argv) > 1:
      devices.initialize(f"localhost:{sys.argv[1]}", int(sys.argv[2]), int(sys.argv[3]))
    import jax, jax.numpy as jnp, numpy as np
    from thumb_jax import lls

    x = np.asarray(jax.random.normal(jax.random.key(0), (7, 90, 12)))   # 7 seeds: padded
    y = np.where(np.arange(90) % 4 == 0, 1.0, -1.0).astype(np.float32)
    w = np.geomspace(1.0, 50.0, 5).astype(np.float32)
    fit = lambda x, y, w: lls.fit_sweep(x, y, w, ridge=0.1)
    sweep = devices.sharded_vmap(fit, in_axes=(0, None, None))
    got = sweep(x, y, w)
    again = sweep(x + 1.0, y, w)                                         # new data, same shapes
    want = jax.jit(jax.vmap(fit, in_axes=(0, None, None)))(x, y, w)
    err = float(np.max(np.abs(np.asarray(got.w) - np.asarray(want.w))))
    placed, _ = devices.shard_batch(x)
    print("RESULT", jax.process_index(), jax.device_count(), jax.process_count(),
          got.w.shape[0], err, len(placed.sharding.device_set), sweep.run._cache_size(),
          float(np.asarray(got.w).sum()))
""")


def _run(args=(), devices: int | None = None) -> list[list[str]]:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  if devices:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  done = subprocess.run([sys.executable, "-c", _SWEEP, *args], env=env, capture_output=True,
                        text=True, timeout=180, check=True)
  return [line.split()[1:] for line in done.stdout.splitlines() if line.startswith("RESULT")]


@pytest.mark.parametrize("count", [4, 8])
def test_sharded_sweep_equals_one_device_sweep(count):
  (process, devs, procs, size, err, placed_on, traces, _), = _run(devices=count)
  assert (int(devs), int(procs), int(size)) == (count, 1, 7)   # padding dropped, not truncated
  assert int(placed_on) == count                               # the batch axis is really split
  assert float(err) < 1e-5
  assert int(traces) == 1                                      # new data: no recompilation


def test_two_processes_give_the_one_process_answer():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  procs = [subprocess.Popen([sys.executable, "-c", _SWEEP, str(port), "2", str(i)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=180)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs)
  rows = [line.split()[1:] for out in outs for line in out.splitlines()
          if line.startswith("RESULT")]
  (single,) = _run()
  assert sorted(int(r[0]) for r in rows) == [0, 1]
  for row in rows:
    assert (int(row[1]), int(row[2]), int(row[3])) == (2, 2, 7)
    np.testing.assert_allclose(float(row[-1]), float(single[-1]), rtol=1e-5, atol=1e-5)


_TRAIN_STEP = textwrap.dedent("""
    import thumb_jax
    import jax, jax.numpy as jnp, numpy as np
    from thumb_jax import devices
    from thumb_jax.images import configs, input_pipeline, train

    config = configs.tiny()
    model = train.create_model(config)
    # threefry keys: their random bits do not depend on how the computation is sharded.
    key = jax.random.key(0, impl="threefry2x32")
    state = train.create_train_state(config, model, key=key, steps_per_epoch=4)
    rng = np.random.default_rng(0)
    batch = train.Batch(rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8),
                        np.where(np.arange(8) % 3 == 0, 1, -1).astype(np.int32))
    step, _ = train.jitted_steps(**input_pipeline.augmentation_for(config))
    sharded, m1 = step(state, devices.global_batch(batch), jax.random.key(1, impl="threefry2x32"))
    one = jax.devices()[0]
    single, m2 = step(jax.device_put(state, one), jax.device_put(batch, one),
                      jax.device_put(jax.random.key(1, impl="threefry2x32"), one))
    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
               for a, b in zip(jax.tree.leaves(sharded.params), jax.tree.leaves(single.params)))
    leaf = jax.tree.leaves(state.params)[0]
    print("RESULT", jax.device_count(), len(leaf.sharding.device_set), diff,
          abs(float(m1.loss) - float(m2.loss)))
""")


def test_sharded_train_step_equals_one_device_step():
  """Data parallel: the global batch split over 4 devices, the state replicated."""
  row = four_device_row(_TRAIN_STEP)
  assert int(row[0]) == 4 and int(row[1]) == 4        # 4 devices, parameters on all of them
  assert float(row[2]) < 1e-5 and float(row[3]) < 1e-5


_RETRAIN = textwrap.dedent("""
    import thumb_jax
    import jax, numpy as np
    from thumb_jax import retrain

    rng = np.random.default_rng(0)
    def data(shift):
      y = np.where(np.arange(120) % 6 == 0, 1.0, -1.0)
      x = rng.normal(size=(120, 10)) + shift * y[:, None]
      return x[:80], y[:80], x[80:], y[80:]
    kw = dict(sizes=[24, 80], weights=np.geomspace(0.5, 50, 4), num_repeats=5, ridge=1e-2)
    first = data(0.6)
    one = retrain.run(*first, shard=False, **kw)
    many = retrain.run(*first, **kw)                         # 4 devices: sharded by default
    retrain.run(*data(0.9), **kw)                            # new data, same shapes
    leaves = lambda r: [np.asarray(a, np.float64) for a in jax.tree.leaves(r)]
    # NaN where a method makes no prediction, in both; compared as equal.
    diff = max(float(np.max(np.abs(np.nan_to_num(a - b)), initial=0.0))
               + float(np.any(np.isnan(a) != np.isnan(b)))
               for a, b in zip(leaves(one), leaves(many)))
    shapes = all(a.shape == b.shape for a, b in zip(leaves(one), leaves(many)))
    print("RESULT", jax.device_count(), diff, shapes, retrain._run_sharded_jit._cache_size(),
          many.errors.err_plus.shape[1])
""")


def test_sharded_retraining_sweep_equals_one_device_sweep():
  """retrain.run with the repeats split over 4 devices (5 repeats: padded, padding dropped)."""
  row = four_device_row(_RETRAIN)
  assert int(row[0]) == 4
  assert float(row[1]) < 1e-4 and row[2] == "True"
  assert int(row[3]) == 1                            # new data: no recompilation
  assert int(row[4]) == 5
