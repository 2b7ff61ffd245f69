"""Entropy regularization of intermediate features (Choi et al., ACCV 2020, sec. 3).

The layer sits on a feature map Phi of shape (N, H, W, D) and, in training,

* adds uniform noise U(-delta/2, delta/2) to Phi (eq. 12, switch ``noise``);
* estimates the probability of every element of Phi with one learned
  cumulative c_d per channel (eqs. 3-10: Ballé et al. 2018's univariate
  density model, ``tfc.distributions.DeepFactorized`` with filters (3, 3, 3))
  and a bin of width delta, p_d(Phi) = c_d(Phi + delta/2) - c_d(Phi - delta/2)
  (eq. 11, switch ``estimate_entropy``);
* adds ``weight`` * L_e to the model's losses, where
  L_e = -(1 / (W H D)) sum log2 p_d(Phi) in bits per element (eq. 1),
  averaged over the batch, so that the total loss is L = L_r + lambda L_e (eq. 2).

At inference the layer is the identity: no noise, no loss.
"""

import tensorflow as tf
import tensorflow_compression as tfc

__all__ = ["EntropyRegularizer"]

_LN2 = 0.6931471805599453


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
    init_scale: initial scale of the density (tfc's default, 10).

  Call:
    inputs: float tensor (N, H, W, D), any float dtype (bfloat16/float16 under a
      mixed policy: the density runs in float32, the noise in the input dtype).
    training: bool; noise and loss only when True.

  Returns:
    Tensor of the same shape and dtype: Phi (+ noise in training).

  Metrics:
    In training the layer updates ``entropy_metric``, a Mean named
    ``entropy_bits`` (L_e in bits per element, before lambda), which
    ``model.fit`` shows; custom loops can read ``model.losses`` / weight.

  Raises:
    ValueError: on weight < 0, delta <= 0, or an input that is not rank 4
      with a known channel count.
  """

  def __init__(self, weight=1.0, delta=1.0, noise=True, estimate_entropy=True,
               num_filters=(3, 3, 3), init_scale=10.0, **kwargs):
    super().__init__(**kwargs)
    weight = float(weight)
    delta = float(delta)
    if weight < 0:
      raise ValueError(f"EntropyRegularizer: weight (lambda) must be >= 0, got {weight}.")
    if not delta > 0:
      raise ValueError(f"EntropyRegularizer: delta must be > 0, got {delta}.")
    self.weight = weight
    self.delta = delta
    self.noise = bool(noise)
    self.estimate_entropy = bool(estimate_entropy)
    self.num_filters = tuple(int(f) for f in num_filters)
    self.init_scale = float(init_scale)
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
    with tf.name_scope("density"):
      self.density = tfc.distributions.NoisyDeepFactorized(
          batch_shape=(channels,), num_filters=self.num_filters,
          init_scale=self.init_scale, dtype=tf.float32)
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

  def call(self, inputs, training=None):
    if not training:
      return inputs
    outputs = inputs
    if self.noise:
      half = tf.cast(self.delta / 2.0, inputs.dtype)
      outputs = inputs + tf.random.uniform(
          tf.shape(inputs), -half, half, dtype=inputs.dtype)
    if self.estimate_entropy:
      bits = self.entropy_loss(outputs)
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
