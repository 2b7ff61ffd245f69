"""Building blocks shared by the SR networks.

Two kinds:

* Registered, serializable Keras layers without sub-layers: ``MeanShift``,
  ``PixelShuffle``, ``GroupConv2D``.
* Block functions (``res_block``, ``srres_block``, ``channel_attention``,
  ``rcab``, ``residual_group``, ``msrb``, ``carn_res_block``,
  ``cascading_block``, ``upsampler``) that add one block's layers to a Keras
  functional graph, the way ``keras.applications`` builds ResNet blocks: they
  take and return symbolic NHWC tensors, and every convolution, activation,
  addition and concatenation of the block becomes a top-level layer of the
  model, named ``f"{name}_{part}"``. So every activation of a network is a
  layer ``models.feature_model`` reaches by name (the official FDA of
  Ganeshan & Babu, ICCV 2019, attacks all ReLU outputs; see
  ``models.activation_layer_names``). The functions compute exactly what the
  layer classes they replace computed, with the same weights per layer.

All blocks work on NHWC tensors in the model's compute dtype (float32, or
bfloat16/float16 under a mixed policy); layers take the global dtype policy
unless a docstring says otherwise.
"""

import tensorflow as tf

__all__ = ["DIV2K_RGB_MEAN", "UPSAMPLER_ACTIVATIONS", "MeanShift", "PixelShuffle",
           "GroupConv2D", "conv2d", "res_block", "srres_block", "channel_attention", "rcab",
           "residual_group", "msrb", "carn_res_block", "cascading_block", "upsampler"]

# DIV2K RGB mean in [0,1] units, as in the official EDSR/RCAN/MSRN code.
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)

# Activations ``upsampler`` can put after each pixel shuffle.
UPSAMPLER_ACTIVATIONS = (None, "relu", "prelu")


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

  Raises:
    ValueError: sign not in {-1, +1}.
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
  """Sub-pixel rearrangement (N, H, W, C r^2) -> (N, rH, rW, C) (Shi et al., CVPR 2016).

  ``tf.nn.depth_to_space``, which orders channels as (r, r, C); PyTorch's
  PixelShuffle orders them as (C, r, r). The two differ only by a fixed
  permutation of the preceding conv's filters, so the function class (and
  parameter count) is the same.

  Args:
    upscale_factor: r >= 1.

  Call:
    inputs: (N, H, W, C r^2) float; returns (N, rH, rW, C), same dtype.

  Raises:
    ValueError: r < 1.
  """

  def __init__(self, upscale_factor, **kwargs):
    super().__init__(**kwargs)
    self.upscale_factor = int(upscale_factor)
    if self.upscale_factor < 1:
      raise ValueError(f"PixelShuffle: upscale_factor must be >= 1, got {upscale_factor}.")

  def call(self, inputs):
    return tf.nn.depth_to_space(inputs, self.upscale_factor)

  def compute_output_shape(self, input_shape):
    n, h, w, c = tf.TensorShape(input_shape).as_list()
    r = self.upscale_factor
    return tf.TensorShape([n, None if h is None else h * r, None if w is None else w * r,
                           None if c is None else c // (r * r)])

  def get_config(self):
    config = super().get_config()
    config.update(upscale_factor=self.upscale_factor)
    return config


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


# ---------------------------------------------------------------------------
# Block functions: x (symbolic NHWC tensor) -> output tensor, adding named
# top-level layers to the functional graph.
# ---------------------------------------------------------------------------

def _relu(name):
  return tf.keras.layers.ReLU(name=name)


def _prelu(name):
  """Per-channel PReLU shared over H and W (PyTorch ``nn.PReLU(C)``: C weights, init 0.25)."""
  return tf.keras.layers.PReLU(alpha_initializer=tf.keras.initializers.Constant(0.25),
                               shared_axes=[1, 2], name=name)


def _batch_norm(name):
  """BatchNormalization with PyTorch's defaults (momentum 0.1 there = 0.9 here, eps 1e-5)."""
  return tf.keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name)


def _conv(filters, kernel_size, groups, name):
  """conv2d, or GroupConv2D when groups > 1 (avoids Keras' XLA grouped-conv path)."""
  if groups > 1:
    return GroupConv2D(filters, kernel_size, groups, name=name)
  return conv2d(filters, kernel_size, name=name)


def _check_groups(filters, groups, who):
  if groups < 1 or filters % groups:
    raise ValueError(f"{who}: filters {filters} must be a multiple of groups {groups} >= 1.")


def _scaled(residual, res_scale, name):
  """residual * res_scale as a layer (``{name}_scale``); unchanged when res_scale is 1."""
  if res_scale == 1.0:
    return residual
  return tf.keras.layers.Rescaling(float(res_scale), name=f"{name}_scale")(residual)


def _upscale_factors(scale, who):
  """Sub-pixel steps of an upsampler: [3] for x3, [2] * log2(s) for powers of 2."""
  scale = int(scale)
  if scale == 3:
    return [3]
  if scale >= 2 and (scale & (scale - 1)) == 0:
    return [2] * (scale.bit_length() - 1)
  raise ValueError(f"{who}: scale must be 3 or a power of 2, got {scale}.")


def res_block(x, filters=64, kernel_size=3, res_scale=1.0, name="body_0"):
  """EDSR residual block (Lim et al., CVPRW 2017): x + res_scale * conv(relu(conv(x))), no BN.

  Layers: ``{name}_conv1``, ``{name}_relu``, ``{name}_conv2``,
  ``{name}_scale`` (only if res_scale != 1), ``{name}_add``. Trainable
  parameters for C = 64, 3x3: 2 x 36,928 = 73,856.

  Args:
    x: (N, H, W, C) symbolic tensor with C = filters.
    filters: channels C in and out.
    kernel_size: conv kernel size (3 in EDSR).
    res_scale: residual scaling (1 for EDSR-baseline, 0.1 for EDSR).
    name: layer name prefix (EDSR: ``body_{i}``, the official ``body.i``).

  Returns:
    (N, H, W, C) tensor, same dtype.
  """
  r = conv2d(filters, kernel_size, name=f"{name}_conv1")(x)
  r = _relu(f"{name}_relu")(r)
  r = conv2d(filters, kernel_size, name=f"{name}_conv2")(r)
  r = _scaled(r, res_scale, name)
  return tf.keras.layers.Add(name=f"{name}_add")([x, r])


def srres_block(x, filters=64, kernel_size=3, name="body_0"):
  """SRResNet residual block (Ledig et al., CVPR 2017, fig. 4): x + BN(conv(PReLU(BN(conv(x))))).

  3x3 convs with bias, BatchNormalization (momentum 0.9 = PyTorch's 0.1,
  eps 1e-5), per-channel PReLU shared over H, W. Layers: ``{name}_conv1``,
  ``{name}_bn1``, ``{name}_prelu``, ``{name}_conv2``, ``{name}_bn2``,
  ``{name}_add``. Trainable parameters for C = 64: 2 x 36,928 (convs) +
  2 x 128 (BN gamma, beta) + 64 (PReLU) = 74,176; BN moving mean/variance
  are non-trainable. BN uses batch statistics when the model is called with
  ``training=True``.

  Args:
    x: (N, H, W, C) symbolic tensor with C = filters.
    filters: channels C in and out.
    kernel_size: conv kernel size (3).
    name: layer name prefix.

  Returns:
    (N, H, W, C) tensor, same dtype.
  """
  r = conv2d(filters, kernel_size, name=f"{name}_conv1")(x)
  r = _batch_norm(f"{name}_bn1")(r)
  r = _prelu(f"{name}_prelu")(r)
  r = conv2d(filters, kernel_size, name=f"{name}_conv2")(r)
  r = _batch_norm(f"{name}_bn2")(r)
  return tf.keras.layers.Add(name=f"{name}_add")([x, r])


def channel_attention(x, filters=64, reduction=16, name="ca"):
  """RCAN channel attention (Zhang et al., ECCV 2018, eqs. 5-7).

  x * sigmoid(W_U relu(W_D mean_{H,W}(x) + b_D) + b_U) with 1x1 convs
  C -> C/r -> C (biases included: 580 parameters for C = 64, r = 16).
  Layers: ``{name}_pool`` (the global average, float32 even under a mixed
  policy: a bf16 sum over H*W loses digits), ``{name}_down``,
  ``{name}_relu`` ((N, 1, 1, C/r)), ``{name}_up``, ``{name}_sigmoid``,
  ``{name}_mul``.

  Args:
    x: (N, H, W, C) symbolic tensor with C = filters.
    filters: channels C.
    reduction: r; C must be divisible by r.
    name: layer name prefix.

  Returns:
    (N, H, W, C) tensor, same dtype as x.

  Raises:
    ValueError: C not divisible by r.
  """
  filters, reduction = int(filters), int(reduction)
  if reduction < 1 or filters % reduction:
    raise ValueError(f"channel_attention: filters {filters} must be a multiple of "
                     f"reduction {reduction} >= 1.")
  w = tf.keras.layers.GlobalAveragePooling2D(keepdims=True, dtype="float32",
                                             name=f"{name}_pool")(x)
  w = tf.keras.layers.Conv2D(filters // reduction, 1, name=f"{name}_down")(w)
  w = _relu(f"{name}_relu")(w)
  w = tf.keras.layers.Conv2D(filters, 1, name=f"{name}_up")(w)
  w = tf.keras.layers.Activation("sigmoid", name=f"{name}_sigmoid")(w)
  return tf.keras.layers.Multiply(name=f"{name}_mul")([x, w])


def rcab(x, filters=64, kernel_size=3, reduction=16, res_scale=1.0, name="rcab"):
  """Residual channel attention block (RCAN): x + res_scale * CA(conv(relu(conv(x)))).

  Layers: ``{name}_conv1``, ``{name}_relu``, ``{name}_conv2``, the channel
  attention ``{name}_ca_*`` (its ReLU: ``{name}_ca_relu``),
  ``{name}_scale`` (only if res_scale != 1), ``{name}_add``. Trainable
  parameters for C = 64, r = 16: 2 x 36,928 + 580 = 74,436.

  Args:
    x: (N, H, W, C) symbolic tensor with C = filters.
    filters: channels C in and out.
    kernel_size: conv kernel size (3).
    reduction: channel-attention reduction r (16).
    res_scale: residual scaling (1 in RCAN).
    name: layer name prefix.

  Returns:
    (N, H, W, C) tensor, same dtype.

  Raises:
    ValueError: C not divisible by r.
  """
  r = conv2d(filters, kernel_size, name=f"{name}_conv1")(x)
  r = _relu(f"{name}_relu")(r)
  r = conv2d(filters, kernel_size, name=f"{name}_conv2")(r)
  r = channel_attention(r, filters, reduction, name=f"{name}_ca")
  r = _scaled(r, res_scale, name)
  return tf.keras.layers.Add(name=f"{name}_add")([x, r])


def residual_group(x, n_blocks=20, filters=64, kernel_size=3, reduction=16, res_scale=1.0,
                   name="group_0"):
  """RCAN residual group: x + conv(RCAB_n(... RCAB_1(x))) (short skip connection).

  Layers: the RCABs ``{name}_rcab_{b}_*`` (b = 0..n_blocks-1), ``{name}_conv``,
  ``{name}_add``. Trainable parameters for 20 RCABs, C = 64: 20 x 74,436 +
  36,928 = 1,525,648.

  Args:
    x: (N, H, W, C) symbolic tensor with C = filters.
    n_blocks: number of RCABs (20 in RCAN).
    filters, kernel_size, reduction, res_scale: as ``rcab``.
    name: layer name prefix.

  Returns:
    (N, H, W, C) tensor, same dtype.
  """
  y = x
  for b in range(int(n_blocks)):
    y = rcab(y, filters, kernel_size, reduction, res_scale, name=f"{name}_rcab_{b}")
  y = conv2d(filters, kernel_size, name=f"{name}_conv")(y)
  return tf.keras.layers.Add(name=f"{name}_add")([x, y])


def msrb(x, filters=64, name="msrb_0"):
  """Multi-scale residual block (Li et al., MSRN, ECCV 2018, eqs. 1-4).

      S1 = relu(conv3x3_{C->C}(x)),   P1 = relu(conv5x5_{C->C}(x))
      S2 = relu(conv3x3_{2C->2C}([S1, P1])),   P2 = relu(conv5x5_{2C->2C}([S1, P1]))
      out = conv1x1_{4C->C}([S2, P2]) + x

  Layers (the official code's names): ``{name}_conv3_1``, ``{name}_relu3_1``,
  ``{name}_conv5_1``, ``{name}_relu5_1``, ``{name}_concat1``,
  ``{name}_conv3_2``, ``{name}_relu3_2``, ``{name}_conv5_2``,
  ``{name}_relu5_2``, ``{name}_concat2``, ``{name}_confusion``,
  ``{name}_add``: 4 ReLU maps. Trainable parameters for C = 64: 36,928 +
  102,464 + 147,584 + 409,728 + 16,448 = 713,152.

  Args:
    x: (N, H, W, C) symbolic tensor with C = filters.
    filters: channels C in and out.
    name: layer name prefix.

  Returns:
    (N, H, W, C) tensor, same dtype.
  """
  c = int(filters)
  s1 = _relu(f"{name}_relu3_1")(conv2d(c, 3, name=f"{name}_conv3_1")(x))
  p1 = _relu(f"{name}_relu5_1")(conv2d(c, 5, name=f"{name}_conv5_1")(x))
  y = tf.keras.layers.Concatenate(name=f"{name}_concat1")([s1, p1])
  s2 = _relu(f"{name}_relu3_2")(conv2d(2 * c, 3, name=f"{name}_conv3_2")(y))
  p2 = _relu(f"{name}_relu5_2")(conv2d(2 * c, 5, name=f"{name}_conv5_2")(y))
  y = tf.keras.layers.Concatenate(name=f"{name}_concat2")([s2, p2])
  y = conv2d(c, 1, name=f"{name}_confusion")(y)
  return tf.keras.layers.Add(name=f"{name}_add")([y, x])


def _carn_res_convs(filters, groups, efficient, name):
  """The convolutions of one CARN residual block (see ``carn_res_block``)."""
  filters, groups = int(filters), int(groups)
  _check_groups(filters, groups, "carn_res_block")
  if groups > 1 and not efficient:
    raise ValueError("carn_res_block: grouped convs belong to the efficient (CARN-M) block.")
  if efficient:
    return (_conv(filters, 3, groups, f"{name}_conv1"),
            _conv(filters, 3, groups, f"{name}_conv2"),
            conv2d(filters, 1, name=f"{name}_conv3"))
  return (conv2d(filters, 3, name=f"{name}_conv1"), conv2d(filters, 3, name=f"{name}_conv2"),
          None)


def carn_res_block(x, filters=64, groups=1, efficient=False, name="res", convs=None):
  """CARN residual block (Ahn et al., ECCV 2018, fig. 3): relu(x + f(x)).

  Plain (CARN): f = conv3x3(relu(conv3x3(x))); 73,856 parameters for C = 64.
  Efficient (CARN-M): f = conv1x1(relu(gconv3x3(relu(gconv3x3(x))))) with
  grouped 3x3 convs; 22,720 parameters for C = 64, 4 groups.

  Layers: ``{name}_conv1``, ``{name}_relu1``, ``{name}_conv2``, (efficient:
  ``{name}_relu2``, ``{name}_conv3``), ``{name}_add``, ``{name}_relu``: 2 ReLU
  maps (3 efficient).

  Args:
    x: (N, H, W, C) symbolic tensor with C = filters.
    filters: channels C in and out.
    groups: groups of the 3x3 convs (efficient only; C divisible by it).
    efficient: the CARN-M block.
    name: layer name prefix.
    convs: the (conv1, conv2, conv3 or None) of an earlier block to apply
      again (CARN-M's weight sharing; used by ``cascading_block``), or None
      for new convolutions named after ``name``.

  Returns:
    (N, H, W, C) tensor, same dtype (>= 0).

  Raises:
    ValueError: groups > 1 without ``efficient``, or C not divisible by groups.
  """
  if convs is None:
    convs = _carn_res_convs(filters, groups, efficient, name)
  conv1, conv2, conv3 = convs
  y = _relu(f"{name}_relu1")(conv1(x))
  y = conv2(y)
  if conv3 is not None:
    y = conv3(_relu(f"{name}_relu2")(y))
  y = tf.keras.layers.Add(name=f"{name}_add")([x, y])
  return _relu(f"{name}_relu")(y)


def cascading_block(x, filters=64, n_units=3, groups=1, efficient=False, shared=False,
                    name="block_0"):
  """CARN local cascading block (Ahn et al. 2018, fig. 2(b), official code's ``Block``).

      c0 = o0 = x
      for i in 1..n:  b_i = R_i(o_{i-1});  c_i = [c_{i-1}, b_i];  o_i = relu(conv1x1(c_i))
      return o_n

  R_i are CARN residual blocks ``{name}_res_{i}_*``; with ``shared`` one
  block's convolutions (``{name}_res_conv*``) are applied n times (CARN-M's
  recursive weight sharing, as in the official carn_m.py; the activation
  layers stay one per position). Then ``{name}_concat_{i}``,
  ``{name}_cascade_{i}`` (1x1 conv) and ``{name}_cascade_{i}_relu``. ReLU
  maps: n x 3 (CARN) or n x 4 (efficient). Trainable parameters for C = 64,
  n = 3: 3 x 73,856 + 37,056 = 258,624 (CARN); 22,720 + 37,056 = 59,776
  (CARN-M, 4 groups, shared).

  Args:
    x: (N, H, W, C) symbolic tensor with C = filters.
    filters: channels C in and out.
    n_units: residual blocks n (3).
    groups, efficient: as ``carn_res_block``.
    shared: one residual block reused n times.
    name: layer name prefix.

  Returns:
    (N, H, W, C) tensor, same dtype (>= 0).

  Raises:
    ValueError: as ``carn_res_block``.
  """
  convs = _carn_res_convs(filters, groups, efficient, f"{name}_res") if shared else None
  cat = out = x
  for i in range(int(n_units)):
    unit = carn_res_block(out, filters, groups, efficient, name=f"{name}_res_{i}", convs=convs)
    cat = tf.keras.layers.Concatenate(name=f"{name}_concat_{i}")([cat, unit])
    out = conv2d(filters, 1, name=f"{name}_cascade_{i}")(cat)
    out = _relu(f"{name}_cascade_{i}_relu")(out)
  return out


def upsampler(x, scale, filters=64, activation=None, groups=1, name="upsampler"):
  """Sub-pixel upsampler: per step conv3x3 (C -> C r^2, ``groups``), pixel shuffle r, activation.

  x4: two x2 steps; x3: one x3 step; x2: one x2 step. The one upsampler of
  every network here:

  * EDSR, RCAN, MSRN (official ``common.Upsampler``): ``activation=None``;
    147,712 parameters per x2 step for C = 64 (x3: 332,352).
  * SRResNet / SRGAN (Ledig et al. 2017, fig. 4): ``activation='prelu'``,
    a per-channel PReLU (C weights) after each shuffle: 147,712 + 64 per x2 step.
  * CARN (Ahn et al. 2018): ``activation='relu'`` (the official code puts it
    before the shuffle; elementwise, it is the same function after it);
    CARN-M: ``groups=4``: 37,120 per x2 step, x3 83,520.

  Layers, step j = 0, 1, ...: ``{name}_conv{j}``, ``{name}_shuffle{j}``
  (PixelShuffle), ``{name}_relu{j}`` / ``{name}_prelu{j}``.

  Args:
    x: (N, H, W, C) symbolic tensor with C = filters.
    scale: 3 or a power of 2.
    filters: channels C in and out.
    activation: one of ``UPSAMPLER_ACTIVATIONS`` (None, 'relu', 'prelu').
    groups: conv groups (C divisible by it).
    name: layer name prefix.

  Returns:
    (N, scale H, scale W, C) tensor, same dtype.

  Raises:
    ValueError: a scale that is neither 3 nor a power of 2; an unknown
      activation; C not divisible by groups.
  """
  factors = _upscale_factors(scale, "upsampler")
  if activation not in UPSAMPLER_ACTIVATIONS:
    raise ValueError(f"upsampler: activation must be one of {UPSAMPLER_ACTIVATIONS}, "
                     f"got {activation!r}.")
  filters, groups = int(filters), int(groups)
  _check_groups(filters, groups, "upsampler")
  for j, r in enumerate(factors):
    x = _conv(filters * r * r, 3, groups, f"{name}_conv{j}")(x)
    x = PixelShuffle(r, name=f"{name}_shuffle{j}")(x)
    if activation == "relu":
      x = _relu(f"{name}_relu{j}")(x)
    elif activation == "prelu":
      x = _prelu(f"{name}_prelu{j}")(x)
  return x
