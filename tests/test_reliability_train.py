"""Training and export fail loudly or behave correctly (issue 15): non-finite losses,
checkpoint recovery, run-directory integrity, strict JSON, SIGTERM, CLI errors and help."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tfsr_defense import export, fileio, serving, trainer
from tfsr_defense.models import registry

TINY = dict(n_resblocks=1, n_feats=8)
QUIET = lambda *_: None  # noqa: E731
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
BIN = os.path.dirname(sys.executable)


def _config(run_dir, **kwargs):
  values = dict(model="edsr", scale=2, train_data="embedded", eval_data="", patch_size=8,
                batch_size=2, steps=2, checkpoint_every=1, log_every=1, precision="float32",
                run_dir=str(run_dir), export=False, model_options=TINY)
  values.update(kwargs)
  return trainer.TrainConfig(**values)


def _strict(text):
  def refuse(constant):
    raise ValueError(f"non-strict JSON constant {constant}")
  return json.loads(text, parse_constant=refuse)


def _snapshot(run_dir):
  return {name: (run_dir / name).read_bytes() for name in ("flags.txt", "config.json")
          if (run_dir / name).exists()}


def test_non_finite_loss_stops_keeps_last_good_checkpoint(tmp_path):
  run_dir = tmp_path / "run"
  config = _config(run_dir, learning_rate=1e8, steps=40, export=True)
  with pytest.raises(trainer.NonFiniteLossError) as info:
    trainer.train(config, log=QUIET)
  message = str(info.value)
  step = int(re.search(r"Step (\d+): non-finite loss", message).group(1))
  assert 1 <= step <= 40
  for term in ("loss=", "l_r=", "l_e_bits="):
    assert term in message
  latest = tf.train.latest_checkpoint(str(run_dir / "ckpt"))
  if step > 1:
    assert latest.endswith(f"ckpt-{step - 1}") and f"ckpt-{step - 1}" in message
    reader = tf.train.load_checkpoint(latest)
    for name, _ in tf.train.list_variables(latest):
      value = reader.get_tensor(name)
      if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        assert np.all(np.isfinite(value)), name
  else:
    assert latest is None
  for name in ("model.weights.h5", "export", "result.json"):
    assert not (run_dir / name).exists(), name


def test_garbled_checkpoint_state_file_resumes_from_the_files(tmp_path):
  run_dir = tmp_path / "run"
  trainer.train(_config(run_dir, steps=3), log=QUIET)
  state = run_dir / "ckpt" / "checkpoint"
  state.write_text("model_checkpoint_path: \x00\x01 garbage {{{")
  lines = []
  result = trainer.train(_config(run_dir, steps=4), log=lines.append)
  assert any("Resumed from" in l and l.rstrip(".").endswith("at step 3") for l in lines), lines
  assert any("Warning" in l and "ckpt-3" in l for l in lines)
  assert result["step"] == 4
  assert tf.train.latest_checkpoint(str(run_dir / "ckpt")).endswith("ckpt-4")  # state repaired
  # Checkpoint files without any complete checkpoint: an error, not a fresh start.
  broken = tmp_path / "broken"
  (broken / "ckpt").mkdir(parents=True)
  (broken / "ckpt" / "ckpt-7.data-00000-of-00001").write_bytes(b"\0" * 16)
  with pytest.raises(trainer.CheckpointError, match="no complete checkpoint"):
    trainer.train(_config(broken), log=QUIET)
  assert not (broken / "config.json").exists()


def test_refused_runs_leave_the_run_directory_alone(tmp_path):
  run_dir = tmp_path / "run"
  trainer.train(_config(run_dir, steps=1), log=QUIET, flags_text="--steps=1\n")
  before = _snapshot(run_dir)
  assert before["flags.txt"] == b"--steps=1\n"
  refusals = [
      (dict(train_data=str(tmp_path / "nodata")), ValueError, "nodata"),
      (dict(entropy_weight=0.0), trainer.CheckpointError, "another network"),
      (dict(delta=2.0), trainer.CheckpointError, r"delta: 1\.0 -> 2\.0"),
      (dict(entropy_weight=0.5), trainer.CheckpointError, r"entropy_weight: 1\.0 -> 0\.5"),
      (dict(noise=False), trainer.CheckpointError, "noise: True -> False"),
      (dict(estimate_entropy=False), trainer.CheckpointError, "estimate_entropy: True -> False"),
      (dict(entropy_layer="first"), trainer.CheckpointError,
       "entropy_layer: 'pre_upsampler' -> 'first'"),
      (dict(adversarial="ifgsm"), trainer.CheckpointError, "adversarial: 'none' -> 'ifgsm'"),
  ]
  for change, error, message in refusals:
    with pytest.raises(error, match=message):
      trainer.train(_config(run_dir, steps=2, **change), log=QUIET, flags_text="--steps=2\n")
    assert _snapshot(run_dir) == before, change
  # A run directory of an older version (no entropy_layer / adversarial keys) resumes.
  saved = json.loads((run_dir / "config.json").read_text())
  for key in ("entropy_layer", "adversarial", "adv_eps", "adv_steps", "adv_mix", "adv_objective"):
    del saved[key]
  (run_dir / "config.json").write_text(json.dumps(saved))
  assert trainer.train(_config(run_dir, steps=2), log=QUIET, flags_text="x\n")["step"] == 2
  assert (run_dir / "flags.txt").read_text() == "x\n"
  assert _strict((run_dir / "config.json").read_text())["entropy_layer"] == "pre_upsampler"


def test_strict_json_everywhere(tmp_path):
  run_dir = tmp_path / "run"
  trainer.train(_config(run_dir, steps=1, eval_data="embedded_val", export=True), log=QUIET)
  for _ in range(2):  # and again on the finished run (no step timed: seconds_per_step unknown)
    result = _strict((run_dir / "result.json").read_text())
    assert result["seconds_per_step"] is None and result["step"] == 1
    assert np.isfinite(result["psnr_y"])
    trainer.train(_config(run_dir, steps=1, eval_data="embedded_val", export=True), log=QUIET)
  _strict((run_dir / "config.json").read_text())
  metadata = serving.load_metadata(str(run_dir / "export" / "1"))
  assert metadata["entropy_layer"] == "pre_upsampler" and metadata["adversarial"] == "none"
  assert fileio.strict(dict(a=[float("nan"), np.float32(np.inf), 1.5], b=(1, None))) == \
      dict(a=[None, None, 1.5], b=[1, None])


def test_export_an_interrupted_run_from_its_newest_checkpoint(tmp_path):
  run_dir = tmp_path / "run"
  trainer.train(_config(run_dir, steps=2), log=QUIET)
  config = _config(run_dir)
  final = trainer.build_for_inference(config)
  final.load_weights(str(run_dir / "model.weights.h5"))
  os.remove(run_dir / "model.weights.h5")  # as if interrupted after the last checkpoint
  path = export.export_run(str(run_dir), str(tmp_path / "served"), version=2)
  loaded = tf.saved_model.load(path)
  x = tf.random.uniform([1, 6, 7, 3], seed=2)
  np.testing.assert_allclose(loaded.signatures["sr_float"](images=x)["sr"].numpy(),
                             np.clip(final(x).numpy(), 0, 1), atol=1e-6)
  metadata = serving.load_metadata(path)
  assert metadata["step"] == 2 and metadata["weights"].endswith("ckpt-2")
  # Nothing to export: one clear error.
  for f in (run_dir / "ckpt").iterdir():
    f.unlink()
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    export.export_run(str(run_dir), str(tmp_path / "served"), version=3)


def test_l_e_is_logged_right_next_to_another_add_loss():
  """The trainer's l_e_bits is the regularizer's L_e, not (all added losses) / lambda."""
  tf.keras.utils.set_random_seed(0)
  inner = registry.build_model("edsr", 2, entropy_weight=2.0, noise=False, **TINY)
  inputs = tf.keras.Input((None, None, 3))
  outputs = tf.keras.layers.ActivityRegularization(l2=1e-3)(inner(inputs))
  model = tf.keras.Model(inputs, outputs)
  lr = tf.random.uniform([2, 8, 8, 3], seed=4)
  hr = tf.random.uniform([2, 16, 16, 3], seed=5)
  layer = registry.find_regularizer(inner)
  expected_bits = float(layer.entropy_loss(registry.feature_model(inner)(lr)))
  sr = inner(lr)
  activity = 1e-3 * float(tf.reduce_sum(tf.square(sr))) / 2
  config = _config("", entropy_weight=2.0, noise=False)
  out = trainer.make_train_step(config, model, tf.keras.optimizers.Adam(1e-4))(lr, hr)
  np.testing.assert_allclose(float(out["l_e_bits"]), expected_bits, rtol=1e-5)
  np.testing.assert_allclose(float(out["reg"]), 2.0 * expected_bits + activity, rtol=1e-4)
  np.testing.assert_allclose(float(out["loss"]), float(out["l_r"]) + float(out["reg"]), rtol=1e-6)


def _run(args, **kwargs):
  return subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=600, **kwargs)


def test_sigterm_saves_a_checkpoint_like_ctrl_c(tmp_path):
  run_dir = tmp_path / "run"
  proc = subprocess.Popen(
      [sys.executable, "-m", "tfsr_defense.train", "--model=edsr", "--scale=2", "--steps=100000",
       "--batch_size=1", "--patch_size=8", "--checkpoint_every=100000", "--eval_data=",
       "--precision=float32", f"--run_dir={run_dir}", "--noexport"],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
  logs = run_dir / "logs" / "train"
  deadline = time.time() + 300
  while not (logs.exists() and any(logs.glob("events*"))):  # the loop is about to start
    assert time.time() < deadline and proc.poll() is None, proc.communicate()
    time.sleep(0.5)
  time.sleep(8)  # some steps
  proc.send_signal(signal.SIGTERM)
  stdout, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 130, stderr[-2000:]
  match = re.search(r"Interrupted: checkpoint saved at step (\d+)", stdout)
  assert match, stdout[-2000:] + stderr[-2000:]
  assert (run_dir / "ckpt" / f"ckpt-{match.group(1)}.index").exists()
  assert "Traceback" not in stderr


@pytest.mark.parametrize("prog, args, message", [
    ("tfsr_defense.train", ["--nosuch_flag=1"], "nosuch_flag"),
    ("tfsr_defense.train", ["--steps=abc"], "steps"),
    ("tfsr_defense.train", ["--learning_rate=inf"], "learning_rate must be > 0 and finite"),
    ("tfsr_defense.train", ["--entropy_weight=nan"], "entropy_weight"),
    ("tfsr_defense.train", ["--delta=inf"], "delta must be > 0 and finite"),
    ("tfsr_defense.train", ["--adv_eps=0"], "adv_eps"),
    ("tfsr_defense.export", ["--run_dir=x", "--nosuch_flag=1"], "nosuch_flag"),
    ("tfsr_defense.export", ["--version=0", "--run_dir=x"], "version"),
])
def test_flag_errors_are_one_line_with_status_2(tmp_path, prog, args, message):
  proc = _run([sys.executable, "-m", prog, *args], cwd=tmp_path)
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [l for l in proc.stderr.splitlines() if "error:" in l]
  assert len(errors) == 1 and errors[0].startswith(f"{prog}: error:"), proc.stderr[-2000:]
  assert proc.stderr.rstrip().splitlines()[-1] == errors[0]
  assert message in errors[0] and "Traceback" not in proc.stderr
  assert not os.listdir(tmp_path)  # nothing written


def test_non_finite_learning_rate_run_via_cli_exits_2(tmp_path):
  proc = _run([sys.executable, "-m", "tfsr_defense.train", "--model=edsr", "--scale=2",
               "--steps=40", "--batch_size=2", "--patch_size=8", "--learning_rate=1e8",
               "--eval_data=", "--precision=float32", f"--run_dir={tmp_path / 'r'}"])
  assert proc.returncode == 2, proc.stderr[-2000:]
  last = proc.stderr.rstrip().splitlines()[-1]
  assert re.match(r"tfsr_defense.train: error: Step \d+: non-finite loss", last), last
  assert not (tmp_path / "r" / "export").exists()


@pytest.mark.parametrize("script, flags", [
    ("tfsr-train", ["--model", "--entropy_weight", "--entropy_layer", "--adversarial", "--adv_eps",
                    "--adv_objective", "--run_dir"]),
    ("tfsr-export", ["--run_dir", "--output_dir", "--version"]),
])
def test_console_script_help_lists_the_flags(script, flags):
  proc = _run([os.path.join(BIN, script), "--help"])
  assert proc.returncode == 0, proc.stderr[-2000:]
  for flag in flags:
    assert flag in proc.stdout, flag
