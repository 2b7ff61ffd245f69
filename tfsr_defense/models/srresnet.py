"""SRResNet (Ledig et al., "Photo-Realistic Single Image Super-Resolution Using a
Generative Adversarial Network", CVPR 2017, fig. 4), the SRGAN generator.

9x9 head conv + PReLU, 16 residual blocks (conv-BN-PReLU-conv-BN), conv-BN and
the long skip connection, then the sub-pixel upsampler (x4: 2 x [conv 64->256,
pixel shuffle 2, PReLU]; x3: one x3 step; x2: one x2 step) and a 9x9 conv to
RGB. Every PReLU is per channel (64 weights): with them the network has
exactly 1,550,659 trainable parameters at x4, the official SRResNet/SRGAN
count (a single-weight PReLU would give 1,549,462). BatchNormalization moving
statistics are not parameters (as in PyTorch's count).

Works on [-1, 1] pixels inside (as Ledig et al.'s HR targets); the paper
trains it with L2 on that range and lambda = 0.1 (Choi et al. 2020, sec. 5.1).
By default the entropy regularizer sits after the post-residual conv-BN +
skip, before the upsampler; ``entropy_layer='first'`` puts it on the head's
output, which here is the head conv's PReLU output (the head is conv + PReLU).

Layer names: ``to_native``, ``head``, ``head_prelu``; residual block i:
``body_{i}_conv1``, ``body_{i}_bn1``, ``body_{i}_prelu``, ``body_{i}_conv2``,
``body_{i}_bn2``, ``body_{i}_add``; ``body_conv``, ``body_bn``,
``body_skip``, ``features``, ``upsampler_conv{j}``, ``upsampler_shuffle{j}``,
``upsampler_prelu{j}``, ``tail``, ``sr``. The network has no ReLU: its
rectifier maps (what ``models.activation_layer_names`` returns for 'relu')
are the 19 PReLU outputs at x4 (head, 16 blocks, 2 upsampler steps).
"""

import tensorflow as tf

from tfsr_defense.layers.blocks import conv2d, srres_block, upsampler
from tfsr_defense.models import registry

__all__ = ["build_srresnet"]


def build_srresnet(scale=4, regularizer=None, n_blocks=16, n_feats=64,
                   entropy_layer="pre_upsampler", name="srresnet"):
  """SRResNet functional model: float32 [0,1] (N, H, W, 3) -> float32 [0,1] (N, sH, sW, 3).

  Args:
    scale: 2, 3 or 4.
    regularizer: EntropyRegularizer kwargs, or None for the plain network.
    n_blocks, n_feats: 16 and 64 in SRResNet (smaller values for tests).
    entropy_layer: 'pre_upsampler' (after conv-BN + long skip) or 'first'
      (the head's PReLU output; the blocks and the long skip read the
      regularized map); both (N, H, W, n_feats).
    name: Keras model name.

  Returns:
    tf.keras.Model; its output is not clipped. Under a mixed policy the body
    computes in the policy's dtype, the 9x9 tail and the output in float32.

  Raises:
    ValueError: a scale that is neither 3 nor a power of 2; unknown entropy_layer.
  """
  first = registry.check_entropy_layer(entropy_layer) == "first"
  inputs = tf.keras.Input((None, None, 3), name="lr")
  x = tf.keras.layers.Rescaling(2.0, offset=-1.0, name="to_native")(inputs)
  x = conv2d(n_feats, 9, name="head")(x)
  head = tf.keras.layers.PReLU(alpha_initializer=tf.keras.initializers.Constant(0.25),
                               shared_axes=[1, 2], name="head_prelu")(x)
  if first:
    head = registry.regularized_features(head, regularizer)
  x = head
  for i in range(n_blocks):
    x = srres_block(x, n_feats, 3, name=f"body_{i}")
  x = conv2d(n_feats, 3, name="body_conv")(x)
  x = tf.keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name="body_bn")(x)
  x = tf.keras.layers.Add(name="body_skip")([x, head])
  if not first:
    x = registry.regularized_features(x, regularizer)
  x = upsampler(x, scale, n_feats, activation="prelu")
  # Output layers in float32 under a mixed policy (see edsr.py).
  x = conv2d(3, 9, name="tail", dtype="float32")(x)
  outputs = tf.keras.layers.Rescaling(0.5, offset=0.5, name="sr", dtype="float32")(x)
  return tf.keras.Model(inputs, outputs, name=name)


registry.register(registry.ModelSpec(
    name="srresnet", builder=build_srresnet, pixel_range=(-1.0, 1.0), loss="l2",
    entropy_weight=0.1,
    description="SRResNet: 16 BN res blocks, 64 ch, PReLU (1,550,659 params at x4)"))
