"""Per-layer CPU profile of the ResNet34 training step: JAX against PyTorch, shape by shape.

  python -m experiments.profile_layers --out OUT [--quick] [--set key=value ...]

For each image size (`image_sizes`, with the matching entry of `batch_sizes`) the model of
`thumb_jax.images.resnet` is traced once with its modules intercepted, which lists every
convolution and batch norm the training step runs, with its input shape and the module
itself (so also its lowering: `cpu_ops.conv` takes patches @ kernel for the small shapes of
`cpu_ops.conv_lowering` on CPU, the stem is a plain `lax.conv`). Equal shapes are
merged and counted. Each distinct op is then timed in isolation, float32, after compilation:

  * convolutions: the Flax module applied to an NHWC input (the model's own op and
    lowering), forward, backward (VJP w.r.t. input and kernel, what the step needs), and the
    two halves of the backward alone; PyTorch's `F.conv2d` / `aten.convolution_backward` on
    the same shape in NCHW and channels_last; and, as the machine's reference, `jnp.dot` of
    the im2col-equivalent matrices (fwd [M, K] @ [K, N], dx [M, N] @ [N, K],
    dk [K, M] @ [M, N] with M = B * Ho * Wo, K = Cin * kh * kw, N = Cout);
  * the rest, as a group: batch norm (train mode) + ReLU per activation shape, the stem's
    max pool, the head (global mean, Dense, ReLU, dropout mask, Dense, cross-entropy), each
    forward and forward + backward;
  * the whole network, loss and gradients w.r.t. the parameters (no optimizer), in both
    frameworks, so the per-op sum can be checked against it (fusion, overheads).

Each number is the median of `repeats` samples; a sample repeats the call until it lasts at
least `min_sample_s`. The frameworks are interleaved: every round times each variant of an
op once, in reversed order every other round, with a `settle_s` pause when the framework
changes (so spinning OpenMP / Eigen threads of the other one have parked).

Writes results.json (config, platform, per-op rows, per-size sums), layers.csv (the rows),
and prints per size a table sorted by the JAX share of the per-op time (count x (fwd + bwd));
ops where JAX runs at < `slow_ratio` of the faster PyTorch layout are marked '<'. An op's
`step` time counts what a training step runs: fwd + bwd (dx and dk; for the stem, whose
input is the image, dk only) for convs, fwd + bwd for the rest. XLA:CPU options can be
compared run against run with `--set xla_flags=...` (recorded in the platform block).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import common
from thumb_jax import platform
from thumb_jax.images import cpu_ops, resnet


@dataclasses.dataclass(frozen=True)
class Config:
  """Sizes, model and timing knobs.

  image_sizes / batch_sizes: pairs, profiled one after the other (32 px batch 128 and 64 px
    batch 64 are the CPU configs of CIFAR-10 and CelebA).
  stage_sizes, num_filters, latent_dim: the ResNet (ResNet34 with the paper's head).
  repeats: timed samples per op variant (the median is reported, with the quartiles).
  warmup: untimed calls per variant after compilation.
  min_sample_s: a sample repeats the call until it lasts this long (short ops).
  settle_s: pause when the timed framework changes.
  torch: time PyTorch too (if importable); channels_last: also PyTorch's NHWC layout;
    torch_threads: PyTorch's intra-op threads (0: one per core, as XLA's pool).
  matmul: time the im2col-equivalent matmuls; split_backward: also dx and dk alone.
  other_ops: batch norm + ReLU, max pool, head; network: the whole forward + backward.
  slow_ratio: mark ops where JAX runs below this fraction of PyTorch's speed.
  seed: inputs and parameters.
  xla_flags: appended to XLA_FLAGS before jax starts (to compare XLA:CPU options, e.g.
    "--xla_cpu_experimental_ynn_fusion_type=" turns jaxlib 0.10's YNNPACK convs and dots off).
  """
  image_sizes: tuple[int, ...] = (32, 64)
  batch_sizes: tuple[int, ...] = (128, 64)
  stage_sizes: tuple[int, ...] = (3, 4, 6, 3)
  num_filters: int = 64
  latent_dim: int = 128
  repeats: int = 15
  warmup: int = 2
  min_sample_s: float = 0.02
  settle_s: float = 0.01
  torch: bool = True
  torch_threads: int = 0
  channels_last: bool = True
  matmul: bool = True
  split_backward: bool = True
  other_ops: bool = True
  network: bool = True
  slow_ratio: float = 0.7
  seed: int = 0
  xla_flags: str = ""


def config() -> Config:
  return Config()


def quick(cfg: Config) -> Config:
  """The tiny test ResNet (two stages, 8 channels) on 16 px, 3 samples per op."""
  return dataclasses.replace(cfg, image_sizes=(16,), batch_sizes=(4,), stage_sizes=(1, 1),
                             num_filters=8, latent_dim=16, repeats=3, warmup=1,
                             min_sample_s=0.0, settle_s=0.0)


# ----------------------------------------------------------------------------- the model's ops

class Call(NamedTuple):
  """One module call of the model: path 'backbone/layer1_0/conv1', an unbound copy of the
  module, its input and output (arrays, or ShapeDtypeStructs when traced abstractly)."""
  path: str
  module: nn.Module
  x: Any
  y: Any


def record_calls(model: nn.Module, variables, images: jax.Array, *, abstract: bool = True,
                 types: tuple = (nn.Conv, nn.BatchNorm)) -> list[Call]:
  """The convs and batch norms the training forward pass runs, in order.

  Args:
    model: a `resnet.ResNet`.
    variables: its {"params", "batch_stats"} (arrays or ShapeDtypeStructs).
    images: normalized float images [B, H, W, 3] (array or ShapeDtypeStruct).
    abstract: trace with `jax.eval_shape` (shapes only); False also runs the model (jitted)
      and keeps every call's concrete input and output.
    types: module classes to record.
  """
  calls = []

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name == "__call__" and isinstance(module, types):
      calls.append(Call("/".join(module.scope.path), module.clone(parent=None, name=None),
                        args[0], out))
    return out

  def forward(variables, images):
    calls.clear()
    with nn.intercept_methods(interceptor):
      model.apply(variables, images, train=True, mutable=["batch_stats"],
                  rngs={"dropout": jax.random.key(0)})
    return [(c.x, c.y) for c in calls]

  values = (jax.eval_shape(forward, variables, images) if abstract
            else jax.jit(forward)(variables, images))
  return [c._replace(x=x, y=y) for c, (x, y) in zip(calls, values)]


def conv_op(module: nn.Conv) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """(x [B, H, W, Cin], kernel [kh, kw, Cin, Cout]) -> the module's output, as in the model."""
  return lambda x, kernel: module.apply({"params": {"kernel": kernel}}, x)


def lowering(module: nn.Conv, x_shape: Sequence[int]) -> str:
  """'im2col' where the model's conv runs as patches @ kernel, else 'lax.conv'."""
  kernel = jax.ShapeDtypeStruct((*module.kernel_size, x_shape[-1], module.features), jnp.float32)
  jaxpr = jax.make_jaxpr(conv_op(module))(jax.ShapeDtypeStruct(tuple(x_shape), jnp.float32),
                                          kernel)
  names = {eqn.primitive.name for eqn in jaxpr.jaxpr.eqns}
  return "im2col" if "dot_general" in names else "lax.conv"


def _pads(module: nn.Conv) -> tuple[int, int]:
  pads = tuple(tuple(p) for p in module.padding)
  if any(lo != hi for lo, hi in pads):
    raise ValueError(f"asymmetric padding {pads} has no torch.conv2d equivalent")
  return pads[0][0], pads[1][0]


def _strides(module: nn.Conv) -> tuple[int, int]:
  s = module.strides or 1
  return (s, s) if isinstance(s, int) else tuple(s)


class Variant(NamedTuple):
  """A timed callable: framework ('jax', 'torch', 'torch_cl', 'matmul'), phase, thunk."""
  framework: str
  phase: str
  fn: Callable[[], Any]


class Case(NamedTuple):
  """One distinct op: `info` (JSON row fields), `flops` per phase, the variants to time,
  and `jax` {phase: (fn, args)}: the JAX functions its 'jax' variants jit and time."""
  info: dict
  flops: dict
  variants: list
  jax: dict


def _normal(rng: np.random.Generator, shape: Sequence[int], scale: float = 1.0) -> np.ndarray:
  return (scale * rng.standard_normal(tuple(shape))).astype(np.float32)


def _nchw(torch, a: np.ndarray):
  """NHWC numpy [B, H, W, C] -> contiguous NCHW torch tensor."""
  return torch.from_numpy(np.ascontiguousarray(np.transpose(a, (0, 3, 1, 2))))


def _value_and_vjp(fn, g, *args):
  """(fn(*args), its VJP at cotangent g): the forward output and the gradients, as autograd."""
  y, vjp = jax.vjp(fn, *args)
  return y, vjp(g)


def _jax_variant(fn, *args, phase: str) -> Variant:
  jitted = jax.jit(fn)
  return Variant("jax", phase, lambda: jax.block_until_ready(jitted(*args)))


def conv_case(calls: Sequence[Call], *, stem: bool, cfg: Config, torch=None,
              rng: np.random.Generator) -> Case:
  """Timing variants of one conv shape (all `calls` share module settings and input shape)."""
  first = calls[0]
  module, (b, h, w, cin) = first.module, first.x.shape
  _, ho, wo, cout = first.y.shape
  kh, kw = module.kernel_size
  (sh, sw), (ph, pw) = _strides(module), _pads(module)
  x_np, g_np = _normal(rng, (b, h, w, cin)), _normal(rng, (b, ho, wo, cout))
  k_np = _normal(rng, (kh, kw, cin, cout), 1 / math.sqrt(kh * kw * cin))
  x, kernel, g = (jax.device_put(a) for a in (x_np, k_np, g_np))
  op = conv_op(module)
  fns = {"fwd": (op, (x, kernel)),
         "bwd": (lambda x, k, g: jax.vjp(op, x, k)[1](g), (x, kernel, g))}
  if cfg.split_backward:
    fns["bwd_input"] = (lambda x, k, g: jax.vjp(lambda x: op(x, k), x)[1](g), (x, kernel, g))
  if cfg.split_backward or stem:  # the step needs only the stem's kernel gradient
    fns["bwd_kernel"] = (lambda x, k, g: jax.vjp(lambda k: op(x, k), k)[1](g), (x, kernel, g))
  variants = [_jax_variant(f, *a, phase=p) for p, (f, a) in fns.items()]

  m, kdim = b * ho * wo, kh * kw * cin
  flop = 2.0 * m * kdim * cout
  flops = {"fwd": flop, "bwd": 2 * flop, "bwd_input": flop, "bwd_kernel": flop}
  if cfg.matmul:
    ones = lambda *shape: jax.device_put(np.ones(shape, np.float32))
    a_mk, b_kn = ones(m, kdim), ones(kdim, cout)
    a_mn, b_nk, a_km = ones(m, cout), ones(cout, kdim), ones(kdim, m)
    variants += [_jax_variant(jnp.dot, a_mk, b_kn, phase="fwd"),
                 _jax_variant(jnp.dot, a_mn, b_nk, phase="bwd_input"),
                 _jax_variant(jnp.dot, a_km, a_mn, phase="bwd_kernel")]
    variants[-3:] = [v._replace(framework="matmul") for v in variants[-3:]]

  info = {"kind": "conv", "count": len(calls), "layers": [c.path for c in calls],
          "lowering": lowering(module, first.x.shape), "input_shape": [b, h, w, cin],
          "kernel_shape": [kh, kw, cin, cout], "output_shape": [b, ho, wo, cout],
          "strides": [sh, sw], "padding": [ph, pw], "stem": stem,
          "name": f"{'stem ' if stem else ''}{kh}x{kw}/{sh} {cin}->{cout} @{h}x{w}"}
  if torch is not None:
    tx, tg = _nchw(torch, x_np), _nchw(torch, g_np)
    tw = torch.from_numpy(np.ascontiguousarray(np.transpose(k_np, (3, 2, 0, 1))))
    conv2d, backward = torch.nn.functional.conv2d, torch.ops.aten.convolution_backward
    layouts = [("torch", torch.contiguous_format)]
    if cfg.channels_last:
      layouts.append(("torch_cl", torch.channels_last))
    masks = {"bwd": [True, True, False], "bwd_input": [True, False, False],
             "bwd_kernel": [False, True, False]}
    for name, fmt in layouts:
      xi, wi, gi = (t.contiguous(memory_format=fmt) for t in (tx, tw, tg))
      variants.append(Variant(name, "fwd", lambda xi=xi, wi=wi: conv2d(
          xi, wi, None, (sh, sw), (ph, pw))))
      for phase in fns:
        if phase != "fwd":
          variants.append(Variant(name, phase, lambda xi=xi, wi=wi, gi=gi, mask=masks[phase]:
                                  backward(gi, xi, wi, None, (sh, sw), (ph, pw), (1, 1), False,
                                           (0, 0), 1, mask)))
    with torch.no_grad():
      ref = conv2d(tx, tw, None, (sh, sw), (ph, pw)).permute(0, 2, 3, 1).numpy()
    got = np.asarray(variants[0].fn())  # the JAX forward variant's output
    info["max_abs_diff_vs_torch"] = float(np.max(np.abs(got - ref)))
  return Case(info, flops, variants, fns)


def bn_relu_case(calls: Sequence[Call], *, torch=None, rng: np.random.Generator) -> Case:
  """Batch norm (train mode, batch statistics) + ReLU, forward and forward + backward."""
  first = calls[0]
  module, shape = first.module, first.x.shape
  c = shape[-1]
  x_np = _normal(rng, shape)
  x, g = jax.device_put(x_np), jax.device_put(np.ones(shape, np.float32))

  def fwd(x, scale, bias):
    y, _ = module.apply({"params": {"scale": scale, "bias": bias},
                         "batch_stats": {"mean": jnp.zeros(c), "var": jnp.ones(c)}},
                        x, mutable=["batch_stats"])
    return nn.relu(y)

  scale, bias = jax.device_put(np.ones(c, np.float32)), jax.device_put(np.zeros(c, np.float32))
  fns = {"fwd": (fwd, (x, scale, bias)),
         "fwd_bwd": (lambda x, s, b, g: _value_and_vjp(fwd, g, x, s, b), (x, scale, bias, g))}
  variants = [_jax_variant(f, *a, phase=p) for p, (f, a) in fns.items()]
  n = math.prod(shape)
  info = {"kind": "bn_relu", "count": len(calls), "layers": [c.path for c in calls],
          "input_shape": list(shape), "name": f"bn+relu {c} @{shape[1]}x{shape[2]}"}
  if torch is not None:
    tx = _nchw(torch, x_np)
    weight = torch.ones(c, requires_grad=True)
    tbias = torch.zeros(c, requires_grad=True)
    mean, var = torch.zeros(c), torch.ones(c)
    f = torch.nn.functional

    def tfwd(xi):
      return torch.relu(f.batch_norm(xi, mean, var, weight, tbias, True, 0.1, 1e-5))

    def tfwd_bwd(xi):
      xi = xi.detach().requires_grad_()
      y = tfwd(xi)
      return torch.autograd.grad(y, (xi, weight, tbias), torch.ones_like(y))

    for name, fmt in [("torch", torch.contiguous_format), ("torch_cl", torch.channels_last)]:
      xi = tx.contiguous(memory_format=fmt)
      variants += [Variant(name, "fwd", lambda xi=xi: tfwd(xi.detach())),
                   Variant(name, "fwd_bwd", lambda xi=xi: tfwd_bwd(xi))]
  # ~10 elementwise flops per element (statistics, normalize, affine, relu) each way.
  return Case(info, {"fwd": 10.0 * n, "fwd_bwd": 20.0 * n}, variants, fns)


def maxpool_case(shape: Sequence[int], *, torch=None, rng: np.random.Generator) -> Case:
  """The stem's 3x3/2 max pool (pad 1), forward and forward + backward."""
  x_np = _normal(rng, tuple(shape))
  fwd = lambda x: cpu_ops.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
  x = jax.device_put(x_np)
  g = jax.device_put(np.ones(jax.eval_shape(fwd, x).shape, np.float32))
  fns = {"fwd": (fwd, (x,)), "fwd_bwd": (lambda x, g: _value_and_vjp(fwd, g, x), (x, g))}
  variants = [_jax_variant(f, *a, phase=p) for p, (f, a) in fns.items()]
  if torch is not None:
    tx = _nchw(torch, x_np)
    pool = lambda xi: torch.nn.functional.max_pool2d(xi, 3, 2, 1)

    def tfwd_bwd(xi):
      xi = xi.detach().requires_grad_()
      y = pool(xi)
      return torch.autograd.grad(y, xi, torch.ones_like(y))

    for name, fmt in [("torch", torch.contiguous_format), ("torch_cl", torch.channels_last)]:
      xi = tx.contiguous(memory_format=fmt)
      variants += [Variant(name, "fwd", lambda xi=xi: pool(xi)),
                   Variant(name, "fwd_bwd", lambda xi=xi: tfwd_bwd(xi))]
  n = 9.0 * math.prod(g.shape)
  info = {"kind": "maxpool", "count": 1, "layers": ["backbone/max_pool"],
          "input_shape": list(shape), "name": f"maxpool 3x3/2 {shape[-1]} @{shape[1]}x{shape[2]}"}
  return Case(info, {"fwd": n, "fwd_bwd": 2 * n}, variants, fns)


def head_case(shape: Sequence[int], *, latent_dim: int, torch=None,
              rng: np.random.Generator) -> Case:
  """Global mean pool + Dense + ReLU + dropout mask + Dense(2) + cross-entropy."""
  b, _, _, c = shape
  host = {"x": _normal(rng, tuple(shape)), "w1": _normal(rng, (c, latent_dim), c**-0.5),
          "b1": np.zeros(latent_dim, np.float32),
          "w2": _normal(rng, (latent_dim, 2), latent_dim**-0.5), "b2": np.zeros(2, np.float32),
          "mask": (2.0 * (rng.random((b, latent_dim)) < 0.5)).astype(np.float32),
          "labels": np.arange(b) % 2}
  x, w1, b1, w2, b2, mask, labels = (jax.device_put(a) for a in host.values())

  def loss(x, w1, b1, w2, b2):
    h = nn.relu(jnp.mean(x, axis=(1, 2)) @ w1 + b1) * mask
    return optax.softmax_cross_entropy_with_integer_labels(h @ w2 + b2, labels).mean()

  args = (x, w1, b1, w2, b2)
  fns = {"fwd": (loss, args), "fwd_bwd": (jax.grad(loss, argnums=(0, 1, 2, 3, 4)), args)}
  variants = [_jax_variant(f, *a, phase=p) for p, (f, a) in fns.items()]
  if torch is not None:
    tx = _nchw(torch, host["x"])
    tw1, tb1, tw2, tb2, tmask = (torch.from_numpy(np.ascontiguousarray(a)) for a in (
        host["w1"].T, host["b1"], host["w2"].T, host["b2"], host["mask"]))
    tlabels = torch.from_numpy(host["labels"]).long()
    params = [p.requires_grad_() for p in (tw1, tb1, tw2, tb2)]
    f = torch.nn.functional

    def tloss(xi):
      h = torch.relu(f.linear(xi.mean((2, 3)), tw1, tb1)) * tmask
      return f.cross_entropy(f.linear(h, tw2, tb2), tlabels)

    def tfwd_bwd():
      xi = tx.detach().requires_grad_()
      return torch.autograd.grad(tloss(xi), [xi, *params])

    variants += [Variant("torch", "fwd", lambda: tloss(tx.detach())),
                 Variant("torch", "fwd_bwd", tfwd_bwd)]
  flop = 2.0 * b * (c * latent_dim + 2 * latent_dim) + math.prod(shape)
  info = {"kind": "head", "count": 1, "layers": ["head"], "input_shape": list(shape),
          "name": f"head pool+mlp {c}->{latent_dim}->2"}
  return Case(info, {"fwd": flop, "fwd_bwd": 3 * flop}, variants, fns)


def random_variables(model: nn.Module, image_shape: Sequence[int], *,
                     rng: np.random.Generator) -> dict:
  """{"params", "batch_stats"} of `model` for images [B, H, W, 3], drawn on the host.

  Kernels are normal / sqrt(fan_in), batch-norm scales and variances 1, biases and means 0
  (compiling `model.init` would cost seconds, mostly its PRNG).
  """
  images = jax.ShapeDtypeStruct(tuple(image_shape), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)

  def fill(path, leaf):
    name = getattr(path[-1], "key", "")
    if name in ("scale", "var"):
      return jax.device_put(np.ones(leaf.shape, np.float32))
    if name in ("bias", "mean"):
      return jax.device_put(np.zeros(leaf.shape, np.float32))
    return jax.device_put(_normal(rng, leaf.shape, math.prod(leaf.shape[:-1]) ** -0.5))

  return jax.tree_util.tree_map_with_path(fill, shapes)


def network_case(model: nn.Module, *, image_size: int, batch_size: int, cfg: Config,
                 torch=None, rng: np.random.Generator) -> Case:
  """The whole network: loss and gradients w.r.t. the parameters (train mode, no optimizer)."""
  from experiments import bench_train  # pylint: disable=g-import-not-at-top

  x_np = _normal(rng, (batch_size, image_size, image_size, 3))
  x, labels = jax.device_put(x_np), jax.device_put(np.arange(batch_size) % 2)
  variables = random_variables(model, x.shape, rng=rng)

  def loss(params, x):
    (logits, _), _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                 x, train=True, mutable=["batch_stats"],
                                 rngs={"dropout": jax.random.key(1)})
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  fns = {"fwd": (loss, (variables["params"], x)),
         "fwd_bwd": (jax.grad(loss), (variables["params"], x))}
  variants = [_jax_variant(f, *a, phase=p) for p, (f, a) in fns.items()]
  if torch is not None:
    tmodel = bench_train.torch_resnet(torch, stage_sizes=cfg.stage_sizes,
                                      num_filters=cfg.num_filters,
                                      latent_dim=cfg.latent_dim).train()
    tx = _nchw(torch, x_np)
    tlabels = torch.from_numpy(np.arange(batch_size) % 2).long()
    ce = torch.nn.functional.cross_entropy

    def tfwd():
      with torch.no_grad():
        return ce(tmodel(tx), tlabels)

    def tfwd_bwd():
      return torch.autograd.grad(ce(tmodel(tx), tlabels), list(tmodel.parameters()))

    variants += [Variant("torch", "fwd", tfwd), Variant("torch", "fwd_bwd", tfwd_bwd)]
  info = {"kind": "network", "count": 1, "layers": ["all"],
          "input_shape": [batch_size, image_size, image_size, 3], "name": "whole network"}
  return Case(info, {}, variants, fns)


# ----------------------------------------------------------------------------- timing

def _sample(fn: Callable[[], Any], number: int) -> float:
  start = time.perf_counter()
  for _ in range(number):
    fn()
  return (time.perf_counter() - start) / number


def time_variants(variants: Sequence[Variant], *, repeats: int, warmup: int,
                  min_sample_s: float, settle_s: float) -> list[dict]:
  """Interleaved medians: each round times every variant once (order reversed every other
  round); a sample repeats a call `number` times so that it lasts >= min_sample_s.

  Returns:
    per variant {"framework", "phase", "median_ms", "q25_ms", "q75_ms", "min_ms", "number"}.
  """
  numbers = []
  for v in variants:
    first = _sample(v.fn, 1)  # compiles the JAX ones
    for _ in range(warmup):
      first = min(first, _sample(v.fn, 1))
    numbers.append(max(1, math.ceil(min_sample_s / max(first, 1e-7))))
  samples = [[] for _ in variants]
  runtime = ["torch" if v.framework.startswith("torch") else "jax" for v in variants]
  last = None
  for r in range(repeats):
    order = range(len(variants)) if r % 2 == 0 else reversed(range(len(variants)))
    for i in order:
      if last is not None and runtime[i] != last and settle_s:
        time.sleep(settle_s)
      last = runtime[i]
      samples[i].append(_sample(variants[i].fn, numbers[i]))
  out = []
  for v, s, n in zip(variants, samples, numbers):
    ms = 1e3 * np.asarray(s)
    out.append({"framework": v.framework, "phase": v.phase, "median_ms": float(np.median(ms)),
                "q25_ms": float(np.percentile(ms, 25)), "q75_ms": float(np.percentile(ms, 75)),
                "min_ms": float(np.min(ms)), "number": n})
  return out


# ----------------------------------------------------------------------------- rows

def _total_phases(info: dict) -> tuple[str, ...]:
  """The phases one training step runs for this op (the stem needs no input gradient)."""
  if info["kind"] == "conv":
    return ("fwd", "bwd_kernel") if info["stem"] else ("fwd", "bwd")
  return ("fwd_bwd",)


def make_row(case: Case, timings: Sequence[dict], *, image_size: int, batch_size: int,
             slow_ratio: float) -> dict:
  """A flat row: shape fields, per framework and phase ms / IQR / GFLOP/s, step totals."""
  info = case.info
  row = {"image_size": image_size, "batch_size": batch_size, "name": info["name"],
         "kind": info["kind"], "count": info["count"], "lowering": info.get("lowering", ""),
         "gflop_fwd": case.flops.get("fwd", 0.0) / 1e9}
  for t in timings:
    col = f"{t['framework']}_{t['phase']}"
    row[f"{col}_ms"] = t["median_ms"]
    row[f"{col}_iqr_ms"] = t["q75_ms"] - t["q25_ms"]
    flops = case.flops.get(t["phase"])
    if flops:
      row[f"{col}_gflops"] = flops / 1e9 / (t["median_ms"] / 1e3)
  frameworks = sorted({t["framework"] for t in timings if t["framework"] != "matmul"})
  phases = _total_phases(info)
  for fw in frameworks:
    if all(f"{fw}_{p}_ms" in row for p in phases):
      row[f"{fw}_step_ms"] = info["count"] * sum(row[f"{fw}_{p}_ms"] for p in phases)
  torch_steps = [row[k] for k in ("torch_step_ms", "torch_cl_step_ms") if k in row]
  if "jax_step_ms" in row and torch_steps:
    # PyTorch's reference is its faster layout; > 1: JAX faster.
    row["jax_speed_vs_torch"] = min(torch_steps) / row["jax_step_ms"]
    row["slow"] = bool(row["jax_speed_vs_torch"] < slow_ratio)
    row["slow_phases"] = [
        t["phase"] for t in timings if t["framework"] == "jax"
        and min(row.get(f"{fw}_{t['phase']}_ms", math.inf) for fw in ("torch", "torch_cl"))
        < slow_ratio * t["median_ms"]]
  if info["kind"] == "conv" and "matmul_fwd_ms" in row:
    mm = [p for p in phases if p != "bwd"] + (["bwd_input", "bwd_kernel"] if "bwd" in phases
                                              else [])
    row["matmul_step_ms"] = info["count"] * sum(row[f"matmul_{p}_ms"] for p in mm)
    if "jax_step_ms" in row:  # 1: the conv runs as fast as matmuls of its FLOPs
      row["jax_fraction_of_matmul"] = row["matmul_step_ms"] / row["jax_step_ms"]
  for key in ("input_shape", "kernel_shape", "strides", "padding", "layers",
              "max_abs_diff_vs_torch"):
    if key in info:
      row[key] = info[key]
  return row


def group_calls(calls: Sequence[Call]) -> dict[tuple, list[Call]]:
  """Calls with equal op, shapes and settings, in order of first use.

  Keys are ("conv", x shape, y shape, kernel size, strides, padding, conv function, stem)
  or ("bn", x shape); the first call of the model (the stem) is its own group.
  """
  groups: dict[tuple, list[Call]] = {}
  for c in calls:
    m = c.module
    if isinstance(m, nn.Conv):
      k = ("conv", tuple(c.x.shape), tuple(c.y.shape), tuple(m.kernel_size), _strides(m),
           _pads(m), m.conv_general_dilated, c is calls[0])
    else:
      k = ("bn", tuple(c.x.shape))
    groups.setdefault(k, []).append(c)
  return groups


def profile_size(cfg: Config, *, image_size: int, batch_size: int, torch=None,
                 seed: Sequence[int]) -> list[dict]:
  """All op rows of one image size, network row last; inputs drawn from numpy `seed`."""
  model = resnet.ResNet(stage_sizes=cfg.stage_sizes, num_filters=cfg.num_filters,
                        latent_dim=cfg.latent_dim)
  images = jax.ShapeDtypeStruct((batch_size, image_size, image_size, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
  calls = record_calls(model, variables, images)
  groups = group_calls(calls)
  # Host (numpy) random inputs: eager jax.random calls would each compile a small program.
  rngs = [np.random.default_rng([*seed, i]) for i in range(len(groups) + 3)]
  cases = []
  for i, (k, members) in enumerate(groups.items()):
    if k[0] == "conv":
      cases.append(conv_case(members, stem=k[-1], cfg=cfg, torch=torch, rng=rngs[i]))
    elif cfg.other_ops:
      cases.append(bn_relu_case(members, torch=torch, rng=rngs[i]))
  if cfg.other_ops:
    stem_out = calls[0].y.shape
    last_out = [c for c in calls if isinstance(c.module, nn.Conv)][-1].y.shape
    cases.append(maxpool_case(stem_out, torch=torch, rng=rngs[-3]))
    cases.append(head_case(last_out, latent_dim=cfg.latent_dim, torch=torch,
                           rng=rngs[-2]))
  if cfg.network:
    cases.append(network_case(model, image_size=image_size, batch_size=batch_size, cfg=cfg,
                              torch=torch, rng=rngs[-1]))
  rows = []
  for case in common.progress(cases, desc=f"{image_size} px"):
    start = time.perf_counter()
    timings = time_variants(case.variants, repeats=cfg.repeats, warmup=cfg.warmup,
                            min_sample_s=cfg.min_sample_s, settle_s=cfg.settle_s)
    rows.append(make_row(case, timings, image_size=image_size, batch_size=batch_size,
                         slow_ratio=cfg.slow_ratio))
    rows[-1]["wall_s"] = time.perf_counter() - start  # compilation + warm-up + timing
  return rows


def summarize(rows: Sequence[dict]) -> dict:
  """Per framework: conv, other-op and per-op sums of step ms, and the measured network."""
  out = {}
  for fw in ("jax", "torch", "torch_cl", "matmul"):
    conv = [r[f"{fw}_step_ms"] for r in rows if r["kind"] == "conv" and f"{fw}_step_ms" in r]
    other = [r[f"{fw}_step_ms"] for r in rows
             if r["kind"] not in ("conv", "network") and f"{fw}_step_ms" in r]
    net = [r[f"{fw}_fwd_bwd_ms"] for r in rows
           if r["kind"] == "network" and f"{fw}_fwd_bwd_ms" in r]
    if conv or net:
      out[fw] = {"conv_ms": float(sum(conv)), "other_ms": float(sum(other)),
                 "ops_sum_ms": float(sum(conv) + sum(other)),
                 "network_ms": float(net[0]) if net else None}
  return out


def print_table(rows: Sequence[dict]) -> None:
  """Op rows sorted by JAX share of the per-op step sum; '<' marks JAX < slow_ratio x torch."""
  ops = [r for r in rows if r["kind"] != "network"]
  total = sum(r.get("jax_step_ms", 0.0) for r in ops) or 1.0
  ops.sort(key=lambda r: -r.get("jax_step_ms", 0.0))
  print(f"\n{rows[0]['image_size']} px, batch {rows[0]['batch_size']}: ms per call (medians); "
        "f = forward, b = backward (fwd+bwd for non-convs), cl = PyTorch channels_last;\n"
        "GF/s of JAX's and of the im2col matmul's forward; of mm = matmul time / JAX time; "
        "share = count x (f + b) of all ops;\nvs pt = PyTorch's (faster layout) / JAX's "
        "count x (f + b), > 1: JAX faster, '<' marks slow ones")
  print(f"{'op':<30}{'n':>3}{'lowering':>15}{'GFLOP':>7}{'jax f':>8}{'jax b':>8}{'torch f':>8}"
        f"{'torch b':>8}{'cl f':>8}{'cl b':>8}{'jaxGF/s':>8}{'mmGF/s':>8}{'of mm':>6}"
        f"{'share':>7}{'vs pt':>7}")
  for r in ops:
    def cell(key, fmt="8.2f"):
      v = r.get(key)
      return format(v, fmt) if v is not None else f"{'-':>{fmt.split('.')[0]}}"

    bwd = "bwd" if r["kind"] == "conv" else "fwd_bwd"
    print(f"{r['name'][:29]:<30}{r['count']:>3}{r['lowering'][:14]:>15}{r['gflop_fwd']:>7.2f}"
          f"{cell('jax_fwd_ms')}{cell(f'jax_{bwd}_ms')}{cell('torch_fwd_ms')}"
          f"{cell(f'torch_{bwd}_ms')}{cell('torch_cl_fwd_ms')}{cell(f'torch_cl_{bwd}_ms')}"
          f"{cell('jax_fwd_gflops' if r['kind'] == 'conv' else '', '8.1f')}"
          f"{cell('matmul_fwd_gflops', '8.1f')}"
          f"{cell('jax_fraction_of_matmul', '6.2f')}{r.get('jax_step_ms', 0.0) / total:>7.1%}"
          f"{cell('jax_speed_vs_torch', '6.2f')}{'<' if r.get('slow') else ' '}")
  for fw, s in summarize(rows).items():
    net = f"{s['network_ms']:.1f}" if s["network_ms"] is not None else "-"
    print(f"  {fw:<9} conv {s['conv_ms']:9.1f} ms  other {s['other_ms']:8.1f} ms  "
          f"sum {s['ops_sum_ms']:9.1f} ms  whole network fwd+bwd {net} ms")


def add_xla_flags(flags: str) -> None:
  """Appends `flags` to XLA_FLAGS; only before jax has started its backend (it reads them once).

  Raises:
    ValueError: flags given after the backend started.
  """
  if not flags.strip():
    return
  if platform._backend_started():  # pylint: disable=protected-access
    raise ValueError(f"xla_flags {flags!r}: jax's backend already started in this process; "
                     "set XLA_FLAGS in the environment instead")
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags.strip()}".strip()


def main(argv: Sequence[str] | None = None) -> dict:
  cfg, out = common.parse_args(argv, config(), quick=quick, description=__doc__)
  add_xla_flags(cfg.xla_flags)
  if len(cfg.image_sizes) != len(cfg.batch_sizes):
    raise ValueError(f"image_sizes {cfg.image_sizes} and batch_sizes {cfg.batch_sizes}: "
                     "expected one batch size per image size")
  common.positive_ints(cfg, "repeats", "num_filters", "latent_dim")
  torch = None
  if cfg.torch:
    try:
      import torch  # pylint: disable=g-import-not-at-top
      torch.set_num_threads(cfg.torch_threads or os.cpu_count() or 1)
    except ImportError:
      print("torch not importable: JAX only")
      torch = None
  rows, summary, load_start = [], {}, os.getloadavg()
  if load_start[0] > 0.5:
    print(f"warning: 1-minute load average {load_start[0]:.2f}: other work is running, the "
          "timings (PyTorch's multi-threaded ones most) will not be representative")
  for i, (size, batch) in enumerate(zip(cfg.image_sizes, cfg.batch_sizes)):
    size_rows = profile_size(cfg, image_size=size, batch_size=batch, torch=torch,
                             seed=(cfg.seed, i))
    print_table(size_rows)
    rows += size_rows
    summary[f"{size}px_b{batch}"] = summarize(size_rows)
  results = {"rows": rows, "summary": summary, "load_average_start": list(load_start),
             "torch": None if torch is None else {"version": torch.__version__,
                                                   "threads": torch.get_num_threads()}}
  common.save_results(out / "results.json", config=cfg, results=results)
  flat = [{k: (" ".join(map(str, v)) if isinstance(v, list) else v) for k, v in r.items()}
          for r in rows]
  columns = list(dict.fromkeys(k for r in flat for k in r))
  common.write_csv(out / "layers.csv", [{k: r.get(k) for k in columns} for r in flat])
  return results


if __name__ == "__main__":
  main()
