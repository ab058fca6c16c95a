"""The per-layer profile times the model's own ops, and its quick run writes the schema."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from experiments import profile_layers
from thumb_jax.images import cpu_ops, resnet


def _tiny_calls():
  model = resnet.ResNetTiny()
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 16, 16, 3)), jnp.float32)
  variables = profile_layers.random_variables(model, x.shape, rng=rng)
  return variables, profile_layers.record_calls(model, variables, x, abstract=False)


def _kernel(variables, path):
  node = variables["params"]
  for name in path.split("/"):
    node = node[name]
  return node["kernel"]


def test_timed_conv_is_the_models_conv():
  variables, calls = _tiny_calls()
  cfg = profile_layers.quick(profile_layers.config())
  groups = profile_layers.group_calls(calls)
  conv_groups = [(k, m) for k, m in groups.items() if k[0] == "conv"]
  assert sum(len(m) for _, m in conv_groups) == 6  # stem, 2 in layer1, 2 + shortcut in layer2
  lowerings = set()
  for i, (key, members) in enumerate(conv_groups):
    case = profile_layers.conv_case(members, stem=key[-1], cfg=cfg,
                                    rng=np.random.default_rng(i))
    spatial = members[0].x.shape[1] * members[0].x.shape[2]
    strided = members[0].module.strides not in (None, 1, (1, 1))
    small = spatial <= cpu_ops.SMALL_SPATIAL or (strided and spatial <= cpu_ops.SMALL_STRIDED)
    small = jax.default_backend() == "cpu" and small and not key[-1]
    assert case.info["lowering"] == ("im2col" if small else "lax.conv")
    lowerings.add(case.info["lowering"])
    fwd, _ = case.jax["fwd"]
    for call in members:
      kernel = _kernel(variables, call.path)
      np.testing.assert_allclose(jax.jit(fwd)(call.x, kernel), call.y, rtol=1e-5, atol=1e-5)
    # The timed backward is the VJP of that op: equal to the plain lax.conv's VJP.
    bwd, (x, kernel, g) = case.jax["bwd"]
    (ph, pw), strides = case.info["padding"], tuple(case.info["strides"])
    plain = lambda x, k: lax.conv_general_dilated(
        x, k, strides, ((ph, ph), (pw, pw)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    want = jax.jit(lambda x, k, g: jax.vjp(plain, x, k)[1](g))(x, kernel, g)
    for got, ref in zip(jax.jit(bwd)(x, kernel, g), want):
      np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    if i == 0:  # the matmul reference has the conv's FLOPs: fwd [M, K] @ [K, N]
      matmuls = [v for v in case.variants if v.framework == "matmul"]
      assert [v.phase for v in matmuls] == ["fwd", "bwd_input", "bwd_kernel"]
      b, ho, wo, cout = case.info["output_shape"]
      kh, kw, cin, _ = case.info["kernel_shape"]
      assert matmuls[0].fn().shape == (b * ho * wo, cout)
      assert case.flops["fwd"] == 2 * b * ho * wo * kh * kw * cin * cout
  if jax.default_backend() == "cpu":
    assert lowerings == {"lax.conv", "im2col"}


def test_quick_run_writes_rows(tmp_path):
  pytest.importorskip("torch")
  result = profile_layers.main(["--out", str(tmp_path), "--quick", "--set", "repeats=1",
                                "--set", "warmup=0", "--set", "split_backward=false",
                                "--set", "matmul=false", "--set", "network=false"])
  saved = json.loads((tmp_path / "results.json").read_text())
  assert set(saved) >= {"config", "platform", "results"}
  rows = saved["results"]["rows"]
  assert len(rows) == len(result["rows"])
  assert {r["kind"] for r in rows} == {"conv", "bn_relu", "maxpool", "head"}
  convs = [r for r in rows if r["kind"] == "conv"]
  assert sum(r["count"] for r in convs) == 6
  for r in convs:
    for col in ("jax_fwd_ms", "jax_bwd_ms", "torch_fwd_ms", "torch_bwd_ms", "torch_cl_bwd_ms",
                "jax_fwd_gflops", "jax_step_ms", "torch_step_ms", "jax_speed_vs_torch"):
      assert r[col] > 0, (r["name"], col)
    assert isinstance(r["slow"], bool)
    assert r["max_abs_diff_vs_torch"] < 1e-4  # torch timed the same convolution
  summary = saved["results"]["summary"]["16px_b4"]
  for fw in ("jax", "torch"):
    assert summary[fw]["ops_sum_ms"] == pytest.approx(
        sum(r[f"{fw}_step_ms"] for r in rows if f"{fw}_step_ms" in r))
  header = (tmp_path / "layers.csv").read_text().splitlines()[0].split(",")
  assert {"name", "count", "jax_step_ms", "torch_step_ms", "lowering"} <= set(header)


def test_bench_train_interleaves_and_reports_spread():
  from experiments import bench_train
  assert bench_train.parse_sizes("32x128,64x64") == [(32, 128), (64, 64)]
  with pytest.raises(ValueError, match="--sizes"):
    bench_train.parse_sizes("32")
  calls = []
  thunks = [lambda: calls.append("a") or 1.0, lambda: calls.append("b") or 2.0]
  a, b = bench_train.time_interleaved(thunks, steps=4, warmup=1, settle_s=0.0)
  assert calls == ["a", "b"] + ["a", "b", "b", "a", "a", "b", "b", "a"]
  for timing, value in ((a, 1.0), (b, 2.0)):
    assert len(timing["step_seconds"]) == 4 and timing["last_output"] == value
    assert (timing["min_step_seconds"] <= timing["q25_step_seconds"]
            <= timing["median_step_seconds"] <= timing["q75_step_seconds"]
            <= timing["max_step_seconds"])
  rows = [bench_train._row(name, "train", dict(a), {"device": "cpu"}, image_size=32,
                           batch_size=8, dtype="float32", steps=4)
          for name in ("jax", "torch 2.13")]
  ratio, = bench_train.ratios(rows)
  assert ratio["task"] == "train" and ratio["jax_over_torch"] == pytest.approx(1.0)


def test_torch_reference_is_the_same_network():
  torch = pytest.importorskip("torch")
  from experiments import bench_train
  for stage_sizes, filters, latent in (((3, 4, 6, 3), 64, 128), ((1, 1), 8, 16)):
    model = resnet.ResNet(stage_sizes=stage_sizes, num_filters=filters, latent_dim=latent)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                            jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
    flax_sizes = sorted(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes["params"]))
    net = bench_train.torch_resnet(torch, stage_sizes=stage_sizes, num_filters=filters,
                                   latent_dim=latent)
    assert sorted(p.numel() for p in net.parameters()) == flax_sizes
  assert net[:-2](torch.zeros(2, 3, 16, 16)).shape == (2, latent)  # the embedding
