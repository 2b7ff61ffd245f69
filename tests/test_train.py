"""Training end to end: CLI train -> export -> reload, resume, bad input, tf.distribute."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from tfsr_defense import trainer

TINY = dict(n_resblocks=1, n_feats=8)


def _cli(*args, cwd=None):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run([sys.executable, "-m", "tfsr_defense.train", *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=600)


def _tiny_config(run_dir, **kwargs):
  values = dict(model="edsr", scale=2, train_data="embedded", eval_data="embedded_val",
                patch_size=8, batch_size=2, steps=2, checkpoint_every=1, log_every=1,
                precision="float32", run_dir=str(run_dir), export=False, model_options=TINY)
  values.update(kwargs)
  return trainer.TrainConfig(**values)


def test_cli_trains_exports_and_resumes(tmp_path):
  run_dir = tmp_path / "run"
  args = ["--model=edsr", "--steps=2", "--batch_size=2", "--patch_size=8",
          f"--run_dir={run_dir}", "--checkpoint_every=1", "--precision=float32"]
  proc = _cli(*args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "embedded_val x4: PSNR-Y" in proc.stdout
  result = json.loads((run_dir / "result.json").read_text())
  assert result["step"] == 2 and np.isfinite(result["psnr_y"])
  for name in ("config.json", "flags.txt", "model.weights.h5", "export/1/saved_model.pb"):
    assert (run_dir / name).exists(), name
  assert "--entropy_weight" not in (run_dir / "flags.txt").read_text()  # default kept None
  assert os.listdir(run_dir / "logs" / "train")

  # The exported SavedModel computes what the Keras model with the final weights computes.
  config = trainer.TrainConfig(model="edsr", scale=4)
  model = trainer.build_for_inference(config)
  model.load_weights(str(run_dir / "model.weights.h5"))
  served = tf.saved_model.load(str(run_dir / "export" / "1"))
  x = tf.random.uniform([1, 10, 12, 3], seed=1)
  np.testing.assert_allclose(served.signatures["sr_float"](images=x)["sr"].numpy(),
                             np.clip(model(x).numpy(), 0, 1), atol=1e-6)

  # Re-running with more steps resumes at the checkpointed step.
  proc = _cli(*args[:1], "--steps=3", *args[2:])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "at step 2" in proc.stdout
  assert json.loads((run_dir / "result.json").read_text())["step"] == 3


@pytest.mark.parametrize("args, message", [
    (["--model=nosuch"], "Known models: .*edsr"),
    (["--entropy_weight=-1"], "entropy_weight"),
    (["--delta=0"], "delta must be > 0"),
    (["--patch_size=0"], "patch_size must be >= 1"),
    (["--precision=fp8"], "precision"),
    (["--train_data=t91", "--data_dir=/nonexistent/dir"], "does not exist: /nonexistent/dir"),
    (["--lr_boundaries=10", "--lr_values=1e-4"], "one more entry"),
    (["--lr_boundaries=ten", "--lr_values=1e-4,1e-5"], "lr_boundaries takes integers"),
    (["--lr_boundaries=10", "--lr_values=1e-4,nan"], "lr_values must be > 0 and finite"),
    (["--entropy_weight=inf"], "entropy_weight"),
    (["--train_data=/nonexistent/folder"], "Unknown dataset"),
])
def test_cli_bad_input_one_clear_error(tmp_path, args, message):
  proc = _cli(f"--run_dir={tmp_path / 'r'}", "--steps=1", *args)
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr
  assert __import__("re").search(message, proc.stderr), proc.stderr[-2000:]
  # README: one line, exit status 2, and the run directory is not touched.
  assert proc.returncode == 2
  assert proc.stderr.rstrip().splitlines()[-1].startswith("tfsr_defense.train: error:")
  assert not (tmp_path / "r").exists()


def test_corrupt_and_incompatible_checkpoints(tmp_path):
  run_dir = tmp_path / "run"
  trainer.train(_tiny_config(run_dir, eval_data=""), log=lambda *_: None)
  # Another network in the same run directory: refused, nothing overwritten.
  with pytest.raises(trainer.CheckpointError, match="another network"):
    trainer.train(_tiny_config(run_dir, entropy_weight=0.0, steps=3), log=lambda *_: None)
  assert json.loads((run_dir / "config.json").read_text())["regularized"] is True
  # A corrupt checkpoint: one clear error naming it.
  ckpt_dir = run_dir / "ckpt"
  data_file = next(p for p in ckpt_dir.iterdir() if p.name.startswith("ckpt-2.data"))
  data_file.write_bytes(b"\0" * 64)
  with pytest.raises(trainer.CheckpointError, match="ckpt-2"):
    trainer.train(_tiny_config(run_dir, steps=3, eval_data=""), log=lambda *_: None)


def test_learning_rate_schedules():
  piecewise = trainer._learning_rate_schedule(trainer.TrainConfig(
      lr_boundaries=[1000, 1300], lr_values=[4e-4, 2e-4, 1e-4]))
  assert [float(piecewise(s)) for s in (0, 1000, 1001, 1300, 1301)] == pytest.approx(
      [4e-4, 4e-4, 2e-4, 2e-4, 1e-4])
  halving = trainer._learning_rate_schedule(trainer.TrainConfig(
      learning_rate=1e-4, lr_decay_steps=200000, lr_decay_factor=0.5))
  assert [float(halving(s)) for s in (0, 199999, 200000, 400000)] == pytest.approx(
      [1e-4, 1e-4, 5e-5, 2.5e-5])


def test_config_validation():
  for bad in (dict(delta=-1.0), dict(entropy_weight=-0.1), dict(patch_size=0), dict(scale=5),
              dict(precision="half"), dict(model="nosuch"), dict(delta=float("nan")),
              dict(entropy_weight=float("inf")), dict(learning_rate=float("inf")),
              dict(learning_rate=float("nan")), dict(lr_boundaries=[5], lr_values=[1e-4, np.inf]),
              dict(entropy_layer="last"), dict(adversarial="fgsm"), dict(clip_norm=np.nan)):
    with pytest.raises(ValueError):
      trainer.TrainConfig(**bad).validate()


_DISTRIBUTED = textwrap.dedent("""
    import glob, sys, numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tfsr_defense import trainer
    base = dict(model="edsr", scale=2, train_data="embedded", eval_data="", patch_size=8,
                batch_size=4, steps=1, precision="float32", export=False, noise=False,
                model_options=dict(n_resblocks=1, n_feats=8), log_every=1)
    init = trainer.build_for_inference(trainer.TrainConfig(run_dir="", **base))
    init.save_weights(sys.argv[1] + "/init.weights.h5")

    def logged(run_dir):
      values = {}
      for path in glob.glob(run_dir + "/logs/train/events*"):
        for event in tf.compat.v1.train.summary_iterator(path):
          for v in event.summary.value:
            values[v.tag] = float(tf.make_ndarray(v.tensor))
      return values

    strategies = (("one", tf.distribute.get_strategy()),
                  ("two", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])))
    # Plain training, and adversarial training (per-example attack: the split cannot matter).
    for variant in (dict(), dict(adversarial="ifgsm", adv_mix=True)):
      runs = []
      for name, strategy in strategies:
        cfg = trainer.TrainConfig(run_dir=sys.argv[1] + "/" + name + str(len(variant)),
                                  init_from=sys.argv[1] + "/init.weights.h5", **base, **variant)
        trainer.train(cfg, strategy=strategy, log=lambda *_: None)
        runs.append(logged(cfg.run_dir))
      print(variant, runs)
      for key in ("loss", "l_r", "l_e_bits", "psnr_rgb"):
        np.testing.assert_allclose(runs[0][key], runs[1][key], rtol=1e-5, err_msg=key)
""")


def test_mirrored_two_cpus_matches_single_device(tmp_path):
  """Per-replica batch and loss scaling: 2 replicas x 2 images == 1 device x 4 images.

  Compares the first step's losses (same initial weights, same batch). Weights
  after Adam steps are no test: Adam turns float-rounding differences of
  near-zero gradients into full-size updates of opposite sign.
  """
  proc = subprocess.run([sys.executable, "-c", _DISTRIBUTED, str(tmp_path)], capture_output=True,
                        text=True, timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


def test_srgan_two_phases_through_the_trainer(tmp_path):
  """Phase one (SRResNet, MSE) then phase two (SRGAN) initialised from it, random VGG."""
  quiet = lambda *_: None  # noqa: E731
  small = dict(n_blocks=1, n_feats=8)
  phase1 = _tiny_config(tmp_path / "srresnet", model="srresnet", steps=1, eval_data="",
                        model_options=small)
  trainer.train(phase1, log=quiet)
  phase2 = _tiny_config(tmp_path / "srgan", model="srgan", steps=2, eval_data="embedded_val",
                        init_from=phase1.run_dir, vgg_weights=None, model_options=small,
                        patch_size=16)
  lines = []
  result = trainer.train(phase2, log=lines.append)
  assert any("Generator initialised from" in l for l in lines)
  assert result["step"] == 2 and np.isfinite(result["psnr_y"])
  names = [n for n, _ in tf.train.list_variables(str(tmp_path / "srgan" / "ckpt"))]
  assert any(n.startswith("discriminator/") for n in names)
  assert any(n.startswith("d_optimizer/") for n in names)


def test_srgan_without_vgg_weights_fails_clearly(tmp_path):
  proc = _cli("--model=srgan", "--steps=1", f"--run_dir={tmp_path / 'r'}",
              f"--vgg_weights={tmp_path / 'missing.h5'}")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert "missing.h5" in proc.stderr and "imagenet" in proc.stderr
