"""End-to-end evaluation (tfsr_defense.evaluate / evaluation / reports / plots) on a tiny EDSR.

Uses the first two Set5 images from $TFSR_DATA_DIR (default ../shared/data
beside the repository; the tests fail without it). The command line runs in a
subprocess, as a user runs it.
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

from tfsr_defense import attacks, data, defenses, evaluation, models, reports, serving

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = os.environ.get(data.DATA_DIR_ENV) or str(REPO.parent / "shared" / "data")
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_NUM_INTRAOP_THREADS="1",
           TF_NUM_INTEROP_THREADS="1", OMP_NUM_THREADS="1")
CLI_ARGS = ["--datasets=set5", "--attacks=fda,ifgsm", "--eps=2,8", "--steps=2", "--fda_steps=2",
            "--clever", "--clever_samples=8", "--clever_batch=4", "--max_images=2"]


def _cli(*args, timeout=300):
  return subprocess.run([sys.executable, "-m", "tfsr_defense.evaluate", *args], cwd=REPO, env=ENV,
                        capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def set5(data_dir):
  return data.load_pairs("set5", 4, data_dir=data_dir, max_images=2)


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
  """The report directory of one command-line run (fda + ifgsm, eps 2 and 8, CLEVER).

  Tests that add to a report copy it first (``_copy_report``): this one stays as made.
  """
  del set5  # only to fail without data
  report = tmp_path_factory.mktemp("report") / "x"
  proc = _cli(f"--models={run_dir}", f"--data_dir={DATA_DIR}", f"--report_dir={report}",
              *CLI_ARGS)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  assert "12 cells computed, 0 already done" in proc.stdout
  return report


def _copy_report(report, tmp_path):
  copy = tmp_path / "report"
  shutil.copytree(report, copy)
  return copy


def test_cli_writes_report(cli_report):
  rows = reports.read_rows(cli_report)
  # 2 images x (clean + CLEVER + 2 attacks x 2 eps).
  assert len(rows) == 12
  kinds = sorted(r["kind"] for r in rows)
  assert kinds.count("clean") == 2 and kinds.count("clever") == 2 and kinds.count("attack") == 8
  for r in rows:
    assert r["model"] == "tiny_edsr" and r["dataset"] == "set5" and r["image"] in ("baby", "bird")
    assert len(r["model_id"]) == 16
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
  assert {(s["attack"], s["attack_variant"], s["eps_255"], s["images"]) for s in attack_rows} == {
      ("fda", "relu", 2.0, 2), ("fda", "relu", 8.0, 2), ("ifgsm", None, 2.0, 2),
      ("ifgsm", None, 8.0, 2)}
  # The official FDA's settings are stated: all ReLU maps, steps of eps / 8.
  assert summary["settings"]["fda_layers"] == "relu" and summary["settings"]["fda_steps"] == 2
  assert summary["settings"]["fda_step_size_255"] == [0.25, 1.0]
  md = (cli_report / "summary.md").read_text()
  for phrase in ("Y channel", "shave = scale", "peak 255", "RGB, no shave, peak 1",
                 "| tiny_edsr | set5 | ifgsm | 8 |", "| tiny_edsr | set5 | fda (relu) | 2 |",
                 "fda_layers=relu"):
    assert phrase in md
  plots = {p.name for p in (cli_report / "plots").iterdir()}
  for name in ("sr_psnr_vs_eps__set5__fda_relu.png", "sr_psnr_vs_eps__set5__ifgsm.png",
               "lr_vs_sr_psnr__set5__fda_relu.png", "clever_vs_sr_psnr__set5__ifgsm__8.png",
               "example__tiny_edsr__set5__baby__ifgsm__8.png",
               "features__tiny_edsr__set5__baby__fda_relu__8.png"):
    assert name in plots
    assert (cli_report / "plots" / name).stat().st_size > 1000
  ex = np.load(cli_report / "examples" / "tiny_edsr__set5__baby__fda_relu__2.npz")
  assert ex["lr"].shape == (128, 128, 3) and ex["sr_adv"].shape == (512, 512, 3)
  assert np.abs(ex["lr_adv"] - ex["lr"]).max() <= 2 / 255 + 1e-6


def test_resume_skips_finished_cells(cli_report, run_dir, set5, tmp_path):
  report = _copy_report(cli_report, tmp_path)
  # An interrupted append leaves a truncated last line: it is dropped, not fatal.
  with open(report / reports.ROWS_FILE, "a", encoding="utf-8") as f:
    f.write('{"model": "tiny_edsr", "dataset": "se')
  sr_model = serving.load_sr_model(str(run_dir))
  with pytest.warns(UserWarning, match="dropped 1 unreadable line"):
    result = evaluation.evaluate(
        sr_model, {"set5": set5}, str(report), attacks=["fda", "ifgsm", "fgsm"],
        eps=[2 / 255, 8 / 255], steps=2, fda_steps=2, clever=True, clever_samples=8,
        clever_batch=4, plots=False)
  # Only FGSM (2 images x 2 eps) is new; the CLI's 12 cells are skipped.
  assert (result["computed"], result["skipped"]) == (4, 12)
  rows = reports.read_rows(report)
  assert len(rows) == 16
  assert {r["steps"] for r in rows if r.get("attack") == "fgsm"} == {1}
  again = evaluation.evaluate(sr_model, {"set5": set5}, str(report), attacks=["fgsm"],
                              eps=[8 / 255], steps=2, plots=False)
  assert (again["computed"], again["skipped"]) == (0, 4)
  # A copy of the report without its examples/ (they are not committed) resumes for free:
  # the first image's finished attack cells are not computed again for their example files.
  shutil.rmtree(report / reports.EXAMPLES_DIR)
  again = evaluation.evaluate(sr_model, {"set5": set5}, str(report), attacks=["fda", "ifgsm"],
                              eps=[2 / 255, 8 / 255], steps=2, fda_steps=2, plots=False)
  assert (again["computed"], again["skipped"]) == (0, 10)
  # Another FDA setting (the single features map) is a new cell, never an old number.
  single = evaluation.evaluate(sr_model, {"set5": set5}, str(report), attacks=["fda"],
                               eps=[8 / 255], fda_layers="features", fda_steps=2, plots=False)
  assert (single["computed"], single["skipped"]) == (2, 2)  # + the 2 clean cells skipped


def test_resume_refuses_other_weights_under_the_same_name(cli_report, set5, tmp_path):
  """A retrained model evaluated under an existing name is refused, naming both fingerprints."""
  report = _copy_report(cli_report, tmp_path)
  before = (report / reports.ROWS_FILE).read_text()
  tf.keras.utils.set_random_seed(9)
  other = models.build_model("edsr", 4, entropy_weight=1.0, n_resblocks=1, n_feats=8)
  with pytest.raises(ValueError, match=r"holds rows for model 'tiny_edsr' computed from other "
                     r"weights \(stored fingerprint [0-9a-f]{16}; this model [0-9a-f]{16}"):
    evaluation.evaluate({"tiny_edsr": other}, {"set5": set5}, str(report), attacks=["ifgsm"],
                        eps=[2 / 255], steps=2, plots=False)
  assert (report / reports.ROWS_FILE).read_text() == before  # nothing written
  # Under a new name it is evaluated beside the old rows.
  result = evaluation.evaluate({"retrained": other}, {"set5": set5}, str(report),
                               attacks=[], plots=False)
  assert result["computed"] == 2


def test_load_sr_model(run_dir, tmp_path):
  m = serving.load_sr_model(str(run_dir))
  assert (m.name, m.scale) == ("tiny_edsr", 4) and m.features is not None
  m2 = serving.load_sr_model(str(run_dir / "export" / "1"))
  assert m2.name == "tiny_edsr" and m2.fingerprint == m.fingerprint
  x = tf.random.uniform([1, 6, 5, 3])
  np.testing.assert_allclose(m(x).numpy(), m2(x).numpy())
  assert m(x).shape == (1, 24, 20, 3) and m.features(x).shape == (1, 6, 5, 8)
  # 'activations': the one ReLU map of the 1-block EDSR and the features map.
  maps = m.activations(x)
  assert len(maps) == 2 and all(a.shape == (1, 6, 5, 8) for a in maps)
  # The attacks also take raw SavedModel signatures (keyword-only input, dict output).
  loaded = tf.saved_model.load(str(run_dir / "export" / "1"))
  raw = attacks.ifgsm.attack(loaded.signatures["sr_float"], x, eps=4 / 255, steps=1, seed=1)
  wrapped = attacks.ifgsm.attack(m, x, eps=4 / 255, steps=1, seed=1)
  np.testing.assert_allclose(raw.numpy(), wrapped.numpy(), atol=1e-6)
  raw = attacks.fda.attack(loaded.signatures["sr_float"], x, eps=4 / 255, steps=1,
                           features=loaded.signatures["features"])
  wrapped = attacks.fda.attack(m, x, eps=4 / 255, steps=1, features="features")
  np.testing.assert_allclose(raw.numpy(), wrapped.numpy(), atol=1e-6)
  # TF Serving layout <name>/<version>/: the highest version with a SavedModel, named <name>.
  serving_dir = tmp_path / "served_edsr"
  shutil.copytree(run_dir / "export" / "1", serving_dir / "7")
  (serving_dir / "12").mkdir()  # no saved_model.pb: not a version
  m3 = serving.load_sr_model(str(serving_dir))
  assert m3.name == "served_edsr" and m3.source.endswith(os.path.join("served_edsr", "7"))
  np.testing.assert_allclose(m(x).numpy(), m3(x).numpy())
  with pytest.raises(FileNotFoundError, match="Model path not found"):
    serving.load_sr_model(str(tmp_path / "missing"))
  with pytest.raises(FileNotFoundError, match="No SavedModel"):
    serving.load_sr_model(str(tmp_path))


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
    serving.load_sr_model(str(_export_module(tmp_path / "u8", with_sr_float=False)))
  no_features = serving.load_sr_model(str(_export_module(tmp_path / "nf", with_sr_float=True)))
  assert no_features.scale == 2 and no_features.features is None
  pairs2 = data.load_pairs("set5", 2, data_dir=DATA_DIR, max_images=1)
  assert no_features.activations is None
  with pytest.raises(ValueError, match="FDA on 'relu' is impossible.*no 'activations' signature"):
    evaluation.evaluate(no_features, {"set5": pairs2}, str(tmp_path / "r"), attacks=["fda"])
  with pytest.raises(ValueError, match="FDA on 'features' is impossible.*no 'features' signature"):
    evaluation.evaluate(no_features, {"set5": pairs2}, str(tmp_path / "r"), attacks=["fda"],
                        fda_layers="features")
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
  rows = reports.read_rows(tmp_path)
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
  md = (tmp_path / reports.MARKDOWN_FILE).read_text()
  assert "## Attacks" not in md and "clever_samples=4" in md
  rows = reports.read_rows(tmp_path)
  assert [(r["image"], r["model"]) for r in rows if r["kind"] == "clean"] == [
      ("img0", "net_a"), ("img0", "net_b"), ("img1", "net_a"), ("img1", "net_b")]
  # Second command without CLEVER into the same directory keeps stating N_s = 4.
  evaluation.evaluate(nets, {"noise": pairs}, str(tmp_path), attacks=["ifgsm"], eps=[2 / 255],
                      steps=3, plots=False)
  md = (tmp_path / reports.MARKDOWN_FILE).read_text()
  assert "clever_samples=4" in md and "steps=3" in md and "## Attacks" in md
  settings = json.loads((tmp_path / reports.SUMMARY_FILE).read_text())["settings"]
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
  # --eps is in units of 1/255, and its error says so.
  proc = _cli("--models=" + str(tmp_path / "nope"), f"--report_dir={tmp_path / 'r'}", "--eps=300")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == (
      "tfsr_defense.evaluate: error: --eps is in units of 1/255 and must be in [0, 255]; "
      "got '300'.")
  proc = _cli("--bogus=1")
  assert proc.returncode == 2 and "error: Unknown command line flag 'bogus'" in proc.stderr
  assert not (tmp_path / "r").exists()


def test_defended_models_both_threat_models_and_hr_target(tmp_path):
  """A network behind JPEG under both threat models, and I-FGSM's HR-target variant."""
  tf.keras.utils.set_random_seed(6)
  net = models.build_model("edsr", 2, entropy_weight=0, n_resblocks=1, n_feats=8)
  rng = np.random.default_rng(2)
  lr = (rng.uniform(size=(12, 12, 3)) * 255).astype(np.uint8)
  pairs = [data.ImagePair("n0", lr, np.repeat(np.repeat(lr, 2, 0), 2, 1))]
  nets = defenses.defended_sr_models(net, "jpeg:75", name="tiny")
  assert sorted(nets) == ["tiny [adaptive]", "tiny [non-adaptive]"]
  assert nets["tiny [adaptive]"].fingerprint != nets["tiny [non-adaptive]"].fingerprint
  assert nets["tiny [non-adaptive]"].keras_model is net  # the attacker sees the bare network
  nets["tiny"] = serving.SRModel.from_keras(net, name="tiny")
  evaluation.evaluate(nets, {"noise": pairs}, str(tmp_path), attacks=["ifgsm", "fda"],
                      eps=[8 / 255], steps=2, fda_steps=2, plots=False)
  evaluation.evaluate(nets, {"noise": pairs}, str(tmp_path), attacks=["ifgsm"], eps=[8 / 255],
                      steps=2, ifgsm_target="hr", plots=False)
  rows = reports.read_rows(tmp_path)
  clean = {r["model"]: r["psnr_y"] for r in rows if r["kind"] == "clean"}
  # The defended clean output is JPEG's, not the bare network's.
  assert clean["tiny [adaptive]"] == clean["tiny [non-adaptive]"] != clean["tiny"]
  attacked = {(r["model"], reports.attack_label(r)): r for r in rows if r["kind"] == "attack"}
  assert set(attacked) == {(m, a) for m in nets for a in ("ifgsm", "fda (relu)", "ifgsm (hr)")}
  for r in attacked.values():
    assert r["lr_psnr"] >= -20 * np.log10(8 / 255) - 1e-3  # in the eps-ball
  # The two threat models attack differently (BPDA through JPEG vs the bare network).
  assert (attacked[("tiny [adaptive]", "ifgsm")]["sr_psnr"]
          != attacked[("tiny [non-adaptive]", "ifgsm")]["sr_psnr"])
  with pytest.raises(ValueError, match="ifgsm_target must be one of"):
    evaluation.evaluate(nets, {"noise": pairs}, str(tmp_path), attacks=["ifgsm"],
                        ifgsm_target="lr", plots=False)


def test_adversarial_cache_shared_by_the_non_adaptive_view(tmp_path, monkeypatch):
  """With adversarial_dir, a network's non-adaptive view behind a defense reuses the bare
  network's attacked images (no attack computed), the adaptive view attacks anew, and a
  cached file that does not fit is recomputed."""
  tf.keras.utils.set_random_seed(7)
  net = models.build_model("edsr", 2, entropy_weight=0, n_resblocks=1, n_feats=8)
  rng = np.random.default_rng(3)
  lr = (rng.uniform(size=(12, 10, 3)) * 255).astype(np.uint8)
  pairs = [data.ImagePair("n0", lr, np.repeat(np.repeat(lr, 2, 0), 2, 1))]
  cache = tmp_path / "adversarial"
  options = dict(attacks=["ifgsm", "fda"], eps=[8 / 255], steps=2, fda_steps=2, plots=False,
                 adversarial_dir=str(cache))
  bare = serving.SRModel.from_keras(net, name="tiny")
  evaluation.evaluate([bare], {"noise": pairs}, str(tmp_path / "bare"), **options)
  files = sorted(cache.glob(f"{bare.fingerprint}/*.npy"))
  assert len(files) == 2  # one per attack cell
  calls = []
  real = attacks.get_attack
  monkeypatch.setattr(attacks, "get_attack",
                      lambda name: (calls.append(name), real(name))[1])
  nets = defenses.defended_sr_models(net, "jpeg:75", name="tiny")
  assert nets["tiny [non-adaptive]"].attack_fingerprint == bare.fingerprint
  assert nets["tiny [adaptive]"].attack_fingerprint == nets["tiny [adaptive]"].fingerprint
  evaluation.evaluate({"tiny [non-adaptive]": nets["tiny [non-adaptive]"]}, {"noise": pairs},
                      str(tmp_path / "defended"), **options)
  assert calls == []  # both attacks came from the cache
  ours = {reports.attack_label(r): r for r in reports.read_rows(tmp_path / "bare")
          if r["kind"] == "attack"}
  theirs = {reports.attack_label(r): r for r in reports.read_rows(tmp_path / "defended")
            if r["kind"] == "attack"}
  for label in ("ifgsm", "fda (relu)"):  # the same attacked LR image, another SR output
    assert theirs[label]["lr_psnr"] == ours[label]["lr_psnr"]
    assert theirs[label]["model_id"] != ours[label]["model_id"]
  evaluation.evaluate({"tiny [adaptive]": nets["tiny [adaptive]"]}, {"noise": pairs},
                      str(tmp_path / "adaptive"), **options)
  assert sorted(calls) == ["fda", "ifgsm"]  # attacked through the defense (BPDA)
  # A cached image of another shape (or unreadable) is recomputed and replaced.
  np.save(files[0], np.zeros((1, 3, 3, 3), np.float32))
  files[1].write_bytes(b"garbage")
  calls.clear()
  evaluation.evaluate([bare], {"noise": pairs}, str(tmp_path / "again"), **options)
  assert sorted(calls) == ["fda", "ifgsm"]
  assert all(np.load(f).shape == (1, 12, 10, 3) for f in files)


def test_cli_keras_run_directory_bf16_and_defense(data_dir, tmp_path):
  """--precision=mixed_bfloat16 / --defenses load the Keras network of a run directory."""
  run = REPO / "results" / "edsr_x4_cpu_long" / "plain"  # config.json + model.weights.h5
  report = tmp_path / "r"
  # BSD100's first image (120x80 LR, 0.6x Set5's first): bfloat16 is emulated, slowly, on
  # CPUs without bf16 instructions (~140 s of CPU here on an AVX2 EPYC).
  proc = _cli(f"--models={run}", "--names=plain", f"--data_dir={data_dir}", "--datasets=bsd100",
              "--max_images=1", "--attacks=ifgsm", "--eps=4", "--steps=2",
              "--precision=mixed_bfloat16", "--defenses=none,jpeg:75",
              "--threat_models=non-adaptive", "--plots=false", f"--report_dir={report}",
              timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = reports.read_rows(report)
  assert {(r["model"], r["kind"]) for r in rows} == {
      ("plain", "clean"), ("plain", "attack"), ("plain + jpeg:75 [non-adaptive]", "clean"),
      ("plain + jpeg:75 [non-adaptive]", "attack")}
  assert all(r["precision"] == "mixed_bfloat16" for r in rows if r["kind"] == "attack")
  clean = {r["model"]: r["psnr_y"] for r in rows if r["kind"] == "clean"}
  assert clean["plain + jpeg:75 [non-adaptive]"] < clean["plain"] - 0.5  # JPEG costs ~0.85 dB
  # A SavedModel directory is not a run directory: one clear error.
  proc = _cli(f"--models={tmp_path}", "--precision=mixed_bfloat16", f"--report_dir={report}2")
  assert proc.returncode == 2
  assert "need the Keras network of a training run directory" in proc.stderr


def test_summary_keeps_precisions_and_variants_apart():
  """Rows of float32 and bfloat16 attacks (or FDA variants) are never averaged together."""
  base = dict(model="m", dataset="d", kind="attack", attack="ifgsm", eps=4 / 255, eps_255=4.0,
              steps=50, scale=4)
  rows = [dict(base, image="a", precision="float32", sr_psnr=30.0),
          dict(base, image="b", precision="float32", sr_psnr=32.0),
          dict(base, image="a", precision="mixed_bfloat16", sr_psnr=40.0),
          dict(base, image="a", attack="fda", attack_variant="relu", precision="float32",
               sr_psnr=20.0),
          dict(base, image="a", attack="fda", attack_variant="features", precision="float32",
               sr_psnr=25.0)]
  summary = {reports.attack_label(s): (s["sr_psnr"], s["images"])
             for s in reports.summarize(rows)}
  assert summary == {"ifgsm": (31.0, 2), "ifgsm [bf16]": (40.0, 1), "fda (relu)": (20.0, 1),
                     "fda (features)": (25.0, 1)}


def test_interrupted_clever_cell_resumes_from_its_partial_state(tmp_path, monkeypatch):
  """A run stopped inside a CLEVER cell keeps its finished gradient batches under
  partial/; the next run computes only the rest and writes the same score."""
  tf.keras.utils.set_random_seed(8)
  net = models.build_model("edsr", 2, entropy_weight=0, n_resblocks=1, n_feats=8)
  lr = (np.random.default_rng(4).uniform(size=(10, 10, 3)) * 255).astype(np.uint8)
  pairs = {"noise": [data.ImagePair("n0", lr, np.repeat(np.repeat(lr, 2, 0), 2, 1))]}
  options = dict(attacks=[], clever=True, clever_samples=12, clever_batch=4, plots=False)
  evaluation.evaluate({"tiny": net}, pairs, str(tmp_path / "whole"), **options)
  calls, fail_at = [], [2]
  real = attacks.GradientEngine.clever_gradients

  def interrupting(engine):
    fn = real(engine)

    def counted(*args):
      calls.append(int(args[2].shape[0]))
      if len(calls) == fail_at[0]:
        raise KeyboardInterrupt  # as a user's Ctrl-C or a killed session
      return fn(*args)
    return counted

  monkeypatch.setattr(attacks.GradientEngine, "clever_gradients", interrupting)
  report = tmp_path / "resumed"
  with pytest.raises(KeyboardInterrupt):
    evaluation.evaluate({"tiny": net}, pairs, str(report), **options)
  [partial] = (report / evaluation.PARTIAL_DIR).glob("clever__*.json")
  assert len(json.loads(partial.read_text())["grad_norms"]) == 4
  cell = next(r["cell"] for r in reports.read_rows(tmp_path / "whole") if r["kind"] == "clever")
  assert str(partial) == evaluation.clever_partial_path(str(report), cell)
  calls.clear()
  fail_at[0] = None
  evaluation.evaluate({"tiny": net}, pairs, str(report), **options)
  assert calls == [4, 4]  # samples 4..11 only
  assert not partial.exists()
  [whole] = [r for r in reports.read_rows(tmp_path / "whole") if r["kind"] == "clever"]
  [resumed] = [r for r in reports.read_rows(report) if r["kind"] == "clever"]
  assert resumed["clever"] == whole["clever"] and resumed["cell"] == whole["cell"]
