"""The building blocks (tfsr_defense/layers/blocks.py): the layers' configs, the block
functions' parameter counts, layer names and equations, the grouped convolution,
and the SavedModel export of a model made of all of them."""

import numpy as np
import pytest
import tensorflow as tf

from tfsr_defense import serving
from tfsr_defense.layers import blocks
from tfsr_defense.models import registry


def _block_model(fn, channels=64):
  """A functional model x -> fn(x) on (N, H, W, channels) inputs."""
  inputs = tf.keras.Input((None, None, channels))
  return tf.keras.Model(inputs, fn(inputs))


def n_params(model):
  return int(sum(np.prod(w.shape) for w in model.trainable_weights))


# Trainable parameters of each block at 64 channels: the per-block counts
# behind the official networks' totals. (fn, count, scale)
BLOCKS_64 = [
    pytest.param(lambda x: blocks.res_block(x, 64), 73_856, 1, id="res_block"),
    pytest.param(lambda x: blocks.srres_block(x, 64), 74_176, 1, id="srres_block"),
    pytest.param(lambda x: blocks.channel_attention(x, 64, 16), 580, 1, id="channel_attention"),
    pytest.param(lambda x: blocks.rcab(x, 64), 74_436, 1, id="rcab"),
    pytest.param(lambda x: blocks.residual_group(x, 20, 64), 1_525_648, 1, id="residual_group"),
    pytest.param(lambda x: blocks.msrb(x, 64), 713_152, 1, id="msrb"),
    pytest.param(lambda x: blocks.carn_res_block(x, 64), 73_856, 1, id="carn_res_block"),
    pytest.param(lambda x: blocks.carn_res_block(x, 64, groups=4, efficient=True), 22_720, 1,
                 id="carn_res_block-efficient"),
    pytest.param(lambda x: blocks.cascading_block(x, 64), 258_624, 1, id="cascading_block"),
    pytest.param(lambda x: blocks.cascading_block(x, 64, groups=4, efficient=True, shared=True),
                 59_776, 1, id="cascading_block-carn_m"),
    pytest.param(lambda x: blocks.upsampler(x, 4, 64), 2 * 147_712, 4, id="upsampler-x4"),
    pytest.param(lambda x: blocks.upsampler(x, 3, 64), 332_352, 3, id="upsampler-x3"),
    pytest.param(lambda x: blocks.upsampler(x, 4, 64, "prelu"), 2 * (147_712 + 64), 4,
                 id="upsampler-x4-prelu"),
    pytest.param(lambda x: blocks.upsampler(x, 3, 64, "prelu"), 332_352 + 64, 3,
                 id="upsampler-x3-prelu"),
    pytest.param(lambda x: blocks.upsampler(x, 4, 64, "relu"), 295_424, 4,
                 id="upsampler-x4-relu"),
    pytest.param(lambda x: blocks.upsampler(x, 4, 64, "relu", groups=4), 74_240, 4,
                 id="upsampler-x4-relu-g4"),
]


@pytest.fixture(autouse=True)
def _seed():
  tf.keras.utils.set_random_seed(0)


@pytest.mark.parametrize("fn, count, scale", BLOCKS_64)
def test_block_parameters_and_config_round_trip(fn, count, scale):
  model = _block_model(fn)
  x = tf.random.normal([1, 3, 4, 64])
  y = model(x)
  assert n_params(model) == count
  assert y.shape == (1, 3 * scale, 4 * scale, 64) and y.dtype == x.dtype
  clone = tf.keras.Model.from_config(model.get_config())
  assert [l.name for l in clone.layers] == [l.name for l in model.layers]
  clone.set_weights(model.get_weights())
  np.testing.assert_array_equal(clone(x).numpy(), y.numpy())


def _get(model):
  return model.get_layer


def test_res_block_equation_and_names():
  """x + res_scale * conv2(relu(conv1(x))), every part a named layer."""
  model = _block_model(lambda x: blocks.res_block(x, 8, res_scale=0.1, name="body_3"), 8)
  assert [l.name for l in model.layers[1:]] == [
      "body_3_conv1", "body_3_relu", "body_3_conv2", "body_3_scale", "body_3_add"]
  x = tf.random.normal([2, 5, 6, 8])
  layer = _get(model)
  expected = x + 0.1 * layer("body_3_conv2")(tf.nn.relu(layer("body_3_conv1")(x)))
  np.testing.assert_allclose(model(x).numpy(), expected.numpy(), rtol=1e-6, atol=1e-6)
  # res_scale 1: no scaling layer.
  model = _block_model(lambda x: blocks.res_block(x, 8, name="b"), 8)
  assert "b_scale" not in [l.name for l in model.layers]


def test_rcab_and_channel_attention_equations():
  """CA(x) = x * sigmoid(W_U relu(W_D mean(x))); RCAB = x + CA(conv(relu(conv(x))))."""
  model = _block_model(lambda x: blocks.rcab(x, 8, reduction=4, name="r"), 8)
  layer = _get(model)
  x = tf.random.normal([2, 5, 6, 8])
  h = layer("r_conv2")(tf.nn.relu(layer("r_conv1")(x)))
  pooled = tf.reduce_mean(h, axis=[1, 2], keepdims=True)
  gate = tf.sigmoid(layer("r_ca_up")(tf.nn.relu(layer("r_ca_down")(pooled))))
  assert gate.shape == (2, 1, 1, 8) and layer("r_ca_down").kernel.shape == (1, 1, 8, 2)
  np.testing.assert_allclose(model(x).numpy(), (x + h * gate).numpy(), rtol=1e-5, atol=1e-5)
  assert layer("r_ca_relu").output.shape[1:] == (1, 1, 2)


def test_msrb_equation():
  """MSRN eqs. 1-4 with the two concatenations in the official order (3x3 branch first)."""
  model = _block_model(lambda x: blocks.msrb(x, 4, name="m"), 4)
  layer = _get(model)
  x = tf.random.normal([1, 7, 6, 4])
  s1, p1 = tf.nn.relu(layer("m_conv3_1")(x)), tf.nn.relu(layer("m_conv5_1")(x))
  y = tf.concat([s1, p1], -1)
  s2, p2 = tf.nn.relu(layer("m_conv3_2")(y)), tf.nn.relu(layer("m_conv5_2")(y))
  expected = layer("m_confusion")(tf.concat([s2, p2], -1)) + x
  np.testing.assert_allclose(model(x).numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
  assert layer("m_conv5_2").kernel.shape == (5, 5, 8, 8)


@pytest.mark.parametrize("efficient", [False, True])
def test_carn_blocks_equations(efficient):
  """relu(x + f(x)) and the local cascades; CARN-M shares one block's convs."""
  groups = 4 if efficient else 1
  model = _block_model(lambda x: blocks.cascading_block(
      x, 8, 2, groups=groups, efficient=efficient, shared=efficient, name="blk"), 8)
  layer = _get(model)
  names = [l.name for l in model.layers]

  def unit(x, i):
    prefix = "blk_res" if efficient else f"blk_res_{i}"
    y = layer(f"{prefix}_conv2")(tf.nn.relu(layer(f"{prefix}_conv1")(x)))
    if efficient:
      y = layer(f"{prefix}_conv3")(tf.nn.relu(y))
    return tf.nn.relu(x + y)

  x = tf.random.normal([1, 5, 4, 8])
  cat = out = x
  for i in range(2):
    cat = tf.concat([cat, unit(out, i)], -1)
    out = tf.nn.relu(layer(f"blk_cascade_{i}")(cat))
  np.testing.assert_allclose(model(x).numpy(), out.numpy(), rtol=1e-5, atol=1e-5)
  # Shared convs appear once; the ReLU layers are one per position.
  assert ("blk_res_conv1" in names) == efficient and ("blk_res_0_conv1" in names) != efficient
  assert {"blk_res_0_relu", "blk_res_1_relu", "blk_cascade_1_relu"} <= set(names)


def test_srres_block_equation_in_inference():
  model = _block_model(lambda x: blocks.srres_block(x, 8, name="s"), 8)
  layer = _get(model)
  x = tf.random.normal([2, 4, 5, 8])
  h = layer("s_bn1")(layer("s_conv1")(x), training=False)
  h = layer("s_bn2")(layer("s_conv2")(layer("s_prelu")(h)), training=False)
  np.testing.assert_allclose(model(x, training=False).numpy(), (x + h).numpy(),
                             rtol=1e-5, atol=1e-5)
  assert layer("s_prelu").alpha.shape == (1, 1, 8)


@pytest.mark.parametrize("activation", [None, "relu", "prelu"])
def test_upsampler_steps(activation):
  """Per step conv -> depth_to_space -> activation; names upsampler_{conv,shuffle,relu,prelu}{j}."""
  model = _block_model(lambda x: blocks.upsampler(x, 4, 4, activation), 4)
  layer = _get(model)
  x = tf.random.normal([1, 3, 2, 4])
  y = x
  for j in range(2):
    y = tf.nn.depth_to_space(layer(f"upsampler_conv{j}")(y), 2)
    if activation == "relu":
      y = tf.nn.relu(y)
    elif activation == "prelu":
      y = layer(f"upsampler_prelu{j}")(y)
  np.testing.assert_allclose(model(x).numpy(), y.numpy(), rtol=1e-5, atol=1e-5)
  assert model.output.shape[1:] == (None, None, 4)
  names = [l.name for l in model.layers]
  assert ("upsampler_relu1" in names) == (activation == "relu")
  assert ("upsampler_prelu1" in names) == (activation == "prelu")


def test_pixel_shuffle_hand_computed():
  # Channels (r, r, C) order of depth_to_space: (1, 1, 1, 4) [0 1 2 3] -> [[0 1] [2 3]].
  layer = blocks.PixelShuffle(2)
  out = layer(tf.constant([0.0, 1.0, 2.0, 3.0], shape=[1, 1, 1, 4]))
  np.testing.assert_array_equal(out.numpy()[0, :, :, 0], [[0.0, 1.0], [2.0, 3.0]])
  assert layer.compute_output_shape((2, 3, None, 8)).as_list() == [2, 6, None, 2]
  assert blocks.PixelShuffle.from_config(layer.get_config()).upscale_factor == 2


def test_block_argument_errors():
  x = tf.keras.Input((None, None, 64))
  with pytest.raises(ValueError, match="power of 2"):
    blocks.upsampler(x, 5)
  with pytest.raises(ValueError, match="activation"):
    blocks.upsampler(x, 2, activation="tanh")
  with pytest.raises(ValueError, match="groups"):
    blocks.upsampler(x, 2, groups=5)
  with pytest.raises(ValueError, match="reduction"):
    blocks.channel_attention(x, 64, 5)
  with pytest.raises(ValueError, match="efficient"):
    blocks.carn_res_block(x, 64, groups=4)
  with pytest.raises(ValueError, match="groups"):
    blocks.carn_res_block(x, 64, groups=3, efficient=True)
  with pytest.raises(ValueError, match="groups"):
    blocks.GroupConv2D(30, 3, groups=4)
  with pytest.raises(ValueError, match="upscale_factor"):
    blocks.PixelShuffle(0)
  with pytest.raises(ValueError, match="sign"):
    blocks.MeanShift(sign=2)


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
  """A tiny SR model made of every block (8 channels), with a features layer."""
  inputs = tf.keras.Input((None, None, 3))
  x = blocks.conv2d(8, 3)(inputs)
  x = blocks.res_block(x, 8, res_scale=0.5, name="res")
  x = blocks.srres_block(x, 8, name="srres")
  x = blocks.residual_group(x, 1, 8, reduction=4, name="group")
  x = blocks.msrb(x, 8, name="msrb")
  x = blocks.cascading_block(x, 8, 2, groups=4, efficient=True, shared=True, name="cm")
  x = blocks.cascading_block(x, 8, 1, name="c")
  x = registry.regularized_features(x, regularizer)
  x = blocks.upsampler(x, 2, 8, "relu", groups=4, name="up_relu")
  x = blocks.upsampler(x, 2, 8, "prelu", name="up_prelu")
  outputs = blocks.conv2d(3, 3, dtype="float32")(x)
  return tf.keras.Model(inputs, outputs)


def test_saved_model_export(tmp_path):
  """The trainer's TF-Serving SavedModel export works with every block.

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


def test_keras_format_round_trip(tmp_path):
  """Every layer of every block reloads from the .keras format (names, weights, outputs)."""
  model = _all_blocks_model(dict(weight=1.0, delta=1.0, noise=True, estimate_entropy=True))
  lr = tf.random.uniform([1, 5, 6, 3])
  path = str(tmp_path / "m.keras")
  model.save(path)
  reloaded = tf.keras.models.load_model(path)
  np.testing.assert_array_equal(reloaded(lr, training=False).numpy(),
                                model(lr, training=False).numpy())
  assert [l.name for l in reloaded.layers] == [l.name for l in model.layers]
