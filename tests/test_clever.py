"""CLEVER for SR (tfsr_defense.clever, paper eq. 15): analytic values, seeds, batching."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tfsr_defense import clever, models
from tfsr_defense import attacks
from tfsr_defense.attacks import engine as engine_lib

SHAPE = (4, 5, 3)


@pytest.fixture(scope="module")
def image():
  return np.random.default_rng(0).uniform(size=SHAPE).astype(np.float32)


@pytest.fixture(scope="module")
def edsr():
  tf.keras.utils.set_random_seed(0)
  return models.build_model("edsr", 4, entropy_weight=0, n_resblocks=1, n_feats=8)


def test_scalar_linear_map_is_l1_norm_of_weights(image):
  """S(x) = a . x: ||S(x+D) - S(x)||_2 = |a . D|, gradient sign(a . D) a.

  So every sample's ||grad||_1 is ||a||_1 exactly.
  """
  a = np.random.default_rng(1).normal(size=SHAPE).astype(np.float32)
  inputs = tf.keras.Input(SHAPE)
  out = tf.keras.layers.Dense(1, use_bias=False)(tf.keras.layers.Flatten()(inputs))
  out = tf.keras.layers.Reshape((1, 1, 1))(out)
  model = tf.keras.Model(inputs, out)
  model.layers[2].set_weights([a.reshape(-1, 1)])
  result = clever.clever_sr(model, image, num_samples=20, batch_size=8, seed=3)
  np.testing.assert_allclose(result.grad_norms, np.abs(a).sum(), rtol=1e-5)
  np.testing.assert_allclose(result.score, np.abs(a).sum(), rtol=1e-5)
  assert result.num_samples == 20 and result.grad_norms.shape == (20,)


def test_linear_conv_matches_matrix_formula(image):
  """S(x) = A x: grad at x + D_j is A^T A D_j / ||A D_j||_2; score = max_j of its L1 norm."""
  tf.keras.utils.set_random_seed(2)
  inputs = tf.keras.Input((None, None, 3))
  conv = tf.keras.layers.Conv2D(3, 3, padding="same", use_bias=False)
  model = tf.keras.Model(inputs, conv(inputs))
  n = int(np.prod(SHAPE))
  basis = np.eye(n, dtype=np.float32).reshape((n,) + SHAPE)
  a_matrix = model(basis).numpy().reshape(n, n).T.astype(np.float64)  # column k = A e_k
  num = 12
  deltas = clever.sample_perturbations(SHAPE, np.arange(num), alpha=1 / 255, seed=9)
  deltas = deltas.numpy().reshape(num, n).astype(np.float64)
  ad = deltas @ a_matrix.T
  grads = (ad @ a_matrix) / np.linalg.norm(ad, axis=1, keepdims=True)
  expected = np.abs(grads).sum(axis=1)
  for batch_size in (1, 5, 64):
    result = clever.clever_sr(model, image, num_samples=num, batch_size=batch_size, seed=9)
    np.testing.assert_allclose(result.grad_norms, expected, rtol=1e-4)
    assert result.score == pytest.approx(expected.max(), rel=1e-4)


def test_perturbations_are_seeded_and_bounded():
  d1 = clever.sample_perturbations(SHAPE, [0, 1, 2], alpha=1 / 255, seed=4).numpy()
  d2 = clever.sample_perturbations(SHAPE, [2], alpha=1 / 255, seed=4).numpy()
  d3 = clever.sample_perturbations(SHAPE, [2], alpha=1 / 255, seed=5).numpy()
  assert d1.shape == (3,) + SHAPE and np.abs(d1).max() <= 1 / 255
  np.testing.assert_array_equal(d1[2], d2[0])  # sample j depends on (seed, j) only
  assert np.abs(d2 - d3).max() > 0


def test_reproducible_and_batched_equals_unbatched(edsr):
  x = np.random.default_rng(3).uniform(size=(10, 9, 3)).astype(np.float32)
  engine = attacks.GradientEngine(edsr)
  one = clever.clever_sr(engine, x, num_samples=24, batch_size=1, seed=7)
  many = clever.clever_sr(engine, x[None], num_samples=24, batch_size=10, seed=7)
  again = clever.clever_sr(engine, x, num_samples=24, batch_size=10, seed=7)
  other = clever.clever_sr(engine, x, num_samples=24, batch_size=10, seed=8)
  bare = clever.clever_sr(edsr, x, num_samples=24, batch_size=10, seed=7)  # a one-off engine
  np.testing.assert_array_equal(bare.grad_norms, many.grad_norms)
  np.testing.assert_allclose(one.grad_norms, many.grad_norms, rtol=1e-5)
  np.testing.assert_array_equal(many.grad_norms, again.grad_norms)
  assert not np.allclose(many.grad_norms, other.grad_norms)
  assert many.score == many.grad_norms.max() > 0
  assert many.weibull is None and many.weibull_loc is None
  # One trace for both batch sizes, kept by the engine.
  assert engine.clever_gradients().experimental_get_tracing_count() == 1


def test_weibull_option(edsr):
  x = np.random.default_rng(4).uniform(size=(8, 8, 3)).astype(np.float32)
  result = clever.clever_sr(edsr, x, num_samples=64, batch_size=32, seed=1, weibull=True,
                            weibull_groups=8)
  fit = result.weibull
  assert set(fit) == {"c", "loc", "scale", "ks_pvalue", "groups"} and fit["groups"] == 8
  assert np.isfinite(result.weibull_loc)
  # weibull_max's support ends at loc: the estimate is at least the largest sample.
  assert result.weibull_loc >= result.score * (1 - 1e-6)
  assert result.weibull_loc < 2 * result.score


def test_norm_gradient_is_zero_not_nan_at_zero_distance():
  sr = tf.ones([2, 4, 4, 3])
  moved = tf.Variable(tf.concat([sr[:1], sr[1:] + 0.5], axis=0))
  with tf.GradientTape() as tape:
    d = engine_lib.sr_distance(moved, sr)
    total = tf.reduce_sum(d)
  grad = tape.gradient(total, moved).numpy()
  np.testing.assert_allclose(d.numpy(), [0.0, 0.5 * np.sqrt(48)], rtol=1e-6)
  assert np.all(np.isfinite(grad)) and np.all(grad[0] == 0)
  np.testing.assert_allclose(grad[1], 1 / np.sqrt(48), rtol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_samples=0), "num_samples"),
    (dict(alpha=0.0), "alpha"),
    (dict(batch_size=0), "batch_size"),
    (dict(weibull=True, num_samples=4, weibull_groups=8), "weibull_groups"),
])
def test_bad_arguments(edsr, kwargs, match):
  x = np.full((6, 6, 3), 0.5, np.float32)
  with pytest.raises(ValueError, match=match):
    clever.clever_sr(edsr, x, **kwargs)


def test_one_image_only(edsr):
  with pytest.raises(ValueError, match="one image"):
    clever.clever_sr(edsr, np.full((2, 6, 6, 3), 0.5, np.float32), num_samples=2)


def test_non_finite_image_is_refused(edsr):
  x = np.full((6, 6, 3), 0.5, np.float32)
  x[2, 2, 1] = np.nan
  with pytest.raises(ValueError, match="NaN/inf"):
    clever.clever_sr(edsr, x, num_samples=2)


class _Interrupt(Exception):
  pass


def _counting_engine(edsr, fail_at=None):
  """A GradientEngine whose CLEVER gradient calls are counted (and raise at call ``fail_at``)."""
  engine = attacks.GradientEngine(edsr)
  fn = engine.clever_gradients()
  calls = []

  def counted(*args):
    calls.append(int(args[2].shape[0]))
    if fail_at is not None and len(calls) == fail_at:
      raise _Interrupt()
    return fn(*args)

  engine.clever_gradients = lambda: counted
  return engine, calls


def test_interrupted_clever_resumes_from_its_last_batch(edsr, tmp_path):
  x = np.random.default_rng(5).uniform(size=(10, 9, 3)).astype(np.float32)
  path = str(tmp_path / "partial" / "clever.json")
  full = clever.clever_sr(edsr, x, num_samples=22, batch_size=5, seed=2)
  engine, calls = _counting_engine(edsr, fail_at=3)
  with pytest.raises(_Interrupt):
    clever.clever_sr(engine, x, num_samples=22, batch_size=5, seed=2, partial_path=path)
  # Two whole batches (10 samples) were kept before the third call failed.
  state = json.loads(open(path, encoding="utf-8").read())
  assert len(state["grad_norms"]) == 10
  engine, calls = _counting_engine(edsr)
  resumed = clever.clever_sr(engine, x, num_samples=22, batch_size=5, seed=2, partial_path=path)
  assert calls == [5, 5, 2]  # samples 10..21 only
  np.testing.assert_array_equal(resumed.grad_norms, full.grad_norms)
  assert resumed.score == full.score
  assert not os.path.exists(path)  # removed once the score is known


@pytest.mark.parametrize("change", ["seed", "batch_size", "image", "corrupt"])
def test_partial_state_of_other_settings_is_not_used(edsr, tmp_path, change):
  x = np.random.default_rng(6).uniform(size=(8, 8, 3)).astype(np.float32)
  path = str(tmp_path / "clever.json")
  engine, _ = _counting_engine(edsr, fail_at=2)
  with pytest.raises(_Interrupt):
    clever.clever_sr(engine, x, num_samples=12, batch_size=4, seed=1, partial_path=path)
  kwargs = dict(num_samples=12, batch_size=4, seed=1)
  if change == "seed":
    kwargs["seed"] = 3
  elif change == "batch_size":
    kwargs["batch_size"] = 6
  elif change == "image":
    x = x.copy()
    x[0, 0, 0] = 1.0 - x[0, 0, 0]
  else:
    with open(path, "w", encoding="utf-8") as f:
      f.write('{"settings": {"num_samp')
  engine, calls = _counting_engine(edsr)
  if change == "corrupt":
    with pytest.warns(UserWarning, match="unreadable partial state .*clever.json"):
      result = clever.clever_sr(engine, x, partial_path=path, **kwargs)
  else:
    result = clever.clever_sr(engine, x, partial_path=path, **kwargs)
  assert sum(calls) == 12  # every sample computed again
  expected = clever.clever_sr(edsr, x, **kwargs)
  np.testing.assert_array_equal(result.grad_norms, expected.grad_norms)
  assert not os.path.exists(path)
