"""SRGAN adversarial training (Ledig et al., CVPR 2017, sec. 2) of an SRResNet generator.

Phase two of SRGAN: starting from an SRResNet trained with MSE (phase one,
``--model=srresnet``), the generator G minimises the perceptual loss

    l_SR = l_VGG54 + 1e-3 * l_Gen                       (Ledig et al., eq. 3)
    l_VGG54 = mean over (H, W, C) of (phi(HR) - phi(G(LR)))^2,
        phi = VGG19 conv5_4 after ReLU (before the 5th max-pool), / 12.75
    l_Gen = -log D(G(LR))                               (eq. 6, non-saturating)

plus the entropy regularizer's lambda * L_e (Choi et al. 2020, eq. 2; lambda =
0.1 for SRGAN), and the discriminator D minimises
-log D(HR) - log(1 - D(G(LR))). The 1/12.75 scale is the original SRGAN's
rescaling of the VGG features (the "VGG54" loss), which brings the content loss
to the order of the MSE on [-1, 1] pixels.

Images cross this module's API as float32 RGB in [0, 1] (N, H, W, 3), like the
models; the discriminator works on [-1, 1] inside, VGG on Caffe-style BGR
[0, 255] minus the ImageNet mean (Keras' ``vgg19.preprocess_input``).

The library's trainer (tfsr_defense/trainer.py) calls ``make_gan_train_step``
for ``--model=srgan`` (see ``is_gan_model``) and ``load_generator_weights`` for
``--init_from``.
"""

import json
import os

import tensorflow as tf

from tfsr_defense import losses, metrics, precision

__all__ = ["GAN_MODELS", "ADVERSARIAL_WEIGHT", "VGG_FEATURE_SCALE", "VGG19_NOTOP_URL",
           "VGGWeightsError", "is_gan_model", "build_discriminator", "build_vgg54",
           "vgg_features", "content_loss", "generator_adversarial_loss", "discriminator_loss",
           "make_gan_step_fn", "make_gan_train_step", "load_generator_weights"]

# Registry names trained adversarially (phase two); their generator comes from the registry.
GAN_MODELS = ("srgan",)
# Weight of the adversarial term in the generator loss (Ledig et al., eq. 3).
ADVERSARIAL_WEIGHT = 1e-3
# VGG feature rescaling of the original SRGAN (features / 12.75).
VGG_FEATURE_SCALE = 1.0 / 12.75
# Keras' VGG19 ImageNet weights without the classifier (as in keras.applications.vgg19).
VGG19_NOTOP_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/vgg19/"
                   "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5")
VGG19_NOTOP_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
VGG19_NOTOP_MD5 = "253f8cb515780f3b799900260a226db6"
# ImageNet BGR mean of the Caffe VGG models, [0, 255] units.
_VGG_BGR_MEAN = (103.939, 116.779, 123.68)


class VGGWeightsError(RuntimeError):
  """The VGG19 ImageNet weights for the content loss are not available."""


def is_gan_model(name):
  """True for registry names trained with ``make_gan_train_step`` (phase two)."""
  return name in GAN_MODELS


def build_discriminator(filters=64, pooling="avg", input_size=None, name="srgan_discriminator"):
  """The SRGAN discriminator (Ledig et al. 2017, fig. 4).

  Eight 3x3 convs with 64, 64, 128, 128, 256, 256, 512, 512 filters and strides
  1, 2, 1, 2, 1, 2, 1, 2; BatchNormalization after all but the first (convs
  before a BN have no bias: BN's beta replaces it); LeakyReLU(0.2) after each;
  then Dense 1024, LeakyReLU(0.2), Dense 1 (a logit: sigmoid is in the losses).

  Pooling (the choice this implementation makes): ``'avg'`` (default) global
  average pooling before Dense 1024, so D takes HR patches of any size (the
  CPU recipes use small ones); ``'flatten'`` is the paper's fixed-size variant,
  flattening the (input_size / 16)^2 x 512 map (input_size = 96 in Ledig et al.).

  Args:
    filters: width of the first conv (64); later convs double it every two.
    pooling: 'avg' or 'flatten'.
    input_size: HR patch side; required for 'flatten' (and then fixed).
    name: Keras model name.

  Returns:
    tf.keras.Model: float32 [0, 1] RGB (N, H, W, 3) -> float32 logits (N, 1)
    (float32 output layer under a mixed policy).

  Raises:
    ValueError: unknown pooling, or 'flatten' without input_size.
  """
  if pooling not in ("avg", "flatten"):
    raise ValueError(f"pooling must be 'avg' or 'flatten', got {pooling!r}.")
  if pooling == "flatten" and not input_size:
    raise ValueError("pooling='flatten' needs a fixed input_size (96 in Ledig et al.).")
  size = int(input_size) if input_size else None
  inputs = tf.keras.Input((size, size, 3), name="image")
  x = tf.keras.layers.Rescaling(2.0, offset=-1.0, name="to_native")(inputs)
  x = tf.keras.layers.Conv2D(filters, 3, padding="same", name="conv0")(x)
  x = tf.keras.layers.LeakyReLU(0.2, name="lrelu0")(x)
  widths = [filters, 2 * filters, 2 * filters, 4 * filters, 4 * filters, 8 * filters, 8 * filters]
  for i, width in enumerate(widths, start=1):
    stride = 2 if i % 2 else 1
    x = tf.keras.layers.Conv2D(width, 3, strides=stride, padding="same", use_bias=False,
                               name=f"conv{i}")(x)
    x = tf.keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"bn{i}")(x)
    x = tf.keras.layers.LeakyReLU(0.2, name=f"lrelu{i}")(x)
  if pooling == "avg":
    x = tf.keras.layers.GlobalAveragePooling2D(name="pool")(x)
  else:
    x = tf.keras.layers.Flatten(name="pool")(x)
  x = tf.keras.layers.Dense(1024, name="dense")(x)
  x = tf.keras.layers.LeakyReLU(0.2, name="lrelu_dense")(x)
  outputs = tf.keras.layers.Dense(1, name="logit", dtype="float32")(x)
  return tf.keras.Model(inputs, outputs, name=name)


def _weights_error(reason):
  return VGGWeightsError(
      f"VGG19 weights for the SRGAN content loss are not available: {reason}. Either pass "
      f"the path of Keras' '{VGG19_NOTOP_FILE}' (weights=PATH; e.g. --vgg_weights=PATH), or "
      f"use weights='imagenet' where the internet is reachable once (Keras downloads "
      f"{VGG19_NOTOP_URL} into ~/.keras/models/ and reuses it offline afterwards).")


def build_vgg54(weights="imagenet"):
  """VGG19 truncated at conv5_4 (after its ReLU): the feature extractor phi of l_VGG54.

  Args:
    weights: 'imagenet' (Keras' ImageNet weights: the cached file in
      ~/.keras/models, else a download), the path of that .h5 file, or None
      (random initialisation; tests only: the loss is then not perceptual).

  Returns:
    tf.keras.Model, not trainable: Caffe-preprocessed BGR (N, H, W, 3) ->
    (N, H/16, W/16, 512) ReLU features, in the global policy's compute dtype.
    Use ``vgg_features``/``content_loss``, which preprocess [0, 1] RGB images.

  Raises:
    VGGWeightsError: 'imagenet' cannot be fetched (offline, no cached file), the
      path does not exist or is not a VGG19 (no-top) weights file.
  """
  if weights is None:
    path = None
  elif weights == "imagenet":
    try:
      path = tf.keras.utils.get_file(VGG19_NOTOP_FILE, VGG19_NOTOP_URL, cache_subdir="models",
                                     file_hash=VGG19_NOTOP_MD5)
    except Exception as e:  # get_file raises a bare Exception on network errors
      raise _weights_error(f"download failed ({type(e).__name__}: {e})") from e
  else:
    path = os.fspath(weights)
    if not tf.io.gfile.exists(path):
      raise _weights_error(f"no file {path}")
  vgg = tf.keras.applications.VGG19(include_top=False, weights=None, input_shape=(None, None, 3))
  if path is not None:
    try:
      vgg.load_weights(path)
    except (OSError, ValueError) as e:
      raise _weights_error(f"cannot load {path} into VGG19 ({type(e).__name__}: {e})") from e
  model = tf.keras.Model(vgg.input, vgg.get_layer("block5_conv4").output, name="vgg54")
  model.trainable = False
  return model


def vgg_features(vgg, images):
  """phi(images) / 12.75 (float32), images float RGB [0, 1] (N, H, W, 3).

  Returns:
    float32 (N, H/16, W/16, 512).
  """
  x = tf.cast(images, tf.float32) * 255.0
  x = x[..., ::-1] - tf.constant(_VGG_BGR_MEAN, tf.float32)  # RGB -> BGR, ImageNet mean
  features = vgg(tf.cast(x, vgg.compute_dtype), training=False)
  return tf.cast(features, tf.float32) * VGG_FEATURE_SCALE


def content_loss(vgg, sr, hr):
  """l_VGG54 per example (float32 (N,)): mean squared difference of the scaled features.

  Args:
    vgg: ``build_vgg54()`` model.
    sr, hr: float RGB [0, 1] (N, H, W, 3); no gradient flows into hr.
  """
  target = tf.stop_gradient(vgg_features(vgg, hr))
  return tf.reduce_mean(tf.square(vgg_features(vgg, sr) - target), axis=[1, 2, 3])


def generator_adversarial_loss(fake_logits):
  """-log D(G(LR)) per example (float32 (N,)) from D's logits (N, 1)."""
  return tf.nn.softplus(-tf.cast(fake_logits[:, 0], tf.float32))


def discriminator_loss(real_logits, fake_logits):
  """-log D(HR) - log(1 - D(G(LR))) per example (float32 (N,)) from logits (N, 1)."""
  real = tf.cast(real_logits[:, 0], tf.float32)
  fake = tf.cast(fake_logits[:, 0], tf.float32)
  return tf.nn.softplus(-real) + tf.nn.softplus(fake)


def make_gan_step_fn(generator, discriminator, vgg, g_optimizer, d_optimizer,
                     adversarial_weight=ADVERSARIAL_WEIGHT, global_batch_size=None):
  """One replica's GAN update, for ``strategy.run`` (not wrapped in tf.function).

  G and D are updated simultaneously from one forward pass (Ledig et al.
  alternate one D and one G update; with k = 1 the difference is that G's
  gradient uses D before, not after, this step's D update).

  Args:
    generator: SR model (float32 [0,1] in/out), e.g. ``build_model('srgan')``;
      its ``losses`` (the entropy regularizer's lambda L_e) join the G loss.
    discriminator: ``build_discriminator()`` model.
    vgg: ``build_vgg54()`` model.
    g_optimizer, d_optimizer: Keras optimizers (LossScaleOptimizer for
      mixed_float16 is handled).
    adversarial_weight: weight of l_Gen (1e-3).
    global_batch_size: examples per step over all replicas (None: this
      replica's batch x replicas in sync).

  Returns:
    fn(lr, hr) -> dict of float32 scalars, each this replica's share of the
    global mean (a SUM over replicas gives the mean): loss (G total),
    perceptual (l_SR = content + adversarial_weight * adversarial), content
    (l_VGG54), adversarial (l_Gen), reg (the generator's added losses, lambda
    L_e included), l_e_bits (L_e in bits per element, by value from the
    regularizer, 0 without one), d_loss, d_real / d_fake (mean D probability
    on HR / SR), psnr_rgb (dB, peak 1, unclipped SR clipped to [0,1]).
    lr: float32 [0,1] (n, h, w, 3); hr: (n, sh, sw, 3).
  """

  def step_fn(lr, hr):
    replicas = tf.distribute.get_replica_context().num_replicas_in_sync
    batch = global_batch_size or tf.shape(lr)[0] * replicas
    batch_f = tf.cast(batch, tf.float32)

    def average(per_example):
      return tf.nn.compute_average_loss(per_example, global_batch_size=batch)

    with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
      sr = generator(lr, training=True)
      real_logits = discriminator(hr, training=True)
      fake_logits = discriminator(sr, training=True)
      content = average(content_loss(vgg, sr, hr))
      adversarial = average(generator_adversarial_loss(fake_logits))
      perceptual = content + adversarial_weight * adversarial
      reg, bits = losses.regularization_terms(generator)
      g_loss = perceptual + reg
      d_loss = average(discriminator_loss(real_logits, fake_logits))
      if discriminator.losses:
        d_loss += tf.nn.scale_regularization_loss(
            tf.cast(tf.add_n(discriminator.losses), tf.float32))
      g_scaled = precision.scale_loss(g_optimizer, g_loss)
      d_scaled = precision.scale_loss(d_optimizer, d_loss)
    g_vars = generator.trainable_variables
    d_vars = discriminator.trainable_variables
    g_grads = precision.unscale_gradients(g_optimizer, g_tape.gradient(g_scaled, g_vars))
    d_grads = precision.unscale_gradients(d_optimizer, d_tape.gradient(d_scaled, d_vars))
    g_optimizer.apply_gradients(zip(g_grads, g_vars))
    d_optimizer.apply_gradients(zip(d_grads, d_vars))
    psnr = metrics.psnr(tf.clip_by_value(sr, 0.0, 1.0), hr, "rgb")
    return dict(
        loss=g_loss, perceptual=perceptual, content=content, adversarial=adversarial,
        reg=reg, l_e_bits=bits, d_loss=d_loss,
        d_real=tf.reduce_sum(tf.sigmoid(tf.cast(real_logits, tf.float32))) / batch_f,
        d_fake=tf.reduce_sum(tf.sigmoid(tf.cast(fake_logits, tf.float32))) / batch_f,
        psnr_rgb=tf.reduce_sum(psnr) / batch_f)

  return step_fn


def make_gan_train_step(generator, discriminator, vgg, g_optimizer, d_optimizer,
                        adversarial_weight=ADVERSARIAL_WEIGHT, global_batch_size=None,
                        strategy=None):
  """A tf.function (lr, hr) -> dict of float32 scalars running one GAN update.

  Build the models and optimizers inside ``strategy.scope()`` and feed it
  (distributed) batches; the values are global means (see ``make_gan_step_fn``
  for the keys and the arguments).

  Args:
    strategy: tf.distribute strategy (default: the current one).
  """
  step_fn = make_gan_step_fn(generator, discriminator, vgg, g_optimizer, d_optimizer,
                             adversarial_weight, global_batch_size)
  return precision.distributed_step(step_fn, strategy)


def load_generator_weights(generator, run_dir):
  """Initialise the SRGAN generator from a phase-one (SRResNet, MSE) run directory.

  Reads ``run_dir/model.weights.h5`` (written at the end of a run), else the
  latest checkpoint in ``run_dir/ckpt`` (an interrupted run). Phase one must
  have used the same scale and the same regularizer on/off (lambda > 0 or
  lambda = 0) as the generator, so that the variables match.

  Args:
    generator: model from ``build_model('srgan', ...)``.
    run_dir: the phase-one run directory (``--init_from``).

  Returns:
    The path the weights were read from.

  Raises:
    FileNotFoundError: neither file exists.
    ValueError: the run is of another network or scale, or its variables do
      not match the generator's.
  """
  config_path = os.path.join(run_dir, "config.json")
  if os.path.isfile(config_path):
    with open(config_path, encoding="utf-8") as f:
      saved = json.load(f)
    if saved.get("model") not in ("srresnet", "srgan"):
      raise ValueError(f"{run_dir} is a run of '{saved.get('model')}', not of srresnet/srgan.")
    # The generator's scale, measured: output side / input side on a small input.
    scale = int(generator(tf.zeros([1, 4, 4, 3]), training=False).shape[1]) // 4
    if "scale" in saved and int(saved["scale"]) != scale:
      raise ValueError(f"{run_dir} is a x{saved['scale']} run; the generator is x{scale}.")
  weights = os.path.join(run_dir, "model.weights.h5")
  hint = ("phase one and two need the same --scale and both lambda > 0 or both lambda = 0")
  if os.path.isfile(weights):
    try:
      generator.load_weights(weights)
    except (ValueError, KeyError) as e:
      raise ValueError(f"Cannot load {weights} into the generator ({e}); {hint}.") from e
    return weights
  ckpt = tf.train.latest_checkpoint(os.path.join(run_dir, "ckpt"))
  if ckpt:
    try:
      tf.train.Checkpoint(model=generator).restore(ckpt).expect_partial() \
          .assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
      raise ValueError(f"Cannot restore {ckpt} into the generator ({e}); {hint}.") from e
    return ckpt
  raise FileNotFoundError(
      f"No phase-one weights in {run_dir}: expected model.weights.h5 or ckpt/ "
      "(train --model=srresnet first, e.g. --flagfile=flags/srresnet_x4.cfg).")
