"""The experiment runner (tfsr_defense.experiment): suites, recipes, resumable end-to-end runs."""

import dataclasses
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tfsr_defense import (defenses, evaluation, experiment, overview, reports, run_copies,
                          studies, suite_report, trainer)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_study_of_the_paper_is_a_suite():
  assert studies.known_suites() == ["ablation", "adversarial", "delta", "lambda", "networks",
                                       "preprocessing", "target_layer"]
  lam = studies.get_suite("lambda")
  assert [v.overrides["entropy_weight"] for v in lam.variants] == [0.0, 0.1, 1.0, 10.0]
  delta = studies.get_suite("delta")
  assert [v.overrides["delta"] for v in delta.variants] == [0.01, 0.1, 1.0, 10.0]
  ablation = {v.name: v.overrides for v in studies.get_suite("ablation").variants}
  assert ablation["PE"] == dict(entropy_weight=1.0, noise=False)
  assert ablation["noise"] == dict(entropy_weight=1.0, estimate_entropy=False)
  with pytest.raises(ValueError, match="Unknown suite 'lamda'. Known suites: ablation"):
    studies.get_suite("lamda")


def test_every_baseline_is_an_undefended_variant_of_its_suite():
  expected = {"ablation": "none", "lambda": "lambda=0", "delta": "delta=1",
              "target_layer": "pre-upsampler, lambda=1", "adversarial": "plain",
              "preprocessing": "plain + none"}
  for suite in studies.SUITES.values():
    variants = {v.name: v for v in suite.variants}
    compared = [v for v in suite.variants if v.baseline]
    assert len(compared) == len(suite.variants) - len({v.baseline for v in compared})
    for v in compared:
      assert variants[v.baseline].defense == "none" and not variants[v.baseline].baseline
      if suite.name == "networks":  # each network's ER against its own plain training
        assert v.baseline == v.name.replace(" ER", " plain")
      else:
        assert v.baseline == expected[suite.name]


def test_recipe_and_shared_run_names(data_dir):
  recipe = experiment.load_recipe(os.path.join(REPO, experiment.DEFAULT_RECIPE),
                                  data_dir=data_dir)
  assert (recipe.model, recipe.scale, recipe.steps, recipe.patch_size) == ("edsr", 4, 4000, 32)
  assert recipe.train_data == "t91,bsd200" and recipe.lr_boundaries == [2000, 3000, 3500]
  short = experiment.load_recipe(os.path.join(REPO, experiment.DEFAULT_RECIPE), steps=1000)
  assert short.steps == 1000 and short.lr_boundaries == [500, 750, 875]
  names = {}
  for suite in studies.SUITES.values():
    for variant in suite.variants:
      names.setdefault(studies.run_name(recipe, variant), set()).add(
          (suite.name, variant.name))
  # The lambda = 1 network is shared by five suites and trained once.
  assert names["edsr_lambda1"] == {("ablation", "PE+noise"), ("lambda", "lambda=1"),
                                   ("target_layer", "pre-upsampler, lambda=1"),
                                   ("delta", "delta=1"), ("adversarial", "ER"),
                                   ("networks", "edsr ER")} | {
                                       ("preprocessing", "ER + none"),
                                       ("preprocessing", "ER + JPEG 75"),
                                       ("preprocessing", "ER + resize 0.9-1.1")}
  assert "edsr_lambda1_delta0.01" in names and "edsr_lambda1_first" in names
  assert "edsr_lambda0_adv-ifgsm8x1" in names and "edsr_lambda1_noPE" in names
  with pytest.raises(FileNotFoundError, match="Recipe flag file not found"):
    experiment.load_recipe("flags/experiments/none.cfg")


def _tiny_recipe(data_dir, steps=4):
  return trainer.TrainConfig(
      model="edsr", scale=4, entropy_weight=1.0, train_data="set5", eval_data="",
      data_dir=data_dir, patch_size=8, batch_size=2, steps=steps, learning_rate=1e-3,
      precision="float32", checkpoint_every=2, export=False,
      model_options=dict(n_resblocks=1, n_feats=8))


TINY = studies.Suite("tiny", "test", (
    studies.Variant("plain", (("entropy_weight", 0.0),)),
    studies.Variant("ER", (("entropy_weight", 1.0),), baseline="plain")))

RUN_ARGS = dict(clean_datasets=("set5",), attack_datasets=("set5",), attacks=("fda", "ifgsm"),
                eps=(4 / 255,), steps=2, clever=True, clever_samples=4, clever_batch=2,
                max_images=2, plots=False, log=lambda *_: None)


def test_tiny_suite_end_to_end_and_resume(data_dir, tmp_path):
  recipe = _tiny_recipe(data_dir)
  out, runs = str(tmp_path / "results"), str(tmp_path / "runs")
  # An interrupted first variant: a checkpoint at step 2 of 4.
  plain = studies.variant_config(recipe, TINY.variants[0], runs)
  trainer.train(dataclasses.replace(plain, steps=2), log=lambda *_: None)
  statuses = [status for _, _, status in experiment.plan(TINY, recipe, runs)]
  assert statuses == ["resumable at step 2", "new"]
  # What is left, by hand: 2 + 4 steps; per variant 2 Set5 images x 1 eps x (FDA 1.5 x 10 +
  # I-FGSM 2 steps) + CLEVER 2 images x 4 samples = 42 gradients.
  left = dict(attack_datasets=("set5",), attacks=("fda", "ifgsm"), eps=(4 / 255,), steps=2,
              clever=True, clever_samples=4, max_images=2)
  assert experiment.estimate_seconds(TINY, recipe, runs_root=runs, output_dir=out,
                                     seconds_per_step=1.0, seconds_per_grad=0.5,
                                     **left) == (6 + 84 * 0.5, 6, 84)
  result = experiment.run_suite(TINY, recipe, output_dir=out, runs_root=runs, **RUN_ARGS)
  suite_dir = result["suite_dir"]
  assert [r["variant"] for r in result["table"]] == ["plain", "ER"]
  for row in result["table"]:
    assert row["psnr_y/set5"] > 0 and row["clever/set5"] > 0
    assert row["fda (relu)/set5/4"] > 0 and row["ifgsm/set5/4"] > 0
  with open(os.path.join(plain.run_dir, "result.json"), encoding="utf-8") as f:
    assert json.load(f)["step"] == 4  # resumed to the end
  md = open(os.path.join(suite_dir, suite_report.TABLE_FILE), encoding="utf-8").read()
  assert "| plain |" in md and "| ER |" in md and "fda (relu)/set5/4" in md
  assert "against HR" not in md  # only suites with pre-processing variants get that table
  # ER against plain image by image: clean PSNR per set, CLEVER, each attack (2 images each).
  assert "Paired differences, variant − baseline" in md
  assert re.search(r"\| ER \| plain \| [+-]\d+\.\d\d ± \d+\.\d\d \([012]/2\) \| "
                   r"[+-]\d+\.\d ± \d+\.\d \([012]/2\) \|", md)
  assert re.search(r"\| ER \| plain \| ifgsm \| set5 \| [+-]\d+\.\d\d ± ", md)
  lr_part = md.split("The same for the attacked inputs' LR-PSNR")[1]
  assert re.search(r"\| ER \| plain \| fda \(relu\) \| set5 \| [+-]\d+\.\d\d ± ", lr_part)
  # The paper's BSD100 numbers beside ours (this smoke run has no BSD100: '–').
  assert "| plain | clean PSNR-Y, BSD100 (dB) | 27.54 | – | – |" in md
  assert "| ER | FDA 4/255 SR-PSNR, BSD100 (dB) | 41.03 | – | – |" in md
  with Image.open(os.path.join(suite_dir, suite_report.FIGURE_FILE)) as fig:
    assert fig.height == round(3.8 * 110)  # one row: no suite with a defense, no HR row
  # The paired differences as a figure: a panel per attack and one of clean PSNR.
  with Image.open(os.path.join(suite_dir, suite_report.PAIRED_FIGURE_FILE)) as fig:
    assert (fig.width, fig.height) == (round(3 * 4.6 * 110), round(3.8 * 110))
  for variant in ("plain", "ER"):
    for name in ("config.json", "flags.txt", "result.json", "model.weights.h5"):
      assert os.path.isfile(os.path.join(suite_dir, "runs", variant, name)), (variant, name)
  rows = reports.read_rows(suite_dir)
  # 2 variants x 2 images x (clean + CLEVER + FDA + I-FGSM).
  assert len(rows) == 16 and len({r["cell"] for r in rows}) == 16
  weights_time = os.path.getmtime(os.path.join(plain.run_dir, "model.weights.h5"))
  again = experiment.run_suite(TINY, recipe, output_dir=out, runs_root=runs, **RUN_ARGS)
  assert again["table"] == result["table"]
  assert len(reports.read_rows(suite_dir)) == 16  # nothing recomputed, no duplicates
  assert os.path.getmtime(os.path.join(plain.run_dir, "model.weights.h5")) == weights_time
  # Each variant's own report sits beside the merged one.
  assert len(reports.read_rows(suite_report.variant_report_dir(suite_dir, TINY.variants[1]))) == 8
  assert experiment.remaining_gradients(TINY, recipe, output_dir=out, runs_root=runs,
                                       **left) == {"plain": 0, "ER": 0}
  # Behind defenses: the bare network's cells are shared from 'tiny', the non-adaptive views
  # reuse its attacks, the adaptive one through JPEG (BPDA) costs 2 x 17 gradients, through
  # random resizing k = 3 times that; the network's training is counted once, and not at all
  # where the results keep its final weights (another runs root restores them).
  pre = studies.Suite("pre", "test", (
      studies.Variant("ER + none", (("entropy_weight", 1.0),)),
      studies.Variant("ER + JPEG", (("entropy_weight", 1.0),), "jpeg:75"),
      studies.Variant("ER + resize", (("entropy_weight", 1.0),), "resize:0.9-1.1")))
  assert experiment.remaining_gradients(pre, recipe, output_dir=out, runs_root=runs,
                                       **dict(left, eot_samples=3)) == {
                                           "ER + none": 0, "ER + JPEG": 34, "ER + resize": 102}
  # Without the run's cache of attacked images (another machine), the non-adaptive views need
  # the bare network's attacks again: 2 x 17 gradients, once for both defenses.
  assert experiment.remaining_gradients(pre, recipe, output_dir=out,
                                       runs_root=str(tmp_path / "fresh_runs"),
                                       **dict(left, eot_samples=3)) == {
                                           "ER + none": 0, "ER + JPEG": 68, "ER + resize": 102}
  assert experiment.estimate_seconds(pre, recipe, runs_root=str(tmp_path / "fresh_runs"),
                                     output_dir=str(tmp_path / "fresh_results"), **left)[1] == 4
  assert experiment.estimate_seconds(pre, recipe, runs_root=str(tmp_path / "fresh_runs"),
                                     output_dir=out, **left)[1] == 0
  # A second suite with the same networks under other names evaluates nothing again: it
  # copies the cells (and example files) of the first, renamed.
  other = studies.Suite("other", "test", (
      studies.Variant("none", (("entropy_weight", 0.0),)),
      studies.Variant("ER+first", (("entropy_weight", 1.0), ("entropy_layer", "first")))))
  assert experiment.remaining_gradients(other, recipe, output_dir=out, runs_root=runs,
                                       **left) == {"none": 0, "ER+first": 42}
  logged = []
  moved = experiment.run_suite(other, recipe, output_dir=out, runs_root=runs,
                               **dict(RUN_ARGS, log=logged.append))
  shared = reports.read_rows(suite_report.variant_report_dir(moved["suite_dir"],
                                                            other.variants[0]))
  assert len(shared) == 8 and {r["shared_from"] for r in shared} == {"tiny/plain"}
  assert {r["model"] for r in shared} == {"none"}
  first = {r["cell"].replace("|plain|", "|none|"): r for r in reports.read_rows(
      suite_report.variant_report_dir(suite_dir, TINY.variants[0]))}
  for row in shared:
    for key in ("psnr_y", "clever", "sr_psnr", "lr_psnr", "model_id"):
      assert row.get(key) == first[row["cell"]].get(key)
  assert any(n.startswith("none__") for n in os.listdir(os.path.join(
      suite_report.variant_report_dir(moved["suite_dir"], other.variants[0]), "examples")))
  assert "  8 cells taken from other suites' reports of the same network" in logged
  # The network trained with the regularizer elsewhere is another network: evaluated anew.
  fresh = reports.read_rows(suite_report.variant_report_dir(moved["suite_dir"], other.variants[1]))
  assert len(fresh) == 8 and not any("shared_from" in r for r in fresh)
  assert moved["table"][0] == dict(result["table"][0], variant="none")
  # The overview: each trained network once, against the plain one, the suites it stands for.
  diffs = experiment.studies_overview(out, recipe, dataset="set5")
  assert [(d["run"], d["baseline"], d["variants"]) for d in diffs] == [
      ("edsr_lambda1", "edsr_lambda0", ["tiny/ER"]),
      ("edsr_lambda1_first", "edsr_lambda0", ["other/ER+first"])]
  er = [p for _, _, ps in suite_report.paired_comparison(TINY, rows) for p in ps]
  assert diffs[0]["clean PSNR-Y"] == next(p for p in er if p["kind"] == "clean")
  assert diffs[0]["I-FGSM"] == next(p for p in er if p["attack"] == "ifgsm")
  assert os.path.isfile(os.path.join(out, overview.FIGURE_FILE))
  # Another recipe into the same suite directory is refused, naming what differs.
  with pytest.raises(ValueError, match=r"another recipe.*'steps': \(4, 6\)"):
    experiment.run_suite(TINY, _tiny_recipe(data_dir, steps=6), output_dir=out, runs_root=runs,
                         **RUN_ARGS)


def test_remaining_gradients_count_an_interrupted_clever_cell(data_dir, tmp_path):
  """CLEVER gradients kept by an unfinished cell (its partial file) are not counted again;
  a partial file of other settings or an unreadable one counts nothing."""
  recipe = _tiny_recipe(data_dir)
  out = str(tmp_path / "results")
  left = dict(attack_datasets=("set5",), attacks=(), clever=True, clever_samples=4, max_images=2)
  before = experiment.remaining_gradients(TINY, recipe, output_dir=out, runs_root="", **left)
  assert before == {"plain": 8, "ER": 8}  # 2 Set5 images x 4 samples each
  partial = os.path.join(suite_report.variant_report_dir(os.path.join(out, "tiny"),
                                                         TINY.variants[0]),
                         evaluation.PARTIAL_DIR)
  os.makedirs(partial)
  for name, samples, norms in (("clever__a.json", 4, [1.0, 2.0, 3.0]),
                               ("clever__b.json", 1024, [1.0] * 8)):
    with open(os.path.join(partial, name), "w", encoding="utf-8") as f:
      json.dump(dict(settings=dict(num_samples=samples), grad_norms=norms), f)
  with open(os.path.join(partial, "clever__c.json"), "w", encoding="utf-8") as f:
    f.write("{")
  after = experiment.remaining_gradients(TINY, recipe, output_dir=out, runs_root="", **left)
  assert after == {"plain": 8 - 3, "ER": 8}


def test_a_variant_busy_in_another_process_is_skipped(data_dir, tmp_path, lock_holder):
  """Two processes (one per core) can run one suite: a locked variant is left to its owner."""
  recipe = _tiny_recipe(data_dir, steps=2)
  out, runs = str(tmp_path / "results"), str(tmp_path / "runs")
  plain = studies.variant_config(recipe, TINY.variants[0], runs)
  os.makedirs(runs, exist_ok=True)
  holder = lock_holder(plain.run_dir)  # another process holds the plain run's lock
  args = dict(RUN_ARGS, attacks=(), clever=False)
  result = experiment.run_suite(TINY, recipe, output_dir=out, runs_root=runs, **args)
  assert result["busy_variants"] == ["plain"]
  assert [r["variant"] for r in result["table"]] == ["ER"]
  assert not os.path.isdir(plain.run_dir)
  holder.kill()  # killed, not released: the kernel drops its lock, the file stays
  holder.wait()
  assert os.path.exists(plain.run_dir + ".lock")
  result = experiment.run_suite(TINY, recipe, output_dir=out, runs_root=runs, **args)
  assert result["busy_variants"] == [] and [r["variant"] for r in result["table"]] == [
      "plain", "ER"]
  assert not os.path.exists(plain.run_dir + ".lock")


def test_cli_dry_run_and_errors(data_dir, tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TFSR_DATA_DIR=data_dir)
  recipe = tmp_path / "small.cfg"  # the study recipe with a cheap step to time
  recipe.write_text(f"--flagfile={experiment.DEFAULT_RECIPE}\n--patch_size=8\n--batch_size=2\n")
  runs = tmp_path / "runs"
  proc = subprocess.run([sys.executable, "-m", "tfsr_defense.experiment", "--suite=delta",
                         "--dry_run", "--steps=8", f"--recipe={recipe}", f"--runs_root={runs}",
                         "--variant=delta=10", "--variant=delta=0.01"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "delta=0.01" in proc.stdout and "edsr_lambda1_delta0.01" in proc.stdout
  assert "edsr_lambda1_delta10" in proc.stdout and "delta=0.1 " not in proc.stdout  # --variant
  assert "new" in proc.stdout and "measured here" in proc.stdout
  # Per variant, nothing evaluated yet: (Set5 5 + BSD100 20 images) x 6 eps x (I-FGSM 50 +
  # FDA 1.5 x 10 gradients) + CLEVER 5 x 1024 = 9750 + 5120.
  line = [ln for ln in proc.stdout.splitlines() if "edsr_lambda1_delta10" in ln][0]
  assert line.endswith("new; ~14,870 input gradients of evaluation left"), line
  assert not runs.exists()  # a dry run changes nothing
  # Every suite at once (without the networks suite's other networks than EDSR, which would be
  # timed here: test_dry_run_prices_each_network_at_its_rates), each network counted once: 14
  # distinct runs x 8 steps, the 2 adversarially trained ones (I-FGSM, T = 1) counted twice:
  # 128; 14 networks x 14,870 gradients + behind JPEG 2 x 9750 (the adaptive attack; the
  # non-adaptive one reuses the bare network's) + behind random resizing 2 x 2 x 9750 (EOT k = 2).
  excluded = [f"--exclude_variant={n} {k}" for n in ("rcan", "msrn", "carn", "carn_m", "srresnet")
              for k in ("plain", "ER")]
  proc = subprocess.run([sys.executable, "-m", "tfsr_defense.experiment", "--suite=all",
                         "--dry_run", "--steps=8", f"--recipe={recipe}", f"--runs_root={runs}",
                         f"--output_dir={tmp_path / 'results'}", "--seconds_per_step=1.5",
                         "--seconds_per_gradient=0.8"] + excluded,
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.count("Suite '") == 7 and "rcan" not in proc.stdout
  lines = proc.stdout.strip().splitlines()
  # Given rates, nothing timed: 128 x 1.5 s + 266,680 x 0.8 s = 213,536 s = 59.3 h.
  assert lines[-2] == ("All 7 suites, each network trained and evaluated once: 14 training runs "
                       "(128 steps) and 18 evaluations (~266,680 input gradients): 59.3 h in one "
                       "process, ~29.7 h in two (an adversarial-training step counted as 1 + T "
                       "steps; seconds per step and gradient given):"), lines[-2]
  assert lines[-1] == "  edsr: 128 steps x 1.50 s + 266,680 input gradients x 0.800 s = 59.3 h"
  assert not runs.exists() and not (tmp_path / "results").exists()
  for args, message in (
      (["--suite=all"], "--suite=all goes with --dry_run, --report_only or --save_progress"),
      (["--suite=all", "--dry_run", "--exclude_variant=nope"],
       "Unknown variant(s) ['nope']: not in suite(s) ablation, adversarial"),
      (["--suite=lambda", "--exclude_variant=lambda=0", "--exclude_variant=lambda=0.1",
        "--exclude_variant=lambda=1", "--exclude_variant=lambda=10"],
       "--exclude_variant leaves no variant to run.")):
    proc = subprocess.run([sys.executable, "-m", "tfsr_defense.experiment"] + args,
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, args
    assert message in proc.stderr.strip().splitlines()[-1], (args, proc.stderr[-500:])
  proc = subprocess.run([sys.executable, "-m", "tfsr_defense.experiment", "--suite=nope"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
                        check=False)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith(
      "tfsr_defense.experiment: error: flag --suite=nope: value should be one of <ablation")
  # --report_only where the suite never ran: one error naming the missing suite.json.
  proc = subprocess.run([sys.executable, "-m", "tfsr_defense.experiment", "--suite=lambda",
                         "--report_only", f"--output_dir={tmp_path / 'none'}"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
                        check=False)
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == (
      f"tfsr_defense.experiment: error: No suite report to rewrite: "
      f"{tmp_path / 'none' / 'lambda' / 'suite.json'} does not exist (run --suite=lambda with "
      "this --output_dir first).")
  assert not (tmp_path / "none").exists()
  # --save_progress with no run under --runs_root: says so, writes nothing.
  proc = subprocess.run([sys.executable, "-m", "tfsr_defense.experiment", "--suite=all",
                         "--save_progress", f"--runs_root={runs}",
                         f"--output_dir={tmp_path / 'none'}"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert f"No unfinished training run under {runs} holds more than the results." in proc.stdout
  assert not (tmp_path / "none").exists() and not runs.exists()


def test_runs_travel_with_the_results(data_dir, tmp_path):
  """A machine with the suites' results but not runs/ resumes an unfinished run from the
  checkpoint --save_progress copied into the results, and takes a finished run's weights from
  the results instead of training it again."""
  recipe = _tiny_recipe(data_dir)
  out = str(tmp_path / "results")
  runs = [str(tmp_path / f"machine{k}" / "runs") for k in range(3)]
  args = dict(RUN_ARGS, attacks=(), clever=False, max_images=1)
  plain = studies.variant_config(recipe, TINY.variants[0], runs[0])
  trainer.train(plain, log=lambda *_: None)
  uninterrupted = trainer.load_run_model(plain.run_dir)[1].get_weights()
  for name in os.listdir(plain.run_dir):  # interrupted after step 2 of 4
    if name in ("result.json", "model.weights.h5"):
      os.remove(os.path.join(plain.run_dir, name))
  for name in os.listdir(os.path.join(plain.run_dir, "ckpt")):
    if name.startswith("ckpt-4."):
      os.remove(os.path.join(plain.run_dir, "ckpt", name))
  assert experiment.save_progress(TINY, recipe, out, runs[0], log=lambda *_: None) == [
      ("plain", 2)]
  copy = os.path.join(out, "tiny", "runs", "plain")
  assert sorted(os.listdir(os.path.join(copy, "ckpt"))) == [
      "ckpt-2.data-00000-of-00001", "ckpt-2.index"]
  assert experiment.save_progress(TINY, recipe, out, runs[0], log=lambda *_: None) == []
  # Machine 1: only the results. The copy is plain's, not ER's (another network).
  assert [s for _, _, s in experiment.plan(TINY, recipe, runs[1], out)] == [
      f"resumable at step 2 (kept in {copy})", "new"]
  assert [s for _, _, s in experiment.plan(TINY, recipe, runs[1])] == ["new", "new"]
  work = experiment.remaining_work([TINY], recipe, runs_root=runs[1], output_dir=out,
                                   attack_datasets=(), attacks=(), clever=False)
  assert work["steps"] == 2 + 4
  lines = []
  experiment.run_suite(TINY, recipe, output_dir=out, runs_root=runs[1], variants=["plain"],
                       **dict(args, log=lines.append))
  assert any("restored the checkpoint of step 2" in line for line in lines), lines
  plain1 = studies.variant_config(recipe, TINY.variants[0], runs[1])
  with open(os.path.join(plain1.run_dir, "result.json"), encoding="utf-8") as f:
    assert json.load(f)["step"] == 4
  with open(os.path.join(plain1.run_dir, "config.json"), encoding="utf-8") as f:
    assert json.load(f)["run_dir"] == plain1.run_dir
  resumed = trainer.load_run_model(plain1.run_dir)[1].get_weights()
  assert all(np.array_equal(a, b) for a, b in zip(resumed, uninterrupted))  # the same batches
  # The final weights replace the copied checkpoint in the results.
  assert not os.path.exists(os.path.join(copy, "ckpt"))
  with open(os.path.join(plain1.run_dir, "model.weights.h5"), "rb") as f:
    weights = f.read()
  with open(os.path.join(copy, "model.weights.h5"), "rb") as f:
    assert f.read() == weights
  # Machine 2: the finished run is restored, not trained (nothing to train with train=False).
  assert [s for _, _, s in experiment.plan(TINY, recipe, runs[2], out)][0] == \
      f"trained (kept in {copy})"
  result = experiment.run_suite(TINY, recipe, output_dir=out, runs_root=runs[2],
                                variants=["plain"], train=False, **args)
  assert result["skipped_variants"] == []
  plain2 = studies.variant_config(recipe, TINY.variants[0], runs[2])
  assert not os.path.exists(os.path.join(plain2.run_dir, "ckpt"))
  with open(os.path.join(plain2.run_dir, "model.weights.h5"), "rb") as f:
    assert f.read() == weights
  # A damaged copy is passed over: nothing to restore from.
  with open(os.path.join(copy, "config.json"), "w", encoding="utf-8") as f:
    f.write("{")
  assert run_copies.committed_run(plain2, out) is None


def test_train_only_then_evaluate(data_dir, tmp_path):
  """evaluate=False (--evaluate=false) trains the missing variants and copies their run files
  into the results, evaluating nothing; a later run evaluates them without training."""
  recipe = _tiny_recipe(data_dir, steps=2)
  out, runs = str(tmp_path / "results"), str(tmp_path / "runs")
  args = dict(RUN_ARGS, attacks=(), clever=False, max_images=1)
  result = experiment.run_suite(TINY, recipe, output_dir=out, runs_root=runs, evaluate=False,
                                **args)
  assert result["table"] == [] and result["busy_variants"] == []
  assert [s for _, _, s in experiment.plan(TINY, recipe, runs)] == ["trained", "trained"]
  for variant in ("plain", "ER"):
    assert os.path.isfile(os.path.join(result["suite_dir"], "runs", variant, "model.weights.h5"))
    assert reports.read_rows(suite_report.variant_report_dir(result["suite_dir"], studies.Variant(
        variant, ()))) == []
  md = open(os.path.join(result["suite_dir"], suite_report.TABLE_FILE), encoding="utf-8").read()
  assert suite_report.NO_CELLS_LINE in md and "\n|---|\n" not in md  # no empty table
  weights = [os.path.join(c.run_dir, "model.weights.h5")
             for _, c, _ in experiment.plan(TINY, recipe, runs)]
  times = [os.path.getmtime(w) for w in weights]
  result = experiment.run_suite(TINY, recipe, output_dir=out, runs_root=runs, **args)
  assert [r["variant"] for r in result["table"]] == ["plain", "ER"]
  assert [os.path.getmtime(w) for w in weights] == times  # not trained again


def test_network_rates_scale_other_networks_by_the_ratio_measured_here(data_dir):
  """--dry_run prices every network at its own rates: given rates belong to the recipe's
  network; another network's is the given one times the ratio of the two measured here."""
  recipe = _tiny_recipe(data_dir)
  measured = {"edsr": (2.0, 1.0), "carn_m": (0.5, 0.25), "srresnet": (3.0, 1.5)}
  calls = []

  def measure(config):
    calls.append((config.model, config.entropy_weight))
    return measured[config.model]

  assert experiment.network_rates(["edsr"], recipe, 4.0, 0.8, measure=measure) == (
      {"edsr": (4.0, 0.8)}, "given")
  assert not calls  # nothing timed
  rates, source = experiment.network_rates(["edsr", "srresnet", "carn_m"], recipe, 4.0, 0.8,
                                           measure=measure)
  assert rates == {"edsr": (4.0, 0.8), "carn_m": pytest.approx((1.0, 0.2)),
                   "srresnet": pytest.approx((6.0, 1.2))}
  assert calls == [("edsr", 1.0), ("carn_m", None), ("srresnet", None)]  # paper's lambda each
  assert source.startswith("edsr's given, the other networks' scaled by their ratio")
  rates, source = experiment.network_rates(["carn_m"], recipe, measure=measure)
  assert rates == {"edsr": (2.0, 1.0), "carn_m": (0.5, 0.25)}
  assert source == "measured here on a 120x80 LR image"
  rates, _ = experiment.network_rates(["carn_m"], recipe, step_time=4.0, measure=measure)
  assert rates == {"edsr": (4.0, 1.0), "carn_m": (1.0, 0.25)}  # only the step rate given


def test_dry_run_prices_each_network_at_its_rates(data_dir, tmp_path, monkeypatch, capsys):
  """The networks suite: CARN-M is cheaper than EDSR; the total is the sum of the networks'."""
  recipe = _tiny_recipe(data_dir)
  recipe = dataclasses.replace(recipe, model_options={})
  networks = studies.Suite("networks", "test", (
      studies.Variant("edsr ER", (("entropy_weight", 1.0),)),
      studies.Variant("carn_m ER", (("model", "carn_m"), ("entropy_weight", 1.0)))))
  measured = {"edsr": (2.0, 1.0), "carn_m": (0.5, 0.25)}
  monkeypatch.setattr(experiment, "measure_step_and_gradient", lambda c: measured[c.model])
  left = dict(attack_datasets=("set5",), attacks=("fda", "ifgsm"), eps=(4 / 255,), steps=2,
              clever=True, clever_samples=4, max_images=2)
  experiment._dry_run([networks, networks], recipe, "recipe.cfg", str(tmp_path / "runs"),
                      dict(output_dir=str(tmp_path / "results"), **left), step_time=4.0)
  lines = capsys.readouterr().out.strip().splitlines()
  # Each network 4 steps and 42 gradients (test_tiny_suite_end_to_end_and_resume), once:
  # EDSR 4 x 4.0 + 42 x 1.0 = 58 s; CARN-M 4 x (0.5 x 4.0 / 2.0) + 42 x 0.25 = 18.5 s.
  assert lines[-3].startswith("All 2 suites, each network trained and evaluated once: 2 training "
                              "runs (8 steps) and 2 evaluations (~84 input gradients): 0.0 h ")
  assert lines[-2:] == ["  carn_m: 4 steps x 1.00 s + 42 input gradients x 0.250 s = 0.0 h",
                        "  edsr: 4 steps x 4.00 s + 42 input gradients x 1.000 s = 0.0 h"]
  assert not (tmp_path / "runs").exists()
  # Nothing left: nothing timed.
  monkeypatch.setattr(experiment, "remaining_work", lambda *a, **k: dict(
      variants=[], runs=0, steps=0, evaluations=0, gradients=0, by_model={}))
  monkeypatch.setattr(experiment, "measure_step_and_gradient", lambda c: 1 / 0)
  experiment._dry_run([networks], recipe, "recipe.cfg", str(tmp_path / "runs"), {})
  assert capsys.readouterr().out.strip().splitlines()[-1] == (
      "Estimated: 0 training runs (0 steps) and 0 evaluations (~0 input gradients): 0.0 h in one "
      "process (what is left: finished and shared cells are not counted; seconds per step and "
      "gradient not needed: nothing is left):")


def test_remaining_work_counts_each_network_once(data_dir, tmp_path):
  """Two suites sharing the ER network: its training and evaluation are counted once; a variant
  behind JPEG adds its adaptive attack only."""
  recipe = _tiny_recipe(data_dir)
  twin = studies.Suite("twin", "test", (
      studies.Variant("ER again", (("entropy_weight", 1.0),)),
      studies.Variant("ER + JPEG", (("entropy_weight", 1.0),), "jpeg:75")))
  left = dict(attack_datasets=("set5",), attacks=("fda", "ifgsm"), eps=(4 / 255,), steps=2,
              clever=True, clever_samples=4, max_images=2)
  work = experiment.remaining_work([TINY, twin], recipe, runs_root=str(tmp_path / "runs"),
                                   output_dir=str(tmp_path / "results"), **left)
  # 2 runs x 4 steps; plain 42 + ER 42 (see the end-to-end test) + ER behind JPEG 2 x 17.
  assert (work["runs"], work["steps"]) == (2, 8)
  assert (work["evaluations"], work["gradients"]) == (3, 42 + 42 + 34)
  assert work["by_model"] == {"edsr": (8, 42 + 42 + 34)}
  assert [(s, v.name, g) for s, v, _, _, g in work["variants"]] == [
      ("tiny", "plain", 42), ("tiny", "ER", 42), ("twin", "ER again", 42),
      ("twin", "ER + JPEG", 34)]
  assert studies.exclude_variants([TINY, twin], ["plain", "ER + JPEG"]) == [
      studies.Suite("tiny", "test", TINY.variants[1:]),
      studies.Suite("twin", "test", twin.variants[:1])]
  assert studies.exclude_variants([TINY], ["plain", "ER"]) == []
  with pytest.raises(ValueError, match=r"Unknown variant\(s\) \['nope'\]: not in suite"):
    studies.exclude_variants([TINY, twin], ["nope"])


def test_paper_numbers_sit_beside_ours(data_dir):
  """Each run the paper states a BSD100 number for gets it, under every suite's variant name;
  defended variants and other runs get none; 'ours' minus 'paper' is computed from the table."""
  recipe = experiment.load_recipe(data_dir=data_dir)
  lam = studies.get_suite("lambda")
  table = [{"variant": "lambda=0", "psnr_y/bsd100": 26.5, "fda (relu)/bsd100/4": 33.0}]
  rows = suite_report.paper_comparison(lam, recipe, table)
  assert [(r["variant"], r["paper"], r["ours"]) for r in rows] == [
      ("lambda=0", 27.54, 26.5), ("lambda=0", 31.65, 33.0), ("lambda=0.1", 27.53, None),
      ("lambda=1", 27.28, None), ("lambda=1", 41.03, None), ("lambda=10", 26.41, None)]
  delta = suite_report.paper_comparison(studies.get_suite("delta"), recipe, [])
  assert [r["paper"] for r in delta if "clean" in r["quantity"]] == [26.89, 27.13, 27.28, 27.34]
  pre = suite_report.paper_comparison(studies.get_suite("preprocessing"), recipe, [])
  assert {r["variant"] for r in pre} == {"plain + none", "ER + none"}
  assert suite_report.paper_comparison(studies.get_suite("target_layer"), recipe, []) == [
      dict(variant="pre-upsampler, lambda=1", quantity=q, paper=p, ours=None)
      for q, p in (("clean PSNR-Y, BSD100 (dB)", 27.28), ("FDA 4/255 SR-PSNR, BSD100 (dB)", 41.03))]


def test_clever_only_for_undefended_variants(data_dir, tmp_path):
  """A variant behind a pre-processing defense is attacked under both threat models, but gets
  no CLEVER (its SR network's is the undefended variant's)."""
  suite = studies.Suite("pre", "test", (
      studies.Variant("ER + none", (("entropy_weight", 1.0),)),
      studies.Variant("ER + JPEG 75", (("entropy_weight", 1.0),), "jpeg:75", "ER + none")))
  recipe = _tiny_recipe(data_dir, steps=2)
  args = dict(RUN_ARGS, attacks=("ifgsm",), max_images=1)
  result = experiment.run_suite(suite, recipe, output_dir=str(tmp_path / "results"),
                                runs_root=str(tmp_path / "runs"), **args)
  rows = reports.read_rows(result["suite_dir"])
  kinds = {(r["model"], r["kind"]) for r in rows}
  assert kinds == {("ER + none", "clean"), ("ER + none", "clever"), ("ER + none", "attack"),
                   ("ER + JPEG 75 [non-adaptive]", "clean"),
                   ("ER + JPEG 75 [non-adaptive]", "attack"),
                   ("ER + JPEG 75 [adaptive]", "clean"), ("ER + JPEG 75 [adaptive]", "attack")}
  # suite.md: a second table of the attacked outputs' PSNR-Y against HR (one image: its value).
  md = open(os.path.join(result["suite_dir"], suite_report.TABLE_FILE), encoding="utf-8").read()
  hr_part = md.split("The attacked output against HR")[1]
  for r in rows:
    if r["kind"] == "attack":
      assert f"| {r['model']} | {r['adv_psnr_y']:.2f} |" in hr_part
      assert f"| {r['model']} | {r['sr_psnr']:.2f} |" not in hr_part
  # Paired against the bare network, per threat model: SR-PSNR, then PSNR-Y against HR (one
  # image: the difference itself).
  bare = {r["attack"]: r for r in rows if r["kind"] == "attack" and r["model"] == "ER + none"}
  paired_sr, rest = md.split("Paired differences")[1].split("The same for the attacked outputs'")
  paired_hr, paired_lr = rest.split("The same for the attacked inputs' LR-PSNR")
  for r in rows:
    if r["kind"] == "attack" and r["model"] != "ER + none":
      base = bare[r["attack"]]
      for part, metric in ((paired_sr, "sr_psnr"), (paired_hr, "adv_psnr_y"),
                           (paired_lr, "lr_psnr")):
        d = r[metric] - base[metric]
        assert (f"| {r['model']} | ER + none | ifgsm | set5 | {d:+.2f} ({int(d > 0)}/1) |"
                in part), (metric, r["model"])
  # suite.png: a second row of panels, the attacked outputs' PSNR-Y against HR.
  with Image.open(os.path.join(result["suite_dir"], suite_report.FIGURE_FILE)) as fig:
    assert fig.height == round(2 * 3.8 * 110)


def test_eot_draws_are_a_recorded_setting_of_suites_with_defenses(data_dir, tmp_path):
  """k of the adaptive attack on random resizing reaches the defended view (its fingerprint),
  is recorded only where a suite has a pre-processing variant, a re-run with another k is
  refused, and the undefended network's cells are still shared with suites that have no k."""
  recipe = _tiny_recipe(data_dir, steps=2)
  out, runs = str(tmp_path / "results"), str(tmp_path / "runs")
  args = dict(RUN_ARGS, attacks=("ifgsm",), clever=False, max_images=1)
  experiment.run_suite(TINY, recipe, output_dir=out, runs_root=runs, **args)
  with open(os.path.join(out, "tiny", experiment.SUITE_FILE), encoding="utf-8") as f:
    assert "eot_samples" not in json.load(f)["evaluation"]
  pre = studies.Suite("pre", "test", (
      studies.Variant("ER + none", (("entropy_weight", 1.0),)),
      studies.Variant("ER + resize", (("entropy_weight", 1.0),), "resize:0.9-1.1")))
  with pytest.raises(ValueError, match="eot_samples must be an integer >= 1, got 0"):
    experiment.run_suite(pre, recipe, output_dir=out, runs_root=runs, eot_samples=0, **args)
  assert not os.path.exists(os.path.join(out, "pre"))  # refused before anything is written
  result = experiment.run_suite(pre, recipe, output_dir=out, runs_root=runs, eot_samples=2,
                                **args)
  with open(os.path.join(result["suite_dir"], experiment.SUITE_FILE), encoding="utf-8") as f:
    assert json.load(f)["evaluation"]["eot_samples"] == 2
  rows = reports.read_rows(result["suite_dir"])
  assert {r.get("shared_from") for r in rows if r["model"] == "ER + none"} == {"tiny/ER"}
  config = studies.variant_config(recipe, pre.variants[1], runs)
  _, net, _, _ = trainer.load_run_model(config.run_dir)
  expected = {k: defenses.defended_sr_models(net, "resize:0.9-1.1", name="ER + resize",
                                             eot_samples=k)["ER + resize [adaptive]"].fingerprint
              for k in (2, 8)}
  assert expected[2] != expected[8]
  assert {r["model_id"] for r in rows if r["model"] == "ER + resize [adaptive]"} == {expected[2]}
  with pytest.raises(ValueError, match=r"evaluation.eot_samples': \(2, 3\)"):
    experiment.run_suite(pre, recipe, output_dir=out, runs_root=runs, eot_samples=3, **args)


def test_a_subset_of_variants(data_dir, tmp_path):
  """--variant runs only the named variants; the suite's report keeps every variant evaluated
  so far; an unknown name is refused before anything is written."""
  recipe = _tiny_recipe(data_dir, steps=2)
  out, runs = str(tmp_path / "results"), str(tmp_path / "runs")
  args = dict(RUN_ARGS, attacks=(), clever=False, max_images=1)
  with pytest.raises(ValueError, match=r"Unknown variant\(s\) \['Er'\] of suite 'tiny': use "
                     r"some of \['plain', 'ER'\]"):
    experiment.run_suite(TINY, recipe, output_dir=out, runs_root=runs, variants=["Er"], **args)
  assert not os.path.exists(out) and not os.path.exists(runs)
  result = experiment.run_suite(TINY, recipe, output_dir=out, runs_root=runs, variants=["ER"],
                                **args)
  assert [r["variant"] for r in result["table"]] == ["ER"]
  md_path = os.path.join(result["suite_dir"], suite_report.TABLE_FILE)
  with open(md_path, encoding="utf-8") as f:
    assert "in progress; a listed variant's means are over its cells so far: plain (not " \
        "evaluated yet)." in f.read()
  assert not os.path.exists(studies.variant_config(recipe, TINY.variants[0], runs).run_dir)
  result = experiment.run_suite(TINY, recipe, output_dir=out, runs_root=runs,
                                variants=["plain"], **args)
  assert [r["variant"] for r in result["table"]] == ["plain", "ER"]
  with open(md_path, encoding="utf-8") as f:
    finished = f.read()
  assert "in progress" not in finished
  # An interrupted evaluation (ER's one clean cell lost; max_images = 1 -> 1 cell per variant):
  # --report_only lists it, and nothing else changes.
  er_rows = os.path.join(suite_report.variant_report_dir(result["suite_dir"], TINY.variants[1]),
                         reports.ROWS_FILE)
  os.remove(er_rows)
  table = experiment.rewrite_suite_report(TINY, recipe, out)
  assert [r["variant"] for r in table] == ["plain"]
  with open(md_path, encoding="utf-8") as f:
    assert "cells so far: ER (not evaluated yet)." in f.read()
  # A damaged suite.json: one error naming the file; the report is left as it was.
  record = os.path.join(result["suite_dir"], experiment.SUITE_FILE)
  with open(md_path, encoding="utf-8") as f:
    before = f.read()
  for text, problem in (("{\"suite\": \"tiny\",", "is not valid JSON"),
                        ("[]", "holds no evaluation settings"),
                        ("{\"suite\": \"x\", \"evaluation\": {}}", "records suite 'x'")):
    with open(record, "w", encoding="utf-8") as f:
      f.write(text)
    with pytest.raises(ValueError, match=f"{re.escape(record)} {problem}"):
      experiment.rewrite_suite_report(TINY, recipe, out)
    with open(md_path, encoding="utf-8") as f:
      assert f.read() == before
  assert studies.select_variants(TINY, ["ER", "plain"]).variants == TINY.variants
  with pytest.raises(ValueError, match="Unknown variant"):
    studies.select_variants(TINY, [])


def test_expected_cells_by_hand():
  """The cells of a finished evaluation with the studies' settings: Set5 / Set14 / BSD100 clean
  (5 + 14 + 100), Set5 + 20 BSD100 images x 6 eps x 2 attacks (300), CLEVER on Set5 (5) = 424
  for a bare network; behind a defense two views of 419 and no CLEVER = 838; Set5 cut to 2
  images by max_images: 2 + 14 + 100 + 22 x 12 + 2 = 382."""
  settings = dict(clean_datasets=["set5", "set14", "bsd100"], attack_datasets=["set5", "bsd100"],
                  attack_images=20, attacks=["fda", "ifgsm"], eps_255=[1, 2, 4, 8, 16, 32],
                  clever=True)
  sizes = dict(set5=5, set14=14, bsd100=100)
  pre = studies.get_suite("preprocessing")
  cells = suite_report.expected_cells(pre, settings, sizes)
  assert cells["plain + none"] == 424 and cells["ER + JPEG 75"] == 838
  assert suite_report.expected_cells(pre, settings, dict(sizes, set5=2))["ER + none"] == 382
  assert suite_report.expected_cells(pre, dict(settings, clever=False), sizes)["ER + none"] == 419


def test_suite_figure_keeps_near_equal_variants_near():
  """The CLEVER-vs-clean panel is at least the given span wide, centred on the points (two
  variants 0.01 dB apart do not fill the axis); a wider spread gets 10 % padding."""
  from tfsr_defense import plots  # pylint: disable=g-import-not-at-top
  limits = []
  plots._min_span(lambda lo, hi: limits.append((lo, hi)), [26.77, 26.78], 0.5)
  plots._min_span(lambda lo, hi: limits.append((lo, hi)), [20.0, 30.0], 0.5)
  (lo, hi), wide = limits
  assert hi - lo == pytest.approx(0.5) and (lo + hi) / 2 == pytest.approx(26.775)
  assert wide == pytest.approx((19.0, 31.0))
