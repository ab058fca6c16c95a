"""Runs a small program in a fresh process on 4 virtual CPU devices (tests/test_devices*.py).

The device count (XLA_FLAGS) is fixed when jax starts, so multi-device checks run in a
subprocess and the rest of the suite keeps one device.
"""

import os
import subprocess
import sys


def four_device_row(script: str, *args: str) -> list[str]:
  """Runs `script` (with sys.argv[1:] = args) in a fresh process on 4 virtual CPU devices;
  its RESULT line's fields."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  done = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True,
                        text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  (row,) = [line.split()[1:] for line in done.stdout.splitlines() if line.startswith("RESULT")]
  return row
