"""Shared fixtures: every numeric test runs with 64-bit floats off and on."""

# ruff: noqa: I001  (thumb_jax first: it sets the XLA:CPU flags before jax starts)
import os

# The suite compiles hundreds of small programs and runs each on tiny data, so compilation
# is most of its time: LLVM optimization level 0 (codegen only; the same HLO and semantics)
# took the suite from 6 min 0 s to 4 min 15 s on 2 cores. Set before jax starts; a value the
# user gives in XLA_FLAGS wins. Subprocess tests start their own jax without it.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_backend_optimization_level=0").strip()

import thumb_jax  # noqa: F401

import jax
import pytest


@pytest.fixture(params=[False, True], ids=["x32", "x64"])
def x64(request):
  """Runs the test body with jax_enable_x64 set to the parameter; yields it."""
  with jax.enable_x64(request.param):
    yield request.param


def rtol(x64_enabled: bool, *, f32: float = 2e-3, f64: float = 1e-9) -> float:
  """Relative tolerance by precision (float32 solves of conditioned systems lose ~1e-4)."""
  return f64 if x64_enabled else f32
