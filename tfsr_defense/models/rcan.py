"""RCAN (Zhang et al., "Image Super-Resolution Using Very Deep Residual Channel
Attention Networks", ECCV 2018), after the official PyTorch code.

10 residual groups x 20 residual channel attention blocks (RCAB), 64 channels,
channel attention 64 -> 4 -> 64 (reduction 16), a conv and the long skip
connection after the groups, DIV2K mean shift, EDSR's sub-pixel upsampler
(x4: 2 x [conv 64->256, shuffle 2]) and a 3x3 conv to RGB: 15,592,355
parameters at x4. Works on [0, 255] pixels inside (L1, lambda = 1 in Choi et
al. 2020); by default the regularizer sits on the body output after the long
skip; ``entropy_layer='first'`` puts it on the head conv's output.

Layer names: ``head``; RCAB b of group g: ``group_{g}_rcab_{b}_conv1``,
``..._relu``, ``..._conv2``, channel attention ``..._ca_pool``,
``..._ca_down``, ``..._ca_relu``, ``..._ca_up``, ``..._ca_sigmoid``,
``..._ca_mul``, then ``..._add``; ``group_{g}_conv``, ``group_{g}_add``;
``body_conv``, ``body_skip``, ``features``, ``upsampler_conv{j}``,
``upsampler_shuffle{j}``, ``tail``. ReLU maps: 2 per RCAB, 400 in RCAN: the
body ReLU (N, H, W, 64) and the channel attention's (N, 1, 1, 4).
"""

import tensorflow as tf

from tfsr_defense.layers.blocks import conv2d, residual_group, upsampler
from tfsr_defense.models import registry

__all__ = ["build_rcan"]


def build_rcan(scale=4, regularizer=None, n_groups=10, n_blocks=20, n_feats=64, reduction=16,
               res_scale=1.0, entropy_layer="pre_upsampler", name="rcan"):
  """RCAN functional model: float32 [0,1] (N, H, W, 3) -> float32 [0,1] (N, sH, sW, 3).

  Args:
    scale: 2, 3 or 4.
    regularizer: EntropyRegularizer kwargs, or None for the plain network.
    n_groups, n_blocks, n_feats, reduction, res_scale: 10, 20, 64, 16, 1.0 in
      RCAN (smaller values for tests).
    entropy_layer: 'pre_upsampler' (body + long skip) or 'first' (head conv
      output; the groups and the long skip read the regularized map); both
      (N, H, W, n_feats).
    name: Keras model name.

  Returns:
    tf.keras.Model; output not clipped; tail and output float32 under a mixed policy.

  Raises:
    ValueError: bad scale; n_feats not divisible by reduction; unknown entropy_layer.
  """
  first = registry.check_entropy_layer(entropy_layer) == "first"
  inputs = tf.keras.Input((None, None, 3), name="lr")
  x = registry.rgb255_input(inputs)
  head = conv2d(n_feats, 3, name="head")(x)
  if first:
    head = registry.regularized_features(head, regularizer)
  x = head
  for g in range(n_groups):
    x = residual_group(x, n_blocks, n_feats, 3, reduction, res_scale, name=f"group_{g}")
  x = conv2d(n_feats, 3, name="body_conv")(x)
  x = tf.keras.layers.Add(name="body_skip")([x, head])
  if not first:
    x = registry.regularized_features(x, regularizer)
  x = upsampler(x, scale, n_feats)
  outputs = registry.rgb255_output(x)
  return tf.keras.Model(inputs, outputs, name=name)


registry.register(registry.ModelSpec(
    name="rcan", builder=build_rcan, pixel_range=(0.0, 255.0), loss="l1", entropy_weight=1.0,
    description="RCAN: 10 groups x 20 RCAB, 64 ch (15,592,355 params at x4)"))
