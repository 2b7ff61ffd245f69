"""Reconstruction loss L_r in each network's native pixel range (paper sec. 5.1).

The paper trains EDSR/RCAN/MSRN/CARN with L1 on [0,255] pixels (lambda = 1)
and SRResNet/SRGAN with L2 on [-1,1] pixels (lambda = 0.1); lambda only means
what the paper means if L_r is computed in that range, so the loss maps the
public [0,1] images to the native range first.
"""

import tensorflow as tf

from tfsr_defense.layers import entropy

__all__ = ["reconstruction_loss", "regularization_terms"]


def reconstruction_loss(sr, hr, loss="l1", pixel_range=(0.0, 255.0)):
  """Per-example L_r.

  Args:
    sr, hr: float (N, H, W, C) images in [0, 1] (any float dtype; computed in float32).
    loss: 'l1' (mean absolute error) or 'l2' (mean squared error).
    pixel_range: (lo, hi) of the native range the loss is measured in.

  Returns:
    float32 (N,) loss per example, in native pixel units (squared for 'l2').

  Raises:
    ValueError: unknown loss.
  """
  span = float(pixel_range[1]) - float(pixel_range[0])
  diff = (tf.cast(sr, tf.float32) - tf.cast(hr, tf.float32)) * span
  if loss == "l1":
    return tf.reduce_mean(tf.abs(diff), axis=[1, 2, 3])
  if loss == "l2":
    return tf.reduce_mean(tf.square(diff), axis=[1, 2, 3])
  raise ValueError(f"Unknown reconstruction loss {loss!r}: use 'l1' or 'l2'.")


def regularization_terms(model):
  """The model's added losses and L_e after a training call, for one replica's step.

  Call right after ``model(x, training=True)`` (same step / tf.function).

  Args:
    model: Keras model (possibly with EntropyRegularizer layers and other
      ``add_loss`` terms).

  Returns:
    (reg, bits), float32 scalars, each divided by the replicas in sync (a SUM
    over replicas gives the value): reg = the sum of ``model.losses``
    (lambda L_e and any other added loss), bits = L_e of eq. 1 in bits per
    element before lambda, read by value from the regularizer layer(s)
    (``layers.entropy.entropy_bits``; 0 without one), never recovered from reg.
  """
  added = [tf.cast(l, tf.float32) for l in model.losses]
  reg = tf.add_n(added) if added else tf.constant(0.0, tf.float32)
  return (tf.nn.scale_regularization_loss(reg),
          tf.nn.scale_regularization_loss(entropy.entropy_bits(model)))
