"""Training throughput (images/s) of the jitted ResNet34 step, with a PyTorch side-by-side.

  python -m experiments.bench_train --out OUT

Measures, on whatever this machine has:
  * JAX ResNet34 (+ the paper's head), AdamW, float32, 32 px on CPU;
  * JAX ResNet34, bfloat16 compute, 224 px on the GPU if one is present;
  * PyTorch ResNet34 (torchvision's layout written with torch.nn, since torchvision may be
    missing) with AdamW on the same CPU, if torch is importable.
Each number is batch size / the median of --steps timed steps (`report.time_calls`) after
--warmup steps (compilation excluded and reported separately). Augmentation is off in both
frameworks so the work is the same. Prints a table and writes bench_train.json into --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys

import jax
import numpy as np

from experiments import report
from thumb_jax import io
from thumb_jax.images import configs, train
from thumb_jax.platform import PRNG_IMPL


def bench_jax(*, image_size: int, batch_size: int, dtype: str, steps: int, warmup: int) -> dict:
  """One jitted train step timed from the same state (`report.time_calls`): compile, warm-up."""
  config = dataclasses.replace(configs.cpu(), image_size=image_size, batch_size=batch_size,
                               dtype=dtype, augment=False)
  model = train.create_model(config)
  state = train.create_train_state(config, model, key=jax.random.key(0, impl=PRNG_IMPL),
                                   steps_per_epoch=100)
  # No buffer donation: every timed call starts from `state` again (the same work per step).
  step, _ = train.jitted_steps(crop_padding=0, flip=False)
  rng = np.random.default_rng(0)
  batch = train.Batch(rng.integers(0, 256, (batch_size, image_size, image_size, 3), np.uint8),
                      np.where(rng.random(batch_size) < 0.1, 1, -1).astype(np.int32))
  key = jax.random.key(1, impl=PRNG_IMPL)
  compiled, compile_times = report.compile_timed(step, state, batch, key)
  for _ in range(warmup):
    jax.block_until_ready(compiled(state, batch, key))
  timing = report.time_calls(compiled, state, batch, key, repeats=steps)
  return {"framework": "jax", "device": str(jax.devices()[0].device_kind),
          "image_size": image_size, "batch_size": batch_size, "dtype": dtype,
          "steps": steps, "median_step_seconds": timing.median_s,
          "images_per_second": batch_size / timing.median_s, **compile_times,
          "loss": float(timing.output[1].loss)}


def _torch_resnet34(torch, latent_dim: int = 128):
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

  layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(3, 2, 1)]
  cin = 64
  for s, n in enumerate((3, 4, 6, 3)):
    cout = 64 * 2**s
    for i in range(n):
      layers.append(BasicBlock(cin, cout, 2 if (i == 0 and s > 0) else 1))
      cin = cout
  layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, latent_dim), nn.ReLU(),
             nn.Dropout(0.5), nn.Linear(latent_dim, 2)]
  return nn.Sequential(*layers)


def bench_torch(*, image_size: int, batch_size: int, steps: int, warmup: int) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  torch.set_num_threads(os.cpu_count() or 1)
  model = _torch_resnet34(torch).train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
  x = torch.randn(batch_size, 3, image_size, image_size)
  y = (torch.rand(batch_size) < 0.1).long()

  def step():
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return float(loss.detach())

  for _ in range(warmup):
    step()
  timing = report.time_calls(step, repeats=steps)  # its first call is one more warm-up step
  return {"framework": f"torch {torch.__version__}", "device": "cpu", "image_size": image_size,
          "batch_size": batch_size, "dtype": "float32", "steps": steps,
          "median_step_seconds": timing.median_s,
          "images_per_second": batch_size / timing.median_s, "threads": torch.get_num_threads(),
          "loss": timing.output}


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True, help="folder for bench_train.json (required)")
  p.add_argument("--batch_size", type=int, default=128,
                 help="batch size of the CPU rows, JAX float32 and PyTorch (default: %(default)s)")
  p.add_argument("--gpu_batch_size", type=int, default=128,
                 help="batch size of the GPU row, JAX bfloat16 at 224 px, run only with a GPU "
                      "(default: %(default)s)")
  p.add_argument("--steps", type=int, default=5,
                 help="timed steps per row; the GPU row times at least 20 (default: %(default)s)")
  p.add_argument("--warmup", type=int, default=1,
                 help="untimed steps after compilation; the GPU row runs at least 3 "
                      "(default: %(default)s)")
  p.add_argument("--image_size", type=int, default=32,
                 help="image side of the CPU rows in pixels (default: %(default)s)")
  p.add_argument("--no_torch", action="store_true",
                 help="skip the PyTorch row (default: run it when torch imports)")
  return p


def main(argv: list[str] | None = None) -> dict:
  """Runs the benchmark rows, prints the table, writes bench_train.json; returns the result."""
  args = _parser().parse_args(argv)
  io.check_writable_dir(args.out)

  rows = [bench_jax(image_size=args.image_size, batch_size=args.batch_size, dtype="float32",
                    steps=args.steps, warmup=args.warmup)]
  if jax.default_backend() == "gpu":
    rows.append(bench_jax(image_size=224, batch_size=args.gpu_batch_size, dtype="bfloat16",
                          steps=max(args.steps, 20), warmup=max(args.warmup, 3)))
  if not args.no_torch:
    try:
      rows.append(bench_torch(image_size=args.image_size, batch_size=args.batch_size,
                              steps=args.steps, warmup=args.warmup))
    except ImportError:
      print("torch not importable: no PyTorch row", file=sys.stderr)

  result = {"rows": rows, "cpu_count": os.cpu_count(), "load_average_1m": os.getloadavg()[0],
            "platform": platform.platform(), "jax": jax.__version__,
            "backend": jax.default_backend()}
  print(f"{'framework':<14}{'device':<18}{'px':>5}{'batch':>7}{'dtype':>10}{'img/s':>10}")
  for r in rows:
    print(f"{r['framework'][:13]:<14}{r['device'][:17]:<18}{r['image_size']:>5}{r['batch_size']:>7}"
          f"{r['dtype']:>10}{r['images_per_second']:>10.1f}")
  print(f"{os.cpu_count()} CPUs, 1-minute load average {result['load_average_1m']:.2f}")
  io.write_json(os.path.join(args.out, "bench_train.json"), result)
  return result


if __name__ == "__main__":
  main(sys.argv[1:])
