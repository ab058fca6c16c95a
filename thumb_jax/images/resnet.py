"""ResNet backbone with torchvision's layout and the paper's MLP head, in Flax Linen.

Linen (README, "Design choices"): its module tree (explicitly named convs and batch norms,
`params` / `batch_stats` collections) maps one to one onto torchvision's `state_dict`, which
keeps `torch_convert` a table lookup, and the model is a pure function of its variables.

Layout (torchvision `resnet34`, v1.5: stride in the first 3x3 conv of a block):

  conv1 7x7/2 (pad 3) -> bn1 -> relu -> maxpool 3x3/2 (pad 1)
  layer{1..4}: BasicBlocks, widths 64, 128, 256, 512, stage_sizes (3, 4, 6, 3);
    the first block of layers 2..4 has stride 2 and a 1x1/2 conv + BN shortcut
  global average pool -> features [B, 8 * num_filters]
  head: Dense(latent_dim) -> relu -> [embedding] -> Dropout(0.5) -> Dense(num_classes)

Padding is explicit (not "SAME"), because for stride 2 on even sizes XLA's SAME pads
(0, 1) where PyTorch pads (1, 1); explicit padding makes converted weights give the same
features. Batch norm uses PyTorch's defaults (momentum 0.1, i.e. Flax momentum 0.9;
epsilon 1e-5).

Parameter names mirror torchvision: `backbone/conv1`, `backbone/bn1`,
`backbone/layer{s}_{i}/{conv1, bn1, conv2, bn2, downsample_conv, downsample_bn}` and
`head_hidden`, `head_out`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from thumb_jax.images import cpu_ops

# torchvision initializes convs with kaiming_normal_(mode="fan_out", nonlinearity="relu").
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

class BasicBlock(nn.Module):
  """Two 3x3 convs with a residual connection (torchvision `BasicBlock`).

  Attributes:
    filters: output channels.
    strides: stride of the first conv and of the shortcut.
    dtype: compute dtype.
  """
  filters: int
  strides: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """x [B, H, W, C] -> [B, H / strides, W / strides, filters]."""
    conv = partial(nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=_conv_init,
                   conv_general_dilated=cpu_ops.conv)
    norm = partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                   epsilon=1e-5, dtype=self.dtype)
    s = self.strides
    y = conv(self.filters, (3, 3), (s, s), padding=((1, 1), (1, 1)), name="conv1")(x)
    y = nn.relu(norm(name="bn1")(y))
    y = conv(self.filters, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(y)
    y = norm(name="bn2")(y)
    if s != 1 or x.shape[-1] != self.filters:
      x = conv(self.filters, (1, 1), (s, s), padding=((0, 0), (0, 0)),
               name="downsample_conv")(x)
      x = norm(name="downsample_bn")(x)
    return nn.relu(x + y)


class Backbone(nn.Module):
  """torchvision ResNet up to and including the global average pool.

  Attributes:
    stage_sizes: BasicBlocks per stage, (3, 4, 6, 3) for ResNet34.
    num_filters: width of the stem and first stage; stage k has num_filters * 2**k.
    dtype: compute dtype (params stay float32).
  """
  stage_sizes: Sequence[int]
  num_filters: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """x [B, H, W, 3] float (normalized) -> pooled features [B, num_filters * 2**(S-1)]."""
    x = jnp.asarray(x, self.dtype)
    x = nn.Conv(self.num_filters, (7, 7), (2, 2), padding=((3, 3), (3, 3)), use_bias=False,
                dtype=self.dtype, kernel_init=_conv_init, name="conv1")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                     dtype=self.dtype, name="bn1")(x)
    x = nn.relu(x)
    x = cpu_ops.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for s, num_blocks in enumerate(self.stage_sizes):
      for i in range(num_blocks):
        strides = 2 if s > 0 and i == 0 else 1
        x = BasicBlock(self.num_filters * 2**s, strides=strides, dtype=self.dtype,
                       name=f"layer{s + 1}_{i}")(x, train=train)
    return jnp.mean(x, axis=(1, 2))


class ResNet(nn.Module):
  """Backbone + MLP head; returns logits and the latent embedding.

  Attributes:
    stage_sizes: BasicBlocks per stage.
    num_filters: stem width (64 for torchvision ResNets).
    latent_dim: width of the head's hidden layer, the embedding the last layer is
      retrained on (128, 256 or 512 in the paper).
    num_classes: output logits (2: index 1 is class +1, index 0 is class -1).
    dropout_rate: dropout after the embedding (0.5 in the paper).
    dtype: compute dtype, e.g. jnp.bfloat16 on GPU, jnp.float32 on CPU. Outputs are
      cast to float32.
  """
  stage_sizes: Sequence[int]
  num_filters: int = 64
  latent_dim: int = 128
  num_classes: int = 2
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
    """Forward pass.

    Args:
      x: images [B, H, W, 3], normalized floats.
      train: batch statistics and dropout on (needs a "dropout" rng) or off.

    Returns:
      (logits [B, num_classes], embedding [B, latent_dim]), both float32; the embedding
      is the hidden activation after ReLU and before dropout.
    """
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"x: expected shape [B, H, W, 3], got {x.shape}")
    features = Backbone(self.stage_sizes, self.num_filters, self.dtype, name="backbone")(
        x, train=train)
    h = nn.relu(nn.Dense(self.latent_dim, dtype=self.dtype, name="head_hidden")(features))
    z = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head_out")(z)
    return logits.astype(jnp.float32), h.astype(jnp.float32)


ResNet18 = partial(ResNet, stage_sizes=(2, 2, 2, 2))
ResNet34 = partial(ResNet, stage_sizes=(3, 4, 6, 3))
# For tests: two stages, 8 and 16 channels, a downsample block in stage 2.
ResNetTiny = partial(ResNet, stage_sizes=(1, 1), num_filters=8, latent_dim=16)

# ImageNet statistics used by torchvision's pretrained weights.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_images(images: jax.Array, *, dtype: Any = jnp.float32) -> jax.Array:
  """uint8 images [..., H, W, 3] -> (x / 255 - mean) / std in `dtype`, ImageNet statistics."""
  x = jnp.asarray(images, jnp.float32) / 255.0
  x = (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
  return x.astype(dtype)
