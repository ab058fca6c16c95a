"""Command line: a theory-guided class weight for embeddings stored on disk.

    python -m thumb_jax.cli recommend --features emb.npz [--features-key x --labels-key y] \\
        [--ridge 0 | --ridge auto] [--model isotropic | --model general] [--objective worst] \\
        [--dimension participation] [--bootstrap 200] [--out report.json]
    python -m thumb_jax.cli recommend --features X.npy --labels y.npy ...

Input: an .npz holding features [n, d] and labels [n] (keys given, or the first of
`embedding_files.FEATURE_KEYS` and `LABEL_KEYS` that exists, the order every embedding reader
uses), or an .npy of features with --labels (.npy, or .npz with --labels-key). Prints the
recommendation (method, weight, ridge, the predicted errors of every option, bootstrap
intervals) and writes it as strict JSON (NaN -> null) to --out.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from thumb_jax import io, recommend
from thumb_jax.embedding_files import FEATURE_KEYS, LABEL_KEYS, array_key, load_arrays


def _pick(archive, key: str | None, candidates: Sequence[str], what: str, path) -> np.ndarray:
  names = list(archive.keys())
  if key is not None:
    if key not in names:
      raise ValueError(f"--{what}-key: {key!r} is not in {path} (it holds {names})")
    return archive[key]
  found = array_key(names, candidates)
  if found is not None:
    return archive[found]
  raise ValueError(f"{path}: found none of {list(candidates)} for the {what} (it holds "
                   f"{names}); name the array with --{what}-key")


def _load(path: str, key: str | None, candidates: Sequence[str], what: str) -> np.ndarray:
  if not os.path.exists(path):
    raise ValueError(f"--{what}: no such file {path!r}")
  if path.endswith(".npz"):
    return _pick(load_arrays(path), key, candidates, what, path)
  if path.endswith(".npy"):
    arrays = load_arrays(path)
    if "" not in arrays:
      raise ValueError(f"--{what}: {path} is an .npz archive (holding {list(arrays)}), "
                       "not an .npy file")
    return arrays[""]
  raise ValueError(f"--{what}: expected a .npz or .npy file, got {path!r}")


def load_retraining_set(features: str, labels: str | None = None, *,
                        features_key: str | None = None,
                        labels_key: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Reads (features [n, d], labels [n]) as described in the module docstring."""
  x = _load(features, features_key, FEATURE_KEYS, "features")
  if labels is None:
    if not features.endswith(".npz"):
      raise ValueError("--labels: required when --features is an .npy file")
    y = _load(features, labels_key, LABEL_KEYS, "labels")
  else:
    y = _load(labels, labels_key, LABEL_KEYS, "labels")
  return x, y


def _dimension(text: str):
  if text in ("participation", "effective_rank", "ambient", "whitened"):
    return text
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"expected participation, effective_rank, ambient, whitened or a positive number, "
        f"got {text!r}") from None
  return int(value) if value.is_integer() else value


def _ridge(text: str):
  if text == "auto":
    return text
  try:
    return float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a number >= 0 or 'auto', got {text!r}") from None


def summary(rec: recommend.Recommendation) -> str:
  """A few human-readable lines."""
  e, pe = rec.errors, rec.prior_errors
  method, weight, ridge = rec.choice
  ce = rec.chosen_errors
  lines = [
      f"recommendation ({rec.model} model, {rec.objective}): {method}, weight {weight:.4g}, "
      f"ridge {ridge:.4g}{' (chosen from a grid)' if rec.ridge_auto else ''}; predicted "
      f"errors: minority {float(ce.err_plus):.4f}, majority {float(ce.err_minus):.4f}",
      f"classes: +1 (minority) = {rec.labels.plus!r} [{rec.count_plus}], "
      f"-1 (majority) = {rec.labels.minus!r} [{rec.count_minus}]",
      f"effective dimension {rec.dimension:.1f} of {rec.ambient_dim}, "
      f"delta_eff = {rec.delta:.3f}, ridge = {rec.ridge:g}",
      f"recommended minority weight ({rec.objective}): {rec.weight:.4g}"
      + (f"  [{100 * rec.level:.0f}% bootstrap interval {rec.interval[0]:.4g} .. "
         f"{rec.interval[1]:.4g}, B = {rec.bootstrap_weights.shape[0]}]"
         if rec.bootstrap_weights.shape[0] else ""),
      f"  predicted errors: minority {float(e.err_plus):.4f}, majority {float(e.err_minus):.4f}"
      + ("\n  (at the end of the searched range: the predicted objective keeps improving "
         "beyond it)" if rec.at_search_limit else ""),
      f"ratio of priors {rec.prior_weight:.4g}: predicted minority {float(pe.err_plus):.4f}, "
      f"majority {float(pe.err_minus):.4f}",
  ]
  if rec.general is not None:
    g = rec.general
    lines.append(f"general model: span {g.span_dim} of {rec.ambient_dim}, Ledoit-Wolf shrinkage "
                 f"{g.shrinkage_plus:.2f} / {g.shrinkage_minus:.2f}, covariance commute gap "
                 f"{g.commute_gap:.2f}")
  if rec.bootstrap_weights.shape[0]:
    lines.append(f"bootstrap: ridge {rec.ridge_interval[0]:.4g} .. {rec.ridge_interval[1]:.4g}, "
                 f"predicted {rec.objective} error {rec.value_interval[0]:.4f} .. "
                 f"{rec.value_interval[1]:.4f}, downsampling chosen in "
                 f"{100 * rec.downsample_share:.0f}% of resamples")
  opts = rec.options
  if opts is not None and len(opts.ridges) > 1:
    lines.append("predicted worst-class error by ridge: weighting (weight) / downsampling / "
                 "ratio of priors")
    for r, value in enumerate(opts.ridges):
      worst = [max(float(v.err_plus[r]), float(v.err_minus[r]))
               for v in (opts.weighting, opts.downsampling, opts.prior)]
      lines.append(f"  ridge {value:10.4g}: {worst[0]:.4f} ({float(opts.weight[r]):.4g}) / "
                   f"{worst[1]:.4f} / {worst[2]:.4f}")
  return "\n".join(lines)


def _check_out(path: str | None) -> None:
  """Fails before any computation when the report could not be written to `path`."""
  if path is None:
    return
  if Path(path).is_dir():
    raise ValueError(f"--out: expected a file path, got the directory {path!r}")
  io.check_writable_dir(Path(path).parent, name="--out")


def _recommend(args) -> dict:
  _check_out(args.out)
  x, y = load_retraining_set(args.features, args.labels, features_key=args.features_key,
                             labels_key=args.labels_key)
  rec = recommend.recommend_weight(x, y, ridge=args.ridge, objective=args.objective,
                                   dimension=args.dimension, model=args.model,
                                   bootstrap=args.bootstrap, seed=args.seed)
  print(summary(rec))
  report = {"input": {"features": args.features, "labels": args.labels,
                      "features_key": args.features_key, "labels_key": args.labels_key,
                      "shape": list(np.shape(x))},
            "recommendation": rec.as_dict()}
  if args.out:
    io.write_json(args.out, report)
    print(f"wrote {args.out}")
  return report


def main(argv: Sequence[str] | None = None) -> dict:
  """Entry point; returns the report (for tests). Exits with status 2 on bad input."""
  parser = argparse.ArgumentParser(prog="python -m thumb_jax.cli",
                                   description=__doc__.split("\n\n")[0])
  commands = parser.add_subparsers(dest="command", required=True)
  rec = commands.add_parser("recommend", help="theory-guided minority class weight")
  rec.add_argument("--features", required=True, help=".npz or .npy with features [n, d]")
  rec.add_argument("--labels", help=".npy (or .npz) with labels [n]; default: from --features")
  for what, keys in (("features", FEATURE_KEYS), ("labels", LABEL_KEYS)):
    rec.add_argument(f"--{what}-key", help=f"array name in the .npz (default: {'/'.join(keys)})")
  rec.add_argument("--ridge", type=_ridge, default=0.0,
                   help="ridge >= 0 (penalty ridge*n*|w|^2), or auto (chosen by the theory)")
  rec.add_argument("--model", choices=recommend.MODELS, default="isotropic",
                   help="isotropic surrogate, or general (any class covariances)")
  rec.add_argument("--objective", choices=("worst", "balanced"), default="worst")
  rec.add_argument("--dimension", type=_dimension, default="participation",
                   help="participation | effective_rank | ambient | whitened | a positive number")
  rec.add_argument("--bootstrap", type=int, default=0, help="bootstrap resamples (0: none)")
  rec.add_argument("--seed", type=int, default=0)
  rec.add_argument("--out", help="JSON report path")
  args = parser.parse_args(argv)
  try:
    return _recommend(args)
  except ValueError as err:
    parser.exit(2, f"error: {err}\n")


if __name__ == "__main__":
  main(sys.argv[1:])
