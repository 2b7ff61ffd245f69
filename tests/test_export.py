"""SavedModel export: signatures TF Serving sees, outputs equal to the Keras model."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfsr_defense import models, serving, trainer


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  tf.random.set_seed(3)
  model = models.build_model("edsr", 2, n_resblocks=1, n_feats=8)
  for w in model.trainable_weights:  # non-trivial density and conv weights
    w.assign(w + tf.random.normal(w.shape, stddev=0.01))
  path = str(tmp_path_factory.mktemp("sm") / "edsr" / "1")
  serving.export_saved_model(model, path, metadata=dict(model="edsr", scale=2))
  return model, path


def test_saved_model_cli_lists_the_signatures(exported):
  _, path = exported
  cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
  out = subprocess.run([cli, "show", "--dir", path, "--all"], capture_output=True, text=True,
                       check=True, timeout=300).stdout
  for name in ("serving_default", "sr_float", "features"):
    assert f"signature_def['{name}']" in out
  default = out.split("signature_def['serving_default']")[1].split("signature_def[")[0]
  assert "dtype: DT_UINT8" in default and "shape: (-1, -1, -1, 3)" in default


def test_signatures_equal_keras(exported):
  model, path = exported
  loaded = tf.saved_model.load(path)
  x = tf.random.uniform([2, 9, 7, 3], seed=5)
  keras_sr = model(x).numpy()
  sr = loaded.signatures["sr_float"](images=x)["sr"].numpy()
  np.testing.assert_allclose(sr, np.clip(keras_sr, 0, 1), atol=1e-6)
  feats = loaded.signatures["features"](images=x)["features"].numpy()
  np.testing.assert_allclose(feats, models.feature_model(model)(x).numpy(), atol=1e-5)
  assert feats.shape == (2, 9, 7, 8)
  x8 = tf.cast(tf.round(x * 255), tf.uint8)
  sr8 = loaded.signatures["serving_default"](images=x8)["sr"]
  assert sr8.dtype == tf.uint8 and sr8.shape == (2, 18, 14, 3)
  expected = np.round(np.clip(model(tf.cast(x8, tf.float32) / 255).numpy(), 0, 1) * 255)
  assert np.abs(sr8.numpy().astype(int) - expected).max() <= 1  # rounding at .5 only
  assert serving.load_metadata(path)["scale"] == 2


def test_export_cli_from_run_and_errors(tmp_path):
  config = trainer.TrainConfig(model="edsr", scale=2, train_data="embedded", eval_data="",
                               patch_size=8, batch_size=1, steps=1, precision="float32",
                               run_dir=str(tmp_path / "run"), export=False,
                               model_options=dict(n_resblocks=1, n_feats=8))
  trainer.train(config, log=lambda *_: None)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  out = tmp_path / "served"
  proc = subprocess.run([sys.executable, "-m", "tfsr_defense.export", f"--run_dir={config.run_dir}",
                         f"--output_dir={out}", "--version=3"], capture_output=True, text=True,
                        env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert (out / "3" / "saved_model.pb").exists()
  proc = subprocess.run([sys.executable, "-m", "tfsr_defense.export", f"--run_dir={tmp_path}/none"],
                        capture_output=True, text=True, env=env, timeout=600)
  assert proc.returncode == 2 and "is " in proc.stderr and "finished training run" in proc.stderr
