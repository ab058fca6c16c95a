"""Training and embedding throughput (images/s) of ResNet34 on CPU: JAX against PyTorch.

  python -m experiments.bench_train --out OUT [--sizes 32x128,64x64] [--steps 30]

Measures, on whatever this machine has, for each image size x batch size of --sizes:
  * training: the jitted JAX train step (ResNet34 + the paper's head, AdamW, float32) and
    PyTorch's (torchvision's layout written with torch.nn, since torchvision may be
    missing; AdamW, same head);
  * embedding extraction (eval mode, the head's hidden activation) at --embed_batch_size,
    both frameworks, unless --no_embed;
  * on a GPU, also the JAX bfloat16 step at 224 px (JAX only).
The frameworks are interleaved: step i of JAX, then of PyTorch, in swapped order every
other step, after compilation and --warmup untimed steps each. Each row reports the median
over --steps timed steps (images/s = batch / median) and the spread (quartiles, min, max of
the step time). Augmentation is off in both frameworks so the work is the same; the JAX
step restarts from the same state (no donation). Prints a table and writes
bench_train.json into --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

from experiments import profile_layers, report
from thumb_jax import io
from thumb_jax.images import configs, resnet, train
from thumb_jax.platform import PRNG_IMPL

DEFAULT_SIZES = "32x128,64x64"


def _config(model: str, *, image_size: int, batch_size: int, dtype: str) -> configs.Config:
  base = configs.tiny() if model == "tiny" else configs.cpu()
  return dataclasses.replace(base, image_size=image_size, batch_size=batch_size, dtype=dtype,
                             augment=False)


def _model_and_state(model: str, *, image_size: int, batch_size: int, dtype: str):
  """The network of the config and its initial TrainState (seed 0)."""
  config = _config(model, image_size=image_size, batch_size=batch_size, dtype=dtype)
  net = train.create_model(config)
  return net, train.create_train_state(config, net, key=jax.random.key(0, impl=PRNG_IMPL),
                                       steps_per_epoch=100)


def jax_train_step(*, model: str = "resnet34", image_size: int, batch_size: int,
                   dtype: str = "float32") -> tuple[Callable[[], float], dict]:
  """(a thunk running one blocked jitted train step from the same state, compile info)."""
  net, state = _model_and_state(model, image_size=image_size, batch_size=batch_size,
                                dtype=dtype)
  # No buffer donation: every timed call starts from `state` again (the same work per step).
  step, _ = train.jitted_steps(crop_padding=0, flip=False)
  rng = np.random.default_rng(0)
  batch = train.Batch(rng.integers(0, 256, (batch_size, image_size, image_size, 3), np.uint8),
                      np.where(rng.random(batch_size) < 0.1, 1, -1).astype(np.int32))
  key = jax.random.key(1, impl=PRNG_IMPL)
  compiled, compile_times = report.compile_timed(step, state, batch, key)
  return (lambda: float(jax.block_until_ready(compiled(state, batch, key))[1].loss),
          {"device": str(jax.devices()[0].device_kind), **compile_times})


def jax_embed_step(*, model: str = "resnet34", image_size: int, batch_size: int,
                   dtype: str = "float32") -> tuple[Callable[[], float], dict]:
  """A thunk computing the embeddings [batch_size, latent_dim] of a uint8 batch (eval mode)."""
  net, state = _model_and_state(model, image_size=image_size, batch_size=batch_size,
                                dtype=dtype)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  embed = jax.jit(lambda v, images: net.apply(v, resnet.normalize_images(images),
                                              train=False)[1])
  images = np.random.default_rng(0).integers(0, 256, (batch_size, image_size, image_size, 3),
                                             np.uint8)
  compiled, compile_times = report.compile_timed(embed, variables, images)
  return (lambda: float(jax.block_until_ready(compiled(variables, images))[0, 0]),
          {"device": str(jax.devices()[0].device_kind), **compile_times})


def torch_resnet(torch, *, stage_sizes: Sequence[int] = (3, 4, 6, 3), num_filters: int = 64,
                 latent_dim: int = 128):
  """torchvision's ResNet (BasicBlocks) + the paper's head as one nn.Sequential.

  Input [B, 3, H, W] -> logits [B, 2]; `model[:-2]` gives the embedding [B, latent_dim]
  (after the hidden ReLU, before dropout), as `resnet.ResNet` does.
  """
  nn = torch.nn

  class BasicBlock(nn.Module):

    def __init__(self, cin, cout, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(cout)
      self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(cout)
      self.downsample = None
      if stride != 1 or cin != cout:
        self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                        nn.BatchNorm2d(cout))

    def forward(self, x):
      y = torch.relu(self.bn1(self.conv1(x)))
      y = self.bn2(self.conv2(y))
      return torch.relu(y + (x if self.downsample is None else self.downsample(x)))

  layers = [nn.Conv2d(3, num_filters, 7, 2, 3, bias=False), nn.BatchNorm2d(num_filters),
            nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
  cin = num_filters
  for s, n in enumerate(stage_sizes):
    cout = num_filters * 2**s
    for i in range(n):
      layers.append(BasicBlock(cin, cout, 2 if (i == 0 and s > 0) else 1))
      cin = cout
  layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, latent_dim), nn.ReLU(),
             nn.Dropout(0.5), nn.Linear(latent_dim, 2)]
  return nn.Sequential(*layers)


def _torch_model(torch, model: str):
  if model == "tiny":
    tiny = configs.tiny()
    return torch_resnet(torch, stage_sizes=tiny.stage_sizes, num_filters=tiny.num_filters,
                        latent_dim=tiny.latent_dim)
  return torch_resnet(torch)


def torch_train_step(*, model: str = "resnet34", image_size: int,
                     batch_size: int) -> tuple[Callable[[], float], dict]:
  """A thunk running one PyTorch AdamW step on a fixed random batch."""
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  torch.set_num_threads(os.cpu_count() or 1)
  net = _torch_model(torch, model).train()
  opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
  x = torch.randn(batch_size, 3, image_size, image_size)
  y = (torch.rand(batch_size) < 0.1).long()

  def step():
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    return float(loss.detach())

  return step, {"device": "cpu", "threads": torch.get_num_threads()}


def torch_embed_step(*, model: str = "resnet34", image_size: int,
                     batch_size: int) -> tuple[Callable[[], float], dict]:
  """A thunk computing PyTorch embeddings [batch_size, latent_dim] (eval, inference mode)."""
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  torch.set_num_threads(os.cpu_count() or 1)
  features = _torch_model(torch, model).eval()[:-2]
  images = torch.randint(0, 256, (batch_size, image_size, image_size, 3), dtype=torch.uint8)
  mean = torch.tensor(resnet.IMAGENET_MEAN).view(1, 3, 1, 1)
  std = torch.tensor(resnet.IMAGENET_STD).view(1, 3, 1, 1)

  def step():
    with torch.inference_mode():
      x = (images.permute(0, 3, 1, 2).float() / 255.0 - mean) / std
      return float(features(x)[0, 0])

  return step, {"device": "cpu", "threads": torch.get_num_threads()}


def time_interleaved(thunks: Sequence[Callable[[], object]], *, steps: int, warmup: int,
                     settle_s: float = 0.01) -> list[dict]:
  """Times the thunks in turns (order reversed every other round) after `warmup` untimed
  rounds, pausing `settle_s` (untimed) before each call so the other framework's spinning
  threads park; per thunk the step-time median, quartiles, min, max (s), CPU seconds."""
  if steps < 1:
    raise ValueError(f"steps: expected an integer >= 1, got {steps}")
  for _ in range(warmup):
    for fn in thunks:
      fn()
  wall = [[] for _ in thunks]
  cpu = [[] for _ in thunks]
  last = [None] * len(thunks)
  for r in range(steps):
    for i in (range(len(thunks)) if r % 2 == 0 else reversed(range(len(thunks)))):
      if settle_s and len(thunks) > 1:
        time.sleep(settle_s)
      start, start_cpu = time.perf_counter(), time.process_time()
      last[i] = thunks[i]()
      wall[i].append(time.perf_counter() - start)
      cpu[i].append(time.process_time() - start_cpu)
  out = []
  for w, c, value in zip(wall, cpu, last):
    w = np.asarray(w)
    out.append({"median_step_seconds": float(np.median(w)),
                "q25_step_seconds": float(np.percentile(w, 25)),
                "q75_step_seconds": float(np.percentile(w, 75)),
                "min_step_seconds": float(w.min()), "max_step_seconds": float(w.max()),
                "median_cpu_seconds": float(np.median(c)), "step_seconds": w.tolist(),
                "last_output": value})
  return out


def _row(framework: str, task: str, timing: dict, info: dict, *, image_size: int,
         batch_size: int, dtype: str, steps: int) -> dict:
  med = timing["median_step_seconds"]
  return {"framework": framework, "task": task, "device": info.pop("device"),
          "image_size": image_size, "batch_size": batch_size, "dtype": dtype, "steps": steps,
          **timing, "images_per_second": batch_size / med,
          "images_per_second_iqr": [batch_size / timing["q75_step_seconds"],
                                    batch_size / timing["q25_step_seconds"]], **info}


def bench_size(*, model: str, image_size: int, batch_size: int, embed_batch_size: int,
               steps: int, warmup: int, use_torch: bool, embed: bool) -> list[dict]:
  """Train rows (and embedding rows) of one image size, the frameworks interleaved."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  if use_torch and importlib.util.find_spec("torch") is None:
    print("torch not importable: no PyTorch rows", file=sys.stderr)
    use_torch = False
  tasks = [("train", batch_size, jax_train_step, torch_train_step)]
  if embed:
    tasks.append(("embed", embed_batch_size, jax_embed_step, torch_embed_step))
  rows = []
  for task, batch, jax_fn, torch_fn in tasks:
    makers = [("jax", jax_fn)] + ([("torch", torch_fn)] if use_torch else [])
    built = [(name, *make(model=model, image_size=image_size, batch_size=batch))
             for name, make in makers]
    timings = time_interleaved([thunk for _, thunk, _ in built], steps=steps, warmup=warmup)
    for (name, _, info), timing in zip(built, timings):
      if name == "torch":
        import torch  # pylint: disable=g-import-not-at-top
        name = f"torch {torch.__version__}"
      rows.append(_row(name, task, timing, info, image_size=image_size, batch_size=batch,
                       dtype="float32", steps=steps))
  return rows


def bench_gpu(*, image_size: int, batch_size: int, steps: int, warmup: int) -> dict:
  """The JAX bfloat16 train step alone (GPU row)."""
  thunk, info = jax_train_step(image_size=image_size, batch_size=batch_size, dtype="bfloat16")
  timing = time_interleaved([thunk], steps=steps, warmup=warmup)[0]
  return _row("jax", "train", timing, info, image_size=image_size, batch_size=batch_size,
              dtype="bfloat16", steps=steps)


def parse_sizes(text: str) -> list[tuple[int, int]]:
  """'32x128,64x64' -> [(32, 128), (64, 64)] (image side x batch size)."""
  sizes = []
  for part in text.split(","):
    side, sep, batch = part.strip().partition("x")
    if not sep or not side.isdigit() or not batch.isdigit() or not int(side) or not int(batch):
      raise ValueError(f"--sizes: expected SIDExBATCH,..., e.g. {DEFAULT_SIZES}, got {text!r}")
    sizes.append((int(side), int(batch)))
  return sizes


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True, help="folder for bench_train.json (required)")
  p.add_argument("--sizes", default=DEFAULT_SIZES,
                 help="CPU rows as IMAGE_SIDExBATCH_SIZE, comma-separated (default: %(default)s)")
  p.add_argument("--image_size", type=int, default=None,
                 help="one CPU size instead of --sizes: image side in pixels (default: none; "
                      "32 if only --batch_size is given)")
  p.add_argument("--batch_size", type=int, default=None,
                 help="one CPU size instead of --sizes: batch size (default: none; 128 if only "
                      "--image_size is given)")
  p.add_argument("--embed_batch_size", type=int, default=256,
                 help="batch size of the embedding-extraction rows (default: %(default)s, "
                      "the configs' eval_batch_size)")
  p.add_argument("--gpu_batch_size", type=int, default=128,
                 help="batch size of the GPU row, JAX bfloat16 at 224 px, run only with a GPU "
                      "(default: %(default)s)")
  p.add_argument("--steps", type=int, default=30,
                 help="timed steps per row (medians and quartiles over them); the GPU row "
                      "times at least 20 (default: %(default)s)")
  p.add_argument("--warmup", type=int, default=3,
                 help="untimed steps per row after compilation; the GPU row runs at least 3 "
                      "(default: %(default)s)")
  p.add_argument("--no_torch", action="store_true",
                 help="skip the PyTorch rows (default: run them when torch imports)")
  p.add_argument("--no_embed", action="store_true",
                 help="skip the embedding-extraction rows (default: run them)")
  p.add_argument("--model", choices=("resnet34", "tiny"), default="resnet34",
                 help="the network; tiny is the 2-stage test ResNet (default: %(default)s)")
  p.add_argument("--xla_flags", default="",
                 help="appended to XLA_FLAGS before jax starts, to compare XLA:CPU options, "
                      "e.g. '--xla_cpu_experimental_ynn_fusion_type=' (default: none)")
  return p


def print_table(rows: Sequence[dict]) -> None:
  print(f"{'framework':<14}{'task':<7}{'device':<14}{'px':>4}{'batch':>6}{'dtype':>9}"
        f"{'img/s':>9}{'img/s IQR':>16}{'ms min':>9}{'ms max':>9}")
  for r in rows:
    lo, hi = r["images_per_second_iqr"]
    print(f"{r['framework'][:13]:<14}{r['task']:<7}{r['device'][:13]:<14}{r['image_size']:>4}"
          f"{r['batch_size']:>6}{r['dtype']:>9}{r['images_per_second']:>9.1f}"
          f"{f'{lo:.1f}-{hi:.1f}':>16}{1e3 * r['min_step_seconds']:>9.1f}"
          f"{1e3 * r['max_step_seconds']:>9.1f}")


def ratios(rows: Sequence[dict]) -> list[dict]:
  """JAX images/s over PyTorch's, per task and size (> 1: JAX faster)."""
  out = []
  for r in rows:
    if r["framework"] != "jax" or r["dtype"] != "float32":
      continue
    for t in rows:
      if (t["framework"].startswith("torch") and t["task"] == r["task"]
          and t["image_size"] == r["image_size"] and t["batch_size"] == r["batch_size"]):
        out.append({"task": r["task"], "image_size": r["image_size"],
                    "batch_size": r["batch_size"],
                    "jax_over_torch": r["images_per_second"] / t["images_per_second"]})
  return out


def main(argv: list[str] | None = None) -> dict:
  """Runs the benchmark rows, prints the table, writes bench_train.json; returns the result."""
  args = _parser().parse_args(argv)
  io.check_writable_dir(args.out)
  profile_layers.add_xla_flags(args.xla_flags)
  if args.image_size is not None or args.batch_size is not None:
    sizes = [(args.image_size or 32, args.batch_size or 128)]
  else:
    sizes = parse_sizes(args.sizes)
  load_before = os.getloadavg()[0]
  if load_before > 0.5:
    print(f"warning: 1-minute load average {load_before:.2f}: other work is running, the "
          "timings (PyTorch's multi-threaded ones most) will not be representative",
          file=sys.stderr)
  rows = []
  for image_size, batch_size in sizes:
    rows += bench_size(model=args.model, image_size=image_size, batch_size=batch_size,
                       embed_batch_size=args.embed_batch_size, steps=args.steps,
                       warmup=args.warmup, use_torch=not args.no_torch,
                       embed=not args.no_embed)
  if jax.default_backend() == "gpu":
    rows.append(bench_gpu(image_size=224, batch_size=args.gpu_batch_size,
                          steps=max(args.steps, 20), warmup=max(args.warmup, 3)))

  result = {"rows": rows, "ratios": ratios(rows), "cpu_count": os.cpu_count(),
            "load_average_1m": load_before, "load_average_1m_after": os.getloadavg()[0],
            "platform": platform.platform(), "jax": jax.__version__,
            "backend": jax.default_backend(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "args": vars(args)}
  print_table(rows)
  for r in result["ratios"]:
    print(f"JAX / PyTorch {r['task']:<5} {r['image_size']:>3} px batch {r['batch_size']:>3}: "
          f"{r['jax_over_torch']:.2f}x")
  print(f"{os.cpu_count()} CPUs, 1-minute load average {load_before:.2f} before, "
        f"{result['load_average_1m_after']:.2f} after")
  io.write_json(os.path.join(args.out, "bench_train.json"), result)
  return result


if __name__ == "__main__":
  main(sys.argv[1:])
