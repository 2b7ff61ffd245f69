"""EntropyRegularizer: eqs. 1-12 of Choi et al. 2020 checked by hand computation."""

import numpy as np
import pytest
import tensorflow as tf

from tfsr_defense.layers import EntropyRegularizer


def _layer(channels=4, **kwargs):
  tf.random.set_seed(1)
  layer = EntropyRegularizer(**kwargs)
  layer.build((None, None, None, channels))
  return layer


def _softplus(x):
  return np.log1p(np.exp(x))


def _hand_cdf(layer, x):
  """c_d of eqs. 3-10 from the raw density parameters, in numpy (float64).

  x: (..., D) in units of delta.
  """
  dens = layer.density.base
  mats = [m.numpy().astype(np.float64) for m in dens._matrices]  # (D, out, in)
  biases = [b.numpy().astype(np.float64) for b in dens._biases]   # (D, out, 1)
  factors = [a.numpy().astype(np.float64) for a in dens._factors]
  d = x.shape[-1]
  v = x.reshape(-1, d).T[:, None, :].astype(np.float64)          # (D, 1, n)
  for k in range(len(mats)):
    v = np.einsum("doi,din->don", _softplus(mats[k]), v) + biases[k]
    if k < len(factors):
      v = v + np.tanh(factors[k]) * np.tanh(v)       # g(x) = x + a * tanh(x)
  c = 1.0 / (1.0 + np.exp(-v))                        # last layer: sigmoid
  return c[:, 0, :].T.reshape(x.shape)


@pytest.mark.parametrize("delta", [1.0, 0.1, 4.0])
def test_entropy_loss_matches_hand_computation(delta):
  layer = _layer(weight=2.0, delta=delta, noise=False)
  # Perturb the density so the check does not ride on the initial values.
  for v in layer.density.trainable_variables:
    v.assign(v + tf.random.stateless_normal(v.shape, [3, 4]) * 0.3)
  rng = np.random.default_rng(0)
  x = rng.normal(0, 3 * delta, size=(2, 3, 5, 4)).astype(np.float32)
  # eq. 11: p = c(Phi/delta + 1/2) - c(Phi/delta - 1/2); eq. 1: mean of -log2 p.
  p = _hand_cdf(layer, x / delta + 0.5) - _hand_cdf(layer, x / delta - 0.5)
  expected_bits = np.mean(-np.log2(p))
  out = layer(tf.constant(x), training=True)
  np.testing.assert_array_equal(out.numpy(), x)  # noise off: identity
  assert len(layer.losses) == 1
  np.testing.assert_allclose(float(layer.losses[0]), 2.0 * expected_bits, rtol=1e-4)
  np.testing.assert_allclose(float(layer.entropy_loss(x)), expected_bits, rtol=1e-4)
  # The layer's own cdf agrees with the hand cumulative.
  np.testing.assert_allclose(layer.cdf(x).numpy(), _hand_cdf(layer, x / delta), atol=1e-5)


def test_delta_scaling():
  """p_delta(Phi) with bin delta equals p_1(Phi / delta) of the same density."""
  a = _layer(delta=0.5, noise=False)
  b = _layer(delta=1.0, noise=False)
  for va, vb in zip(a.density.trainable_variables, b.density.trainable_variables):
    vb.assign(va)
  x = tf.random.normal([1, 4, 4, 4], stddev=2.0)
  np.testing.assert_allclose(a.bits(x).numpy(), b.bits(x / 0.5).numpy(), rtol=1e-5)


def test_gradients_reach_density_and_upstream_conv():
  tf.random.set_seed(0)
  inputs = tf.keras.Input((None, None, 3))
  conv = tf.keras.layers.Conv2D(4, 3, padding="same")
  reg = EntropyRegularizer(weight=1.0)
  model = tf.keras.Model(inputs, reg(conv(inputs)))
  x = tf.random.uniform([2, 8, 8, 3])
  with tf.GradientTape() as tape:
    model(x, training=True)
    loss = tf.add_n(model.losses)
  grads = tape.gradient(loss, conv.trainable_weights + reg.trainable_weights)
  assert len(reg.trainable_weights) == 11  # 4 matrices, 4 biases, 3 factors
  for g in grads:
    assert g is not None and float(tf.reduce_max(tf.abs(g))) > 0


def test_noise_only_in_training_and_bounded():
  layer = _layer(weight=1.0, delta=0.5, noise=True)
  x = tf.random.normal([2, 16, 16, 4])
  np.testing.assert_array_equal(layer(x, training=False).numpy(), x.numpy())
  assert not layer.losses  # no loss at inference
  noisy = layer(x, training=True)
  diff = (noisy - x).numpy()
  assert np.abs(diff).max() <= 0.25 + 1e-6          # U(-delta/2, delta/2)
  assert np.abs(diff).mean() > 0.1                  # ... and really added
  assert abs(diff.mean()) < 0.02


def test_ablation_switches():
  x = tf.random.normal([1, 8, 8, 4])
  no_entropy = _layer(estimate_entropy=False, noise=True)
  out = no_entropy(x, training=True)
  assert not no_entropy.losses and np.abs((out - x).numpy()).max() > 0
  no_noise = _layer(estimate_entropy=True, noise=False)
  out = no_noise(x, training=True)
  assert len(no_noise.losses) == 1
  np.testing.assert_array_equal(out.numpy(), x.numpy())


@pytest.mark.parametrize("kwargs", [dict(weight=-1.0), dict(delta=0.0), dict(delta=-2.0)])
def test_bad_arguments(kwargs):
  with pytest.raises(ValueError):
    EntropyRegularizer(**kwargs)


def test_bad_input_rank():
  with pytest.raises(ValueError, match="NHWC"):
    EntropyRegularizer()(tf.zeros([2, 3, 4]))


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision(policy):
  tf.keras.mixed_precision.set_global_policy(policy)
  try:
    inputs = tf.keras.Input((None, None, 3))
    feats = tf.keras.layers.Conv2D(4, 3, padding="same")(inputs)
    reg = EntropyRegularizer(weight=1.0)
    out = reg(feats)
    model = tf.keras.Model(inputs, out)
    y = model(tf.random.uniform([1, 8, 8, 3]), training=True)
    assert y.dtype == tf.as_dtype(policy.split("_")[1])
    assert model.losses[0].dtype == tf.float32  # density math in float32
    assert all(v.dtype == tf.float32 for v in reg.trainable_weights)
    assert np.isfinite(float(model.losses[0]))
  finally:
    tf.keras.mixed_precision.set_global_policy("float32")


def test_save_reload_keras_and_savedmodel(tmp_path):
  tf.random.set_seed(0)
  inputs = tf.keras.Input((None, None, 3))
  feats = tf.keras.layers.Conv2D(4, 3, padding="same")(inputs)
  reg = EntropyRegularizer(weight=0.5, delta=2.0, noise=False, name="reg")
  model = tf.keras.Model(inputs, reg(feats))
  for v in reg.trainable_weights:  # non-initial density values
    v.assign(v + 0.1)
  x = tf.random.uniform([1, 6, 6, 3])
  model(x, training=True)
  loss = float(model.losses[0])

  model.save(tmp_path / "m.keras")
  loaded = tf.keras.models.load_model(tmp_path / "m.keras")
  lreg = loaded.get_layer("reg")
  assert lreg.get_config() == reg.get_config()
  np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())
  loaded(x, training=True)
  assert float(loaded.losses[0]) == pytest.approx(loss, rel=1e-6)

  tf.saved_model.save(model, str(tmp_path / "sm"))
  restored = tf.saved_model.load(str(tmp_path / "sm"))
  np.testing.assert_array_equal(restored(x, training=False).numpy(), model(x).numpy())

  model.save(tmp_path / "keras_sm", save_format="tf")  # Keras' SavedModel format
  loaded_tf = tf.keras.models.load_model(tmp_path / "keras_sm")
  np.testing.assert_array_equal(loaded_tf(x).numpy(), model(x).numpy())


def test_fit_reports_entropy_bits():
  tf.random.set_seed(0)
  inputs = tf.keras.Input((None, None, 3))
  feats = EntropyRegularizer(weight=1.0)(tf.keras.layers.Conv2D(4, 3, padding="same")(inputs))
  model = tf.keras.Model(inputs, tf.keras.layers.Conv2D(3, 3, padding="same")(feats))
  model.compile("adam", "mae")
  x = tf.random.uniform([4, 8, 8, 3])
  history = model.fit(x, x, epochs=2, batch_size=2, verbose=0)
  assert "entropy_bits" in history.history
  assert all(np.isfinite(v) and v > 0 for v in history.history["entropy_bits"])
