"""CLEVER score for super-resolution (Choi et al., ACCV 2020, eq. 15; after Weng et al., ICLR 2018).

For one LR image x (n = H*W*3 values in [0, 1]):

    Delta_j ~ U[-alpha_c, alpha_c]^n,  j = 1..N_s   (paper: N_s = 1024, alpha_c = 1/255)
    score = max_j || grad_x || S(x + Delta_j) - S(x) ||_2 ||_1

the largest L1 norm (the dual of L-inf, the attacks' norm) of the gradient of
the SR output distance near x: an estimate of the local Lipschitz constant of
S around x. Higher means more vulnerable.

Every sample's loss depends on its own input only, so one gradient tape over
a batch of perturbed copies gives all per-sample gradients at once
(``batch_size`` of them per call). Delta_j comes from a stateless generator
seeded with (seed, j), so the result does not depend on the batch size.

The original CLEVER also fits a reverse Weibull distribution to maxima of
groups of samples and takes its location (the distribution's right end) as
the estimate; ``clever_sr(..., weibull=True)`` reports that beside the raw
maximum (scipy.stats.weibull_max).
"""

import dataclasses
import hashlib
import json
import os
import sys
import warnings
from typing import Optional

import numpy as np
import scipy.stats
import tensorflow as tf
import tqdm

from tfsr_defense import fileio
from tfsr_defense.attacks import engine as engine_lib

__all__ = ["CleverResult", "clever_sr", "sample_perturbations", "compile_gradient_norms",
           "DEFAULT_SAMPLES", "DEFAULT_ALPHA", "DEFAULT_BATCH"]

DEFAULT_SAMPLES = 1024
DEFAULT_ALPHA = 1.0 / 255.0
# Perturbed copies per gradient call. Memory grows linearly: EDSR-baseline x4
# needs ~150 MB per copy of a 120 x 80 LR image (float32, measured as peak RSS).
DEFAULT_BATCH = 16
# Second word of the stateless seeds (the attacks use another).
_CLEVER_SALT = 0xc1e7


@dataclasses.dataclass
class CleverResult:
  """CLEVER of one image.

  Attributes:
    score: max_j ||grad||_1 (paper eq. 15): float, units of
      (SR output L2 distance, [0, 1] pixels) per ([0, 1] input pixel).
    grad_norms: float64 (num_samples,) ||grad||_1 of every sample, in sample order.
    num_samples, alpha, seed: the settings.
    weibull_loc: reverse-Weibull estimate of the maximum (None unless asked;
      NaN if the fit failed).
    weibull: dict(shape c, loc, scale, ks_pvalue, groups) of the fit, or None.
  """
  score: float
  grad_norms: np.ndarray
  num_samples: int
  alpha: float
  seed: int
  weibull_loc: Optional[float] = None
  weibull: Optional[dict] = None


def sample_perturbations(shape, indices, alpha=DEFAULT_ALPHA, seed=0):
  """Delta_j for the given sample indices: float32 (len(indices), *shape) in [-alpha, alpha].

  Sample j depends only on (seed, j) and the shape.
  """
  indices = tf.convert_to_tensor(indices, tf.int64)
  seeds = tf.stack([tf.fill(tf.shape(indices), tf.cast(seed, tf.int64)),
                    indices * 65536 + _CLEVER_SALT], axis=1)
  return tf.cast(alpha, tf.float32) * tf.map_fn(
      lambda s: tf.random.stateless_uniform(shape, seed=s, minval=-1.0, maxval=1.0),
      seeds, fn_output_signature=tf.float32)


def compile_gradient_norms(sr):
  """Compiled fn(x, sr_clean, indices, alpha, seed, clip) -> float32 (len(indices),) ||grad||_1.

  Args:
    sr: fn(x float32 (N,H,W,3) in [0,1]) -> float32 SR (N,sH,sW,3).

  The returned function perturbs the one image x (1, H, W, C) by Delta_j for
  the given sample indices (``sample_perturbations``), optionally clips to
  [0, 1], and returns || grad_x || S(x + Delta_j) - S(x) ||_2 ||_1 per sample,
  all in one batched gradient. Traced once for every image size.
  ``GradientEngine.clever_gradients()`` keeps one per engine.
  """

  @tf.function(input_signature=(
      tf.TensorSpec([1, None, None, None], tf.float32, name="x"),
      tf.TensorSpec(None, tf.float32, name="sr_clean"),
      tf.TensorSpec([None], tf.int64, name="indices"),
      tf.TensorSpec([], tf.float32, name="alpha"),
      tf.TensorSpec([], tf.int64, name="seed"),
      tf.TensorSpec([], tf.bool, name="clip"),
  ))
  def grad_norms(x, sr_clean, indices, alpha, seed, clip):
    xs = x + sample_perturbations(tf.shape(x)[1:], indices, alpha, seed)
    xs = tf.cond(clip, lambda: tf.clip_by_value(xs, 0.0, 1.0), lambda: xs)
    with tf.GradientTape() as tape:
      tape.watch(xs)
      # Summed per-sample distances: sample j's gradient is that of its own term.
      loss = tf.reduce_sum(engine_lib.sr_distance(sr(xs), sr_clean))
    grad = tape.gradient(loss, xs)
    return tf.reduce_sum(tf.abs(grad), axis=[1, 2, 3])

  return grad_norms


def _weibull_fit(grad_norms, groups):
  """Reverse Weibull (scipy.stats.weibull_max) fit to the maxima of ``groups`` sample groups."""
  maxima = np.array([g.max() for g in np.array_split(grad_norms, groups)], dtype=np.float64)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    try:
      # Start the location just above the largest observed maximum (the
      # distribution's support ends at loc).
      c, loc, scale = scipy.stats.weibull_max.fit(maxima, loc=maxima.max() * 1.01)
      pvalue = scipy.stats.kstest(maxima, "weibull_max", args=(c, loc, scale)).pvalue
    except (ValueError, RuntimeError, FloatingPointError) as e:
      warnings.warn(f"CLEVER reverse-Weibull fit failed: {e}")
      return dict(c=float("nan"), loc=float("nan"), scale=float("nan"),
                  ks_pvalue=float("nan"), groups=groups)
  return dict(c=float(c), loc=float(loc), scale=float(scale), ks_pvalue=float(pvalue),
              groups=groups)


def _read_partial(path, settings, batch_size):
  """The gradient norms kept at ``path`` for exactly ``settings`` (list of floats), else [].

  Only whole batches count; a file written for other settings or another
  image is ignored, and one that cannot be read is ignored with a warning
  that names it (it is overwritten by the next batch).
  """
  if path is None or not os.path.isfile(path):
    return []
  try:
    with open(path, encoding="utf-8") as f:
      state = json.load(f)
    norms = [float("nan") if v is None else float(v) for v in state["grad_norms"]]
    same = state["settings"] == settings
  except (OSError, ValueError, KeyError, TypeError) as e:
    warnings.warn(f"CLEVER: ignoring the unreadable partial state {path} ({e}); starting over.")
    return []
  whole = len(norms) % batch_size == 0 or len(norms) == settings["num_samples"]
  if not same or not whole or len(norms) > settings["num_samples"]:
    return []
  return norms


def clever_sr(model, x, *, num_samples=DEFAULT_SAMPLES, alpha=DEFAULT_ALPHA,
              batch_size=DEFAULT_BATCH, seed=0, clip=False, weibull=False, weibull_groups=None,
              progress=False, partial_path=None):
  """CLEVER score of an SR network at one LR image (paper eq. 15).

  Args:
    model: ``attacks.GradientEngine`` (its compiled gradient function is
      reused across images), or a Keras SR model / callable float32
      (N, H, W, 3) in [0, 1] -> (N, sH, sW, 3) (a dict output uses its 'sr'
      entry; compiled for this call).
    x: float (H, W, 3) or (1, H, W, 3) LR image in [0, 1].
    num_samples: N_s >= 1 (paper: 1024).
    alpha: alpha_c > 0 in [0, 1] units (paper: 1/255).
    batch_size: perturbed copies per gradient call (>= 1); 1 computes one
      gradient at a time. Memory grows with it (about 150 MB per copy for
      EDSR-baseline x4 on a 120 x 80 image).
    seed: int; Delta_j depends on (seed, j) only.
    clip: clip x + Delta_j to [0, 1] (default False: eq. 15 as written).
    weibull: also fit a reverse Weibull to the maxima of ``weibull_groups``
      groups of samples (Weng et al. 2018) and report its location.
    weibull_groups: number of groups (2 <= groups <= num_samples); None:
      min(32, max(2, num_samples // 8)) (32 groups of 32 samples for N_s = 1024).
    progress: tqdm bar over the gradient batches (stdout, transient).
    partial_path: None, or a JSON file that keeps the gradient norms computed
      so far (rewritten atomically after every batch): a call with the same
      image, settings and batch size resumes after its last finished batch,
      with the same result as an uninterrupted one. The file is removed when
      the score is computed. The caller names it per model (the file records
      the image and settings, not the network).

  Returns:
    CleverResult.

  Raises:
    ValueError: x not a single finite image in [0, 1], num_samples < 1,
      alpha <= 0, batch_size < 1, bad weibull_groups.
  """
  if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 1:
    raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}.")
  if not 0.0 < float(alpha) <= 1.0:
    raise ValueError(f"alpha must be in (0, 1] ([0, 1] image units, paper 1/255), got {alpha}.")
  if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
    raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
  if weibull and weibull_groups is None:
    weibull_groups = min(32, max(2, int(num_samples) // 8))
  if weibull and not 2 <= weibull_groups <= num_samples:
    raise ValueError(f"weibull_groups must be in [2, num_samples={num_samples}], "
                     f"got {weibull_groups}.")
  images, _ = engine_lib.as_images(x)
  if images.shape[0] != 1:
    raise ValueError(f"CLEVER takes one image (H, W, 3) or (1, H, W, 3); got shape {x.shape}.")
  engine = engine_lib.as_engine(model)
  fn = engine.clever_gradients()
  sr_clean = engine.sr(images)
  num_samples, batch_size = int(num_samples), int(batch_size)
  image = np.ascontiguousarray(images.numpy(), np.float32)
  settings = dict(num_samples=num_samples, alpha=float(alpha), seed=int(seed), clip=bool(clip),
                  batch_size=batch_size, image_shape=list(image.shape),
                  image_sha256=hashlib.sha256(image.tobytes()).hexdigest())
  norms = _read_partial(partial_path, settings, batch_size)
  starts = range(len(norms), num_samples, batch_size)
  for start in tqdm.tqdm(starts, desc="CLEVER", unit="batch", leave=False, file=sys.stdout,
                         disable=not progress):
    idx = tf.range(start, min(start + batch_size, num_samples), dtype=tf.int64)
    norms.extend(fn(images, sr_clean, idx, tf.constant(alpha, tf.float32),
                    tf.constant(seed, tf.int64), tf.constant(bool(clip))).numpy().tolist())
    if partial_path is not None:
      os.makedirs(os.path.dirname(partial_path) or ".", exist_ok=True)
      fileio.atomic_write(partial_path, fileio.json_text(
          dict(settings=settings, grad_norms=norms)))
  norms = np.asarray(norms, np.float64)
  if partial_path is not None and os.path.isfile(partial_path):
    os.remove(partial_path)
  result = CleverResult(score=float(norms.max()), grad_norms=norms, num_samples=num_samples,
                        alpha=float(alpha), seed=int(seed))
  if weibull:
    result.weibull = _weibull_fit(norms, int(weibull_groups))
    result.weibull_loc = result.weibull["loc"]
  return result
