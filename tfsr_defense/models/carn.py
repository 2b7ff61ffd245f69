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
biases). The regularizer sits on the last global 1x1 cascade output.
"""

import tensorflow as tf

from tfsr_defense.layers.blocks import CARNUpsampler, CascadingBlock, conv2d
from tfsr_defense.models import registry

__all__ = ["build_carn", "build_carn_m"]


def build_carn(scale=4, regularizer=None, n_blocks=3, n_units=3, n_feats=64, groups=1,
               efficient=False, shared=False, name="carn"):
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
    name: Keras model name.

  Returns:
    tf.keras.Model; output not clipped; exit conv and output float32 under a mixed policy.

  Raises:
    ValueError: bad scale; n_feats not divisible by groups; groups > 1 without efficient.
  """
  inputs = tf.keras.Input((None, None, 3), name="lr")
  x = registry.rgb255_input(inputs)
  cat = out = conv2d(n_feats, 3, name="entry")(x)
  for i in range(n_blocks):
    block = CascadingBlock(n_feats, n_units, groups, efficient, shared, name=f"block{i}")(out)
    cat = tf.keras.layers.Concatenate(name=f"concat{i}")([cat, block])
    out = conv2d(n_feats, 1, name=f"cascade{i}", activation="relu")(cat)
  x = registry.regularized_features(out, regularizer)
  x = CARNUpsampler(scale, n_feats, groups, name="upsampler")(x)
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
