"""Image quality metrics with explicit channel, border shave and peak.

Inputs are float RGB in [0, 1] (NHWC or HWC). The SR convention (and the
paper's tables): PSNR/SSIM on the Y channel of MATLAB ``rgb2ycbcr``
(Y in [16, 235] of a [0, 255] scale, peak 255), shaving ``scale`` pixels from
every border.

Checked against scikit-image (tests/test_metrics.py): ``psnr`` equals
``skimage.metrics.peak_signal_noise_ratio`` on float64 Y (data_range 255) to
1e-3 dB, ``ssim`` equals ``structural_similarity(gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=255)`` to 1e-4 (the
difference is float32 vs float64 arithmetic).

Attack metrics (Choi et al. 2020, sec. 4.2): ``lr_psnr`` compares the clean
and the attacked LR input (RGB, no shave, peak 1); ``sr_psnr`` / ``sr_ssim``
compare the SR outputs of the two (Y, shave = scale, peak 255).
"""

import tensorflow as tf

__all__ = ["rgb_to_y", "psnr", "ssim", "sr_quality", "lr_psnr", "sr_psnr", "sr_ssim",
           "SSIM_WINDOW"]

# Gaussian window of SSIM (Wang et al. 2004): 11 x 11, sigma 1.5.
SSIM_WINDOW = 11

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
  if not a.shape.is_compatible_with(b.shape):
    raise ValueError(f"Images differ in shape: {a.shape} vs {b.shape}.")
  if a.shape.rank is not None and (a.shape.rank != 4 or a.shape[-1] not in (None, 3)):
    raise ValueError(f"Expected RGB images (N, H, W, 3) or (H, W, 3), got {a.shape}.")
  if shave < 0:
    raise ValueError(f"shave must be >= 0 pixels, got {shave}.")
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

  Args/returns as ``psnr`` (float32 (N,), unitless, 1 for identical images);
  for 'rgb' the mean over channels. Only windows that fit entirely inside the
  (shaved) image count, as in scikit-image's ``structural_similarity``.

  Raises:
    ValueError: after shaving, a side is shorter than the 11-pixel window.
  """
  a, b, peak = _prepare(a, b, channel, shave)
  small = [d for d in a.shape[1:3] if d is not None and d < SSIM_WINDOW]
  if small:
    raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels after "
                     f"shaving {shave}; got {a.shape[1]}x{a.shape[2]}.")
  return tf.image.ssim(a, b, max_val=peak, filter_size=SSIM_WINDOW, filter_sigma=1.5)


def sr_quality(sr, hr, scale):
  """Clean quality of an SR output against its HR image, the SR convention of the tables.

  PSNR-Y and SSIM-Y: Y of MATLAB rgb2ycbcr (peak 255), ``scale`` pixels shaved
  from every border; ``sr`` is clipped to [0, 1] first (networks' outputs are
  not clipped). The one function the trainer's validation and the evaluation
  use for clean PSNR/SSIM.

  Args:
    sr: float (N, sH, sW, 3) or (sH, sW, 3) RGB, nominally [0, 1].
    hr: float RGB in [0, 1] of the same shape.
    scale: SR scale s (the border shaved, pixels).

  Returns:
    (psnr_y, ssim_y): float32 (N,) each; dB (inf if identical) and unitless.

  Raises:
    ValueError: shapes differ, not RGB, or smaller than SSIM's 11x11 window
      after shaving.
  """
  sr = tf.clip_by_value(tf.cast(sr, tf.float32), 0.0, 1.0)
  return psnr(sr, hr, "y", shave=scale), ssim(sr, hr, "y", shave=scale)


def lr_psnr(x, x_adv):
  """PSNR (dB) between clean and attacked LR inputs: RGB, no shave, peak 1.

  Args:
    x, x_adv: float (N, H, W, 3) or (H, W, 3) in [0, 1].

  Returns:
    float32 (N,) dB (inf if identical). An L-inf attack of eps gives >= -20 log10(eps).
  """
  return psnr(x, x_adv, channel="rgb", shave=0)


def sr_psnr(sr, sr_adv, scale):
  """PSNR (dB) between S(x) and S(x~): Y of MATLAB rgb2ycbcr, shave = scale, peak 255.

  Args:
    sr, sr_adv: float (N, sH, sW, 3) or (sH, sW, 3) in [0, 1] (clip model outputs first).
    scale: SR scale s, the border shaved.

  Returns:
    float32 (N,) dB (inf if identical).
  """
  return psnr(sr, sr_adv, channel="y", shave=scale)


def sr_ssim(sr, sr_adv, scale):
  """SSIM between S(x) and S(x~): Y channel, shave = scale, peak 255. float32 (N,)."""
  return ssim(sr, sr_adv, channel="y", shave=scale)
