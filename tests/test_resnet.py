"""ResNet shapes; the torchvision checkpoint conversion against a torch.nn.functional forward."""

import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from thumb_jax import platform
from thumb_jax.images import cpu_ops, resnet, torch_convert

STAGES34 = (3, 4, 6, 3)


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def tiny():
  """(model, variables, x [3, 16, 16, 3], its eval-mode (logits, embedding))."""
  model = resnet.ResNetTiny(latent_dim=16)
  x = np.random.default_rng(0).normal(size=(3, 16, 16, 3)).astype(np.float32)
  variables = jax.jit(lambda k, x: model.init(k, x, train=False))(
      jax.random.key(1, impl=platform.PRNG_IMPL), x)
  return model, variables, x, jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)


def test_tiny_shapes_train_and_eval(tiny):
  model, variables, x, (logits, emb) = tiny
  assert logits.shape == (3, 2) and emb.shape == (3, 16)
  assert logits.dtype == jnp.float32 and emb.dtype == jnp.float32
  assert np.all(np.asarray(emb) >= 0)  # after ReLU
  (logits_t, emb_t), updates = jax.jit(lambda v, x, k: model.apply(
      v, x, train=True, mutable=["batch_stats"], rngs={"dropout": k}))(
          variables, x, jax.random.key(2, impl=platform.PRNG_IMPL))
  assert logits_t.shape == (3, 2) and emb_t.shape == (3, 16)
  assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(
      variables["batch_stats"])
  # Stage 2 of the tiny model halves the size and has a 1x1 downsample shortcut.
  assert "downsample_conv" in variables["params"]["backbone"]["layer2_0"]
  assert "downsample_conv" not in variables["params"]["backbone"]["layer1_0"]


def test_tiny_bf16_outputs_float32(tiny):
  _, variables, x, (_, emb32) = tiny
  model = resnet.ResNetTiny(latent_dim=16, dtype=jnp.bfloat16)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0, impl=platform.PRNG_IMPL), x,
                                             train=False))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes["params"]))
  logits, emb = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  assert logits.dtype == jnp.float32 and emb.dtype == jnp.float32
  # bf16 compute tracks the float32 model to bf16 precision (8 bits of mantissa).
  np.testing.assert_allclose(emb, emb32, rtol=5e-2, atol=5e-2 * float(jnp.max(emb32)))


def test_bad_input_shape_raises():
  model = resnet.ResNetTiny()
  with pytest.raises(ValueError, match="x: expected shape"):
    model.init(jax.random.key(0, impl=platform.PRNG_IMPL), jnp.zeros((2, 16, 16)), train=False)


@pytest.mark.parametrize("latent_dim", [128, 512])
def test_resnet34_shapes_eval_shape(latent_dim):
  model = resnet.ResNet34(latent_dim=latent_dim)
  x = jax.ShapeDtypeStruct((4, 224, 224, 3), jnp.float32)
  key = jax.random.key(0, impl=platform.PRNG_IMPL)
  variables = jax.eval_shape(lambda x: model.init(key, x, train=False), x)
  logits, emb = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  assert logits.shape == (4, 2) and emb.shape == (4, latent_dim)
  # torchvision resnet34 has 21,797,672 parameters, of which fc has 512 * 1000 + 1000.
  assert _count(variables["params"]["backbone"]) == 21_797_672 - 513_000
  assert _count(variables["params"]) - _count(variables["params"]["backbone"]) == (
      512 * latent_dim + latent_dim + latent_dim * 2 + 2)
  stages = [k for k in variables["params"]["backbone"] if k.startswith("layer")]
  assert len(stages) == sum(STAGES34)


# ------------------------------------------------------------------ torchvision conversion

def _torchvision_resnet34_state_dict(torch, seed=0):
  """Random tensors under torchvision resnet34's state_dict names and shapes."""
  g = torch.Generator().manual_seed(seed)
  sd = {}

  def conv(name, cout, cin, k):
    sd[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=g) * (2.0 / (cin * k * k))**0.5

  def bn(name, c):
    sd[f"{name}.weight"] = 1.0 + 0.2 * torch.randn(c, generator=g)
    sd[f"{name}.bias"] = 0.2 * torch.randn(c, generator=g)
    sd[f"{name}.running_mean"] = 0.2 * torch.randn(c, generator=g)
    sd[f"{name}.running_var"] = 0.5 + torch.rand(c, generator=g)
    sd[f"{name}.num_batches_tracked"] = torch.tensor(100)

  conv("conv1", 64, 3, 7)
  bn("bn1", 64)
  cin = 64
  for s, n in enumerate(STAGES34):
    cout = 64 * 2**s
    for i in range(n):
      p = f"layer{s + 1}.{i}"
      conv(f"{p}.conv1", cout, cin if i == 0 else cout, 3)
      bn(f"{p}.bn1", cout)
      conv(f"{p}.conv2", cout, cout, 3)
      bn(f"{p}.bn2", cout)
      if i == 0 and s > 0:
        conv(f"{p}.downsample.0", cout, cin, 1)
        bn(f"{p}.downsample.1", cout)
    cin = cout
  sd["fc.weight"] = torch.randn(1000, 512, generator=g) * 0.01
  sd["fc.bias"] = torch.zeros(1000)
  return sd


def _torch_features(torch, sd, x):
  """torchvision resnet34 forward up to the pooled features, eval mode, NCHW input."""
  F = torch.nn.functional

  def bn(y, p):
    return F.batch_norm(y, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"],
                        sd[f"{p}.bias"], training=False, eps=1e-5)

  y = F.relu(bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), "bn1"))
  y = F.max_pool2d(y, 3, stride=2, padding=1)
  for s, n in enumerate(STAGES34):
    for i in range(n):
      p = f"layer{s + 1}.{i}"
      stride = 2 if (i == 0 and s > 0) else 1
      out = F.relu(bn(F.conv2d(y, sd[f"{p}.conv1.weight"], stride=stride, padding=1), f"{p}.bn1"))
      out = bn(F.conv2d(out, sd[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
      if f"{p}.downsample.0.weight" in sd:
        y = bn(F.conv2d(y, sd[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1")
      y = F.relu(out + y)
  return torch.flatten(F.adaptive_avg_pool2d(y, 1), 1)


@pytest.fixture(name="torch_checkpoint", scope="module")
def fixture_torch_checkpoint(tmp_path_factory):
  """(torch, random resnet34 state_dict, its file), made once for the conversion tests."""
  torch = pytest.importorskip("torch")
  sd = _torchvision_resnet34_state_dict(torch)
  path = tmp_path_factory.mktemp("torch") / "resnet34-b627a593.pth"
  torch.save(sd, path)
  return torch, sd, path


def test_torchvision_checkpoint_matches_torch_forward(torch_checkpoint):
  torch, sd, path = torch_checkpoint

  backbone = torch_convert.load_torchvision_backbone(path)
  x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
  ours = jax.jit(lambda v, x: resnet.Backbone(STAGES34).apply(v, x, train=False))(backbone, x)
  with torch.no_grad():
    ref = _torch_features(torch, sd, torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  assert ours.shape == ref.shape == (2, 512)
  # float32 through 33 conv layers: agreement to 1e-4 relative to the features' scale.
  scale = float(np.max(np.abs(ref)))
  np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-4, atol=1e-4 * scale)

  # Into the full model: the backbone is replaced, the head is kept.
  model = resnet.ResNet34(latent_dim=128)
  key = jax.random.key(0, impl=platform.PRNG_IMPL)
  shapes = jax.eval_shape(lambda: model.init(key, jnp.zeros((1, 64, 64, 3)), train=False))
  variables = jax.tree.map(lambda s: jnp.full(s.shape, 0.5, s.dtype), shapes)
  merged = torch_convert.with_backbone(variables, backbone)
  np.testing.assert_array_equal(merged["params"]["head_out"]["kernel"],
                                variables["params"]["head_out"]["kernel"])
  np.testing.assert_array_equal(merged["params"]["backbone"]["conv1"]["kernel"],
                                sd["conv1.weight"].numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(
      merged["batch_stats"]["backbone"]["layer4_0"]["downsample_bn"]["var"],
      sd["layer4.0.downsample.1.running_var"].numpy())


def test_missing_and_misshapen_keys_are_named(tmp_path, torch_checkpoint):
  torch, full, _ = torch_checkpoint
  sd = {k: v for k, v in full.items()
        if k not in ("layer3.2.bn1.running_var", "layer4.0.downsample.0.weight")}
  # A small file of the right kind: the conversion names the missing keys after reading it.
  torch.save({k: v for k, v in sd.items() if k.startswith(("conv1", "bn1"))},
             tmp_path / "broken.pth")
  with pytest.raises(ValueError, match=r"missing \d+: \['layer1.0.bn1.bias'"):
    torch_convert.load_torchvision_backbone(tmp_path / "broken.pth")
  with pytest.raises(ValueError, match=r"missing 2: \['layer3.2.bn1.running_var', "
                                       r"'layer4.0.downsample.0.weight'\]"):
    torch_convert.backbone_variables_from_state_dict({k: v.numpy() for k, v in sd.items()})
  sd = {k: v.numpy() for k, v in full.items()}
  sd["bn1.weight"] = np.ones(32, np.float32)
  with pytest.raises(ValueError, match="'bn1.weight' has shape"):
    torch_convert.backbone_variables_from_state_dict(sd)


@pytest.mark.parametrize("problem,error,pattern", [
    ("missing file", FileNotFoundError, r"x.pth' does not exist"),
    ("folder", FileNotFoundError, r"x.pth' is a folder, not a file"),
    ("torch missing", ImportError, "needs PyTorch"),
    ("not a checkpoint", ValueError, r"x.pth' is not a readable torch checkpoint")])
def test_checkpoint_file_errors_name_the_problem(tmp_path, monkeypatch, problem, error,
                                                 pattern):
  path = tmp_path / "x.pth"
  if problem == "folder":
    path.mkdir()
  elif problem != "missing file":
    path.write_bytes(b"")  # empty: what an interrupted download leaves
  if problem in ("missing file", "folder", "torch missing"):
    monkeypatch.setitem(sys.modules, "torch", None)  # the file is checked before torch
  else:
    pytest.importorskip("torch")
  with pytest.raises(error, match=pattern):
    torch_convert.load_torch_state_dict(path)


@pytest.mark.parametrize("spatial,kernel,stride", [(2, 3, 1), (2, 3, 2), (1, 3, 1), (2, 1, 2),
                                                   (4, 3, 2), (4, 1, 2), (3, 3, 2), (4, 3, 1),
                                                   (8, 3, 2)])
def test_cpu_conv_equals_lax_conv_values_and_gradients(spatial, kernel, stride):
  """The CPU im2col path is the same convolution, values and both gradients (and larger
  or stride-1 4x4 images use lax); on other backends it is lax.conv itself."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, spatial, spatial, 16)).astype(np.float32)
  w = rng.normal(size=(kernel, kernel, 16, 24)).astype(np.float32)
  pad = ((kernel // 2, kernel // 2),) * 2
  args = ((stride, stride), pad)
  dims = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
  plain = lambda x, w: jax.lax.conv_general_dilated(x, w, *args, dimension_numbers=dims)
  ours = lambda x, w: cpu_ops.conv(x, w, *args, dimension_numbers=dims)
  want, want_vjp = jax.vjp(plain, x, w)
  got, got_vjp = jax.jit(lambda x, w: jax.vjp(ours, x, w))(x, w)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  g = rng.normal(size=want.shape).astype(np.float32)
  for a, b in zip(got_vjp(g), want_vjp(g)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  jaxpr = str(jax.make_jaxpr(ours)(x, w))
  small = spatial ** 2 <= cpu_ops.SMALL_SPATIAL or (stride > 1
                                                     and spatial ** 2 <= cpu_ops.SMALL_STRIDED)
  im2col = jax.default_backend() == "cpu" and small
  assert ("dot_general" in jaxpr) == im2col
  assert cpu_ops.conv_lowering(x.shape, (stride, stride)) == (
      "im2col" if im2col else "lax.conv")


def test_cpu_conv_uses_only_taps_that_touch_the_image():
  """A 3x3 conv (pad 1) on a 1x1 image is one matmul with the centre tap: [B, Cin] @ [Cin, Cout]."""
  x = jnp.ones((2, 1, 1, 8))
  w = jnp.ones((3, 3, 8, 4))
  jaxpr = jax.make_jaxpr(lambda x, w: cpu_ops.conv_im2col(x, w, (1, 1), ((1, 1), (1, 1))))(x, w)
  dots = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general"]
  assert [tuple(v.aval.shape) for v in dots[0].invars] == [(2, 1, 1, 8), (8, 4)]


@pytest.mark.parametrize("ties", [False, True])
def test_cpu_max_pool_equals_flax_values_and_gradients(ties):
  """The slices-and-pads max pool equals nn.max_pool, gradient included; with ties (ReLU
  zeros, repeated values) the gradient goes to the same element as XLA's."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 9, 8, 5)).astype(np.float32)
  if ties:
    x = np.maximum(np.round(x), 0.0)  # many equal values in each window
  kw = dict(strides=(2, 2), padding=((1, 1), (1, 1)))
  want, want_vjp = jax.vjp(lambda x: nn.max_pool(x, (3, 3), **kw), x)
  got, got_vjp = jax.jit(lambda x: jax.vjp(lambda x: cpu_ops.max_pool(x, (3, 3), **kw), x))(x)
  np.testing.assert_array_equal(got, want)
  g = rng.normal(size=want.shape).astype(np.float32)
  np.testing.assert_allclose(got_vjp(g)[0], want_vjp(g)[0], rtol=1e-6, atol=1e-6)
