"""End-to-end evaluation (tfsr_defense.evaluate / evaluation / plots) on a tiny exported EDSR.

Uses the first two Set5 images from $TFSR_DATA_DIR (default ../shared/data
beside the repository). The command line runs in a subprocess: absl flags of
tfsr_defense.evaluate and tfsr_defense.train share names and cannot be
defined in one process.
"""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tfsr_defense import attacks, data, evaluation, models, serving

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = os.environ.get(data.DATA_DIR_ENV) or str(REPO.parent / "shared" / "data")
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_NUM_INTRAOP_THREADS="1",
           TF_NUM_INTEROP_THREADS="1", OMP_NUM_THREADS="1")
CLI_ARGS = ["--datasets=set5", "--attacks=fda,ifgsm", "--eps=2,8", "--steps=2", "--clever",
            "--clever_samples=8", "--clever_batch=4", "--max_images=2"]


def _cli(*args, timeout=300):
  return subprocess.run([sys.executable, "-m", "tfsr_defense.evaluate", *args], cwd=REPO, env=ENV,
                        capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def set5():
  if not os.path.isdir(os.path.join(DATA_DIR, "Set5")):
    pytest.skip(f"Set5 not found under {DATA_DIR} (set ${data.DATA_DIR_ENV}).")
  return data.load_pairs("set5", 4, data_dir=DATA_DIR, max_images=2)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A run directory holding a tiny EDSR (with regularizer) exported to export/1."""
  run = tmp_path_factory.mktemp("runs") / "tiny_edsr"
  tf.keras.utils.set_random_seed(0)
  model = models.build_model("edsr", 4, entropy_weight=1.0, n_resblocks=1, n_feats=8)
  serving.export_saved_model(model, str(run / "export" / "1"),
                             metadata=dict(model="edsr", scale=4))
  return run


@pytest.fixture(scope="module")
def cli_report(set5, run_dir, tmp_path_factory):
  """The report directory of one command-line run (fda + ifgsm, eps 2 and 8, CLEVER)."""
  del set5  # only to skip without data
  report = tmp_path_factory.mktemp("report") / "x"
  proc = _cli(f"--models={run_dir}", f"--data_dir={DATA_DIR}", f"--report_dir={report}",
              *CLI_ARGS)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  assert "12 cells computed, 0 already done" in proc.stdout
  return report


def test_cli_writes_report(cli_report):
  rows = evaluation.read_rows(cli_report)
  # 2 images x (clean + CLEVER + 2 attacks x 2 eps).
  assert len(rows) == 12
  kinds = sorted(r["kind"] for r in rows)
  assert kinds.count("clean") == 2 and kinds.count("clever") == 2 and kinds.count("attack") == 8
  for r in rows:
    assert r["model"] == "tiny_edsr" and r["dataset"] == "set5" and r["image"] in ("baby", "bird")
    if r["kind"] == "attack":
      assert r["lr_psnr"] >= -20 * np.log10(r["eps"]) - 1e-3  # L-inf bound in PSNR terms
      assert 0 < r["sr_ssim"] <= 1 and r["sr_psnr"] > 0
    if r["kind"] == "clever":
      assert r["clever"] > 0
  with open(cli_report / "rows.csv", encoding="utf-8") as f:
    assert len(list(csv.DictReader(f))) == 12
  with open(cli_report / "summary.csv", encoding="utf-8") as f:
    summary_csv = list(csv.DictReader(f))
  assert len(summary_csv) == 2 + 4  # clean, clever, 2 attacks x 2 eps
  summary = json.loads((cli_report / "summary.json").read_text())
  attack_rows = [s for s in summary["summary"] if s["kind"] == "attack"]
  assert {(s["attack"], s["eps_255"], s["images"]) for s in attack_rows} == {
      ("fda", 2.0, 2), ("fda", 8.0, 2), ("ifgsm", 2.0, 2), ("ifgsm", 8.0, 2)}
  md = (cli_report / "summary.md").read_text()
  for phrase in ("Y channel", "shave = scale", "peak 255", "RGB, no shave, peak 1",
                 "| tiny_edsr | set5 | ifgsm | 8 |"):
    assert phrase in md
  plots = {p.name for p in (cli_report / "plots").iterdir()}
  for name in ("sr_psnr_vs_eps__set5__fda.png", "sr_psnr_vs_eps__set5__ifgsm.png",
               "lr_vs_sr_psnr__set5__fda.png", "clever_vs_sr_psnr__set5__ifgsm__8.png",
               "example__tiny_edsr__set5__baby__ifgsm__8.png",
               "features__tiny_edsr__set5__baby__fda__8.png"):
    assert name in plots
    assert (cli_report / "plots" / name).stat().st_size > 1000
  ex = np.load(cli_report / "examples" / "tiny_edsr__set5__baby__fda__2.npz")
  assert ex["lr"].shape == (128, 128, 3) and ex["sr_adv"].shape == (512, 512, 3)
  assert np.abs(ex["lr_adv"] - ex["lr"]).max() <= 2 / 255 + 1e-6


def test_resume_skips_finished_cells(cli_report, run_dir, set5):
  # An interrupted append leaves a truncated last line: it is dropped, not fatal.
  with open(cli_report / evaluation.ROWS_FILE, "a", encoding="utf-8") as f:
    f.write('{"model": "tiny_edsr", "dataset": "se')
  sr_model = evaluation.load_sr_model(str(run_dir))
  with pytest.warns(UserWarning, match="dropped 1 unreadable line"):
    result = evaluation.evaluate(
        sr_model, {"set5": set5}, str(cli_report), attacks=["fda", "ifgsm", "fgsm"],
        eps=[2 / 255, 8 / 255], steps=2, clever=True, clever_samples=8, clever_batch=4,
        plots=False)
  # Only FGSM (2 images x 2 eps) is new; the CLI's 12 cells are skipped.
  assert (result["computed"], result["skipped"]) == (4, 12)
  rows = evaluation.read_rows(cli_report)
  assert len(rows) == 16
  assert {r["steps"] for r in rows if r.get("attack") == "fgsm"} == {1}
  again = evaluation.evaluate(sr_model, {"set5": set5}, str(cli_report), attacks=["fgsm"],
                              eps=[8 / 255], steps=2, plots=False)
  assert (again["computed"], again["skipped"]) == (0, 4)


def test_load_sr_model(run_dir, tmp_path):
  m = evaluation.load_sr_model(str(run_dir))
  assert (m.name, m.scale) == ("tiny_edsr", 4) and m.features is not None
  m2 = evaluation.load_sr_model(str(run_dir / "export" / "1"))
  assert m2.name == "tiny_edsr"
  x = tf.random.uniform([1, 6, 5, 3])
  np.testing.assert_allclose(m(x).numpy(), m2(x).numpy())
  assert m(x).shape == (1, 24, 20, 3) and m.features(x).shape == (1, 6, 5, 8)
  # The attacks also take raw SavedModel signatures (keyword-only input, dict output).
  loaded = tf.saved_model.load(str(run_dir / "export" / "1"))
  raw = attacks.ifgsm.attack(loaded.signatures["sr_float"], x, eps=4 / 255, steps=1, seed=1)
  wrapped = attacks.ifgsm.attack(m, x, eps=4 / 255, steps=1, seed=1)
  np.testing.assert_allclose(raw.numpy(), wrapped.numpy(), atol=1e-6)
  raw = attacks.fda.attack(None, x, eps=4 / 255, steps=1, features=loaded.signatures["features"])
  wrapped = attacks.fda.attack(m, x, eps=4 / 255, steps=1)
  np.testing.assert_allclose(raw.numpy(), wrapped.numpy(), atol=1e-6)
  # TF Serving layout <name>/<version>/: the highest version with a SavedModel, named <name>.
  serving_dir = tmp_path / "served_edsr"
  shutil.copytree(run_dir / "export" / "1", serving_dir / "7")
  (serving_dir / "12").mkdir()  # no saved_model.pb: not a version
  m3 = evaluation.load_sr_model(str(serving_dir))
  assert m3.name == "served_edsr" and m3.source.endswith(os.path.join("served_edsr", "7"))
  np.testing.assert_allclose(m(x).numpy(), m3(x).numpy())
  with pytest.raises(FileNotFoundError, match="Model path not found"):
    evaluation.load_sr_model(str(tmp_path / "missing"))
  with pytest.raises(FileNotFoundError, match="No SavedModel"):
    evaluation.load_sr_model(str(tmp_path))


def _export_module(path, with_sr_float, with_features=False):
  """A SavedModel with a subset of the serving signatures (a 2x nearest 'SR')."""
  module = tf.Module()
  spec = tf.TensorSpec([None, None, None, 3], tf.float32)
  module.up = tf.function(lambda images: {"sr": tf.repeat(tf.repeat(images, 2, 1), 2, 2)},
                          input_signature=[spec])
  module.uint8 = tf.function(lambda images: {"sr": tf.repeat(tf.repeat(images, 2, 1), 2, 2)},
                             input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
  signatures = {"serving_default": module.uint8}
  if with_sr_float:
    signatures["sr_float"] = module.up
  if with_features:
    module.feat = tf.function(lambda images: {"features": images}, input_signature=[spec])
    signatures["features"] = module.feat
  tf.saved_model.save(module, str(path), signatures=signatures)
  return path


def test_signature_errors(tmp_path, set5):
  with pytest.raises(ValueError, match=r"no usable signature.*'sr_float'.*serving_default"):
    evaluation.load_sr_model(str(_export_module(tmp_path / "u8", with_sr_float=False)))
  no_features = evaluation.load_sr_model(str(_export_module(tmp_path / "nf", with_sr_float=True)))
  assert no_features.scale == 2 and no_features.features is None
  pairs2 = data.load_pairs("set5", 2, data_dir=DATA_DIR, max_images=1)
  with pytest.raises(ValueError, match="FDA is impossible.*no 'features' signature"):
    evaluation.evaluate(no_features, {"set5": pairs2}, str(tmp_path / "r"), attacks=["fda"])
  with pytest.raises(ValueError, match="not x2"):  # x4 pairs for a x2 model
    evaluation.evaluate(no_features, {"set5": set5}, str(tmp_path / "r"), attacks=["ifgsm"])
  with pytest.raises(ValueError, match="Known attacks"):
    evaluation.evaluate(no_features, {"set5": pairs2}, str(tmp_path / "r"), attacks=["zoo"])
  assert not (tmp_path / "r").exists()  # nothing computed or written on bad input


def test_keras_model_and_synthetic_pairs(tmp_path):
  tf.keras.utils.set_random_seed(3)
  model = models.build_model("edsr", 2, entropy_weight=0, n_resblocks=1, n_feats=8)
  rng = np.random.default_rng(0)
  lr = (rng.uniform(size=(16, 16, 3)) * 255).astype(np.uint8)
  hr = np.repeat(np.repeat(lr, 2, 0), 2, 1)
  result = evaluation.evaluate({"keras_tiny": model}, {"noise": [data.ImagePair("n0", lr, hr)]},
                               str(tmp_path), attacks=["pgd", "fda"], eps=[4 / 255], steps=2,
                               plots=False)
  assert result["computed"] == 3
  rows = evaluation.read_rows(tmp_path)
  assert {r["kind"] for r in rows} == {"clean", "attack"}
  assert all(r["model"] == "keras_tiny" and r["scale"] == 2 for r in rows)


def test_two_commands_one_report_image_major(tmp_path):
  """Images outer, models inner; settings stated from the rows of every command."""
  tf.keras.utils.set_random_seed(4)
  nets = {name: models.build_model("edsr", 2, entropy_weight=0, n_resblocks=1, n_feats=8)
          for name in ("net_a", "net_b")}
  rng = np.random.default_rng(1)
  pairs = []
  for i in range(2):
    lr = (rng.uniform(size=(12, 12, 3)) * 255).astype(np.uint8)
    pairs.append(data.ImagePair(f"img{i}", lr, np.repeat(np.repeat(lr, 2, 0), 2, 1)))
  # First command: clean + CLEVER only -> no attack table in the Markdown.
  evaluation.evaluate(nets, {"noise": pairs}, str(tmp_path), attacks=[], clever=True,
                      clever_samples=4, clever_batch=2, plots=False)
  md = (tmp_path / evaluation.MARKDOWN_FILE).read_text()
  assert "## Attacks" not in md and "clever_samples=4" in md
  rows = evaluation.read_rows(tmp_path)
  assert [(r["image"], r["model"]) for r in rows if r["kind"] == "clean"] == [
      ("img0", "net_a"), ("img0", "net_b"), ("img1", "net_a"), ("img1", "net_b")]
  # Second command without CLEVER into the same directory keeps stating N_s = 4.
  evaluation.evaluate(nets, {"noise": pairs}, str(tmp_path), attacks=["ifgsm"], eps=[2 / 255],
                      steps=3, plots=False)
  md = (tmp_path / evaluation.MARKDOWN_FILE).read_text()
  assert "clever_samples=4" in md and "steps=3" in md and "## Attacks" in md
  settings = json.loads((tmp_path / evaluation.SUMMARY_FILE).read_text())["settings"]
  assert settings["clever_samples"] == 4 and settings["steps"] == 3


def test_cli_bad_input_exits_2(tmp_path):
  """One error line, status 2. (The CLI maps the ValueError / FileNotFoundError of
  load_sr_model, data.load_pairs and check_request, tested above, the same way.)"""
  proc = _cli("--models=" + str(tmp_path / "nope"), f"--report_dir={tmp_path / 'r'}")
  assert proc.returncode == 2
  assert "tfsr_defense.evaluate: error: Model path not found" in proc.stderr
  assert "Traceback" not in proc.stderr
  with pytest.raises(ValueError, match="Unknown dataset 'set99'"):
    data.load_pairs("set99", 4, data_dir=DATA_DIR)
