"""Atomic writes, strict JSON, the keyed cache and the up-front output checks."""

import json
import math
import os
import stat
from typing import NamedTuple

import numpy as np
import pytest

from thumb_jax import io


class _Pair(NamedTuple):
  a: float
  b: np.ndarray


def test_strict_json_writes_nan_and_inf_as_null(tmp_path):
  payload = {"x": math.nan, "y": [1.0, math.inf], "z": _Pair(np.float32(2), np.arange(2))}
  path = io.write_json(tmp_path / "r.json", payload)
  assert json.loads(path.read_text()) == {"x": None, "y": [1.0, None], "z": {"a": 2.0, "b": [0, 1]}}


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_honour_the_umask(tmp_path, umask):
  old = os.umask(umask)
  try:
    written = [io.write_json(tmp_path / "a.json", {}), io.write_text(tmp_path / "b.txt", "x"),
               io.write_npz(tmp_path / "c.npz", {"v": np.zeros(2)})]
  finally:
    os.umask(old)
  for path in written:
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
  path = io.write_json(tmp_path / "r.json", {"v": 1})
  with pytest.raises(TypeError):
    io.write_json(path, {"v": object()})
  assert json.loads(path.read_text()) == {"v": 1}
  assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_cache_recomputes_on_a_changed_key_and_cleans_stale_temporaries(tmp_path):
  calls = []

  def compute():
    calls.append(1)
    return {"v": np.arange(3) * len(calls)}

  (tmp_path / ".c.npz.abc.tmp").write_bytes(b"partial")          # a killed earlier write
  path = tmp_path / "c.npz"
  first, hit = io.cached_arrays(path, {"k": 1}, compute)
  assert not hit and not (tmp_path / ".c.npz.abc.tmp").exists()
  again, hit = io.cached_arrays(path, {"k": 1}, compute)
  assert hit and len(calls) == 1
  np.testing.assert_array_equal(again["v"], first["v"])
  other, hit = io.cached_arrays(path, {"k": 2}, compute)
  assert not hit and len(calls) == 2 and other["v"][1] == 2


def test_unreadable_cache_is_recomputed_with_a_warning(tmp_path):
  path = tmp_path / "c.npz"
  path.write_bytes(b"not a zip")
  with pytest.warns(UserWarning, match="unreadable cache"):
    arrays, hit = io.cached_arrays(path, {"k": 1}, lambda: {"v": np.ones(1)})
  assert not hit and arrays["v"][0] == 1


def test_output_folder_is_checked_up_front(tmp_path):
  assert io.check_writable_dir(tmp_path / "new" / "dir").is_dir()
  existing = tmp_path / "file"
  existing.write_text("x")
  with pytest.raises(ValueError, match="--out: expected a directory"):
    io.check_writable_dir(existing)
  if os.geteuid() != 0:                      # root writes into read-only folders anyway
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(ValueError, match="cannot write"):
      io.check_writable_dir(locked)
