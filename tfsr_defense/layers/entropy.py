"""Entropy regularization of intermediate features (Choi et al., ACCV 2020, sec. 3).

The layer sits on a feature map Phi of shape (N, H, W, D) and, in training,

* adds uniform noise U(-delta/2, delta/2) to Phi (eq. 12, switch ``noise``),
  in float32 whatever the compute dtype;
* estimates the probability of every element of Phi with one learned
  cumulative c_d per channel (eqs. 3-10: Ballé et al. 2018's univariate
  density model, ``tfc.distributions.DeepFactorized`` with filters (3, 3, 3))
  and a bin of width delta, p_d(Phi) = c_d(Phi + delta/2) - c_d(Phi - delta/2)
  (eq. 11, switch ``estimate_entropy``);
* adds ``weight`` * L_e to the model's losses, where
  L_e = -(1 / (W H D)) sum log2 p_d(Phi) in bits per element (eq. 1),
  averaged over the batch, so that the total loss is L = L_r + lambda L_e (eq. 2).

At inference the layer is the identity: no noise, no loss.

L_e by value: like tensorflow-compression's entropy models, which return
``(outputs, bits)``, ``EntropyRegularizer.regularize(features, training)``
returns the outputs and L_e; the Keras ``call`` wraps it (``add_loss`` for
``fit`` and ``model.losses``) and keeps the L_e of its latest training call for
custom loops (``last_bits``, ``entropy_bits(model)``), so a loop never has to
recover L_e from the sum of the model's losses.
"""

import math

import tensorflow as tf
import tensorflow_compression as tfc

__all__ = ["EntropyRegularizer", "check_settings", "entropy_bits", "regularizers"]

_LN2 = 0.6931471805599453


def check_settings(weight, delta):
  """Validate lambda and delta of the regularizer (the one place they are checked).

  Args:
    weight: lambda of eq. 2; a finite number >= 0 (0: no entropy loss).
    delta: bin width of eq. 11; a finite number > 0 (feature units).

  Returns:
    (weight, delta) as Python floats.

  Raises:
    ValueError: naming the bad value (non-numbers, NaN, inf, lambda < 0,
      delta <= 0).
  """
  try:
    weight, delta = float(weight), float(delta)
  except (TypeError, ValueError):
    raise ValueError(f"entropy_weight (lambda) and delta must be numbers, got {weight!r}, "
                     f"{delta!r}.") from None
  if not (math.isfinite(weight) and weight >= 0):
    raise ValueError(f"entropy_weight (lambda) must be >= 0 and finite, got {weight}.")
  if not (math.isfinite(delta) and delta > 0):
    raise ValueError(f"delta must be > 0 and finite, got {delta}.")
  return weight, delta


@tf.keras.utils.register_keras_serializable(package="tfsr_defense")
class EntropyRegularizer(tf.keras.layers.Layer):
  """Entropy regularizer on NHWC features (paper eqs. 1-12).

  Args:
    weight: lambda >= 0 of eq. 2, multiplies L_e (bits per element) before it
      is added with ``add_loss``. The paper uses 1 for EDSR/RCAN/MSRN/CARN
      (L1 loss on [0,255] pixels) and 0.1 for SRResNet/SRGAN.
    delta: bin width delta > 0 of eq. 11, in the features' own units.
    noise: add U(-delta/2, delta/2) to the features in training (eq. 12).
    estimate_entropy: estimate p_d and add the entropy loss (eqs. 1, 11).
    num_filters: hidden widths of the per-channel cumulative (paper: K = 4,
      widths 1 -> 3 -> 3 -> 3 -> 1, i.e. (3, 3, 3)).
    init_scale: initial scale of the density in feature units (default 10,
      tfc's default), the same for every delta: the tfc model evaluated on
      Phi / delta is initialised with ``init_scale / delta``, so a delta sweep
      starts every run from the same density over the features (with
      ``init_scale`` passed to tfc unchanged, delta = 0.01 would start at
      scale 0.1 and delta = 10 at 100).

  Call:
    inputs: float tensor (N, H, W, D), any float dtype (bfloat16/float16 under a
      mixed policy: the noise and the density run in float32, cast in and out).
    training: bool; noise and loss only when True.

  Returns:
    Tensor of the same shape and dtype: Phi (+ noise in training).

  Losses and metrics:
    In training, ``weight * L_e`` is added with ``add_loss`` (so ``fit`` and
    ``model.losses`` see it), ``last_bits`` holds this call's L_e (bits per
    element, before lambda) and ``entropy_metric`` (a Mean named
    ``entropy_bits``) accumulates it: ``fit`` shows it, custom loops may read
    and reset it (the trainer logs it).

  Raises:
    ValueError: on a weight or delta ``check_settings`` refuses (NaN, inf,
      weight < 0, delta <= 0), or an input that is not rank 4 with a known
      channel count.
  """

  def __init__(self, weight=1.0, delta=1.0, noise=True, estimate_entropy=True,
               num_filters=(3, 3, 3), init_scale=10.0, **kwargs):
    super().__init__(**kwargs)
    self.weight, self.delta = check_settings(weight, delta)
    self.noise = bool(noise)
    self.estimate_entropy = bool(estimate_entropy)
    self.num_filters = tuple(int(f) for f in num_filters)
    self.init_scale = float(init_scale)
    if not (math.isfinite(self.init_scale) and self.init_scale > 0):
      raise ValueError(f"init_scale must be > 0 and finite, got {init_scale}.")
    self.density = None
    # A tracked metric object (not add_metric): it saves with the model in
    # every format.
    self.entropy_metric = tf.keras.metrics.Mean(name="entropy_bits")

  def build(self, input_shape):
    input_shape = tf.TensorShape(input_shape)
    if input_shape.rank != 4 or input_shape[-1] is None:
      raise ValueError(
          "EntropyRegularizer expects NHWC features (N, H, W, D) with a known "
          f"D, got shape {input_shape}.")
    channels = int(input_shape[-1])
    # One cumulative per channel: batch_shape (D,) broadcasts over N, H, W.
    # The density parameters are float32 whatever the layer's compute dtype.
    # It is evaluated on Phi / delta: scale init_scale / delta there is
    # init_scale in feature units.
    with tf.name_scope("density"):
      self.density = tfc.distributions.NoisyDeepFactorized(
          batch_shape=(channels,), num_filters=self.num_filters,
          init_scale=self.init_scale / self.delta, dtype=tf.float32)
    # Keras does not look inside a tfp distribution: hand its variables over so
    # they train, checkpoint and save with the layer.
    for v in self.density.trainable_variables:
      self._trainable_weights.append(v)
    super().build(input_shape)

  def cdf(self, x):
    """The learned cumulative c_d (eqs. 3-10) at x in units of delta.

    Args:
      x: float tensor (..., D); feature values in the features' own units.

    Returns:
      float32 tensor of x's shape, values in (0, 1): c_d(x / delta).
    """
    x = tf.cast(x, tf.float32) / self.delta
    return self.density.base.cdf(x)

  def bits(self, features):
    """Information content -log2 p_d(Phi) of every element (eq. 11), float32.

    Args:
      features: (N, H, W, D) tensor, any float dtype.

    Returns:
      float32 tensor (N, H, W, D) in bits; p_d uses the bin [Phi - delta/2,
      Phi + delta/2].
    """
    x = tf.cast(features, tf.float32) / self.delta
    # NoisyDeepFactorized(x) = c(x + 1/2) - c(x - 1/2): eq. 11 in units of delta.
    return -self.density.log_prob(x) / _LN2

  def entropy_loss(self, features):
    """L_e of eq. 1: mean bits per element over N, H, W, D (float32 scalar)."""
    return tf.reduce_mean(self.bits(features))

  def add_noise(self, features):
    """Phi + U(-delta/2, delta/2) (eq. 12), computed in float32.

    Args:
      features: (N, H, W, D) tensor, any float dtype.

    Returns:
      float32 tensor of the same shape. In float32 because bfloat16 (8-bit
      mantissa) or float16 would round most of a small delta's noise away.
    """
    features = tf.cast(features, tf.float32)
    half = self.delta / 2.0
    return features + tf.random.uniform(tf.shape(features), -half, half, dtype=tf.float32)

  def regularize(self, inputs, training=False):
    """Outputs and L_e, without side effects (tfc's ``(outputs, bits)`` convention).

    Args:
      inputs: float (N, H, W, D) features, any float dtype.
      training: bool; False returns (inputs, None).

    Returns:
      (outputs, bits): outputs of the inputs' dtype (Phi, + noise if
      ``noise``); bits the float32 scalar L_e of eq. 1 (bits per element,
      before lambda) of the (noisy) features, or None when not training or
      ``estimate_entropy`` is off.
    """
    if not training:
      return inputs, None
    features = self.add_noise(inputs) if self.noise else inputs
    bits = self.entropy_loss(features) if self.estimate_entropy else None
    return tf.cast(features, inputs.dtype), bits

  @property
  def last_bits(self):
    """L_e (float32 scalar, bits per element, before lambda) of the latest training call.

    Like Keras' ``layer.losses``: the tensor of this thread's most recent
    call (read it in the same step or tf.function as the call); None before a
    training call, after an inference call, or with ``estimate_entropy`` off.
    """
    return getattr(self._thread_local, "entropy_bits", None)

  def call(self, inputs, training=None):
    outputs, bits = self.regularize(inputs, bool(training))
    self._thread_local.entropy_bits = bits
    if bits is not None:
      self.entropy_metric.update_state(bits)
      if self.weight > 0:
        self.add_loss(self.weight * bits)
    return outputs

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    config = super().get_config()
    config.update(
        weight=self.weight, delta=self.delta, noise=self.noise,
        estimate_entropy=self.estimate_entropy,
        num_filters=list(self.num_filters), init_scale=self.init_scale)
    return config


def regularizers(model):
  """The EntropyRegularizer layers of a Keras model (nested models included), in order."""
  return [m for m in model.submodules if isinstance(m, EntropyRegularizer)]


def entropy_bits(model):
  """L_e of the model's latest training call: float32 scalar, bits per element.

  The sum over the model's EntropyRegularizer layers of ``last_bits`` (the
  registry's networks have one layer, so this is L_e of eq. 1), before lambda,
  whatever other losses the model adds. 0.0 for a model without a layer, or
  whose layers estimated nothing in that call (inference, ``estimate_entropy``
  off). Read it after ``model(x, training=True)`` in the same step.
  """
  values = [layer.last_bits for layer in regularizers(model) if layer.last_bits is not None]
  return tf.add_n(values) if values else tf.constant(0.0, tf.float32)
