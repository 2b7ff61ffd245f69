"""EDSR-baseline: the official parameter count, shapes, features by name, registry,
the regularizer's position, and the committed trained weights."""

import csv
import os

import numpy as np
import pytest
import tensorflow as tf

from tfsr_defense import data, metrics, models
from tfsr_defense.layers import EntropyRegularizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _trainable_count(model):
  return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def test_parameter_count_matches_official_x4():
  plain = models.build_model("edsr", 4, entropy_weight=0)
  assert plain.count_params() == 1_517_571
  assert models.find_regularizer(plain) is None
  regularized = models.build_model("edsr", 4)
  # + one density per channel: 64 x (3 + 9 + 9 + 3 matrix, 3 + 3 + 3 + 1 bias, 3 x 3 factor).
  assert _trainable_count(regularized) == 1_517_571 + 64 * 43
  reg = models.find_regularizer(regularized)
  assert isinstance(reg, EntropyRegularizer) and reg.weight == 1.0 and reg.delta == 1.0


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_output_shape_and_features(scale):
  model = models.build_model("edsr", scale, n_resblocks=2, n_feats=16)
  x = tf.random.uniform([2, 7, 5, 3])
  assert model(x).shape == (2, 7 * scale, 5 * scale, 3)
  assert model(x).dtype == tf.float32
  feats = models.feature_model(model)(x)
  assert feats.shape == (2, 7, 5, 16)


def test_regularizer_is_before_the_upsampler():
  model = models.build_model("edsr", 4, n_resblocks=1, n_feats=8)
  names = [l.name for l in model.layers]
  assert names.index("body_skip") < names.index(models.FEATURES) < names.index("upsampler_conv0")
  assert model.get_layer("upsampler_conv0").input is model.get_layer(models.FEATURES).output
  assert model.get_layer(models.FEATURES).input is model.get_layer("body_skip").output


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_entropy_layer_first(weight):
  """Paper sec. 5.4: 'first' regularizes the head conv's output; the body and skip read it."""
  tf.keras.utils.set_random_seed(0)
  kwargs = dict(n_resblocks=2, n_feats=8)
  default = models.build_model("edsr", 2, entropy_weight=weight, **kwargs)
  first = models.edsr.build_edsr(2, dict(weight=1.0, delta=1.0, noise=True,
                                         estimate_entropy=True) if weight else None,
                                 entropy_layer="first", **kwargs)
  assert _trainable_count(first) == _trainable_count(default)
  features = first.get_layer(models.FEATURES)
  assert isinstance(features, EntropyRegularizer) == (weight > 0)
  assert features.input is first.get_layer("head").output
  assert first.get_layer("body_0_conv1").input is features.output
  assert first.get_layer("body_skip").input[1] is features.output
  assert first.get_layer("upsampler_conv0").input is first.get_layer("body_skip").output
  x = tf.random.uniform([2, 7, 5, 3])
  assert models.feature_model(first)(x).shape == (2, 7, 5, 8)
  assert np.all(np.isfinite(first(x, training=True).numpy()))
  if weight:
    assert float(tf.add_n(first.losses)) > 0  # the entropy loss of the head map
  # The same weights in either placement give the same inference function.
  by_name = {w.name: w.numpy() for w in default.weights}
  assert sorted(by_name) == sorted(w.name for w in first.weights)
  first.set_weights([by_name[w.name] for w in first.weights])
  np.testing.assert_allclose(first(x).numpy(), default(x).numpy(), atol=1e-5)


def test_entropy_layer_errors():
  with pytest.raises(ValueError, match="pre_upsampler, first"):
    models.edsr.build_edsr(2, None, n_resblocks=1, n_feats=8, entropy_layer="last")


def test_activations_are_layers():
  """Every ReLU is a named top-level layer: body_{i}_relu = relu(body_{i}_conv1)."""
  model = models.build_model("edsr", 2, entropy_weight=0, n_resblocks=3, n_feats=8)
  assert models.activation_layer_names(model) == ["body_0_relu", "body_1_relu", "body_2_relu"]
  x = tf.random.uniform([1, 6, 5, 3])
  conv, relu = models.feature_model(model, ["body_1_conv1", "body_1_relu"])(x)
  np.testing.assert_array_equal(relu.numpy(), tf.nn.relu(conv).numpy())


def test_plain_and_regularized_share_inference_function():
  plain = models.build_model("edsr", 2, entropy_weight=0, n_resblocks=1, n_feats=8)
  reg = models.build_model("edsr", 2, entropy_weight=1, n_resblocks=1, n_feats=8)
  reg_weights = {w.name: w for w in reg.weights}
  plain.set_weights([reg_weights[w.name].numpy() for w in plain.weights])
  x = tf.random.uniform([1, 6, 6, 3])
  np.testing.assert_allclose(plain(x).numpy(), reg(x).numpy(), atol=1e-6)


def test_native_range_and_mean_shift():
  """A zero network outputs the DIV2K mean: the mean shift works in [0,255]."""
  model = models.build_model("edsr", 2, entropy_weight=0, n_resblocks=1, n_feats=8)
  model.set_weights([np.zeros_like(w) for w in model.get_weights()])
  out = model(tf.zeros([1, 3, 3, 3])).numpy()
  np.testing.assert_allclose(out[0, 0, 0], [0.4488, 0.4371, 0.4040], atol=1e-6)


def test_registry_errors():
  with pytest.raises(ValueError, match="Unknown model 'nosuch'. Known models: .*edsr"):
    models.build_model("nosuch")
  with pytest.raises(ValueError, match="scale"):
    models.build_model("edsr", 5)
  with pytest.raises(ValueError, match="lambda"):
    models.build_model("edsr", 4, entropy_weight=-1)
  with pytest.raises(ValueError, match="No layer named"):
    models.feature_model(models.build_model("edsr", 2, n_resblocks=1, n_feats=8), ["nope"])


def test_keras_save_reload(tmp_path):
  model = models.build_model("edsr", 3, n_resblocks=1, n_feats=8)
  x = tf.random.uniform([1, 5, 4, 3])
  model.save(tmp_path / "edsr.keras")
  loaded = tf.keras.models.load_model(tmp_path / "edsr.keras")
  np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())


def test_plain_keras_saved_model_reload(tmp_path):
  """Keras' SavedModel format (plain network; see test_blocks for the regularized export)."""
  model = models.build_model("edsr", 2, entropy_weight=0, n_resblocks=1, n_feats=8)
  x = tf.random.uniform([1, 5, 4, 3])
  model.save(str(tmp_path / "edsr"), save_format="tf")
  loaded = tf.keras.models.load_model(str(tmp_path / "edsr"))
  np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), atol=1e-6)
  assert models.activation_layer_names(loaded) == ["body_0_relu"]


def _recorded_psnr(rows_csv, model, image):
  with open(rows_csv, newline="", encoding="utf-8") as f:
    key = (model, "set5", image, "clean")
    values = {float(r["psnr_y"]) for r in csv.DictReader(f)
              if (r["model"], r["dataset"], r["image"], r["kind"]) == key}
  assert len(values) == 1, (rows_csv, model, image, values)
  return values.pop()


def test_committed_weights_reproduce_recorded_psnr(data_dir):
  """The committed 4000-step EDSR x4 (lambda = 1) loads and gives its recorded Set5 PSNR-Y."""
  run = os.path.join(REPO, "results", "edsr_x4_cpu_long", "entropy")
  model = models.build_model("edsr", 4, entropy_weight=1.0)
  model.load_weights(os.path.join(run, "model.weights.h5"))
  pair = [p for p in data.load_pairs("set5", 4, data_dir) if p.name == "baby"][0]
  sr = model(data.to_float(pair.lr)[None], training=False)
  psnr = float(metrics.psnr(tf.clip_by_value(sr, 0.0, 1.0), data.to_float(pair.hr)[None], "y",
                            shave=4)[0])
  recorded = _recorded_psnr(os.path.join(REPO, "results", "edsr_x4_cpu_long_clean", "rows.csv"),
                            "edsr_entropy", "baby")
  assert abs(psnr - recorded) < 0.01, (psnr, recorded)
