"""Building blocks shared by the SR networks (registered, serializable Keras layers).

All blocks work on NHWC tensors in the model's compute dtype (float32, or
bfloat16/float16 under a mixed policy).
"""

import tensorflow as tf

__all__ = ["MeanShift", "PixelShuffle", "ResBlock", "Upsampler", "conv2d",
           "SRResBlock", "PReLUUpsampler", "ChannelAttention", "RCAB", "ResidualGroup",
           "MSRB", "GroupConv2D", "CARNResBlock", "CascadingBlock", "CARNUpsampler"]

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


# ---------------------------------------------------------------------------
# Blocks of SRResNet, RCAN, MSRN and CARN (issue 4).
#
# Sub-layers are created with the block's own dtype policy, so a block built
# with dtype="float32" under a mixed policy (or reloaded under another global
# policy) computes in one dtype throughout.
# ---------------------------------------------------------------------------

def _prelu(name, dtype=None):
  """Per-channel PReLU shared over H and W (PyTorch ``nn.PReLU(C)``: C weights, init 0.25)."""
  return tf.keras.layers.PReLU(alpha_initializer=tf.keras.initializers.Constant(0.25),
                               shared_axes=[1, 2], name=name, dtype=dtype)


def _batch_norm(name, dtype=None):
  """BatchNormalization with PyTorch's defaults (momentum 0.1 there = 0.9 here, eps 1e-5)."""
  return tf.keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name, dtype=dtype)


def _upscale_factors(scale, who):
  """Sub-pixel steps of an upsampler: [3] for x3, [2] * log2(s) for powers of 2."""
  scale = int(scale)
  if scale == 3:
    return [3]
  if scale >= 2 and (scale & (scale - 1)) == 0:
    return [2] * (scale.bit_length() - 1)
  raise ValueError(f"{who}: scale must be 3 or a power of 2, got {scale}.")


@tf.keras.utils.register_keras_serializable(package="tfsr_defense")
class GroupConv2D(tf.keras.layers.Layer):
  """'same'-padded, stride-1 grouped 2-D convolution computed as ``groups`` dense convs.

  The same function, weight shapes and layout as
  ``tf.keras.layers.Conv2D(filters, kernel_size, padding="same", groups=groups)``
  (kernel (k, k, C_in/g, filters), bias (filters,); group i maps input channels
  [i C_in/g, (i+1) C_in/g) to output channels [i filters/g, (i+1) filters/g)),
  so weights move between the two unchanged. Keras 2.14 runs every grouped
  Conv2D through an XLA-compiled function (one compilation per input shape);
  on this project's CPU its backward pass measured ~10x slower than this
  split / conv / concat form (64 -> 256 channels, 4 groups, 4x24x24 input:
  0.39 s vs 0.04 s float32).

  Args:
    filters: output channels (divisible by groups).
    kernel_size: odd int k.
    groups: g; input channels must be divisible by g.
    activation: Keras activation or None.
    use_bias: add a bias.

  Call:
    inputs: (N, H, W, C_in) float; returns (N, H, W, filters), same dtype.

  Raises:
    ValueError: filters or C_in not divisible by groups.
  """

  def __init__(self, filters, kernel_size=3, groups=1, activation=None, use_bias=True, **kwargs):
    super().__init__(**kwargs)
    self.filters = int(filters)
    self.kernel_size = int(kernel_size)
    self.groups = int(groups)
    self.activation = tf.keras.activations.get(activation)
    self.use_bias = bool(use_bias)
    if self.groups < 1 or self.filters % self.groups:
      raise ValueError(f"GroupConv2D: filters {filters} must be a multiple of groups {groups}.")

  def build(self, input_shape):
    channels = tf.TensorShape(input_shape)[-1]
    if channels is None or channels % self.groups:
      raise ValueError(f"GroupConv2D: input channels {channels} must be a known multiple "
                       f"of groups {self.groups}.")
    k = self.kernel_size
    self.kernel = self.add_weight(
        "kernel", shape=(k, k, channels // self.groups, self.filters),
        initializer="glorot_uniform", trainable=True)
    self.bias = (self.add_weight("bias", shape=(self.filters,), initializer="zeros",
                                 trainable=True) if self.use_bias else None)
    super().build(input_shape)

  def call(self, inputs):
    kernel = tf.cast(self.kernel, inputs.dtype)
    if self.groups == 1:
      x = tf.nn.conv2d(inputs, kernel, 1, "SAME")
    else:
      x = tf.concat([tf.nn.conv2d(part, k, 1, "SAME") for part, k in
                     zip(tf.split(inputs, self.groups, axis=-1),
                         tf.split(kernel, self.groups, axis=-1))], axis=-1)
    if self.bias is not None:
      x = tf.nn.bias_add(x, tf.cast(self.bias, x.dtype))
    return self.activation(x)

  def compute_output_shape(self, input_shape):
    return tf.TensorShape(input_shape)[:-1].concatenate([self.filters])

  def get_config(self):
    config = super().get_config()
    config.update(filters=self.filters, kernel_size=self.kernel_size, groups=self.groups,
                  activation=tf.keras.activations.serialize(self.activation),
                  use_bias=self.use_bias)
    return config


def _conv(filters, kernel_size, groups, name, dtype, activation=None):
  """conv2d, or GroupConv2D when groups > 1 (avoids Keras' XLA grouped-conv path)."""
  if groups > 1:
    return GroupConv2D(filters, kernel_size, groups, activation=activation, name=name,
                       dtype=dtype)
  return conv2d(filters, kernel_size, name=name, activation=activation, dtype=dtype)


@tf.keras.utils.register_keras_serializable(package="tfsr_defense")
class SRResBlock(tf.keras.layers.Layer):
  """SRResNet residual block (Ledig et al., CVPR 2017, fig. 4): x + BN(conv(PReLU(BN(conv(x))))).

  3x3 convs with bias, BatchNormalization (momentum 0.9 = PyTorch's 0.1,
  eps 1e-5), per-channel PReLU shared over H, W. Trainable parameters for
  C = 64: 2 x 36,928 (convs) + 2 x 128 (BN gamma, beta) + 64 (PReLU) = 74,176;
  BN moving mean/variance are non-trainable.

  Args:
    filters: channels C in and out.
    kernel_size: conv kernel size (3).

  Call:
    inputs: (N, H, W, C) float (compute dtype); training: bool (BN batch statistics).

  Returns:
    (N, H, W, C), same dtype.
  """

  def __init__(self, filters=64, kernel_size=3, **kwargs):
    super().__init__(**kwargs)
    self.filters = int(filters)
    self.kernel_size = int(kernel_size)
    dtype = self.dtype_policy
    self.conv1 = conv2d(self.filters, self.kernel_size, name="conv1", dtype=dtype)
    self.bn1 = _batch_norm("bn1", dtype)
    self.prelu = _prelu("prelu", dtype)
    self.conv2 = conv2d(self.filters, self.kernel_size, name="conv2", dtype=dtype)
    self.bn2 = _batch_norm("bn2", dtype)

  def call(self, inputs, training=None):
    x = self.prelu(self.bn1(self.conv1(inputs), training=training))
    x = self.bn2(self.conv2(x), training=training)
    return inputs + x

  def get_config(self):
    config = super().get_config()
    config.update(filters=self.filters, kernel_size=self.kernel_size)
    return config


@tf.keras.utils.register_keras_serializable(package="tfsr_defense")
class PReLUUpsampler(tf.keras.layers.Layer):
  """SRResNet sub-pixel upsampler: per step conv 3x3 (C -> C r^2), pixel shuffle r, PReLU.

  x4: two x2 steps; x3: one x3 step; x2: one x2 step (Ledig et al. 2017, fig. 4).
  Each PReLU has C weights (per channel, after the shuffle). Trainable
  parameters for C = 64, x2 steps: 147,712 + 64 per step.

  Args:
    scale: 3 or a power of 2.
    filters: channels C in and out.

  Call:
    inputs: (N, H, W, C) float; returns (N, sH, sW, C), same dtype.

  Raises:
    ValueError: a scale that is neither 3 nor a power of 2.
  """

  def __init__(self, scale, filters=64, **kwargs):
    super().__init__(**kwargs)
    self.scale = int(scale)
    self.filters = int(filters)
    self.factors = _upscale_factors(self.scale, "PReLUUpsampler")
    dtype = self.dtype_policy
    self.convs = [conv2d(self.filters * r * r, 3, name=f"conv{i}", dtype=dtype)
                  for i, r in enumerate(self.factors)]
    self.prelus = [_prelu(f"prelu{i}", dtype) for i in range(len(self.factors))]

  def call(self, inputs):
    x = inputs
    for conv, prelu, r in zip(self.convs, self.prelus, self.factors):
      x = prelu(tf.nn.depth_to_space(conv(x), r))
    return x

  def get_config(self):
    config = super().get_config()
    config.update(scale=self.scale, filters=self.filters)
    return config


@tf.keras.utils.register_keras_serializable(package="tfsr_defense")
class ChannelAttention(tf.keras.layers.Layer):
  """RCAN channel attention (Zhang et al., ECCV 2018, eqs. 5-7).

  x * sigmoid(W_U relu(W_D mean_{H,W}(x) + b_D) + b_U) with 1x1 convs
  C -> C/r -> C (biases included: 580 parameters for C = 64, r = 16). The
  global average is taken in float32 (a bf16 sum over H*W loses digits).

  Args:
    filters: channels C.
    reduction: r; C must be divisible by r.

  Call:
    inputs: (N, H, W, C) float; returns the same shape and dtype.

  Raises:
    ValueError: C not divisible by r.
  """

  def __init__(self, filters=64, reduction=16, **kwargs):
    super().__init__(**kwargs)
    self.filters = int(filters)
    self.reduction = int(reduction)
    if self.reduction < 1 or self.filters % self.reduction:
      raise ValueError(f"ChannelAttention: filters {filters} must be a multiple of "
                       f"reduction {reduction} >= 1.")
    dtype = self.dtype_policy
    self.down = tf.keras.layers.Conv2D(self.filters // self.reduction, 1, activation="relu",
                                       name="down", dtype=dtype)
    self.up = tf.keras.layers.Conv2D(self.filters, 1, activation="sigmoid", name="up",
                                     dtype=dtype)

  def call(self, inputs):
    pooled = tf.reduce_mean(tf.cast(inputs, tf.float32), axis=[1, 2], keepdims=True)
    weights = self.up(self.down(tf.cast(pooled, inputs.dtype)))
    return inputs * tf.cast(weights, inputs.dtype)

  def get_config(self):
    config = super().get_config()
    config.update(filters=self.filters, reduction=self.reduction)
    return config


@tf.keras.utils.register_keras_serializable(package="tfsr_defense")
class RCAB(tf.keras.layers.Layer):
  """Residual channel attention block (RCAN): x + res_scale * CA(conv(relu(conv(x)))).

  Trainable parameters for C = 64, r = 16: 2 x 36,928 + 580 = 74,436.

  Args:
    filters: channels C in and out.
    kernel_size: conv kernel size (3).
    reduction: channel-attention reduction r (16).
    res_scale: residual scaling (1 in RCAN).

  Call:
    inputs: (N, H, W, C) float; returns the same shape and dtype.
  """

  def __init__(self, filters=64, kernel_size=3, reduction=16, res_scale=1.0, **kwargs):
    super().__init__(**kwargs)
    self.filters = int(filters)
    self.kernel_size = int(kernel_size)
    self.reduction = int(reduction)
    self.res_scale = float(res_scale)
    dtype = self.dtype_policy
    self.conv1 = conv2d(self.filters, self.kernel_size, name="conv1", dtype=dtype)
    self.conv2 = conv2d(self.filters, self.kernel_size, name="conv2", dtype=dtype)
    self.attention = ChannelAttention(self.filters, self.reduction, name="attention",
                                      dtype=dtype)

  def call(self, inputs):
    residual = self.attention(self.conv2(tf.nn.relu(self.conv1(inputs))))
    if self.res_scale != 1.0:
      residual = residual * tf.cast(self.res_scale, residual.dtype)
    return inputs + residual

  def get_config(self):
    config = super().get_config()
    config.update(filters=self.filters, kernel_size=self.kernel_size,
                  reduction=self.reduction, res_scale=self.res_scale)
    return config


@tf.keras.utils.register_keras_serializable(package="tfsr_defense")
class ResidualGroup(tf.keras.layers.Layer):
  """RCAN residual group: x + conv(RCAB_n(... RCAB_1(x))) (short skip connection).

  Trainable parameters for 20 RCABs, C = 64: 20 x 74,436 + 36,928 = 1,525,648.

  Args:
    n_blocks: number of RCABs (20 in RCAN).
    filters, kernel_size, reduction, res_scale: as RCAB.

  Call:
    inputs: (N, H, W, C) float; returns the same shape and dtype.
  """

  def __init__(self, n_blocks=20, filters=64, kernel_size=3, reduction=16, res_scale=1.0,
               **kwargs):
    super().__init__(**kwargs)
    self.n_blocks = int(n_blocks)
    self.filters = int(filters)
    self.kernel_size = int(kernel_size)
    self.reduction = int(reduction)
    self.res_scale = float(res_scale)
    dtype = self.dtype_policy
    self.blocks = [RCAB(self.filters, self.kernel_size, self.reduction, self.res_scale,
                        name=f"rcab{i}", dtype=dtype) for i in range(self.n_blocks)]
    self.conv = conv2d(self.filters, self.kernel_size, name="conv", dtype=dtype)

  def call(self, inputs):
    x = inputs
    for block in self.blocks:
      x = block(x)
    return inputs + self.conv(x)

  def get_config(self):
    config = super().get_config()
    config.update(n_blocks=self.n_blocks, filters=self.filters, kernel_size=self.kernel_size,
                  reduction=self.reduction, res_scale=self.res_scale)
    return config


@tf.keras.utils.register_keras_serializable(package="tfsr_defense")
class MSRB(tf.keras.layers.Layer):
  """Multi-scale residual block (Li et al., MSRN, ECCV 2018, eqs. 1-4).

      S1 = relu(conv3x3_{C->C}(x)),   P1 = relu(conv5x5_{C->C}(x))
      S2 = relu(conv3x3_{2C->2C}([S1, P1])),   P2 = relu(conv5x5_{2C->2C}([S1, P1]))
      out = conv1x1_{4C->C}([S2, P2]) + x

  Trainable parameters for C = 64: 36,928 + 102,464 + 147,584 + 409,728 +
  16,448 = 713,152.

  Args:
    filters: channels C in and out.

  Call:
    inputs: (N, H, W, C) float; returns the same shape and dtype.
  """

  def __init__(self, filters=64, **kwargs):
    super().__init__(**kwargs)
    self.filters = int(filters)
    c = self.filters
    dtype = self.dtype_policy
    self.conv3_1 = conv2d(c, 3, name="conv3_1", activation="relu", dtype=dtype)
    self.conv5_1 = conv2d(c, 5, name="conv5_1", activation="relu", dtype=dtype)
    self.conv3_2 = conv2d(2 * c, 3, name="conv3_2", activation="relu", dtype=dtype)
    self.conv5_2 = conv2d(2 * c, 5, name="conv5_2", activation="relu", dtype=dtype)
    self.confusion = conv2d(c, 1, name="confusion", dtype=dtype)

  def call(self, inputs):
    x = tf.concat([self.conv3_1(inputs), self.conv5_1(inputs)], axis=-1)
    x = tf.concat([self.conv3_2(x), self.conv5_2(x)], axis=-1)
    return self.confusion(x) + inputs

  def get_config(self):
    config = super().get_config()
    config.update(filters=self.filters)
    return config


@tf.keras.utils.register_keras_serializable(package="tfsr_defense")
class CARNResBlock(tf.keras.layers.Layer):
  """CARN residual block (Ahn et al., ECCV 2018, fig. 3): relu(x + f(x)).

  Plain (CARN): f = conv3x3(relu(conv3x3(x))); 73,856 parameters for C = 64.
  Efficient (CARN-M): f = conv1x1(relu(gconv3x3(relu(gconv3x3(x))))) with
  grouped 3x3 convs; 22,720 parameters for C = 64, 4 groups.

  Args:
    filters: channels C in and out.
    groups: groups of the 3x3 convs (efficient only; C divisible by it).
    efficient: the CARN-M block.

  Call:
    inputs: (N, H, W, C) float; returns the same shape and dtype (>= 0).

  Raises:
    ValueError: groups > 1 without ``efficient``, or C not divisible by groups.
  """

  def __init__(self, filters=64, groups=1, efficient=False, **kwargs):
    super().__init__(**kwargs)
    self.filters = int(filters)
    self.groups = int(groups)
    self.efficient = bool(efficient)
    if self.groups < 1 or self.filters % self.groups:
      raise ValueError(f"CARNResBlock: filters {filters} must be a multiple of groups {groups}.")
    if self.groups > 1 and not self.efficient:
      raise ValueError("CARNResBlock: grouped convs belong to the efficient (CARN-M) block.")
    dtype = self.dtype_policy
    self.conv1 = _conv(self.filters, 3, self.groups, "conv1", dtype, activation="relu")
    if self.efficient:
      self.conv2 = _conv(self.filters, 3, self.groups, "conv2", dtype, activation="relu")
      self.conv3 = conv2d(self.filters, 1, name="conv3", dtype=dtype)
    else:
      self.conv2 = conv2d(self.filters, 3, name="conv2", dtype=dtype)
      self.conv3 = None

  def call(self, inputs):
    x = self.conv2(self.conv1(inputs))
    if self.conv3 is not None:
      x = self.conv3(x)
    return tf.nn.relu(inputs + x)

  def get_config(self):
    config = super().get_config()
    config.update(filters=self.filters, groups=self.groups, efficient=self.efficient)
    return config


@tf.keras.utils.register_keras_serializable(package="tfsr_defense")
class CascadingBlock(tf.keras.layers.Layer):
  """CARN local cascading block (Ahn et al. 2018, fig. 2(b), official code's ``Block``).

      c0 = o0 = x
      for i in 1..n:  b_i = R_i(o_{i-1});  c_i = [c_{i-1}, b_i];  o_i = relu(conv1x1(c_i))
      return o_n

  R_i are CARNResBlocks; with ``shared`` one block is applied n times (CARN-M's
  recursive weight sharing, as in the official carn_m.py). Trainable parameters
  for C = 64, n = 3: 3 x 73,856 + 37,056 = 258,624 (CARN); 22,720 + 37,056 =
  59,776 (CARN-M, 4 groups, shared).

  Args:
    filters: channels C in and out.
    n_units: residual blocks n (3).
    groups, efficient: as CARNResBlock.
    shared: one residual block reused n times.

  Call:
    inputs: (N, H, W, C) float; returns the same shape and dtype (>= 0).
  """

  def __init__(self, filters=64, n_units=3, groups=1, efficient=False, shared=False, **kwargs):
    super().__init__(**kwargs)
    self.filters = int(filters)
    self.n_units = int(n_units)
    self.groups = int(groups)
    self.efficient = bool(efficient)
    self.shared = bool(shared)
    dtype = self.dtype_policy
    n_blocks = 1 if self.shared else self.n_units
    self.units = [CARNResBlock(self.filters, self.groups, self.efficient, name=f"res{i}",
                               dtype=dtype) for i in range(n_blocks)]
    self.cascades = [conv2d(self.filters, 1, name=f"cascade{i}", activation="relu", dtype=dtype)
                     for i in range(self.n_units)]

  def call(self, inputs):
    cat = out = inputs
    for i, cascade in enumerate(self.cascades):
      unit = self.units[0 if self.shared else i]
      cat = tf.concat([cat, unit(out)], axis=-1)
      out = cascade(cat)
    return out

  def get_config(self):
    config = super().get_config()
    config.update(filters=self.filters, n_units=self.n_units, groups=self.groups,
                  efficient=self.efficient, shared=self.shared)
    return config


@tf.keras.utils.register_keras_serializable(package="tfsr_defense")
class CARNUpsampler(tf.keras.layers.Layer):
  """CARN sub-pixel upsampler: per step relu(conv3x3 C -> C r^2, ``groups``), pixel shuffle r.

  (ReLU before or after the shuffle is the same function.) Trainable parameters
  for C = 64: x2 147,712, x3 332,352, x4 295,424; with 4 groups (CARN-M) x2
  37,120, x3 83,520, x4 74,240.

  Args:
    scale: 3 or a power of 2.
    filters: channels C in and out.
    groups: conv groups (1 for CARN, 4 for CARN-M).

  Call:
    inputs: (N, H, W, C) float; returns (N, sH, sW, C), same dtype.

  Raises:
    ValueError: a scale that is neither 3 nor a power of 2; C not divisible by groups.
  """

  def __init__(self, scale, filters=64, groups=1, **kwargs):
    super().__init__(**kwargs)
    self.scale = int(scale)
    self.filters = int(filters)
    self.groups = int(groups)
    if self.groups < 1 or self.filters % self.groups:
      raise ValueError(f"CARNUpsampler: filters {filters} must be a multiple of groups {groups}.")
    self.factors = _upscale_factors(self.scale, "CARNUpsampler")
    dtype = self.dtype_policy
    self.convs = [_conv(self.filters * r * r, 3, self.groups, f"conv{i}", dtype,
                        activation="relu") for i, r in enumerate(self.factors)]

  def call(self, inputs):
    x = inputs
    for conv, r in zip(self.convs, self.factors):
      x = tf.nn.depth_to_space(conv(x), r)
    return x

  def get_config(self):
    config = super().get_config()
    config.update(scale=self.scale, filters=self.filters, groups=self.groups)
    return config
