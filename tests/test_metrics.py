"""PSNR / SSIM (tfsr_defense.metrics): hand-computed values and agreement with scikit-image.

Tolerances against scikit-image (float64): PSNR 1e-3 dB, SSIM 1e-4 (our
metrics run in float32).
"""

import numpy as np
import pytest
import skimage.data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
import tensorflow as tf

from tfsr_defense import metrics

PSNR_TOL_DB = 1e-3
SSIM_TOL = 1e-4
Y_WEIGHTS = np.array([65.481, 128.553, 24.966])


def _y64(rgb):
  """MATLAB rgb2ycbcr Y in float64, [0, 255] scale."""
  return 16.0 + np.asarray(rgb, np.float64) @ Y_WEIGHTS


@pytest.fixture(scope="module")
def pair():
  """A photograph and a blurred, noisy copy, float32 [0, 1], 96 x 80."""
  hr = skimage.data.astronaut()[100:196, 180:260].astype(np.float32) / 255.0
  rng = np.random.default_rng(0)
  blurred = tf.nn.avg_pool2d(hr[None], 3, 1, "SAME")[0].numpy()
  noisy = np.clip(blurred + rng.normal(0, 0.02, hr.shape), 0.0, 1.0).astype(np.float32)
  return hr, noisy


def test_rgb_to_y_hand_values():
  rgb = np.array([[0, 0, 0], [1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
  y = metrics.rgb_to_y(rgb).numpy()[:, 0]
  np.testing.assert_allclose(y, [16.0, 235.0, 16 + 65.481, 16 + 128.553, 16 + 24.966], rtol=1e-6)


def test_psnr_hand_values():
  a = np.full((1, 10, 12, 3), 0.5, np.float32)
  b = a + np.float32(1 / 255)
  # RGB, peak 1: MSE = (1/255)^2 -> 20 log10(255) = 48.1308 dB.
  assert float(metrics.psnr(a, b, "rgb")[0]) == pytest.approx(20 * np.log10(255.0), abs=1e-3)
  # Y: the offset is (65.481 + 128.553 + 24.966)/255 = 219/255 grey levels on the 255 scale.
  expected_y = 20 * np.log10(255.0 / (219.0 / 255.0))
  assert float(metrics.psnr(a, b, "y")[0]) == pytest.approx(expected_y, abs=1e-3)
  # One pixel of 0.1 among 10*12*3 values: MSE = 0.01 / 360.
  c = a.copy()
  c[0, 4, 5, 1] += 0.1
  assert float(metrics.lr_psnr(a, c)[0]) == pytest.approx(10 * np.log10(360 / 0.01), abs=1e-3)
  assert np.isinf(metrics.psnr(a, a, "rgb")[0].numpy())


def test_shave_removes_borders():
  a = np.full((1, 16, 16, 3), 0.5, np.float32)
  b = a.copy()
  b[:, :2] = 0.0  # damage only the top two rows
  assert np.isfinite(metrics.psnr(a, b, "y", shave=1)[0].numpy())
  assert np.isinf(metrics.psnr(a, b, "y", shave=2)[0].numpy())
  assert np.isinf(metrics.sr_psnr(a, b, 2)[0].numpy())


def test_ssim_hand_values():
  a = np.full((1, 16, 16, 3), 0.25, np.float32)
  b = np.full((1, 16, 16, 3), 0.75, np.float32)
  assert float(metrics.ssim(a, a, "y")[0]) == pytest.approx(1.0, abs=1e-6)
  # Constant images: sigma = 0, so SSIM = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1),
  # C1 = (0.01 * 255)^2 on the Y scale.
  mu_a, mu_b, c1 = 16 + 219 * 0.25, 16 + 219 * 0.75, (0.01 * 255) ** 2
  expected = (2 * mu_a * mu_b + c1) / (mu_a ** 2 + mu_b ** 2 + c1)
  # float32 variances of ~180-grey images cancel to ~1e-3: tolerance SSIM_TOL.
  assert float(metrics.ssim(a, b, "y")[0]) == pytest.approx(expected, abs=SSIM_TOL)


@pytest.mark.parametrize("shave", [0, 4])
def test_psnr_y_matches_scikit_image(pair, shave):
  hr, noisy = pair
  crop = slice(shave, -shave) if shave else slice(None)
  ours = float(metrics.psnr(noisy, hr, "y", shave=shave)[0])
  ref = peak_signal_noise_ratio(_y64(hr)[crop, crop], _y64(noisy)[crop, crop], data_range=255)
  assert ours == pytest.approx(ref, abs=PSNR_TOL_DB)


def test_psnr_rgb_matches_scikit_image(pair):
  hr, noisy = pair
  ref = peak_signal_noise_ratio(hr.astype(np.float64), noisy.astype(np.float64), data_range=1.0)
  assert float(metrics.lr_psnr(hr, noisy)[0]) == pytest.approx(ref, abs=PSNR_TOL_DB)


@pytest.mark.parametrize("shave", [0, 4])
def test_ssim_y_matches_scikit_image(pair, shave):
  hr, noisy = pair
  crop = slice(shave, -shave) if shave else slice(None)
  ours = float(metrics.ssim(noisy, hr, "y", shave=shave)[0])
  ref = structural_similarity(_y64(hr)[crop, crop], _y64(noisy)[crop, crop],
                              gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                              data_range=255)
  assert ours == pytest.approx(ref, abs=SSIM_TOL)
  if shave:
    assert float(metrics.sr_ssim(noisy, hr, shave)[0]) == pytest.approx(ours, abs=1e-7)


def test_batched_shapes(pair):
  hr, noisy = pair
  a, b = np.stack([hr, noisy]), np.stack([noisy, noisy])
  p = metrics.sr_psnr(a, b, 4).numpy()
  s = metrics.sr_ssim(a, b, 4).numpy()
  assert p.shape == (2,) and s.shape == (2,)
  assert np.isinf(p[1]) and s[1] == pytest.approx(1.0, abs=1e-6)
  assert p[0] == pytest.approx(float(metrics.psnr(hr, noisy, "y", 4)[0]), abs=1e-4)


def test_errors():
  a = np.zeros((1, 8, 8, 3), np.float32)
  with pytest.raises(ValueError, match="differ in shape"):
    metrics.psnr(a, np.zeros((1, 8, 9, 3), np.float32))
  with pytest.raises(ValueError, match="channel must be"):
    metrics.psnr(a, a, channel="lab")
  with pytest.raises(ValueError, match="RGB images"):
    metrics.psnr(np.zeros((1, 8, 8, 1), np.float32), np.zeros((1, 8, 8, 1), np.float32))
  with pytest.raises(ValueError, match="at least 11x11"):
    metrics.ssim(np.zeros((1, 16, 16, 3), np.float32), np.zeros((1, 16, 16, 3), np.float32),
                 shave=4)
