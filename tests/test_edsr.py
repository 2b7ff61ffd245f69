"""EDSR-baseline: the official parameter count, shapes, features by name, registry."""

import numpy as np
import pytest
import tensorflow as tf

from tfsr_defense import models
from tfsr_defense.layers import EntropyRegularizer


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
  assert names.index("body_skip") < names.index(models.FEATURES) < names.index("upsampler")
  assert model.get_layer("upsampler").input is model.get_layer(models.FEATURES).output


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
