"""EDSR-baseline (Lim et al., CVPRW 2017), after the official PyTorch code.

16 residual blocks (conv-ReLU-conv), 64 channels, res_scale 1, DIV2K mean
shift, sub-pixel upsampler; 1,517,571 parameters at x4. Works on [0,255]
pixels inside; by default the entropy regularizer sits on the body output
after the long skip connection, before the upsampler (Choi et al. 2020,
sec. 5); ``entropy_layer='first'`` puts it on the head conv's output (sec. 5.4).

Layer names (every activation is a top-level layer, see
``models.activation_layer_names``): ``to_native``, ``sub_mean``, ``head``;
residual block i (the official ``body.i``): ``body_{i}_conv1``,
``body_{i}_relu``, ``body_{i}_conv2``, ``body_{i}_scale`` (res_scale != 1
only), ``body_{i}_add``; ``body_conv``, ``body_skip``, the regularized map
``features`` (``models.FEATURES``), ``upsampler_conv{j}``,
``upsampler_shuffle{j}``, ``tail``, ``add_mean``, ``sr``. EDSR-baseline has
16 ReLU maps (``body_0_relu`` ... ``body_15_relu``), each (N, H, W, 64).
"""

import tensorflow as tf

from tfsr_defense.layers.blocks import conv2d, res_block, upsampler
from tfsr_defense.models import registry

__all__ = ["build_edsr"]


def build_edsr(scale=4, regularizer=None, n_resblocks=16, n_feats=64, res_scale=1.0,
               entropy_layer="pre_upsampler", name="edsr"):
  """EDSR functional model: float32 [0,1] (N, H, W, 3) -> float32 [0,1] (N, sH, sW, 3).

  Args:
    scale: 2, 3 or 4.
    regularizer: EntropyRegularizer kwargs, or None for the plain network.
    n_resblocks, n_feats, res_scale: 16, 64, 1.0 for EDSR-baseline
      (32, 256, 0.1 for the full EDSR).
    entropy_layer: where the layer named ``models.FEATURES`` (the regularizer,
      or an identity for the plain network) sits: 'pre_upsampler' (body
      output + long skip, (N, H, W, n_feats)) or 'first' (output of the head
      conv, (N, H, W, n_feats); the body and the long skip then read the
      regularized map).
    name: Keras model name.

  Returns:
    tf.keras.Model; output not clipped; tail and output float32 under a mixed policy.

  Raises:
    ValueError: bad scale; unknown entropy_layer (lists the choices).
  """
  first = registry.check_entropy_layer(entropy_layer) == "first"
  inputs = tf.keras.Input((None, None, 3), name="lr")
  x = registry.rgb255_input(inputs)
  head = conv2d(n_feats, 3, name="head")(x)
  if first:
    head = registry.regularized_features(head, regularizer)
  x = head
  for i in range(n_resblocks):
    x = res_block(x, n_feats, 3, res_scale, name=f"body_{i}")
  x = conv2d(n_feats, 3, name="body_conv")(x)
  x = tf.keras.layers.Add(name="body_skip")([x, head])
  if not first:
    x = registry.regularized_features(x, regularizer)
  x = upsampler(x, scale, n_feats)
  outputs = registry.rgb255_output(x)
  return tf.keras.Model(inputs, outputs, name=name)


registry.register(registry.ModelSpec(
    name="edsr", builder=build_edsr, pixel_range=(0.0, 255.0), loss="l1",
    entropy_weight=1.0,
    description="EDSR-baseline: 16 res blocks, 64 ch (1,517,571 params at x4)"))
