"""CPU lowerings of the ResNet ops that XLA:CPU runs far below PyTorch's speed.

`experiments/profile_layers.py` times every op of the ResNet34 training step against
PyTorch on the same shapes (README, "Speed"). Three kinds of op were 4 to 30x slower
than PyTorch per training step under jaxlib 0.10.2 (before this module):

  * convolutions over tiny images (<= 4 positions: the last stages at 32 and 64 px),
    forward and both gradients;
  * the input gradient of strided 3x3 convolutions over small images (XLA lowers it as a
    convolution with lhs dilation; 3x3/2 256->512 at 4x4 took 151 ms vs PyTorch's 3 ms);
  * the max pool's gradient (`select_and_scatter_add`; 32 ms vs 1.1 ms at 32 px).

Here they are the same math written as what XLA:CPU does fast: strided slices, one matmul,
and pads. `conv` computes a convolution as patches @ kernel (im2col), with the patches cut
by strided slices and only the kernel taps that touch the image (a 3x3 conv on a 1x1 image
is one matmul with the centre tap), so its gradients are matmuls and pads too. `max_pool`
takes the maximum over the window's strided slices and routes the gradient to the first
maximal element of each window, as `select_and_scatter_add` does. Both are used only on the
CPU backend (`jax.default_backend() == "cpu"`); elsewhere they are `lax.conv_general_dilated`
and `flax.linen.max_pool`. Tests: tests/test_resnet.py (values and gradients equal to the
plain ops, ties included).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# Inputs with at most this many positions are convolved as patches @ kernel on CPU...
SMALL_SPATIAL = 4
# ... and strided convolutions (whose input gradient is the slow part) up to this many.
SMALL_STRIDED = 16

Pads = tuple[tuple[int, int], tuple[int, int]]


def _on_cpu() -> bool:
  return jax.default_backend() == "cpu"


def _explicit_pads(padding) -> Pads | None:
  """((lo, hi), (lo, hi)) of non-negative ints, or None (a string or other form)."""
  if isinstance(padding, str):
    return None
  try:
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  except (TypeError, ValueError):
    return None
  return pads if len(pads) == 2 and min(min(p) for p in pads) >= 0 else None


def conv_lowering(x_shape: Sequence[int], strides: Sequence[int]) -> str:
  """'im2col' where `conv` computes a convolution of an NHWC input of this shape as
  patches @ kernel on CPU, else 'lax.conv'. The thresholds are the measured crossovers
  (README, "Speed")."""
  positions = x_shape[1] * x_shape[2]
  small = positions <= SMALL_SPATIAL or (max(strides) > 1 and positions <= SMALL_STRIDED)
  return "im2col" if small and _on_cpu() else "lax.conv"


def _taps(size: int, kernel: int, stride: int, low: int, out: int) -> list[int]:
  """Kernel offsets i whose input row i + stride * o - low lies in [0, size) for some o."""
  return [i for i in range(kernel)
          if any(0 <= i + stride * o - low < size for o in range(out))]


def _window_slice(xp: jax.Array, i: int, j: int, out: tuple[int, int],
                  strides: Sequence[int]) -> jax.Array:
  """xp[:, i + s_h * o_h, j + s_w * o_w, :] over the outputs o: [B, Ho, Wo, C]."""
  (ho, wo), (sh, sw) = out, strides
  b, _, _, c = xp.shape
  return lax.slice(xp, (0, i, j, 0), (b, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, c),
                   (1, sh, sw, 1))


def conv_im2col(x: jax.Array, kernel: jax.Array, strides: Sequence[int], padding: Pads,
                precision=None) -> jax.Array:
  """The convolution of x [B, H, W, Cin] with kernel [kh, kw, Cin, Cout] as patches @ kernel.

  Only kernel taps that touch the (unpadded) image enter the patches; the others multiply
  zeros. Returns [B, Ho, Wo, Cout], Ho = (H + lo + hi - kh) // s_h + 1, same for W.
  """
  _, h, w, _ = x.shape
  kh, kw, cin, cout = kernel.shape
  (plo, phi), (qlo, qhi) = padding
  out = ((h + plo + phi - kh) // strides[0] + 1, (w + qlo + qhi - kw) // strides[1] + 1)
  xp = jnp.pad(x, ((0, 0), (plo, phi), (qlo, qhi), (0, 0)))
  taps = [(i, j) for i in _taps(h, kh, strides[0], plo, out[0])
          for j in _taps(w, kw, strides[1], qlo, out[1])]
  # Patch features are tap-major: index t * Cin + c for the t-th kept tap.
  patches = jnp.concatenate([_window_slice(xp, i, j, out, strides) for i, j in taps], -1)
  weights = jnp.concatenate([kernel[i, j] for i, j in taps], 0)  # [T * Cin, Cout]
  return jnp.dot(patches, weights, precision=precision)


def conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
         dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
  """`lax.conv_general_dilated`, as patches @ kernel where XLA:CPU is slow (see module doc).

  A drop-in `conv_general_dilated` for `nn.Conv`: same arguments and result. The im2col path
  takes NHWC / HWIO, explicit padding, no dilation or groups, on CPU, for the shapes of
  `conv_lowering`; everything else goes to `lax.conv_general_dilated` unchanged.
  """
  dims = dimension_numbers
  pads = _explicit_pads(padding)
  plain = (feature_group_count == 1 and lhs_dilation in (None, (1, 1))
           and rhs_dilation in (None, (1, 1)) and lhs.ndim == 4 and pads is not None
           and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dims)
           == lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC")))
  if plain and conv_lowering(lhs.shape, window_strides) == "im2col":
    return conv_im2col(lhs, rhs, tuple(window_strides), pads, precision=precision)
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                  rhs_dilation, dims, feature_group_count,
                                  precision=precision, **kwargs)


def _pool_geometry(x: jax.Array, window, strides, padding):
  (kh, kw), (ph, pw) = window, padding
  hp, wp = x.shape[1] + sum(ph), x.shape[2] + sum(pw)
  out = ((hp - kh) // strides[0] + 1, (wp - kw) // strides[1] + 1)
  xp = jnp.pad(x, ((0, 0), ph, pw, (0, 0)), constant_values=-jnp.inf)
  return xp, out


def _window_max(x, window, strides, padding):
  xp, out = _pool_geometry(x, window, strides, padding)
  slices = [_window_slice(xp, i, j, out, strides)
            for i in range(window[0]) for j in range(window[1])]
  return jax.tree_util.tree_reduce(jnp.maximum, slices)


_max_pool_slices = jax.custom_vjp(_window_max, nondiff_argnums=(1, 2, 3))


def _max_pool_fwd(x, window, strides, padding):
  y = _window_max(x, window, strides, padding)
  return y, (x, y)


def _max_pool_bwd(window, strides, padding, residuals, g):
  # Each window's gradient goes to its first maximal element in row-major order (as XLA's
  # select_and_scatter_add with `ge` does); the transpose of a strided slice is a pad with
  # interior (stride - 1) zeros.
  x, y = residuals
  xp, out = _pool_geometry(x, window, strides, padding)
  taken = jnp.zeros(y.shape, bool)
  dxp = jnp.zeros(xp.shape, g.dtype)
  zero = jnp.zeros((), g.dtype)
  for i in range(window[0]):
    for j in range(window[1]):
      hit = (_window_slice(xp, i, j, out, strides) == y) & ~taken
      taken = taken | hit
      config = [(0, 0, 0),
                (i, xp.shape[1] - i - strides[0] * (out[0] - 1) - 1, strides[0] - 1),
                (j, xp.shape[2] - j - strides[1] * (out[1] - 1) - 1, strides[1] - 1),
                (0, 0, 0)]
      dxp = dxp + lax.pad(jnp.where(hit, g, zero), zero, config)
  (ph, pw) = padding
  return (dxp[:, ph[0]:xp.shape[1] - ph[1], pw[0]:xp.shape[2] - pw[1], :],)


_max_pool_slices.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x: jax.Array, window: tuple[int, int], *, strides: tuple[int, int],
             padding: Pads) -> jax.Array:
  """`nn.max_pool(x, window, strides, padding)` for x [B, H, W, C], explicit padding.

  On CPU: the maximum over the window's strided slices, with a gradient of slices and pads
  (module doc); elsewhere `nn.max_pool`. Equal values and gradients (tests/test_resnet.py).
  """
  window, strides = tuple(window), tuple(strides)
  pads = _explicit_pads(padding)
  if not _on_cpu() or pads is None or x.ndim != 4:
    return nn.max_pool(x, window, strides=strides, padding=padding)
  return _max_pool_slices(x, window, strides, pads)
