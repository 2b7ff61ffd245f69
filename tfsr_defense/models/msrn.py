"""MSRN (Li et al., "Multi-scale Residual Network for Image Super-Resolution",
ECCV 2018), after the official PyTorch code (MIVRC/MSRN-PyTorch, EDSR framework).

3x3 head conv, 8 multi-scale residual blocks (3x3 and 5x5 branches), the
concatenation of the 8 block outputs and the head output (9 x 64 channels) ->
1x1 conv -> 3x3 conv, EDSR's sub-pixel upsampler (x4: 2 x [conv 64->256,
shuffle 2], no activation), a 3x3 conv to RGB, DIV2K mean shift: 6,078,019
parameters at x4. Works on [0, 255] pixels inside (L1, lambda = 1 in Choi et
al. 2020); by default the regularizer sits on the output of the 3x3 conv
before the upsampler; ``entropy_layer='first'`` puts it on the head conv's output.

Layer names: ``head``; block i: ``msrb_{i}_conv3_1``, ``msrb_{i}_relu3_1``,
``msrb_{i}_conv5_1``, ``msrb_{i}_relu5_1``, ``msrb_{i}_concat1``,
``msrb_{i}_conv3_2``, ``msrb_{i}_relu3_2``, ``msrb_{i}_conv5_2``,
``msrb_{i}_relu5_2``, ``msrb_{i}_concat2``, ``msrb_{i}_confusion``,
``msrb_{i}_add``; ``hierarchical``, ``fusion``, ``body_conv``, ``features``,
``upsampler_conv{j}``, ``upsampler_shuffle{j}``, ``tail``. ReLU maps: 4 per
block, 32 in MSRN ((N, H, W, 64) in the first stage, (N, H, W, 128) in the second).
"""

import tensorflow as tf

from tfsr_defense.layers.blocks import conv2d, msrb, upsampler
from tfsr_defense.models import registry

__all__ = ["build_msrn"]


def build_msrn(scale=4, regularizer=None, n_blocks=8, n_feats=64, entropy_layer="pre_upsampler",
               name="msrn"):
  """MSRN functional model: float32 [0,1] (N, H, W, 3) -> float32 [0,1] (N, sH, sW, 3).

  Args:
    scale: 2, 3 or 4.
    regularizer: EntropyRegularizer kwargs, or None for the plain network.
    n_blocks, n_feats: 8 and 64 in MSRN (smaller values for tests).
    entropy_layer: 'pre_upsampler' (the 3x3 conv before the upsampler) or
      'first' (head conv output; the blocks and the hierarchical
      concatenation read the regularized map); both (N, H, W, n_feats).
    name: Keras model name.

  Returns:
    tf.keras.Model; output not clipped; tail and output float32 under a mixed policy.

  Raises:
    ValueError: a scale that is neither 3 nor a power of 2; unknown entropy_layer.
  """
  first = registry.check_entropy_layer(entropy_layer) == "first"
  inputs = tf.keras.Input((None, None, 3), name="lr")
  x = registry.rgb255_input(inputs)
  head = conv2d(n_feats, 3, name="head")(x)
  if first:
    head = registry.regularized_features(head, regularizer)
  x = head
  outs = []
  for i in range(n_blocks):
    x = msrb(x, n_feats, name=f"msrb_{i}")
    outs.append(x)
  # Official order: the block outputs, then the head output.
  x = tf.keras.layers.Concatenate(name="hierarchical")(outs + [head])
  x = conv2d(n_feats, 1, name="fusion")(x)
  x = conv2d(n_feats, 3, name="body_conv")(x)
  if not first:
    x = registry.regularized_features(x, regularizer)
  x = upsampler(x, scale, n_feats)
  outputs = registry.rgb255_output(x)
  return tf.keras.Model(inputs, outputs, name=name)


registry.register(registry.ModelSpec(
    name="msrn", builder=build_msrn, pixel_range=(0.0, 255.0), loss="l1", entropy_weight=1.0,
    description="MSRN: 8 multi-scale residual blocks, 64 ch (6,078,019 params at x4)"))
