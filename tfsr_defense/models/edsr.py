"""EDSR-baseline (Lim et al., CVPRW 2017), after the official PyTorch code.

16 residual blocks (conv-ReLU-conv), 64 channels, res_scale 1, DIV2K mean
shift, sub-pixel upsampler; 1,517,571 parameters at x4. Works on [0,255]
pixels inside; the entropy regularizer sits on the body output after the
long skip connection, before the upsampler (Choi et al. 2020, sec. 5).
"""

import tensorflow as tf

from tfsr_defense.layers.blocks import ResBlock, Upsampler, conv2d
from tfsr_defense.models import registry

__all__ = ["build_edsr"]


def build_edsr(scale=4, regularizer=None, n_resblocks=16, n_feats=64, res_scale=1.0,
               name="edsr"):
  """EDSR functional model: float32 [0,1] (N, H, W, 3) -> float32 [0,1] (N, sH, sW, 3).

  Args:
    scale: 2, 3 or 4.
    regularizer: EntropyRegularizer kwargs, or None for the plain network.
    n_resblocks, n_feats, res_scale: 16, 64, 1.0 for EDSR-baseline
      (32, 256, 0.1 for the full EDSR).
  """
  inputs = tf.keras.Input((None, None, 3), name="lr")
  x = registry.rgb255_input(inputs)
  head = conv2d(n_feats, 3, name="head")(x)
  x = head
  for i in range(n_resblocks):
    x = ResBlock(n_feats, 3, res_scale, name=f"resblock{i}")(x)
  x = conv2d(n_feats, 3, name="body_conv")(x)
  x = tf.keras.layers.Add(name="body_skip")([x, head])
  x = registry.regularized_features(x, regularizer)
  x = Upsampler(scale, n_feats, name="upsampler")(x)
  outputs = registry.rgb255_output(x)
  return tf.keras.Model(inputs, outputs, name=name)


registry.register(registry.ModelSpec(
    name="edsr", builder=build_edsr, pixel_range=(0.0, 255.0), loss="l1",
    entropy_weight=1.0,
    description="EDSR-baseline: 16 res blocks, 64 ch (1,517,571 params at x4)"))
