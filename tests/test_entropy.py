"""EntropyRegularizer: eqs. 1-12 of Choi et al. 2020 checked by hand computation."""

import numpy as np
import pytest
import tensorflow as tf

from tfsr_defense import losses
from tfsr_defense.layers import EntropyRegularizer
from tfsr_defense.layers import entropy


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


@pytest.mark.parametrize("kwargs, message", [
    (dict(weight=-1.0), "lambda"), (dict(delta=0.0), "delta"), (dict(delta=-2.0), "delta"),
    (dict(weight=float("nan")), "lambda.*finite.*nan"), (dict(weight=float("inf")), "lambda"),
    (dict(delta=float("nan")), "delta.*nan"), (dict(delta=float("inf")), "delta.*inf"),
    (dict(weight="x"), "numbers"), (dict(init_scale=0.0), "init_scale")])
def test_bad_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message):
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
  """fit's entropy_bits is the mean over the epoch's batches of L_e (weights kept fixed)."""
  tf.random.set_seed(0)
  inputs = tf.keras.Input((None, None, 3))
  conv = tf.keras.layers.Conv2D(4, 3, padding="same")
  reg = EntropyRegularizer(weight=1.0, noise=False)
  feats = reg(conv(inputs))
  model = tf.keras.Model(inputs, tf.keras.layers.Conv2D(3, 3, padding="same")(feats))
  model.compile(tf.keras.optimizers.SGD(0.0), "mae")  # lr 0: the same weights in every batch
  x = tf.random.uniform([4, 8, 8, 3])
  expected = np.mean([float(reg.entropy_loss(conv(x[i:i + 2]))) for i in (0, 2)])
  history = model.fit(x, x, epochs=2, batch_size=2, shuffle=False, verbose=0)
  assert "entropy_bits" in history.history
  np.testing.assert_allclose(history.history["entropy_bits"], [expected, expected], rtol=1e-5)


def test_entropy_bits_by_value_with_other_losses():
  """L_e comes from the layer, not from model.losses / lambda, whatever else add_loss adds."""
  tf.random.set_seed(0)
  inputs = tf.keras.Input((None, None, 3))
  conv = tf.keras.layers.Conv2D(4, 3, padding="same",
                                kernel_regularizer=tf.keras.regularizers.L2(0.5))
  reg = EntropyRegularizer(weight=2.0, noise=False)
  feats = tf.keras.layers.ActivityRegularization(l1=0.25)(reg(conv(inputs)))
  model = tf.keras.Model(inputs, feats)
  x = tf.random.uniform([2, 6, 6, 3])
  expected_bits = float(reg.entropy_loss(conv(x)))
  assert float(entropy.entropy_bits(model)) == 0.0  # no training call yet
  model(x, training=True)
  assert len(model.losses) == 3  # kernel L2, lambda L_e, activity L1
  np.testing.assert_allclose(float(reg.last_bits), expected_bits, rtol=1e-6)
  np.testing.assert_allclose(float(entropy.entropy_bits(model)), expected_bits, rtol=1e-6)
  total, bits = losses.regularization_terms(model)
  np.testing.assert_allclose(float(bits), expected_bits, rtol=1e-6)
  others = 0.5 * float(tf.reduce_sum(conv.kernel ** 2)) + 0.25 * float(
      tf.reduce_sum(tf.abs(conv(x)))) / 2  # ActivityRegularization averages over the batch
  np.testing.assert_allclose(float(total), 2.0 * expected_bits + others, rtol=1e-5)
  assert abs(float(total) / 2.0 - expected_bits) > 0.1  # what dividing by lambda would log
  model(x, training=False)  # inference: no L_e
  assert reg.last_bits is None and float(entropy.entropy_bits(model)) == 0.0


def test_entropy_bits_inside_tf_function():
  reg = _layer(weight=0.5, noise=False)
  inputs = tf.keras.Input((None, None, 4))
  model = tf.keras.Model(inputs, reg(inputs))
  x = tf.random.normal([2, 5, 5, 4])

  @tf.function
  def step(x):
    model(x, training=True)
    return entropy.entropy_bits(model), tf.add_n(model.losses)

  bits, total = step(x)
  np.testing.assert_allclose(float(bits), float(reg.entropy_loss(x)), rtol=1e-6)
  np.testing.assert_allclose(float(total), 0.5 * float(bits), rtol=1e-6)


@pytest.mark.parametrize("delta", [0.01, 1.0, 10.0])
def test_initial_scale_is_in_feature_units(delta):
  """Paper sec. 5 delta sweeps: the initial density over Phi does not depend on delta.

  With the random initial biases set to 0 (tfc's factors start at 0, so g is
  the identity) the chain of eqs. 3-10 is c(u) = sigmoid(u / s) for the
  scale s handed to tfc; u = Phi / delta and s = init_scale / delta give
  c = sigmoid(Phi / init_scale) for every delta.
  """
  layer = _layer(delta=delta, init_scale=10.0)
  for b in layer.density.base._biases:
    b.assign(tf.zeros_like(b))
  assert all(float(tf.reduce_max(tf.abs(a))) == 0.0 for a in layer.density.base._factors)
  phi = np.linspace(-40.0, 40.0, 33, dtype=np.float32)[:, None] * np.ones((1, 4), np.float32)
  np.testing.assert_allclose(layer.cdf(phi).numpy(), 1.0 / (1.0 + np.exp(-phi / 10.0)),
                             rtol=1e-5, atol=1e-6)


def test_noise_is_added_in_float32_under_bfloat16():
  """delta = 0.01 on features of magnitude ~50: bf16 (8-bit mantissa) would round it away."""
  layer = EntropyRegularizer(weight=1.0, delta=0.01, noise=True, dtype="mixed_bfloat16")
  layer.build((None, None, None, 4))
  phi = tf.cast(tf.random.stateless_uniform([2, 16, 16, 4], [1, 2], 40.0, 60.0), tf.bfloat16)
  noisy = layer.add_noise(phi)
  assert noisy.dtype == tf.float32
  diff = noisy.numpy() - tf.cast(phi, tf.float32).numpy()
  assert np.abs(diff).max() <= 0.005 + 1e-5          # float32 ulp at 60: 4e-6
  assert np.mean(diff != 0) > 0.99                   # in bf16: ~0 % of elements would change
  assert np.abs(diff).mean() > 0.002                 # ~U(-delta/2, delta/2): mean |u| = delta/4
  rounded = tf.cast(noisy, tf.bfloat16)              # what adding in bf16 would have kept
  assert np.mean(rounded.numpy() != phi.numpy()) < 0.05
  # The call's L_e is the entropy of the float32 noisy features.
  tf.random.set_seed(7)
  out = layer(phi, training=True)
  tf.random.set_seed(7)
  expected = float(layer.entropy_loss(layer.add_noise(phi)))
  assert out.dtype == tf.bfloat16
  np.testing.assert_allclose(float(layer.last_bits), expected, rtol=1e-6)


def _tfc_bits(layer, x):
  """Reference: tfc's NoisyDeepFactorized -log_prob / ln 2 on x / delta (float32)."""
  return -layer.density.log_prob(tf.cast(x, tf.float32) / layer.delta) / np.log(2.0)


def _perturbed_layer(seed, **kwargs):
  layer = _layer(channels=kwargs.pop("channels", 8), noise=False, **kwargs)
  for i, v in enumerate(layer.density.trainable_variables):
    v.assign(v + tf.random.stateless_normal(v.shape, [seed, i]) * 0.5)
  return layer


def _realistic_features(seed, shape=(2, 6, 7, 8)):
  """Plain-net-like features: wide (|Phi| up to ~150), near zero, and exact bin edges."""
  rng = np.random.default_rng(seed)
  wide = rng.uniform(-150.0, 150.0, size=shape)
  small = rng.normal(0.0, 0.3, size=shape)
  x = np.where(rng.random(shape) < 0.5, wide, small)
  x.flat[:4] = [0.0, 0.5, -0.5, 150.0]
  return x.astype(np.float32)


@pytest.mark.parametrize("delta, num_filters", [(1.0, (3, 3, 3)), (0.1, (3, 3, 3)),
                                                (4.0, (3, 3, 3)), (1.0, (2, 5))])
def test_fused_density_equals_tfc_values(delta, num_filters):
  """bits() (the fused eqs. 3-11) equals tfc's -log_prob / ln 2 within 1e-4 bits.

  Features reach +-150 / delta bins, where float32 logits carry ~1e-5 relative
  rounding in either implementation: the tolerance is 1e-4 bits + 1e-5
  relative, and against float64 eqs. 3-11 the fused form is as accurate as
  tfc (to 5e-5 bits).
  """
  layer = _perturbed_layer(5, delta=delta, num_filters=num_filters)
  for seed in range(3):
    x = _realistic_features(seed) * np.float32(delta)
    expected = _tfc_bits(layer, x).numpy()
    got = layer.bits(x).numpy()
    assert got.shape == x.shape and got.dtype == np.float32
    assert np.all(np.isfinite(expected)) and expected.max() > 5.0  # the tails are exercised
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(float(layer.entropy_loss(x)), expected.mean(), rtol=0, atol=1e-5)
    units = x.astype(np.float64) / delta
    p = _hand_cdf(layer, units + 0.5) - _hand_cdf(layer, units - 0.5)
    ok = p > 1e-9  # float64's cdf difference itself is exact enough there
    truth = -np.log2(p[ok])
    assert ok.mean() > 0.5
    assert np.abs(got[ok] - truth).max() <= np.abs(expected[ok] - truth).max() + 5e-5


def _grads(layer, x, fn):
  x = tf.constant(x)
  with tf.GradientTape() as tape:
    tape.watch(x)
    loss = fn(x)
  return tape.gradient(loss, [x] + list(layer.density.trainable_variables))


@pytest.mark.parametrize("graph", [False, True])
def test_fused_density_gradients_equal_tfc(graph):
  """Gradients of L_e and of a weighted sum of bits w.r.t. Phi and every density variable."""
  layer = _perturbed_layer(6, delta=0.5)
  x = _realistic_features(7) * np.float32(0.5)
  weights = tf.random.stateless_uniform(x.shape, [1, 1], 0.0, 2.0)
  cases = [(lambda v: layer.entropy_loss(v), lambda v: tf.reduce_mean(_tfc_bits(layer, v))),
           (lambda v: tf.reduce_sum(weights * layer.bits(v)),
            lambda v: tf.reduce_sum(weights * _tfc_bits(layer, v)))]
  for fused, reference in cases:
    if graph:
      fused, reference = tf.function(fused), tf.function(reference)
    got, expected = _grads(layer, x, fused), _grads(layer, x, reference)
    assert len(got) == 12
    names = ["phi"] + [v.name for v in layer.density.trainable_variables]
    for g, e, name in zip(got, expected, names):
      assert g is not None and g.shape == e.shape, name
      assert float(tf.reduce_max(tf.abs(e))) > 0, name
      np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-3,
                                 atol=1e-4 * float(tf.reduce_max(tf.abs(e))), err_msg=name)


def test_fused_density_under_mixed_bfloat16():
  """bf16 features: L_e and its gradients are tfc's on the float32-cast features."""
  tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    layer = _perturbed_layer(8, delta=1.0, weight=1.0)
    assert layer.compute_dtype == "bfloat16"
    phi = tf.cast(_realistic_features(9), tf.bfloat16)
    with tf.GradientTape() as tape:
      tape.watch(phi)
      out = layer(phi, training=True)
      loss = layer.losses[0]
    got = tape.gradient(loss, [phi] + layer.trainable_weights)
  finally:
    tf.keras.mixed_precision.set_global_policy("float32")
  assert out.dtype == tf.bfloat16 and loss.dtype == tf.float32
  phi32 = tf.cast(phi, tf.float32)
  with tf.GradientTape() as tape:
    tape.watch(phi32)
    expected_loss = tf.reduce_mean(_tfc_bits(layer, phi32))
  expected = tape.gradient(expected_loss, [phi32] + layer.trainable_weights)
  np.testing.assert_allclose(float(loss), float(expected_loss), rtol=0, atol=1e-4)
  assert got[0].dtype == tf.bfloat16  # the cast's gradient, back in the features' dtype
  np.testing.assert_allclose(tf.cast(got[0], tf.float32).numpy(), expected[0].numpy(),
                             rtol=1e-2, atol=1e-3 * float(tf.reduce_max(tf.abs(expected[0]))))
  for g, e in zip(got[1:], expected[1:]):
    np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-3,
                               atol=1e-4 * float(tf.reduce_max(tf.abs(e))))


def test_density_variables_are_tfcs():
  """The layer's weights are tfc NoisyDeepFactorized's own: names, shapes and order."""
  layer = _layer(channels=5)
  names = [v.name for v in layer.trainable_weights]
  assert names == [v.name for v in layer.density.trainable_variables]
  assert [v.name.split("/")[-1] for v in layer.trainable_weights] == (
      [f"bias_{i}:0" for i in range(4)] + [f"factor_{i}:0" for i in range(3)]
      + [f"matrix_{i}:0" for i in range(4)])
  shapes = {v.name.split("/")[-1].split(":")[0]: tuple(v.shape) for v in layer.trainable_weights}
  assert shapes["matrix_0"] == (5, 3, 1) and shapes["matrix_1"] == (5, 3, 3)
  assert shapes["matrix_3"] == (5, 1, 3) and shapes["bias_3"] == (5, 1, 1)
  assert shapes["factor_2"] == (5, 3, 1)


def test_fused_density_xla_path_equals_tfc():
  """Inputs of >= _XLA_MIN_ELEMENTS run the XLA-compiled passes, also with a dynamic batch."""
  layer = _perturbed_layer(11, delta=1.0, channels=64)
  x = _realistic_features(12, shape=(4, 32, 32, 64))
  assert x.size >= entropy._XLA_MIN_ELEMENTS
  expected_bits = _tfc_bits(layer, x)
  np.testing.assert_allclose(layer.bits(x).numpy(), expected_bits.numpy(), rtol=1e-5, atol=1e-4)
  dynamic = tf.function(layer.entropy_loss,
                        input_signature=[tf.TensorSpec([None, 32, 32, 64], tf.float32)])
  expected = _grads(layer, x, lambda v: tf.reduce_mean(_tfc_bits(layer, v)))
  for fn in (layer.entropy_loss, dynamic):
    got = _grads(layer, x, fn)
    for g, e in zip(got, expected):
      np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-3,
                                 atol=1e-4 * float(tf.reduce_max(tf.abs(e))))
  np.testing.assert_allclose(float(dynamic(x)), float(tf.reduce_mean(expected_bits)), atol=1e-5)
