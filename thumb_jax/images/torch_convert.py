"""torchvision ResNet checkpoints (`resnet34-b627a593.pth`) -> Flax backbone variables.

The checkpoint is a torch `state_dict`:
  conv1.weight, bn1.{weight, bias, running_mean, running_var, num_batches_tracked},
  layer{s}.{i}.conv{1,2}.weight, layer{s}.{i}.bn{1,2}.*,
  layer{s}.{i}.downsample.0.weight (1x1 conv), layer{s}.{i}.downsample.1.* (BN), fc.*.
It maps one to one onto `resnet.Backbone` (see the names there):
  conv weight  OIHW -> HWIO (transpose (2, 3, 1, 0))
  BN weight -> params/scale, bias -> params/bias,
     running_mean -> batch_stats/mean, running_var -> batch_stats/var.
`fc.*` and `num_batches_tracked` are ignored; the paper's MLP head is trained from scratch.

torch is imported inside `load_torch_state_dict` only, so the package does not need it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from thumb_jax.images import resnet

_IGNORED_SUFFIXES = ("num_batches_tracked",)
_IGNORED_PREFIXES = ("fc.",)


def check_checkpoint_file(path: str | os.PathLike, *, name: str = "path") -> None:
  """Raises FileNotFoundError, naming `name` and the path, unless `path` is a file."""
  if not os.path.isfile(path):
    what = "is a folder, not a file" if os.path.isdir(path) else "does not exist"
    raise FileNotFoundError(
        f"{name}: the torchvision checkpoint {os.fspath(path)!r} {what} (expected a .pth "
        "such as resnet34-b627a593.pth from https://download.pytorch.org/models/)")


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a torch checkpoint of tensors into numpy arrays (float32 for float tensors).

  Args:
    path: a file written by `torch.save(state_dict, path)`.

  Returns:
    {key: array}.

  Raises:
    FileNotFoundError: `path` is not a file (checked first).
    ImportError: torch is not installed.
    ValueError: the file is not a torch checkpoint or does not hold a flat mapping of
      tensors.
  """
  check_checkpoint_file(path)
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "load_torch_state_dict needs PyTorch to read a .pth checkpoint; install the CPU "
        "build, e.g. `pip install thumb_jax[torch]`.") from e
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as err:  # torch raises many types on a corrupt or foreign file.
    raise ValueError(f"path: {os.fspath(path)!r} is not a readable torch checkpoint "
                     f"({type(err).__name__}: {err})") from err
  if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
    obj = obj["state_dict"]
  if not isinstance(obj, Mapping):
    raise ValueError(f"path: expected a state_dict (mapping of tensors), got {type(obj).__name__}")
  out = {}
  for k, v in obj.items():
    if not isinstance(v, torch.Tensor):
      raise ValueError(f"path: entry {k!r} is a {type(v).__name__}, not a tensor")
    v = v.detach().cpu()
    out[k] = (v.float() if v.is_floating_point() else v).numpy()
  return out


def _torch_key(flax_path: tuple[str, ...]) -> tuple[str, str]:
  """('layer2_0', 'downsample_bn', 'mean') -> ('layer2.0.downsample.1.running_mean', kind)."""
  *modules, leaf = flax_path
  parts = []
  for m in modules:
    if m.startswith("layer"):
      parts.append(m.replace("_", "."))
    elif m == "downsample_conv":
      parts.append("downsample.0")
    elif m == "downsample_bn":
      parts.append("downsample.1")
    else:
      parts.append(m)
  name = {"kernel": "weight", "scale": "weight", "bias": "bias",
          "mean": "running_mean", "var": "running_var"}[leaf]
  return ".".join(parts + [name]), ("conv" if leaf == "kernel" else "bn")


def backbone_variables_from_state_dict(
    state_dict: Mapping[str, np.ndarray], *, stage_sizes=(3, 4, 6, 3), num_filters: int = 64,
) -> dict[str, Any]:
  """Converts a torchvision ResNet state_dict into `resnet.Backbone` variables.

  Args:
    state_dict: {torch key: array}, e.g. from `load_torch_state_dict`.
    stage_sizes: BasicBlocks per stage of the Flax backbone ((3, 4, 6, 3) for ResNet34).
    num_filters: stem width of the Flax backbone.

  Returns:
    {"params": ..., "batch_stats": ...} for `resnet.Backbone` (float32 arrays).

  Raises:
    ValueError: keys missing from or unexpected in the state_dict (named in the message),
      or a tensor of the wrong shape.
  """
  template = jax.eval_shape(
      lambda: resnet.Backbone(stage_sizes, num_filters).init(
          jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  flat = {(col, *path): leaf for col in ("params", "batch_stats")
          for path, leaf in traverse_util.flatten_dict(template[col]).items()}
  wanted = {_torch_key(path[1:])[0]: path for path in flat}
  present = {k for k in state_dict
             if not k.endswith(_IGNORED_SUFFIXES) and not k.startswith(_IGNORED_PREFIXES)}
  missing = sorted(set(wanted) - present)
  unexpected = sorted(present - set(wanted))
  if missing or unexpected:
    raise ValueError(
        f"state_dict: keys do not match a torchvision ResNet with stage_sizes={tuple(stage_sizes)}"
        f" and num_filters={num_filters}; missing {len(missing)}: {missing[:20]}"
        f"{' ...' if len(missing) > 20 else ''}; unexpected {len(unexpected)}: "
        f"{unexpected[:20]}{' ...' if len(unexpected) > 20 else ''}")
  out = {}
  for key, path in wanted.items():
    value = np.asarray(state_dict[key], np.float32)
    if _torch_key(path[1:])[1] == "conv":
      value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if value.shape != flat[path].shape:
      raise ValueError(f"state_dict: {key!r} has shape {np.shape(state_dict[key])}, which gives "
                       f"{value.shape} after conversion; the Flax backbone expects "
                       f"{flat[path].shape}")
    out[path] = jnp.asarray(value)
  return traverse_util.unflatten_dict(out)


def load_torchvision_backbone(path: str | os.PathLike, *, stage_sizes=(3, 4, 6, 3),
                              num_filters: int = 64) -> dict[str, Any]:
  """Reads `resnet34-b627a593.pth` (or any torchvision BasicBlock ResNet) as Backbone variables."""
  return backbone_variables_from_state_dict(
      load_torch_state_dict(path), stage_sizes=stage_sizes, num_filters=num_filters)


def with_backbone(variables: Mapping[str, Any], backbone: Mapping[str, Any]) -> dict[str, Any]:
  """Returns ResNet `variables` with the backbone subtree replaced; the head is kept.

  Args:
    variables: {"params", "batch_stats"} of a `resnet.ResNet` (e.g. a fresh init).
    backbone: {"params", "batch_stats"} of its `Backbone`, from `load_torchvision_backbone`.

  Raises:
    ValueError: the backbone's structure or shapes differ from the model's.
  """
  out = {}
  for col in ("params", "batch_stats"):
    old, new = variables[col]["backbone"], backbone[col]
    if jax.tree.structure(old) != jax.tree.structure(new) or any(
        a.shape != b.shape for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new))):
      raise ValueError(f"backbone: its {col} do not match the model's backbone (different "
                       "stage_sizes or num_filters?)")
    out[col] = {**variables[col], "backbone": jax.tree.map(
        lambda a, b: jnp.asarray(b, a.dtype), old, new)}
  return {**variables, **out}
