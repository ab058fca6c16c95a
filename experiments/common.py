"""Config, CLI and results for the experiment entry points (figures and intervals: `report`).

Every entry point follows one pattern:

    def config() -> Config: ...                 # the default, a frozen dataclass
    def quick(cfg: Config) -> Config: ...        # a tiny variant (for --quick and tests)
    def main(argv=None) -> dict:
      cfg, out = common.parse_args(argv, config(), quick=quick, description=__doc__)
      ...
      common.save_results(out / "results.json", config=cfg, results=...)

and the CLI is `python -m experiments.NAME --out DIR [--quick] [--set key=value ...]`
(--help lists every key with its default; --out is checked to be writable up front)
(`parse_args(..., flags=("dataset",))` also accepts `--dataset VALUE` for that field).
Tuples are given comma-separated (`--set deltas=0.1,0.5`), booleans as true/false.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io as _io
import os
import platform
import time
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from experiments.report import plt
from thumb_jax import io

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


def config_help(cfg) -> str:
  """One line per config field: `key=default  (type)`, for --help."""
  hints = typing.get_type_hints(type(cfg))
  lines = []
  for field in dataclasses.fields(cfg):
    value = getattr(cfg, field.name)
    if isinstance(value, tuple):
      shown = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    elif isinstance(value, bool):
      shown = str(value).lower()
    else:
      shown = f"{value:g}" if isinstance(value, float) else str(value)
    hint = hints[field.name]
    kind = hint.__name__ if isinstance(hint, type) else str(hint)
    lines.append(f"  {field.name}={shown}  ({kind})")
  return "\n".join(lines)


def parse_args(argv: Sequence[str] | None, default: C, *,
               quick: Callable[[C], C] | None = None,
               description: str | None = None,
               flags: Sequence[str] = ()) -> tuple[C, Path]:
  """Parses `--out DIR [--quick] [--FLAG value ...] [--set key=value ...]` into (config, dir).

  --quick applies `quick` to the default first; then each config field named in `flags`
  may be given as its own option (`--dataset celeba` is `--set dataset=celeba`); --set
  overrides come last. --help lists every --set key with its default. The output
  directory is created and checked to be writable before anything runs.

  Raises:
    ValueError: a bad override, or an --out that is a file or not writable.
  """
  parser = argparse.ArgumentParser(
      description=(description or "").split("\n\n")[0],
      epilog="--set keys (defaults):\n" + config_help(default),
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True, help="output directory (created)")
  parser.add_argument("--quick", action="store_true", help="tiny configuration")
  for name in flags:
    parser.add_argument(f"--{name}", dest=f"flag_{name}", default=None, metavar="VALUE",
                        help=f"config field {name!r} (same as --set {name}=VALUE)")
  parser.add_argument("--set", dest="overrides", action="append", default=[],
                      metavar="KEY=VALUE", help="override a config field (repeatable; keys below)")
  args = parser.parse_args(argv)
  cfg = default
  if args.quick:
    if quick is None:
      raise ValueError("--quick: this entry point has no quick variant")
    cfg = quick(cfg)
  given = [f"{name}={getattr(args, f'flag_{name}')}" for name in flags
           if getattr(args, f"flag_{name}") is not None]
  cfg = override(cfg, [*given, *args.overrides])
  return cfg, io.check_writable_dir(args.out, name="--out")


def ensure_dir(path) -> Path:
  path = Path(path)
  path.mkdir(parents=True, exist_ok=True)
  return path


def positive_ints(cfg, *names: str, minimum: int = 1) -> None:
  """Raises ValueError naming the first field of `names` that is not an int >= minimum."""
  for name in names:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
      raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")


# ----------------------------------------------------------------------------- platform / timing

def platform_info() -> dict:
  """Versions and hardware that a timing or a number depends on."""
  import jax  # local: keeps `common` importable without initializing a backend

  from thumb_jax import devices

  device = jax.devices()[0]
  return {
      "jax": jax.__version__,
      "numpy": np.__version__,
      "python": platform.python_version(),
      **devices.describe(),               # devices, processes, backend
      "device_kind": device.device_kind,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
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

def save_results(path, *, config, results: Mapping, **extra) -> Path:
  """Writes {"config", "platform", **extra, "results"} atomically as JSON."""
  payload = {"config": config, "platform": platform_info(), **extra, "results": results}
  return io.write_json(path, payload)


def write_csv(path, rows: Sequence[Mapping]) -> Path:
  """Writes a list of flat dicts (same keys) as CSV atomically; NaN is an empty cell."""
  fields = list(rows[0].keys()) if rows else []
  text = _io.StringIO(newline="")
  writer = csv.DictWriter(text, fieldnames=fields)
  writer.writeheader()
  for row in rows:
    cells = {k: io.to_jsonable(v) for k, v in row.items()}
    writer.writerow({k: "" if v is None else v for k, v in cells.items()})
  return io.write_text(path, text.getvalue())


def save_figure(fig, path, *, dpi: int = 130) -> Path:
  """Saves a matplotlib figure (Agg backend) and closes it."""
  path = Path(path)
  ensure_dir(path.parent)
  fig.savefig(path, dpi=dpi, bbox_inches="tight")
  plt.close(fig)
  return path
