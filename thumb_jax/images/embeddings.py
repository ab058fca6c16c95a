"""Penultimate-layer embeddings of the fine-tuned network, with a disk cache.

The last layer is retrained on these embeddings (the head's latent activations after
ReLU, before dropout). A cache entry is keyed by dataset, split, latent dimension and a
hash of the checkpoint's variables, so a hit skips the backbone entirely and any change
of weights misses.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from thumb_jax import devices, io
from thumb_jax.embedding_files import cache_field
from thumb_jax.images import resnet
from thumb_jax.images.input_pipeline import padded_batches


class Embeddings(NamedTuple):
  """One split's embeddings.

  Attributes:
    embeddings: float32 [N, latent_dim].
    labels: [N] in {+1, -1}.
    provenance: JSON-friendly dict (data source, config, checkpoint hash, ...).
    index: optional int64 [N], the images' ids in their source (`sources.Split.index`).
  """
  embeddings: np.ndarray
  labels: np.ndarray
  provenance: dict
  index: np.ndarray | None = None


def _variables(state_or_variables) -> dict[str, Any]:
  if hasattr(state_or_variables, "params"):
    return {"params": state_or_variables.params,
            "batch_stats": state_or_variables.batch_stats}
  return dict(state_or_variables)


def _embed(model: resnet.ResNet, variables, images: jax.Array) -> jax.Array:
  _, embedding = model.apply(variables, resnet.normalize_images(images), train=False)
  return embedding


def extract_embeddings(state_or_variables, model: resnet.ResNet, images: np.ndarray, *,
                       batch_size: int) -> np.ndarray:
  """The model's embeddings in eval mode.

  Args:
    state_or_variables: a TrainState (params, batch_stats) or {"params", "batch_stats"}.
    model: the `resnet.ResNet` the variables belong to.
    images: uint8 [N, H, W, 3] (host memory; sent to the device batch by batch).
    batch_size: every batch has this size, the last one zero-padded, so the jitted
      forward compiles once.

  Returns:
    float32 [N, latent_dim].
  """
  if np.ndim(images) != 4 or np.shape(images)[-1] != 3:
    raise ValueError(f"images: expected shape [N, H, W, 3], got {np.shape(images)}")
  variables = devices.replicate(_variables(state_or_variables))
  embed = jax.jit(_embed, static_argnums=0,
                  out_shardings=NamedSharding(devices.mesh(), PartitionSpec()))
  rows = devices.process_rows(batch_size)
  devices.check_divisible("batch_size", batch_size)
  out = np.empty((len(images), model.latent_dim), np.float32)
  start = 0
  batches = padded_batches((images,), batch_size)
  for (chunk,), mask in tqdm(batches, desc=f"embeddings of {len(images)} images", unit="batch",
                             total=-(-len(images) // batch_size), leave=False):
    m = int(mask.sum())
    out[start:start + m] = np.asarray(embed(model, variables,
                                            devices.global_batch(chunk[rows])))[:m]
    start += m
  return out


def params_hash(variables) -> str:
  """sha256 (hex) of a pytree's leaves: each leaf's path, dtype, shape and raw bytes."""
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
    a = np.ascontiguousarray(jax.device_get(leaf))
    h.update(jax.tree_util.keystr(path).encode())
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def cache_path(cache_dir: str | os.PathLike, *, dataset: str, split: str, latent_dim: int,
               checkpoint_hash: str) -> str:
  """File of one cache entry: {dataset}_{split}_d{latent_dim}_{hash[:16]}.npz.

  Characters other than letters, digits, '.' and '-' in the dataset and split names become
  '-' (celeba-Blond_Hair -> celeba-Blond-Hair), so '_' only separates the four fields and
  `thumb_jax.embedding_files.find_split_file` finds an entry by its split.
  """
  name = (f"{cache_field(dataset)}_{cache_field(split)}_d{latent_dim}_"
          f"{checkpoint_hash[:16]}.npz")
  return os.path.join(os.fspath(cache_dir), name)


def cached_embeddings(cache_dir: str | os.PathLike, *, dataset: str, split: str,
                      latent_dim: int, checkpoint_hash: str,
                      compute_fn: Callable[[], Embeddings]) -> Embeddings:
  """Loads an entry from the cache, or computes it with `compute_fn()` and stores it.

  Args:
    cache_dir: folder of .npz entries (created if missing).
    dataset: dataset name, e.g. "cifar10" or "celeba-Blond_Hair".
    split: "train", "val" or "test".
    latent_dim: embedding width (checked against what compute_fn returns).
    checkpoint_hash: `params_hash` of the variables that produced the embeddings.
    compute_fn: called only on a miss; returns `Embeddings`.

  Returns:
    `Embeddings` (float32 embeddings).

  The entry holds its key and is written atomically (`io.write_npz`); a file whose key
  differs, or that cannot be read (warned), is recomputed. Temporaries of killed writes
  are removed first.
  """
  path = cache_path(cache_dir, dataset=dataset, split=split, latent_dim=latent_dim,
                    checkpoint_hash=checkpoint_hash)
  key = {"dataset": dataset, "split": split, "latent_dim": int(latent_dim),
         "checkpoint_hash": checkpoint_hash}
  if devices.is_main_process():  # the one writer; another process may be mid-write now
    io.remove_stale_temporaries(cache_dir)
  if os.path.exists(path):
    try:
      with np.load(path, allow_pickle=False) as f:
        if json.loads(str(f["key"])) == key:
          return Embeddings(np.asarray(f["embeddings"], np.float32), np.asarray(f["labels"]),
                            json.loads(str(f["provenance"])),
                            np.asarray(f["index"]) if "index" in f.files else None)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
      warnings.warn(f"ignoring unreadable embedding cache {path}: {err}", stacklevel=2)
  result = compute_fn()
  emb = np.asarray(result.embeddings, np.float32)
  labels = np.asarray(result.labels)
  if emb.ndim != 2 or emb.shape[1] != latent_dim:
    raise ValueError(f"compute_fn: expected embeddings [N, {latent_dim}], got {emb.shape}")
  if labels.shape != emb.shape[:1]:
    raise ValueError(f"compute_fn: expected labels [{emb.shape[0]}], got {labels.shape}")
  provenance = json.loads(io.dumps(dict(result.provenance or {})))
  extra = {} if result.index is None else {"index": np.asarray(result.index)}
  if devices.is_main_process():  # one writer; every process computed the same arrays
    io.write_npz(path, {"embeddings": emb, "labels": labels,
                        "key": np.asarray(json.dumps(key, sort_keys=True)),
                        "provenance": np.asarray(json.dumps(provenance, sort_keys=True)),
                        **extra})
  return Embeddings(emb, labels, provenance, extra.get("index"))


def split_embeddings(state_or_variables, model: resnet.ResNet, split, *, batch_size: int,
                     provenance: Mapping[str, Any] | None = None) -> Embeddings:
  """`Embeddings` of a data split (.images, .labels, optional .index), for a `compute_fn`."""
  # Not getattr(split, "index"): on a NamedTuple without that field it is tuple.index.
  index = split.index if "index" in getattr(split, "_fields", ()) else None
  return Embeddings(extract_embeddings(state_or_variables, model, split.images,
                                       batch_size=batch_size),
                    np.asarray(split.labels), dict(provenance or {}),
                    None if index is None else np.asarray(index))
