"""SRGAN phase two (tfsr_defense.gan): discriminator, VGG54 content loss, GAN training step.

Uses a randomly initialised VGG19 (weights=None): no download, not a
perceptual loss, but the same graph.
"""

import json

import numpy as np
import pytest
import tensorflow as tf

from tfsr_defense import gan, models


@pytest.fixture(scope="module")
def vgg():
  tf.keras.utils.set_random_seed(0)
  return gan.build_vgg54(weights=None)


def test_vgg54_is_conv5_4_and_frozen(vgg):
  assert vgg.layers[-1].name == "block5_conv4"
  assert not vgg.trainable_weights
  features = gan.vgg_features(vgg, tf.random.uniform([2, 32, 48, 3]))
  assert features.shape == (2, 2, 3, 512) and features.dtype == tf.float32


def test_content_loss(vgg):
  hr = tf.random.uniform([2, 32, 32, 3], seed=1)
  np.testing.assert_array_equal(gan.content_loss(vgg, hr, hr).numpy(), [0.0, 0.0])
  loss = gan.content_loss(vgg, tf.random.uniform([2, 32, 32, 3], seed=2), hr)
  assert loss.shape == (2,) and np.all(loss.numpy() > 0)


def test_discriminator_shapes():
  tf.keras.utils.set_random_seed(0)
  d = gan.build_discriminator()
  for size in (32, 48):
    logits = d(tf.random.uniform([2, size, size, 3]), training=False)
    assert logits.shape == (2, 1) and logits.dtype == tf.float32
  fixed = gan.build_discriminator(pooling="flatten", input_size=96)
  assert fixed(tf.zeros([1, 96, 96, 3])).shape == (1, 1)
  # Ledig et al.'s D with a 96x96 input: Dense 1024 on the 6x6x512 map.
  assert fixed.get_layer("dense").kernel.shape == (6 * 6 * 512, 1024)
  with pytest.raises(ValueError, match="input_size"):
    gan.build_discriminator(pooling="flatten")


def test_losses_are_the_gan_cross_entropies():
  real, fake = tf.constant([[2.0], [-1.0]]), tf.constant([[0.5], [-3.0]])
  sig = tf.sigmoid
  np.testing.assert_allclose(gan.generator_adversarial_loss(fake), -np.log(sig(fake)[:, 0]),
                             rtol=1e-6)
  np.testing.assert_allclose(gan.discriminator_loss(real, fake),
                             -np.log(sig(real)[:, 0]) - np.log(1 - sig(fake)[:, 0]), rtol=1e-6)


def test_two_gan_steps(vgg):
  tf.keras.utils.set_random_seed(0)
  assert gan.is_gan_model("srgan") and not gan.is_gan_model("srresnet")
  generator = models.build_model("srgan", 4, n_blocks=1)   # lambda = 0.1: regularized
  discriminator = gan.build_discriminator()
  g_opt, d_opt = tf.keras.optimizers.Adam(1e-4), tf.keras.optimizers.Adam(1e-4)
  step = gan.make_gan_train_step(generator, discriminator, vgg, g_opt, d_opt)
  lr = tf.random.uniform([2, 8, 8, 3], seed=3)
  hr = tf.image.resize(lr, [32, 32], "bicubic")
  g_before = [w.numpy() for w in generator.trainable_weights]
  d_before = [w.numpy() for w in discriminator.trainable_weights]
  for _ in range(2):
    out = {k: float(v) for k, v in step(lr, hr).items()}
  assert set(out) >= {"loss", "perceptual", "content", "adversarial", "reg", "l_e_bits",
                      "d_loss", "d_real", "d_fake", "psnr_rgb"}
  assert "l_r" not in out  # the perceptual loss is logged under its own name
  assert all(np.isfinite(v) for v in out.values()), out
  assert out["l_e_bits"] > 0
  assert out["perceptual"] == pytest.approx(
      out["content"] + gan.ADVERSARIAL_WEIGHT * out["adversarial"], rel=1e-5)
  assert out["loss"] == pytest.approx(out["perceptual"] + 0.1 * out["l_e_bits"], rel=1e-4)
  assert out["reg"] == pytest.approx(0.1 * out["l_e_bits"], rel=1e-5)
  assert int(g_opt.iterations) == 2 and int(d_opt.iterations) == 2
  assert any(not np.array_equal(a, w.numpy())
             for a, w in zip(g_before, generator.trainable_weights))
  assert any(not np.array_equal(a, w.numpy())
             for a, w in zip(d_before, discriminator.trainable_weights))


def test_vgg_weights_error_offline(monkeypatch):
  def offline(*args, **kwargs):
    raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- "
                    "[Errno -3] Temporary failure in name resolution")
  monkeypatch.setattr(tf.keras.utils, "get_file", offline)
  with pytest.raises(gan.VGGWeightsError) as info:
    gan.build_vgg54("imagenet")
  message = str(info.value)
  assert "imagenet" in message and "path" in message and gan.VGG19_NOTOP_FILE in message
  assert "URL fetch failure" in message


def test_vgg_weights_error_missing_file(tmp_path):
  with pytest.raises(gan.VGGWeightsError, match="no file .*imagenet"):
    gan.build_vgg54(str(tmp_path / "vgg19.h5"))


def test_load_generator_weights_from_phase_one(tmp_path):
  tf.keras.utils.set_random_seed(0)
  phase_one = models.build_model("srresnet", 4, n_blocks=1)
  run_dir = tmp_path / "srresnet_x4"
  run_dir.mkdir()
  with pytest.raises(FileNotFoundError, match="model.weights.h5"):
    gan.load_generator_weights(models.build_model("srgan", 4, n_blocks=1), str(run_dir))
  (run_dir / "config.json").write_text(json.dumps(dict(model="srresnet", scale=4)))
  phase_one.save_weights(str(run_dir / "model.weights.h5"))
  generator = models.build_model("srgan", 4, n_blocks=1)
  assert gan.load_generator_weights(generator, str(run_dir)).endswith("model.weights.h5")
  for a, b in zip(phase_one.weights, generator.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  with pytest.raises(ValueError, match="x4 run"):
    gan.load_generator_weights(models.build_model("srgan", 2, n_blocks=1), str(run_dir))


def test_load_generator_weights_from_checkpoint(tmp_path):
  """An interrupted phase one has only the trainer's checkpoint (model, optimizer, step)."""
  tf.keras.utils.set_random_seed(0)
  phase_one = models.build_model("srresnet", 4, n_blocks=1)
  checkpoint = tf.train.Checkpoint(model=phase_one, optimizer=tf.keras.optimizers.Adam(),
                                   step=tf.Variable(7, dtype=tf.int64))
  tf.train.CheckpointManager(checkpoint, str(tmp_path / "ckpt"), 3).save(checkpoint_number=7)
  generator = models.build_model("srgan", 4, n_blocks=1)
  assert gan.load_generator_weights(generator, str(tmp_path)).endswith("ckpt-7")
  for a, b in zip(phase_one.weights, generator.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_load_generator_weights_mismatch(tmp_path):
  """Phase one plain (lambda = 0), phase two regularized: the variables differ."""
  tf.keras.utils.set_random_seed(0)
  models.build_model("srresnet", 4, n_blocks=1, entropy_weight=0).save_weights(
      str(tmp_path / "model.weights.h5"))
  with pytest.raises(ValueError, match="lambda"):
    gan.load_generator_weights(models.build_model("srgan", 4, n_blocks=1), str(tmp_path))
