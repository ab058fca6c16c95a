"""Sharded theory grids and recommendation sweeps equal their one-device results on 4
virtual devices: the isotropic theory grid, the general theory's points, the
recommendation's bootstrap and recommend_validate's repeats (split from test_devices.py
so the two files run on different pytest workers).
"""

import textwrap

from multidevice import four_device_row

_THEORY_POINTS = textwrap.dedent("""
    import thumb_jax
    import jax, jax.numpy as jnp, numpy as np
    from experiments import anisotropic_theory as at
    from thumb_jax import anisotropic as an

    d = 16
    eig = np.geomspace(1.0, 0.05, d)
    mix = an.CovarianceMixture(pi_plus=0.1, mean_plus=np.full(d, 0.4), mean_minus=-np.full(d, 0.2),
                               cov_plus=np.diag(eig), cov_minus=np.diag(eig[::-1]))
    n = np.repeat([40.0, 80.0, 160.0], 7)                      # 21 points: padded on 4 devices
    w = np.tile(np.geomspace(1.0, 30.0, 7), 3)
    r = np.full(21, 1e-2)
    got = at.general_errors(mix, n, w, r)                      # sharded (4 devices)
    form = jax.jit(an.prepare)(at.as_jnp(mix))
    want = at.fast_points(form, *(jnp.asarray(v, jnp.float32) for v in (n, w, r)))
    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in
               zip((got.err_plus, got.err_minus), (want.err_plus, want.err_minus)))
    at.general_errors(mix, n * 2, w, r)                        # new points, same shapes
    print("RESULT", jax.device_count(), diff, got.err_plus.shape[0],
          at.sharded_fast_points().run._cache_size())
""")


def test_sharded_theory_points_equal_one_device_points():
  """The general theory's fast points sharded over 4 devices (21 points: padded)."""
  row = four_device_row(_THEORY_POINTS)
  assert int(row[0]) == 4 and int(row[2]) == 21
  assert float(row[1]) < 1e-5
  assert int(row[3]) == 1                            # new points: no recompilation


# Shared by the scripts below: the largest difference between two trees of arrays, NaN where
# both are NaN counting as equal (a NaN in one only counts 1).
_DIFF = textwrap.dedent("""
    def max_diff(a, b):
      pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b))
      return max(float(np.max(np.abs(np.nan_to_num(np.asarray(u, float) - np.asarray(v, float))),
                              initial=0.0))
                 + float(np.any(np.isnan(np.asarray(u, float)) != np.isnan(np.asarray(v, float))))
                 for u, v in pairs)

    placed_on = []                                   # devices holding each sharded batch
    def spy(tree, **kw):
      out = spy.wrapped(tree, **kw)
      placed_on.append(len(jax.tree.leaves(out[0])[0].sharding.device_set))
      return out
    spy.wrapped = devices.shard_batch
""")

_BOOTSTRAP = textwrap.dedent("""
    import thumb_jax
    from unittest import mock
    import jax, numpy as np
    from thumb_jax import devices, recommend
""") + _DIFF + textwrap.dedent("""
    rng = np.random.default_rng(0)
    y = np.where(np.arange(90) % 5 == 0, 1, 0)
    x = rng.normal(size=(90, 12)) + 0.8 * y[:, None]
    fields = ("bootstrap_weights", "bootstrap_ridges", "bootstrap_downsample",
              "bootstrap_values")
    get = lambda r: [getattr(r, f) for f in fields] + [r.interval, r.ridge_interval]
    diffs, sizes, defined = [], [], []
    for model in ("isotropic", "general"):
      # B = 6 on 4 devices: padded to 8, each device batches its 2 (one device: 6 in 4s).
      kw = dict(bootstrap=6, batch_size=4, ridge="auto", model=model)
      with mock.patch.object(devices, "shard_batch", spy):
        many = recommend.recommend_weight(x, y, **kw)                 # sharded
        recommend.recommend_weight(x + 0.1 * rng.normal(size=x.shape), y, **kw)  # new data
      with mock.patch.object(jax, "device_count", lambda: 1):
        one = recommend.recommend_weight(x, y, **kw)                  # the one-device path
      diffs.append(max_diff(get(one), get(many)))
      sizes.append(many.bootstrap_weights.shape[0])
      defined.append(int(np.sum(np.isfinite(many.bootstrap_weights))))
    print("RESULT", jax.device_count(), max(diffs), min(sizes), min(placed_on),
          recommend._bootstrap_on_mesh()._cache_size(), min(defined))
""")


def test_sharded_bootstrap_equals_one_device_bootstrap():
  """recommend_weight's B = 6 resamples split over 4 devices (padded, padding dropped), for
  the isotropic and the general model."""
  row = four_device_row(_BOOTSTRAP)
  assert int(row[0]) == 4 and int(row[2]) == 6
  assert float(row[1]) < 1e-5
  assert int(row[3]) == 4                            # the keys are split over all 4 devices
  assert int(row[4]) == 2                            # one compilation per model, none for new data
  assert int(row[5]) == 6                            # every resample defined (a real check)


_RECOMMEND_VALIDATE = textwrap.dedent("""
    import thumb_jax
    from unittest import mock
    import jax, numpy as np
    from experiments import recommend_validate as rv
    from thumb_jax import devices
""") + _DIFF + textwrap.dedent("""
    cfg = rv.Config(d=8, deltas=(0.25, 1.0), num_seeds=6, grid_size=8, folds=3)   # 6 repeats
    case = rv.gaussian_case(cfg, "isotropic")
    keys, per_seed = rv.retraining_sets(case, cfg, cfg.pi_plus)
    with mock.patch.object(devices, "shard_batch", spy):
      many = rv.sweep(case, cfg, keys, per_seed)                      # repeats sharded
    with mock.patch.object(jax, "device_count", lambda: 1):
      one = rv.sweep(case, cfg, keys, per_seed)                       # the one-device path
    # The helper compiles once for new repeats of the same shapes.
    draw = lambda k, s: jax.lax.map(lambda key: s * jax.random.normal(key, (3,)), k)
    fn = rv.sharded_repeats(draw, batched=(True, False))
    fn(jax.random.split(jax.random.key(0), 6), 2.0)
    fn(jax.random.split(jax.random.key(1), 6), 3.0)
    print("RESULT", jax.device_count(), max_diff(one, many), many.weights.shape[0],
          min(placed_on), fn.jitted._cache_size())
""")


def test_sharded_recommend_validate_equals_one_device():
  """recommend_validate's jitted sweep with its 6 repeats split over 4 devices."""
  row = four_device_row(_RECOMMEND_VALIDATE)
  assert int(row[0]) == 4 and int(row[2]) == 6
  assert float(row[1]) < 1e-5
  assert int(row[3]) == 4                            # the repeats are split over all 4 devices
  assert int(row[4]) == 1                            # new repeats: no recompilation


_ISOTROPIC_GRID = textwrap.dedent("""
    import thumb_jax
    import jax, numpy as np
    from thumb_jax import GaussianMixture, devices, theory

    mix = GaussianMixture.symmetric(pi_plus=0.1, mean_norm=2.0)
    deltas = np.linspace(0.1, 0.9, 7)[:, None]                 # 7 x 5 = 35 points: padded
    weights = np.geomspace(1.0, 100.0, 5)[None, :]
    grid = devices.sharded_grid(theory.class_errors)
    got = grid(mix, deltas, weights)                           # sharded (4 devices)
    want = jax.jit(theory.class_errors)(mix, deltas, weights)   # the one-device path
    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
               for a, b in zip(got, want))
    grid(mix, deltas * 1.05, weights)                          # new points, same shapes
    print("RESULT", jax.device_count(), diff, "x".join(map(str, got.err_plus.shape)),
          sum(f.run._cache_size() for f in grid.sharded.values()))
""")


def test_sharded_isotropic_theory_grid_equals_one_device_grid():
  """The isotropic theory on a 7 x 5 (delta, weight) grid with its 35 points over 4 devices."""
  row = four_device_row(_ISOTROPIC_GRID)
  assert int(row[0]) == 4 and row[2] == "7x5"
  assert float(row[1]) < 1e-6
  assert int(row[3]) == 1                            # new points: no recompilation
