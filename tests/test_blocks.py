"""The blocks of issue 4 (tfsr_defense/layers/blocks.py): configs, parameter counts,
the grouped convolution, and the SavedModel export of a model made of all of them."""

import numpy as np
import pytest
import tensorflow as tf

from tfsr_defense import serving
from tfsr_defense.layers import blocks
from tfsr_defense.models import registry

# Trainable parameters of each block at 64 channels: the per-block counts
# behind the official networks' totals.
BLOCKS_64 = [
    pytest.param(lambda: blocks.SRResBlock(64), 74_176, id="SRResBlock"),
    pytest.param(lambda: blocks.PReLUUpsampler(4, 64), 2 * (147_712 + 64), id="PReLUUpsampler-x4"),
    pytest.param(lambda: blocks.PReLUUpsampler(3, 64), 332_352 + 64, id="PReLUUpsampler-x3"),
    pytest.param(lambda: blocks.ChannelAttention(64, 16), 580, id="ChannelAttention"),
    pytest.param(lambda: blocks.RCAB(64), 74_436, id="RCAB"),
    pytest.param(lambda: blocks.ResidualGroup(20, 64), 1_525_648, id="ResidualGroup"),
    pytest.param(lambda: blocks.MSRB(64), 713_152, id="MSRB"),
    pytest.param(lambda: blocks.CARNResBlock(64), 73_856, id="CARNResBlock"),
    pytest.param(lambda: blocks.CARNResBlock(64, groups=4, efficient=True), 22_720,
                 id="CARNResBlock-efficient"),
    pytest.param(lambda: blocks.CascadingBlock(64), 258_624, id="CascadingBlock"),
    pytest.param(lambda: blocks.CascadingBlock(64, groups=4, efficient=True, shared=True),
                 59_776, id="CascadingBlock-carn_m"),
    pytest.param(lambda: blocks.CARNUpsampler(4, 64), 295_424, id="CARNUpsampler-x4"),
    pytest.param(lambda: blocks.CARNUpsampler(4, 64, groups=4), 74_240, id="CARNUpsampler-x4-g4"),
]


@pytest.fixture(autouse=True)
def _seed():
  tf.keras.utils.set_random_seed(0)


@pytest.mark.parametrize("make, count", BLOCKS_64)
def test_block_parameters_and_config_round_trip(make, count):
  layer = make()
  x = tf.random.normal([1, 3, 4, 64])
  y = layer(x)
  assert int(sum(np.prod(w.shape) for w in layer.trainable_weights)) == count
  scale = getattr(layer, "scale", 1)
  assert y.shape == (1, 3 * scale, 4 * scale, 64) and y.dtype == x.dtype
  clone = type(layer).from_config(layer.get_config())
  assert clone.get_config() == layer.get_config()
  clone(x)
  clone.set_weights(layer.get_weights())
  np.testing.assert_array_equal(clone(x).numpy(), y.numpy())


def test_block_argument_errors():
  with pytest.raises(ValueError, match="power of 2"):
    blocks.PReLUUpsampler(5)
  with pytest.raises(ValueError, match="reduction"):
    blocks.ChannelAttention(64, 5)
  with pytest.raises(ValueError, match="efficient"):
    blocks.CARNResBlock(64, groups=4)
  with pytest.raises(ValueError, match="groups"):
    blocks.GroupConv2D(30, 3, groups=4)


def test_group_conv_matches_keras_grouped_conv(tmp_path):
  layer = blocks.GroupConv2D(32, 3, groups=4, activation="relu")
  x = tf.random.normal([1, 5, 6, 16])
  y = layer(x)
  assert layer.kernel.shape == (3, 3, 4, 32)
  keras_conv = tf.keras.layers.Conv2D(32, 3, padding="same", groups=4, activation="relu")
  keras_conv(x)
  keras_conv.set_weights(layer.get_weights())
  np.testing.assert_allclose(keras_conv(x).numpy(), y.numpy(), rtol=1e-5, atol=1e-5)
  clone = blocks.GroupConv2D.from_config(layer.get_config())
  clone(x)
  clone.set_weights(layer.get_weights())
  np.testing.assert_array_equal(clone(x).numpy(), y.numpy())


def _all_blocks_model(regularizer):
  """A tiny SR model made of every new block (8 channels), with a features layer."""
  inputs = tf.keras.Input((None, None, 3))
  x = blocks.conv2d(8, 3)(inputs)
  x = blocks.SRResBlock(8)(x)
  x = blocks.ResidualGroup(1, 8, reduction=4)(x)
  x = blocks.MSRB(8)(x)
  x = blocks.CascadingBlock(8, 2, groups=4, efficient=True, shared=True)(x)
  x = blocks.CascadingBlock(8, 2)(x)
  x = registry.regularized_features(x, regularizer)
  x = blocks.CARNUpsampler(2, 8, groups=4)(x)
  x = blocks.PReLUUpsampler(2, 8)(x)
  outputs = blocks.conv2d(3, 3, dtype="float32")(x)
  return tf.keras.Model(inputs, outputs)


def test_saved_model_export(tmp_path):
  """The trainer's TF-Serving SavedModel export works with every new block.

  (Keras' own SavedModel format, ``model.save(save_format='tf')``, fails for
  every regularized network, EDSR included: a variable of the
  EntropyRegularizer's ``add_metric`` is not tracked. The .keras format and
  this export work.)
  """
  model = _all_blocks_model(dict(weight=1.0, delta=1.0, noise=True, estimate_entropy=True))
  lr = tf.random.uniform([1, 5, 6, 3])
  expected = model(lr, training=False).numpy()
  export_dir = serving.export_saved_model(model, str(tmp_path / "1"))
  loaded = tf.saved_model.load(export_dir)
  sr = loaded.signatures["sr_float"](images=lr)["sr"]
  np.testing.assert_allclose(sr.numpy(), np.clip(expected, 0.0, 1.0), rtol=1e-5, atol=1e-6)
  assert loaded.signatures["features"](images=lr)["features"].shape == (1, 5, 6, 8)
