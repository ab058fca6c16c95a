"""Small helpers shared by the experiment entry points.

Every entry point follows one pattern:

    def config() -> Config: ...                 # the default, a frozen dataclass
    def quick(cfg: Config) -> Config: ...        # a tiny variant (for --quick and tests)
    def main(argv=None) -> dict:
      cfg, out = common.parse_args(argv, config(), quick=quick, description=__doc__)
      ...
      common.save_results(out / "results.json", config=cfg, results=...)

and the CLI is `python -m experiments.NAME --out DIR [--quick] [--set key=value ...]`
(`parse_args(..., flags=("dataset",))` also accepts `--dataset VALUE` for that field).
Tuples are given comma-separated (`--set deltas=0.1,0.5`), booleans as true/false.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import math
import os
import platform
import tempfile
import time
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after selecting the Agg backend)
import numpy as np  # noqa: E402

C = TypeVar("C")


# ----------------------------------------------------------------------------- config / CLI

def _parse_bool(text: str) -> bool:
  lowered = text.strip().lower()
  if lowered in ("1", "true", "yes", "on"):
    return True
  if lowered in ("0", "false", "no", "off"):
    return False
  raise ValueError(f"expected a boolean (true/false), got {text!r}")


def _parse_value(text: str, hint: Any):
  """Parses `text` as the annotated type `hint` (int, float, bool, str, tuple[X, ...])."""
  origin = typing.get_origin(hint)
  if origin is tuple:
    args = [a for a in typing.get_args(hint) if a is not Ellipsis]
    item = args[0] if args else str
    parts = [p for p in text.split(",") if p.strip()]
    return tuple(_parse_value(p.strip(), item) for p in parts)
  if origin in (typing.Union, types.UnionType):
    options = [a for a in typing.get_args(hint) if a is not type(None)]
    if text.strip().lower() == "none":
      return None
    return _parse_value(text, options[0])
  if hint is bool:
    return _parse_bool(text)
  if hint in (int, float, str):
    return hint(text)
  raise ValueError(f"unsupported config type {hint!r}")


def override(cfg: C, pairs: Iterable[str]) -> C:
  """Returns `cfg` with `key=value` overrides applied, parsed by the field types.

  Raises:
    ValueError: unknown key, missing '=', or a value of the wrong type.
  """
  hints = typing.get_type_hints(type(cfg))
  names = [f.name for f in dataclasses.fields(cfg)]
  changes = {}
  for pair in pairs:
    key, sep, text = pair.partition("=")
    key = key.strip()
    if not sep:
      raise ValueError(f"--set: expected key=value, got {pair!r}")
    if key not in names:
      raise ValueError(f"--set: unknown key {key!r}; expected one of {names}")
    try:
      changes[key] = _parse_value(text, hints[key])
    except ValueError as err:
      raise ValueError(f"--set {key}: {err}") from None
  return dataclasses.replace(cfg, **changes)


def parse_args(argv: Sequence[str] | None, default: C, *,
               quick: Callable[[C], C] | None = None,
               description: str | None = None,
               flags: Sequence[str] = ()) -> tuple[C, Path]:
  """Parses `--out DIR [--quick] [--FLAG value ...] [--set key=value ...]` into (config, dir).

  --quick applies `quick` to the default first; then each config field named in `flags`
  may be given as its own option (`--dataset celeba` is `--set dataset=celeba`); --set
  overrides come last. The output directory is created.
  """
  parser = argparse.ArgumentParser(description=(description or "").split("\n\n")[0])
  parser.add_argument("--out", required=True, help="output directory (created)")
  parser.add_argument("--quick", action="store_true", help="tiny configuration")
  for name in flags:
    parser.add_argument(f"--{name}", dest=f"flag_{name}", default=None, metavar="VALUE",
                        help=f"config field {name!r} (same as --set {name}=VALUE)")
  parser.add_argument("--set", dest="overrides", action="append", default=[],
                      metavar="KEY=VALUE", help="override a config field (repeatable)")
  args = parser.parse_args(argv)
  cfg = default
  if args.quick:
    if quick is None:
      raise ValueError("--quick: this entry point has no quick variant")
    cfg = quick(cfg)
  given = [f"{name}={getattr(args, f'flag_{name}')}" for name in flags
           if getattr(args, f"flag_{name}") is not None]
  cfg = override(cfg, [*given, *args.overrides])
  return cfg, ensure_dir(args.out)


def ensure_dir(path) -> Path:
  path = Path(path)
  path.mkdir(parents=True, exist_ok=True)
  return path


# ----------------------------------------------------------------------------- platform / timing

def platform_info() -> dict:
  """Versions and hardware that a timing or a number depends on."""
  import jax  # local: keeps `common` importable without initializing a backend

  device = jax.devices()[0]
  return {
      "jax": jax.__version__,
      "numpy": np.__version__,
      "python": platform.python_version(),
      "backend": jax.default_backend(),
      "device_kind": device.device_kind,
      "device_count": jax.device_count(),
      "cpu_count": os.cpu_count(),
      "machine": platform.machine(),
      "x64": bool(jax.config.jax_enable_x64),
      "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
  }


@contextlib.contextmanager
def stopwatch(record: dict, name: str):
  """Adds the wall time of the block (seconds) to record[name]."""
  start = time.perf_counter()
  try:
    yield
  finally:
    record[name] = record.get(name, 0.0) + time.perf_counter() - start


def progress(iterable: Iterable, *, desc: str, total: int | None = None):
  """A tqdm bar on stderr (silenced when stderr is not a terminal)."""
  from tqdm.auto import tqdm

  return tqdm(iterable, desc=desc, total=total, disable=None, leave=False)


# ----------------------------------------------------------------------------- writing results

def to_jsonable(obj):
  """Arrays -> lists, NaN/inf -> None (strict JSON), dataclasses/NamedTuples -> dicts."""
  if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
    return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
  if isinstance(obj, tuple) and hasattr(obj, "_asdict"):
    return {k: to_jsonable(v) for k, v in obj._asdict().items()}
  if isinstance(obj, Mapping):
    return {str(k): to_jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [to_jsonable(v) for v in obj]
  if isinstance(obj, Path):
    return str(obj)
  if hasattr(obj, "__array__") and not isinstance(obj, (str, bytes)):
    arr = np.asarray(obj)
    return to_jsonable(arr.item()) if arr.ndim == 0 else to_jsonable(arr.tolist())
  if isinstance(obj, (np.integer, np.bool_)):
    return obj.item()
  if isinstance(obj, (float, np.floating)):
    value = float(obj)
    return value if math.isfinite(value) else None
  return obj


def write_json(path, payload) -> Path:
  """Atomic JSON write: a temp file in the same directory, then os.replace."""
  path = Path(path)
  ensure_dir(path.parent)
  text = json.dumps(to_jsonable(payload), indent=1, allow_nan=False)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text + "\n")
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise
  return path


def save_results(path, *, config, results: Mapping, **extra) -> Path:
  """Writes {"config", "platform", **extra, "results"} atomically as JSON."""
  payload = {"config": config, "platform": platform_info(), **extra, "results": results}
  return write_json(path, payload)


def write_csv(path, rows: Sequence[Mapping]) -> Path:
  """Writes a list of flat dicts (same keys) as CSV; NaN is written as an empty cell."""
  path = Path(path)
  ensure_dir(path.parent)
  fields = list(rows[0].keys()) if rows else []
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    for row in rows:
      writer.writerow({k: ("" if to_jsonable(v) is None else to_jsonable(v)) for k, v in row.items()})
  return path


def save_figure(fig, path, *, dpi: int = 130) -> Path:
  """Saves a matplotlib figure (Agg backend) and closes it."""
  path = Path(path)
  ensure_dir(path.parent)
  fig.savefig(path, dpi=dpi, bbox_inches="tight")
  plt.close(fig)
  return path
