"""Building blocks shared by the SR networks (registered, serializable Keras layers).

All blocks work on NHWC tensors in the model's compute dtype (float32, or
bfloat16/float16 under a mixed policy).
"""

import tensorflow as tf

__all__ = ["MeanShift", "PixelShuffle", "ResBlock", "Upsampler", "conv2d"]

# DIV2K RGB mean in [0,1] units, as in the official EDSR/RCAN/MSRN code.
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


def conv2d(filters, kernel_size=3, name=None, **kwargs):
  """'same'-padded Conv2D with bias, as in the PyTorch reference code."""
  return tf.keras.layers.Conv2D(filters, kernel_size, padding="same", name=name, **kwargs)


@tf.keras.utils.register_keras_serializable(package="tfsr_defense")
class MeanShift(tf.keras.layers.Layer):
  """Adds (sign=+1) or subtracts (sign=-1) ``rgb_range * rgb_mean`` per channel.

  No trainable weights (the official code uses a frozen 1x1 conv; it is not
  counted in the reference parameter numbers).

  Args:
    rgb_mean: 3 floats in [0,1] units.
    rgb_range: pixel peak of the native range (255 for EDSR).
    sign: +1 or -1.
  """

  def __init__(self, rgb_mean=DIV2K_RGB_MEAN, rgb_range=255.0, sign=-1, **kwargs):
    super().__init__(**kwargs)
    if sign not in (-1, 1):
      raise ValueError(f"MeanShift: sign must be -1 or +1, got {sign}.")
    self.rgb_mean = tuple(float(m) for m in rgb_mean)
    self.rgb_range = float(rgb_range)
    self.sign = int(sign)

  def call(self, inputs):
    shift = tf.constant(self.rgb_mean, dtype=tf.float32) * (self.sign * self.rgb_range)
    return inputs + tf.cast(shift, inputs.dtype)

  def get_config(self):
    config = super().get_config()
    config.update(rgb_mean=list(self.rgb_mean), rgb_range=self.rgb_range, sign=self.sign)
    return config


@tf.keras.utils.register_keras_serializable(package="tfsr_defense")
class PixelShuffle(tf.keras.layers.Layer):
  """Sub-pixel rearrangement (N, H, W, C*r*r) -> (N, rH, rW, C) (Shi et al. 2016).

  ``tf.nn.depth_to_space`` orders channels as (r, r, C); PyTorch's
  PixelShuffle as (C, r, r). The two differ only by a fixed permutation of the
  preceding conv's filters, so the function class (and parameter count) is
  the same.
  """

  def __init__(self, upscale_factor, **kwargs):
    super().__init__(**kwargs)
    self.upscale_factor = int(upscale_factor)

  def call(self, inputs):
    return tf.nn.depth_to_space(inputs, self.upscale_factor)

  def get_config(self):
    config = super().get_config()
    config.update(upscale_factor=self.upscale_factor)
    return config


@tf.keras.utils.register_keras_serializable(package="tfsr_defense")
class ResBlock(tf.keras.layers.Layer):
  """EDSR residual block: x + res_scale * conv(relu(conv(x))), 3x3, no BN.

  Args:
    filters: channels in and out.
    kernel_size: conv kernel size (3 in EDSR).
    res_scale: residual scaling (1 for EDSR-baseline, 0.1 for EDSR).
  """

  def __init__(self, filters=64, kernel_size=3, res_scale=1.0, **kwargs):
    super().__init__(**kwargs)
    self.filters = int(filters)
    self.kernel_size = int(kernel_size)
    self.res_scale = float(res_scale)
    self.conv1 = conv2d(self.filters, self.kernel_size, name="conv1")
    self.conv2 = conv2d(self.filters, self.kernel_size, name="conv2")

  def call(self, inputs):
    residual = self.conv2(tf.nn.relu(self.conv1(inputs)))
    if self.res_scale != 1.0:
      residual = residual * tf.cast(self.res_scale, residual.dtype)
    return inputs + residual

  def get_config(self):
    config = super().get_config()
    config.update(filters=self.filters, kernel_size=self.kernel_size, res_scale=self.res_scale)
    return config


@tf.keras.utils.register_keras_serializable(package="tfsr_defense")
class Upsampler(tf.keras.layers.Layer):
  """EDSR-style sub-pixel upsampler: log2(s) x (conv 4C, shuffle 2) or conv 9C, shuffle 3.

  Args:
    scale: 2, 3, 4 (or any power of 2).
    filters: channels C in and out.
    activation: optional Keras activation after each shuffle (None in EDSR).

  Raises:
    ValueError: for a scale that is neither 3 nor a power of 2.
  """

  def __init__(self, scale, filters=64, activation=None, **kwargs):
    super().__init__(**kwargs)
    self.scale = int(scale)
    self.filters = int(filters)
    self.activation = None if activation is None else tf.keras.activations.get(activation)
    if self.scale == 3:
      factors = [3]
    elif self.scale >= 2 and (self.scale & (self.scale - 1)) == 0:
      factors = [2] * (self.scale.bit_length() - 1)
    else:
      raise ValueError(f"Upsampler: scale must be 3 or a power of 2, got {scale}.")
    self.convs = [conv2d(self.filters * r * r, 3, name=f"conv{i}") for i, r in enumerate(factors)]
    self.factors = factors

  def call(self, inputs):
    x = inputs
    for conv, r in zip(self.convs, self.factors):
      x = tf.nn.depth_to_space(conv(x), r)
      if self.activation is not None:
        x = self.activation(x)
    return x

  def get_config(self):
    config = super().get_config()
    config.update(scale=self.scale, filters=self.filters,
                  activation=tf.keras.activations.serialize(self.activation)
                  if self.activation is not None else None)
    return config
