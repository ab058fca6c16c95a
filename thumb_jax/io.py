"""Files that must never be half-written: atomic JSON / NPZ / text writes and a keyed cache.

Every write goes to a temporary file in the target's folder (named `.NAME.*.tmp`), is
flushed and fsynced, gets the mode a plain `open` would give under the current umask,
and is renamed into place (`os.replace`), so a reader sees the old file or the new one,
never a torn one. A write killed before the rename leaves only a `.tmp` file, which
`remove_stale_temporaries` (called by the cache) deletes later.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io as _io
import json
import math
import os
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

_TMP_SUFFIX = ".tmp"


def _umask_mode() -> int:
  """The mode `open(path, "w")` would give a new file (0o666 minus the umask)."""
  mask = os.umask(0)
  os.umask(mask)
  return 0o666 & ~mask


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
  """Writes `data` to `path` atomically (creates the folder). Returns the path."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_SUFFIX)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, _umask_mode())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise
  return path


def write_text(path: str | os.PathLike, text: str) -> Path:
  """Writes `text` (UTF-8) atomically."""
  return write_bytes(path, text.encode())


def to_jsonable(obj: Any) -> Any:
  """Strict-JSON form: arrays -> lists, NaN / inf -> None, NamedTuples / dataclasses -> dicts."""
  if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
    return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
  if isinstance(obj, tuple) and hasattr(obj, "_asdict"):
    return {k: to_jsonable(v) for k, v in obj._asdict().items()}
  if isinstance(obj, Mapping):
    return {str(k): to_jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [to_jsonable(v) for v in obj]
  if isinstance(obj, os.PathLike):
    return os.fspath(obj)
  if hasattr(obj, "__array__") and not isinstance(obj, (str, bytes)):
    arr = np.asarray(obj)
    return to_jsonable(arr.item()) if arr.ndim == 0 else to_jsonable(arr.tolist())
  if isinstance(obj, (np.integer, np.bool_)):
    return obj.item()
  if isinstance(obj, (float, np.floating)):
    value = float(obj)
    return value if math.isfinite(value) else None
  return obj


def dumps(obj: Any) -> str:
  """Strict JSON text (NaN / inf written as null), indented, ending in a newline."""
  return json.dumps(to_jsonable(obj), indent=1, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> Path:
  """Writes `obj` as strict JSON atomically."""
  return write_text(path, dumps(obj))


def write_npz(path: str | os.PathLike, arrays: Mapping[str, Any]) -> Path:
  """Writes arrays as an uncompressed .npz atomically."""
  buffer = _io.BytesIO()
  np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
  return write_bytes(path, buffer.getvalue())


def check_writable_dir(path: str | os.PathLike, *, name: str = "--out") -> Path:
  """Creates folder `path` if needed and checks that files can be written there, up front.

  Raises:
    ValueError: `path` is an existing file, or the folder cannot be created or written.
  """
  path = Path(path)
  if path.exists() and not path.is_dir():
    raise ValueError(f"{name}: expected a directory, got an existing file {str(path)!r}")
  try:
    path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=path):
      pass
  except OSError as err:
    raise ValueError(f"{name}: cannot write to {str(path)!r} ({err.strerror or err})") from None
  return path


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
  """Deletes the `.NAME.*.tmp` files that a killed atomic write left in `folder`.

  Returns:
    How many were removed.
  """
  folder = Path(folder)
  removed = 0
  if folder.is_dir():
    for tmp in folder.glob(f".*{_TMP_SUFFIX}"):
      with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
        removed += 1
  return removed


def key_digest(key: Mapping[str, Any], *, length: int = 24) -> str:
  """A short, stable hash of a JSON-able key (sorted keys)."""
  text = json.dumps(to_jsonable(key), sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:length]


def cached_arrays(path: str | os.PathLike, key: Mapping[str, Any],
                  compute: Callable[[], Mapping[str, np.ndarray]], *, writer: bool = True
                  ) -> tuple[dict[str, np.ndarray], bool]:
  """Arrays stored at `path` under exactly `key`, else `compute()` written there atomically.

  The key is stored inside the file (array "key", sorted JSON) and compared on read, so a
  file written for other inputs is recomputed, never reused. An unreadable file is
  recomputed with a warning; a failed write warns and returns the computed arrays.

  `writer=False` (every process but one, in a multi-process run) reads and computes but
  neither cleans up nor writes, so it never removes another process's in-flight write.

  Returns:
    (arrays, whether they came from the file).
  """
  path = Path(path)
  text = json.dumps(to_jsonable(key), sort_keys=True)
  if writer:
    remove_stale_temporaries(path.parent)
  if path.is_file():
    try:
      with np.load(path, allow_pickle=False) as f:
        if "key" in f.files and str(f["key"]) == text:
          return {k: f[k] for k in f.files if k != "key"}, True
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
      warnings.warn(f"ignoring unreadable cache {path}: {err}", stacklevel=2)
  arrays = {k: np.asarray(v) for k, v in compute().items()}
  if not writer:
    return arrays, False
  try:
    write_npz(path, {"key": np.array(text), **arrays})
  except OSError as err:
    warnings.warn(f"could not write the cache {path}: {err}", stacklevel=2)
  return arrays, False
