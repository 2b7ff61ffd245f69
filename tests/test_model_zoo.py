"""The paper's other networks (issue 4): SRResNet, SRGAN's generator, RCAN, MSRN, CARN, CARN-M.

Parameter counts are the official PyTorch ones (trainable weights: BN gamma
and beta count, BN moving statistics do not). The slower checks use reduced
configurations (fewer blocks) of the same builders.
"""

import numpy as np
import pytest
import tensorflow as tf

from tfsr_defense import data, losses, models
from tfsr_defense.layers import blocks
from tfsr_defense.models import registry

# Official parameter counts at x4 without the regularizer.
OFFICIAL_X4 = {
    "srresnet": 1_550_659,
    "srgan": 1_550_659,     # the generator (= SRResNet)
    "rcan": 15_592_355,
    "msrn": 6_078_019,
    "carn": 1_111_875,      # single-scale; see test_carn_single_scale_count
    "carn_m": 294_147,
}
# The official CARN code is multi-scale: x2, x3 and x4 upsamplers in one model.
CARN_MULTI_SCALE = {"carn": 1_591_939, "carn_m": 414_787}
CARN_UPSAMPLER = {"carn": {2: 147_712, 3: 332_352, 4: 295_424},
                  "carn_m": {2: 37_120, 3: 83_520, 4: 74_240}}
SPECS = {  # pixel range, loss, the paper's lambda
    "srresnet": ((-1.0, 1.0), "l2", 0.1),
    "srgan": ((-1.0, 1.0), "l2", 0.1),
    "rcan": ((0.0, 255.0), "l1", 1.0),
    "msrn": ((0.0, 255.0), "l1", 1.0),
    "carn": ((0.0, 255.0), "l1", 1.0),
    "carn_m": ((0.0, 255.0), "l1", 1.0),
}
# Reduced configurations for the forward/backward/save tests.
SMALL = {
    "srresnet": dict(n_blocks=2),
    "srgan": dict(n_blocks=1),
    "rcan": dict(n_groups=1, n_blocks=2),
    "msrn": dict(n_blocks=1),
    "carn": dict(n_blocks=1, n_units=2),
    "carn_m": dict(n_blocks=1),
}
NETWORKS = sorted(OFFICIAL_X4)
# Rectifier maps (models.activation_layer_names) at x4 in the official
# configuration: (all, body only = without the upsampler's).
RELU_MAPS_X4 = {
    "srresnet": (19, 17),   # PReLUs: head + 16 blocks (+ 2 upsampler steps)
    "srgan": (19, 17),
    "rcan": (400, 400),     # 10 x 20 RCABs x (body ReLU, channel-attention ReLU)
    "msrn": (32, 32),       # 8 MSRBs x 4 branch ReLUs
    "carn": (32, 30),       # 3 x (3 res x 2 + 3 cascades) + 3 global cascades (+ 2 upsampler)
    "carn_m": (41, 39),     # 3 x (3 res x 3 + 3 cascades) + 3 global cascades (+ 2 upsampler)
}
# The head whose output entropy_layer='first' regularizes.
HEAD = {"srresnet": "head_prelu", "srgan": "head_prelu", "rcan": "head", "msrn": "head",
        "carn": "entry", "carn_m": "entry"}


def n_params(model_or_layer):
  return int(sum(np.prod(w.shape) for w in model_or_layer.trainable_weights))


@pytest.fixture(autouse=True)
def _seed_and_policy():
  tf.keras.utils.set_random_seed(0)
  saved = tf.keras.mixed_precision.global_policy()
  yield
  tf.keras.mixed_precision.set_global_policy(saved)


@pytest.fixture(scope="module")
def patches(data_dir):
  """4 aligned real patches from Set5 x4: LR (4, 12, 12, 3), HR (4, 48, 48, 3), float32 [0,1]."""
  pairs = data.load_pairs("set5", 4, data_dir, max_images=4)
  lr, hr = [], []
  for pair in pairs:
    y, x = pair.lr.shape[0] // 2, pair.lr.shape[1] // 2
    lr.append(pair.lr[y:y + 12, x:x + 12])
    hr.append(pair.hr[4 * y:4 * y + 48, 4 * x:4 * x + 48])
  return data.to_float(np.stack(lr)), data.to_float(np.stack(hr))


def test_registered_with_paper_settings():
  for name in NETWORKS:
    spec = models.get_spec(name)
    assert (spec.pixel_range, spec.loss, spec.entropy_weight) == SPECS[name], name
    assert name in models.known_models()


@pytest.mark.parametrize("name", NETWORKS)
def test_parameter_count_x4(name):
  model = models.build_model(name, 4, entropy_weight=0)
  assert n_params(model) == OFFICIAL_X4[name]
  assert registry.find_regularizer(model) is None
  assert model.get_layer(registry.FEATURES).output.shape[-1] == 64
  relus = models.activation_layer_names(model)
  body = models.activation_layer_names(model, include_upsampler=False)
  assert (len(relus), len(body)) == RELU_MAPS_X4[name]
  assert body == [n for n in relus if not n.startswith("upsampler_")]


def test_srresnet_prelu_is_per_channel():
  # 19 PReLUs (head, 16 blocks, 2 upsampler steps) x 64 weights: a single-weight
  # PReLU would give 1,550,659 - 19 * 63 = 1,549,462 parameters.
  model = models.build_model("srresnet", 4, entropy_weight=0, n_blocks=1)
  prelus = [w for w in model.trainable_weights if "alpha" in w.name]
  assert len(prelus) == 1 + 1 + 2
  assert all(int(np.prod(w.shape)) == 64 for w in prelus)


@pytest.mark.parametrize("name", ["carn", "carn_m"])
def test_carn_single_scale_count(name):
  """Single-scale x4 = official multi-scale count minus the x2 and x3 upsamplers."""
  groups = 4 if name == "carn_m" else 1
  sizes = {}
  for scale in (2, 3, 4):
    inputs = tf.keras.Input((None, None, 64))
    upsampler = tf.keras.Model(inputs, blocks.upsampler(inputs, scale, 64, "relu", groups))
    sizes[scale] = n_params(upsampler)
  assert sizes == CARN_UPSAMPLER[name]
  assert OFFICIAL_X4[name] + sizes[2] + sizes[3] == CARN_MULTI_SCALE[name]


@pytest.mark.parametrize("name", NETWORKS)
def test_shapes_scales_and_features(name):
  lr = tf.random.uniform([2, 5, 4, 3])
  for scale in (2, 3, 4):
    model = models.build_model(name, scale, **SMALL[name])  # the paper's lambda: regularized
    sr = model(lr, training=False)
    assert sr.shape == (2, 5 * scale, 4 * scale, 3) and sr.dtype == tf.float32
  assert registry.find_regularizer(model) is not None
  features = registry.feature_model(model)(lr)
  assert features.shape == (2, 5, 4, 64)
  # Other sizes with the same model (no fixed H, W).
  assert model(tf.random.uniform([1, 7, 9, 3])).shape == (1, 28, 36, 3)


@pytest.mark.parametrize("name", NETWORKS)
def test_keras_save_reload(name, tmp_path):
  model = models.build_model(name, 4, **SMALL[name])
  lr = tf.random.uniform([1, 6, 5, 3])
  path = str(tmp_path / f"{name}.keras")
  model.save(path)
  reloaded = tf.keras.models.load_model(path)
  np.testing.assert_array_equal(model(lr, training=False).numpy(),
                                reloaded(lr, training=False).numpy())
  assert n_params(reloaded) == n_params(model)


@pytest.mark.parametrize("name", NETWORKS)
def test_adam_steps_lower_reconstruction_loss(name, patches):
  lr, hr = patches
  spec = models.get_spec(name)
  model = models.build_model(name, 4, **SMALL[name])
  optimizer = tf.keras.optimizers.Adam(1e-3)
  history = []
  for _ in range(3):
    with tf.GradientTape() as tape:
      sr = model(lr, training=True)
      l_r = tf.reduce_mean(losses.reconstruction_loss(sr, hr, spec.loss, spec.pixel_range))
      loss = l_r + tf.add_n(model.losses)
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    history.append(float(l_r))
  assert np.all(np.isfinite(history))
  assert history[-1] < history[0], history


@pytest.mark.parametrize("name", NETWORKS)
def test_mixed_bfloat16(name):
  tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
  model = models.build_model(name, 4, **SMALL[name])
  assert model.get_layer("sr").compute_dtype == "float32"
  lr = tf.random.uniform([1, 6, 6, 3])
  with tf.GradientTape() as tape:
    sr = model(lr, training=True)
    loss = tf.reduce_mean(sr) + tf.add_n(model.losses)
  grads = tape.gradient(loss, model.trainable_variables)
  assert sr.dtype == tf.float32 and sr.shape == (1, 24, 24, 3)
  assert np.isfinite(float(loss))
  assert all(g is not None and np.all(np.isfinite(tf.cast(g, tf.float32).numpy())) for g in grads)
  features = registry.feature_model(model)(lr)
  assert features.dtype == tf.bfloat16 and features.shape[-1] == 64


def _builder(name):
  return models.get_spec(name).builder


@pytest.mark.parametrize("name", NETWORKS)
def test_activation_maps(name):
  """All rectifier maps and the regularized map in one feature model; shapes and ranges."""
  model = models.build_model(name, 2, **SMALL[name])
  names = models.activation_layer_names(model)
  assert names and len(set(names)) == len(names)
  lr = tf.random.uniform([1, 5, 4, 3])
  maps = models.feature_model(model, names + [models.FEATURES])(lr, training=False)
  assert len(maps) == len(names) + 1
  np.testing.assert_allclose(maps[-1].numpy(), registry.feature_model(model)(lr).numpy())
  for layer_name, m in zip(names, maps):
    assert m.shape[0] == 1 and np.all(np.isfinite(m.numpy())), layer_name
    up = 2 if layer_name.startswith("upsampler_") else 1
    if "_ca_" not in layer_name:  # RCAN's channel-attention ReLU is (N, 1, 1, C/r)
      assert m.shape[1:3] == (5 * up, 4 * up), layer_name
    if not isinstance(model.get_layer(layer_name), tf.keras.layers.PReLU):
      assert float(tf.reduce_min(m)) >= 0.0, layer_name


@pytest.mark.parametrize("name", [n for n in NETWORKS if n != "srgan"])  # srgan = srresnet
def test_entropy_layer_positions(name):
  """Paper sec. 5.4: 'first' puts the regularized map on the head output, same parameters."""
  regularizer = dict(weight=1.0, delta=1.0, noise=True, estimate_entropy=True)
  lr = tf.random.uniform([2, 5, 4, 3])
  counts = {}
  for position, reg in (("pre_upsampler", regularizer), ("first", regularizer), ("first", None)):
    model = _builder(name)(2, reg, entropy_layer=position, **SMALL[name])
    counts[position, reg is None] = n_params(model)
    features = model.get_layer(registry.FEATURES)
    assert (registry.find_regularizer(model) is features) == (reg is not None)
    if position == "first":
      assert features.input is model.get_layer(HEAD[name]).output
    else:
      assert model.get_layer("upsampler_conv0").input is features.output
    assert registry.feature_model(model)(lr).shape == (2, 5, 4, 64)
    sr = model(lr, training=True)
    assert sr.shape == (2, 10, 8, 3) and np.all(np.isfinite(sr.numpy()))
    assert np.isfinite(float(tf.add_n(model.losses))) if reg else not model.losses
  assert counts["first", False] == counts["pre_upsampler", False]
  # The plain network + one density per channel: 64 x 43 parameters (see test_edsr).
  assert counts["first", False] - counts["first", True] == 64 * 43


@pytest.mark.parametrize("name", NETWORKS)
def test_entropy_layer_unknown(name):
  with pytest.raises(ValueError, match="pre_upsampler, first"):
    _builder(name)(2, None, entropy_layer="middle", **SMALL[name])
