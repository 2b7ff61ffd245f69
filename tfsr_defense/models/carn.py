"""CARN and CARN-M (Ahn et al., "Fast, Accurate, and Lightweight Super-Resolution
with Cascading Residual Network", ECCV 2018), after the official PyTorch code
(nmhkahn/CARN-pytorch).

3x3 entry conv, 3 cascading blocks (each 3 residual blocks with 1x1 local
cascades), global 1x1 cascades after each block, a sub-pixel upsampler
(per x2 step: conv 64->256, ReLU, shuffle 2; x3: conv 64->576, ReLU, shuffle 3)
and a 3x3 exit conv, DIV2K mean shift. CARN-M ('carn_m') uses the efficient
residual block (two 3x3 convs in 4 groups + a 1x1 conv), shares one such block
across the 3 positions of each cascading block (recursion, as the official
carn_m.py) and groups the upsampler's convs in 4.

Single-scale. The official model is multi-scale: it holds the x2, x3 and x4
upsamplers together (1,591,939 parameters for CARN; 414,787 for CARN-M) and
picks one per batch. This implementation builds one scale's upsampler, so at
x4 CARN has 1,111,875 parameters = 1,591,939 - 147,712 (x2 upsampler)
- 332,352 (x3 upsampler); CARN-M has 294,147 = 414,787 - 37,120 - 83,520.
Everything before the upsampler is the same network.

Works on [0, 255] pixels inside as in Choi et al. 2020 (L1, lambda = 1; the
official CARN code uses [0, 1], which for a ReLU network only rescales the
biases). By default the regularizer sits on the last global 1x1 cascade output
(after its ReLU); ``entropy_layer='first'`` puts it on the entry conv's output.

Layer names: ``entry``; cascading block i (``cascading_block``): residual
block u ``block_{i}_res_{u}_conv1``, ``..._relu1``, ``..._conv2``
(CARN-M: ``..._relu2``, ``..._conv3``; its shared convolutions are named
``block_{i}_res_conv*``), ``..._add``, ``..._relu``; ``block_{i}_concat_{u}``,
``block_{i}_cascade_{u}``, ``block_{i}_cascade_{u}_relu``; global
``concat_{i}``, ``cascade_{i}``, ``cascade_{i}_relu``; ``features``;
``upsampler_conv{j}``, ``upsampler_shuffle{j}``, ``upsampler_relu{j}``;
``exit``. ReLU maps at x4: CARN 3 x 9 + 3 + 2 = 32, CARN-M 3 x 12 + 3 + 2 =
41 (the last 2 in the upsampler, (N, 2H, 2W, 64) and (N, 4H, 4W, 64)).
"""

import tensorflow as tf

from tfsr_defense.layers.blocks import cascading_block, conv2d, upsampler
from tfsr_defense.models import registry

__all__ = ["build_carn", "build_carn_m"]


def build_carn(scale=4, regularizer=None, n_blocks=3, n_units=3, n_feats=64, groups=1,
               efficient=False, shared=False, entropy_layer="pre_upsampler", name="carn"):
  """CARN functional model: float32 [0,1] (N, H, W, 3) -> float32 [0,1] (N, sH, sW, 3).

  Args:
    scale: 2, 3 or 4.
    regularizer: EntropyRegularizer kwargs, or None for the plain network.
    n_blocks: cascading blocks (3).
    n_units: residual blocks per cascading block (3).
    n_feats: channels (64).
    groups: conv groups of the efficient residual blocks and the upsampler (CARN-M: 4).
    efficient: efficient residual blocks (CARN-M).
    shared: one residual block reused inside each cascading block (CARN-M).
    entropy_layer: 'pre_upsampler' (the last global cascade's ReLU output) or
      'first' (entry conv output; the blocks and the global cascades read the
      regularized map); both (N, H, W, n_feats).
    name: Keras model name.

  Returns:
    tf.keras.Model; output not clipped; exit conv and output float32 under a mixed policy.

  Raises:
    ValueError: bad scale; n_feats not divisible by groups; groups > 1 without
      efficient; unknown entropy_layer.
  """
  first = registry.check_entropy_layer(entropy_layer) == "first"
  inputs = tf.keras.Input((None, None, 3), name="lr")
  x = registry.rgb255_input(inputs)
  entry = conv2d(n_feats, 3, name="entry")(x)
  if first:
    entry = registry.regularized_features(entry, regularizer)
  cat = out = entry
  for i in range(n_blocks):
    block = cascading_block(out, n_feats, n_units, groups, efficient, shared, name=f"block_{i}")
    cat = tf.keras.layers.Concatenate(name=f"concat_{i}")([cat, block])
    out = conv2d(n_feats, 1, name=f"cascade_{i}")(cat)
    out = tf.keras.layers.ReLU(name=f"cascade_{i}_relu")(out)
  x = out if first else registry.regularized_features(out, regularizer)
  x = upsampler(x, scale, n_feats, activation="relu", groups=groups)
  outputs = registry.rgb255_output(x, tail_name="exit")
  return tf.keras.Model(inputs, outputs, name=name)


def build_carn_m(scale=4, regularizer=None, groups=4, name="carn_m", **kwargs):
  """CARN-M: ``build_carn`` with efficient, shared residual blocks and 4 groups."""
  return build_carn(scale, regularizer, groups=groups, efficient=True, shared=True, name=name,
                    **kwargs)


registry.register(registry.ModelSpec(
    name="carn", builder=build_carn, pixel_range=(0.0, 255.0), loss="l1", entropy_weight=1.0,
    description="CARN: 3 cascading blocks x 3 res blocks, single-scale (1,111,875 params at x4)"))

registry.register(registry.ModelSpec(
    name="carn_m", builder=build_carn_m, pixel_range=(0.0, 255.0), loss="l1",
    entropy_weight=1.0,
    description="CARN-M: grouped, shared efficient blocks, single-scale (294,147 params at x4)"))
