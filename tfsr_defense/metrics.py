"""Image quality metrics with explicit channel, border shave and peak.

Inputs are float RGB in [0, 1] (NHWC or HWC). The SR convention (and the
paper's tables): PSNR/SSIM on the Y channel of MATLAB ``rgb2ycbcr``
(Y in [16, 235] of a [0, 255] scale, peak 255), shaving ``scale`` pixels from
every border.
"""

import tensorflow as tf

__all__ = ["rgb_to_y", "psnr", "ssim"]

# MATLAB rgb2ycbcr for [0,1] RGB: Y = 16 + 65.481 R + 128.553 G + 24.966 B (0..255 scale).
_Y_WEIGHTS = (65.481, 128.553, 24.966)


def rgb_to_y(rgb):
  """Y of MATLAB ``rgb2ycbcr`` on [0,255] scale. rgb: float (..., 3) in [0,1] -> (..., 1)."""
  rgb = tf.cast(rgb, tf.float32)
  return 16.0 + tf.reduce_sum(rgb * tf.constant(_Y_WEIGHTS), axis=-1, keepdims=True)


def _prepare(a, b, channel, shave):
  a = tf.cast(a, tf.float32)
  b = tf.cast(b, tf.float32)
  if a.shape.rank == 3:
    a, b = a[None], b[None]
  if channel == "y":
    a, b, peak = rgb_to_y(a), rgb_to_y(b), 255.0
  elif channel == "rgb":
    peak = 1.0
  else:
    raise ValueError(f"channel must be 'y' or 'rgb', got {channel!r}.")
  if shave:
    a = a[:, shave:-shave, shave:-shave]
    b = b[:, shave:-shave, shave:-shave]
  return a, b, peak


def psnr(a, b, channel="y", shave=0):
  """PSNR in dB per image.

  Args:
    a, b: float (N, H, W, 3) or (H, W, 3) RGB in [0, 1].
    channel: 'y' (MATLAB rgb2ycbcr luma, peak 255) or 'rgb' (peak 1).
    shave: pixels removed from each border before comparing (SR: the scale).

  Returns:
    float32 (N,) PSNR in dB (inf for identical images).
  """
  a, b, peak = _prepare(a, b, channel, shave)
  mse = tf.reduce_mean(tf.math.squared_difference(a, b), axis=[1, 2, 3])
  return 10.0 * tf.math.log(peak * peak / mse) / tf.math.log(10.0)


def ssim(a, b, channel="y", shave=0):
  """SSIM (Wang et al. 2004: Gaussian window 11, sigma 1.5) per image.

  Args/returns as ``psnr``; for 'rgb' the mean over channels.
  """
  a, b, peak = _prepare(a, b, channel, shave)
  return tf.image.ssim(a, b, max_val=peak, filter_size=11, filter_sigma=1.5)
