"""experiments.image_study end to end on a tiny fake CIFAR-10 file: outputs, schema, resume."""

import json
import os

import numpy as np
import pytest

from experiments import image_study, image_study_report
from thumb_jax.images import train


def write_fake_cifar(path, *, seed=0):
  """A CIFAR-10-like .npz, 32 px: airplanes (0) a little bluer than trucks (9); a random
  colour per image (SD 30 per channel) hides most of that, so the classes overlap."""
  rng = np.random.default_rng(seed)

  def images(labels):
    base = np.where(labels[:, None] == 0, np.array([[115, 100, 135]]),
                    np.array([[135, 100, 115]]))
    offset = rng.normal(0, 30, (len(labels), 3))
    noise = rng.normal(0, 40, (len(labels), 32, 32, 3))
    return np.clip((base + offset)[:, None, None, :] + noise, 0, 255).astype(np.uint8)

  y_train = np.concatenate([np.full(400, 9), np.full(60, 0)])
  y_test = np.concatenate([np.full(200, 9), np.full(200, 0)])
  rng.shuffle(y_train)
  rng.shuffle(y_test)
  np.savez(path, x_train=images(y_train), y_train=y_train, x_test=images(y_test), y_test=y_test)
  return str(path)


def _argv(data, workdir, out):
  # One preset keeps the test short (each preset adds embeddings and compiled sweeps); the
  # presets' splits are checked without training in test_presets_split_the_test_images.
  return ["--quick", "--dataset", "cifar10", "--data_dir", data, "--workdir", str(workdir),
          "--out", str(out), "--set", "presets=extended"]


@pytest.fixture(name="study", scope="module")
def fixture_study(tmp_path_factory):
  root = tmp_path_factory.mktemp("image_study")
  data = write_fake_cifar(root / "cifar.npz")
  results = image_study.main(_argv(data, root / "work", root / "out"))
  return root, data, results


def test_plan_and_presets():
  cfg = image_study.config()
  assert len(image_study.plan(cfg)) == 9
  assert image_study.presets(cfg) == ("paper", "extended")
  short = image_study.Config(other_width_seeds=1)
  assert image_study.plan(short) == [(128, 0), (128, 1), (128, 2), (256, 0), (512, 0)]


def test_presets_split_the_test_images(tmp_path):
  """paper: 10% of the two-class test split at the training split's 91 / 9; extended: half
  the test trucks and 9% airplanes; both share the training split (fake data sizes)."""
  data = write_fake_cifar(tmp_path / "cifar.npz")
  cfg = image_study.Config(data_dir=data, workdir=str(tmp_path / "work"))
  splits = {p: image_study.load_split_data(cfg, p, image_size=32, max_train_examples=None)
            for p in image_study.presets(cfg)}
  counts = {p: (len(d.val.labels), int(np.sum(d.val.labels > 0)), len(d.test.labels))
            for p, d in splits.items()}
  assert counts == {"paper": (40, 4, 360), "extended": (110, 10, 290)}
  np.testing.assert_array_equal(splits["paper"].train.images, splits["extended"].train.images)


@pytest.mark.parametrize("change,pattern", [
    ({"dataset": "mnist"}, "--dataset"), ({"data_dir": ""}, "--data_dir"),
    ({"latent": (16, 16)}, "latent"), ({"seeds": ()}, "seeds"),
    ({"presets": ("official",)}, "presets"), ({"backbone": "huge"}, "backbone"),
    ({"num_repeats": 0}, "num_repeats"), ({"epochs": 0}, "epochs")])
def test_bad_config_is_named(change, pattern):
  import dataclasses
  cfg = dataclasses.replace(image_study.Config(data_dir="x", workdir="y"), **change)
  with pytest.raises(ValueError, match=pattern):
    image_study.check_config(cfg)


def test_outputs_and_schema(study):
  root, _, results = study
  out = root / "out"
  for name in ("results.json", "results.csv", "tables.md", "errors_vs_delta_extended.png",
               "weights_vs_delta_extended.png"):
    assert (out / name).stat().st_size > 0, name
  saved = json.loads((out / "results.json").read_text())
  assert saved["experiment"] == "image_study"
  assert saved["config"]["latent"] == [16, 32]
  assert {(b["width"], b["seed"]) for b in saved["results"]["backbones"]} == {
      (16, 0), (16, 1), (32, 0)}
  presets = saved["results"]["presets"]
  assert set(presets) == {"extended"}
  assert (presets["extended"]["pool_size"], presets["extended"]["pool_plus"]) == (110, 10)
  assert presets["extended"]["test_size"] == 290
  for preset in presets.values():
    w16 = preset["widths"]["16"]
    assert w16["backbone_seeds"] == [0, 1]
    for method in image_study_report.TABLE_METHODS:
      m = w16["methods"][method]
      assert len(m["worst_mean"]) == len(w16["n"])
      assert all(0 <= v <= 1 for v in m["worst_mean"])
      assert np.all(np.asarray(m["per_backbone_mean"]).shape == (2, len(w16["n"])))
    # One backbone at width 32: no between-backbone spread there.
    assert all(v is None for v in preset["widths"]["32"]["methods"]["prior_ratio"]
               ["between_backbones_sd"])
    assert set(preset["collapse"]) >= {"delta", "delta_eff", "rms_log10_general_minus_best"}
  sets = root / "work" / "sets" / "extended_d16_seed1"
  assert np.load(sets / "val.npz")["embeddings"].shape == (110, 16)
  assert np.load(sets / "test.npz")["embeddings"].shape == (290, 16)
  header = (out / "results.csv").read_text().splitlines()[0].split(",")
  assert {"preset", "width", "n", "delta", "delta_eff", "method", "between_backbones_sd",
          "between_subsamples_sd", "backbones_better"} <= set(header)


def test_oracle_is_a_lower_bound_and_verdicts_are_consistent(study):
  _, _, results = study
  for preset in results["presets"].values():
    for s in preset["widths"].values():
      # Per repeat the oracle is the best grid weight; the general plug-in picks a grid weight.
      oracle = s["methods"]["grid_oracle"]["per_backbone_mean"]
      assert np.all(oracle <= s["methods"]["theory_general"]["per_backbone_mean"] + 1e-12)
      assert np.all(np.asarray(s["best_weight"]) > 0)
      for name in image_study_report.VERSUS_PRIOR:
        v = s["methods"][name]["versus_prior"]
        assert np.all(v["backbones_better"] + v["backbones_worse"] <= v["backbones"])


def test_rerun_resumes_without_training(study, monkeypatch):
  root, data, results = study
  cells = sorted((root / "work" / "cells").iterdir())
  stamps = {p: p.stat().st_mtime_ns for p in cells}

  def fail(*args, **kwargs):
    raise AssertionError("a finished backbone was trained again")

  monkeypatch.setattr(train, "train_and_evaluate", fail)
  again = image_study.main(_argv(data, root / "work", root / "out2"))
  assert {p: p.stat().st_mtime_ns for p in cells} == stamps     # cells read back
  a = results["presets"]["extended"]["widths"][16]["methods"]["prior_ratio"]["worst_mean"]
  b = again["presets"]["extended"]["widths"][16]["methods"]["prior_ratio"]["worst_mean"]
  np.testing.assert_array_equal(a, b)


def test_killed_backbone_resumes_from_its_checkpoint(study, tmp_path):
  """A backbone whose embeddings and summary are lost (a kill after training) is resumed from
  its last checkpoint, not retrained, and its cell comes out the same."""
  root, data, results = study
  work = root / "work"
  backbone = work / "backbones" / "d32_seed0"
  summary = json.loads((backbone / "study_summary.json").read_text())
  os.remove(backbone / "study_summary.json")
  for files in summary["embeddings"].values():
    for path in files.values():
      os.remove(path)
  cell = work / "cells" / "extended_d32_seed0.json"
  before = json.loads(cell.read_text())
  os.remove(cell)
  epochs_before = json.loads((backbone / "metrics.json").read_text())["epochs"]
  image_study.main(_argv(data, work, tmp_path / "out"))
  assert json.loads((backbone / "metrics.json").read_text())["epochs"] == epochs_before
  after = json.loads(cell.read_text())
  assert after["key"] == before["key"]
  np.testing.assert_allclose(after["methods"]["prior_ratio"]["err_plus"],
                             before["methods"]["prior_ratio"]["err_plus"])
