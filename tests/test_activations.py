"""models.activation_layer_names: the activation maps the official FDA attacks, by name."""

import numpy as np
import pytest
import tensorflow as tf

from tfsr_defense import models


@pytest.fixture(autouse=True)
def _seed():
  tf.keras.utils.set_random_seed(0)


def test_edsr_baseline_has_16_relu_maps():
  model = models.build_model("edsr", 4, entropy_weight=1.0)  # EDSR-baseline, 16 blocks
  names = models.activation_layer_names(model)
  assert names == [f"body_{i}_relu" for i in range(16)]
  extractor = models.feature_model(model, names + [models.FEATURES])
  lr = tf.random.uniform([2, 6, 5, 3])
  maps = extractor(lr, training=False)
  assert len(maps) == 17
  assert all(m.shape == (2, 6, 5, 64) and m.dtype == tf.float32 for m in maps)
  assert all(float(tf.reduce_min(m)) >= 0.0 for m in maps[:-1])
  # The maps are the model's own: the last ReLU map feeds the last block's second conv.
  conv2, = [l for l in model.layers if l.name == "body_15_conv2"]
  np.testing.assert_allclose(conv2(maps[15]).numpy(),
                             models.feature_model(model, ["body_15_conv2"])(lr).numpy(),
                             rtol=1e-5, atol=1e-4)


def _toy_model():
  """Every kind of activation layer, plus a fused one that is not a layer of its own."""
  inputs = tf.keras.Input((None, None, 2))
  x = tf.keras.layers.Conv2D(2, 1, activation="relu", name="fused")(inputs)
  x = tf.keras.layers.ReLU(name="a_relu")(x)
  x = tf.keras.layers.Activation("relu", name="b_activation_relu")(x)
  x = tf.keras.layers.PReLU(shared_axes=[1, 2], name="c_prelu")(x)
  x = tf.keras.layers.LeakyReLU(0.2, name="d_leaky")(x)
  x = tf.keras.layers.Activation("sigmoid", name="e_sigmoid")(x)
  x = tf.keras.layers.Activation("tanh", name="f_tanh")(x)
  x = tf.keras.layers.ReLU(name="upsampler_relu0")(x)
  return tf.keras.Model(inputs, x)


def test_kinds_and_order():
  model = _toy_model()
  assert models.activation_layer_names(model) == [
      "a_relu", "b_activation_relu", "c_prelu", "d_leaky", "upsampler_relu0"]
  assert models.activation_layer_names(model, "sigmoid") == ["e_sigmoid"]
  assert models.activation_layer_names(model, ("sigmoid", "relu")) == [
      "a_relu", "b_activation_relu", "c_prelu", "d_leaky", "e_sigmoid", "upsampler_relu0"]
  assert models.activation_layer_names(model, include_upsampler=False) == [
      "a_relu", "b_activation_relu", "c_prelu", "d_leaky"]
  assert set(models.ACTIVATION_KINDS) == {"relu", "sigmoid"}


def test_networks_without_and_with_sigmoid():
  rcan = models.build_model("rcan", 2, entropy_weight=0, n_groups=1, n_blocks=2)
  assert models.activation_layer_names(rcan) == [
      "group_0_rcab_0_relu", "group_0_rcab_0_ca_relu", "group_0_rcab_1_relu",
      "group_0_rcab_1_ca_relu"]
  assert models.activation_layer_names(rcan, "sigmoid") == [
      "group_0_rcab_0_ca_sigmoid", "group_0_rcab_1_ca_sigmoid"]
  srresnet = models.build_model("srresnet", 2, entropy_weight=0, n_blocks=1)
  assert models.activation_layer_names(srresnet) == ["head_prelu", "body_0_prelu",
                                                     "upsampler_prelu0"]
  assert models.activation_layer_names(srresnet, "sigmoid") == []


def test_errors():
  model = _toy_model()
  for kinds in ((), ("tanh",), ("relu", "softmax")):
    with pytest.raises(ValueError, match="non-empty subset of .*relu.*sigmoid"):
      models.activation_layer_names(model, kinds)
  with pytest.raises(ValueError, match="Keras model"):
    models.activation_layer_names(tf.keras.layers.ReLU())
