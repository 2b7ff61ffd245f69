"""Random resizing + padding (Xie et al., ICLR 2018) adapted to super-resolution.

Xie et al. resize a classifier's 299 x 299 input to rnd x rnd, rnd uniform in
[299, 331), and zero-pad it at a random offset to 331 x 331. For an SR
network the output must keep the bare network's geometry, so the transform
is undone on the SR output. For one LR image of size H x W and a scale-s
network S (all sizes in pixels, rows first):

1. Draw r ~ U[lo, hi) and resize the image to h' x w',
   h' = clip(floor(r H + 1/2), 1, P_h), w' likewise (one r for both axes, so
   the aspect ratio is kept up to rounding). Resampling: ``tf.image.resize``
   with ``method`` (default bilinear, half-pixel centres, no antialiasing:
   the h' rows cover exactly the extent of the H input rows).
2. Zero-pad it to the fixed size P_h x P_w, P_h = floor(hi H + 1/2) (the
   largest possible h'; Xie's 331), at a random offset (top, left), top
   uniform in {0, ..., P_h - h'}, left in {0, ..., P_w - w'}.
3. Super-resolve the padded image: S gives (s P_h) x (s P_w).
4. Crop rows [s top, s (top + h')) and columns [s left, s (left + w')) (the
   image's region without the padding) and resize the s h' x s w' crop back
   to s H x s W with the same ``method``.

Steps 1-2 are ``transform`` (the layer's ``call`` returns just the padded
image, Xie's classifier-side defense), step 4 is ``restore``; ``DefendedSR``
runs S in between. With lo = hi = 1 there is no resizing and no padding
(h' = P_h = H, offset 0) and the whole pipeline equals S exactly. The same
``restore`` maps any map of the padded geometry at an integer multiple k of
its resolution (k = 1: feature maps before the upsampler) back to k H x k W.

Randomness: per call, one (r, top, left) per image from the stateless
generator keyed by (seed, n), n the number of previous draws of this layer
(a non-trainable int64 weight ``draws``, saved with the layer). So every call
is a new draw, two layers with the same seed (or a reloaded layer) draw the
same sequence, and ``transform(x, seed=...)`` reproduces a given draw without
advancing the counter. Resizing and padding are differentiable, so an
adaptive attacker differentiates through them and averages over draws
(expectation over transformation, see ``DefendedSR``).
"""

import math

import numpy as np
import tensorflow as tf

from tfsr_defense.defenses.defended_sr import InputDefense

__all__ = ["RandomResizePad", "check_range", "METHODS"]

# Resampling methods of tf.image.resize that have a gradient.
METHODS = ("bilinear", "nearest", "bicubic")


def check_range(lo, hi):
  """Validate the resize factor range; returns (lo, hi) as floats.

  Raises:
    ValueError: not numbers, not finite, lo <= 0, or lo > hi.
  """
  try:
    lo, hi = float(lo), float(hi)
  except (TypeError, ValueError):
    raise ValueError(f"resize factors must be numbers, got lo={lo!r}, hi={hi!r}.") from None
  if not (math.isfinite(lo) and math.isfinite(hi)):
    raise ValueError(f"resize factors must be finite, got lo={lo}, hi={hi}.")
  if lo <= 0:
    raise ValueError(f"resize factor lo must be > 0, got {lo}.")
  if lo > hi:
    raise ValueError(f"resize factor range is empty: lo={lo} > hi={hi}.")
  return lo, hi


def _round_half_up(v):
  return tf.cast(tf.floor(v + 0.5), tf.int32)


@tf.keras.utils.register_keras_serializable(package="tfsr_defense")
class RandomResizePad(InputDefense):
  """Random resize by r ~ U[lo, hi) + zero padding at a random offset (Xie et al. 2018).

  See the module docstring for the exact geometry. ``call(x)`` returns the
  padded image only; ``DefendedSR`` uses ``transform`` / ``restore`` around
  the SR network.

  Args:
    lo, hi: range of the resize factor r, 0 < lo <= hi (e.g. 0.9, 1.1).
    method: resampling of both resizes: 'bilinear' (default), 'nearest'
      (Xie et al.'s choice) or 'bicubic' (Keys a = -0.5; may overshoot
      [0, 1]).
    seed: integer seed of the stateless draws.
    **kwargs: Keras Layer arguments (name, ...).

  Raises:
    ValueError: bad lo/hi (see ``check_range``), unknown method, non-integer seed.
  """

  stochastic = True

  def __init__(self, lo=0.9, hi=1.1, method="bilinear", seed=0, **kwargs):
    kwargs.setdefault("dtype", "float32")
    super().__init__(**kwargs)
    self.lo, self.hi = check_range(lo, hi)
    if method not in METHODS:
      raise ValueError(f"resize method must be one of {', '.join(METHODS)}, got {method!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
      raise ValueError(f"seed must be an integer, got {seed!r}.")
    self.method = method
    self.seed = int(seed)
    self.draws = self.add_weight(name="draws", shape=(), dtype=tf.int64, initializer="zeros",
                                 trainable=False)

  def padded_size(self, height, width):
    """(P_h, P_w) int32 tensors: floor(hi * size + 1/2), at least 1."""
    size = tf.cast(tf.stack([height, width]), tf.float64)
    padded = tf.maximum(_round_half_up(self.hi * size), 1)
    return padded[0], padded[1]

  def _next_seed(self):
    count = self.draws.assign_add(1)
    return tf.stack([tf.constant(self.seed, tf.int64), count - 1])

  def sample(self, n, height, width, seed=None):
    """Draw the geometry of n images of size height x width.

    Args:
      n, height, width: int scalars (Python or tensors).
      seed: None (next draw of this layer: advances ``draws``) or a (2,) int
        stateless seed (does not advance it).

    Returns:
      int32 (n, 6): per image [top, left, h', w', H, W] in LR pixels.
    """
    seed = self._next_seed() if seed is None else tf.cast(seed, tf.int64)
    ph, pw = self.padded_size(height, width)
    u = tf.random.stateless_uniform(tf.stack([n, 3]), seed=seed, dtype=tf.float64)
    r = self.lo + (self.hi - self.lo) * u[:, 0]
    size = tf.cast(tf.stack([height, width]), tf.float64)
    new = tf.clip_by_value(_round_half_up(r[:, None] * size[None]), 1, tf.stack([ph, pw])[None])
    room = tf.stack([ph, pw])[None] - new  # (n, 2) padding available
    offset = tf.minimum(tf.cast(tf.floor(u[:, 1:] * tf.cast(room + 1, tf.float64)), tf.int32),
                        room)
    hw = tf.broadcast_to(tf.cast(tf.stack([height, width]), tf.int32), tf.stack([n, 2]))
    return tf.concat([offset, new, hw], axis=1)

  def transform(self, x, seed=None):
    """Steps 1-2: resize each image by its own r and zero-pad it to P_h x P_w.

    Args:
      x: float (N, H, W, C) images.
      seed: as ``sample``.

    Returns:
      (padded float32 (N, P_h, P_w, C), geometry int32 (N, 6) from ``sample``).

    Raises:
      ValueError: x is not rank 4.
    """
    x = tf.cast(x, tf.float32)
    if x.shape.rank != 4:
      raise ValueError(f"RandomResizePad wants (N, H, W, C) images, got shape {x.shape}.")
    shape = tf.shape(x)
    geometry = self.sample(shape[0], shape[1], shape[2], seed)
    ph, pw = self.padded_size(shape[1], shape[2])
    method = self.method

    def one(args):
      image, g = args
      small = tf.cast(tf.image.resize(image, g[2:4], method=method), tf.float32)
      return tf.image.pad_to_bounding_box(small, g[0], g[1], ph, pw)

    padded = tf.map_fn(one, (x, geometry),
                       fn_output_signature=tf.TensorSpec([None, None, None], tf.float32))
    padded = tf.ensure_shape(padded, [None, None, None, x.shape[-1]])
    return padded, geometry

  def restore(self, y, geometry):
    """Step 4: crop the image region out of y and resize it to k H x k W.

    Args:
      y: float (N, k P_h, k P_w, C), the padded images' SR output (k = s) or
        any map of the padded geometry at k times its resolution (k >= 1).
      geometry: int32 (N, 6) from ``transform``.

    Returns:
      float32 (N, k H, k W, C).

    Raises:
      ValueError: y's size is not k (P_h, P_w) for an integer k >= 1 (when
        the sizes are known: eagerly; else tf.errors.InvalidArgumentError at run time).
    """
    y = tf.cast(y, tf.float32)
    height, width = geometry[0, 4], geometry[0, 5]
    ph, pw = self.padded_size(height, width)
    k = tf.shape(y)[1] // ph
    sizes = [tf.get_static_value(v) for v in (ph, pw)] + list(y.shape[1:3])
    if None not in sizes:  # eager or static shapes: check here, with a ValueError
      ph_, pw_, yh, yw = (int(v) for v in sizes)
      if yh % ph_ or yh < ph_ or yh // ph_ * pw_ != yw:
        raise ValueError(f"restore: the map is {yh} x {yw}, not an integer multiple k >= 1 of "
                         f"the padded size {ph_} x {pw_}.")
    with tf.control_dependencies([tf.debugging.assert_equal(
        tf.stack([tf.shape(y)[1], tf.shape(y)[2], tf.minimum(k, 1)]), tf.stack([k * ph, k * pw, 1]),
        message="restore: the map's size must be an integer multiple >= 1 of the padded size")]):
      k = tf.identity(k)
    method = self.method

    def one(args):
      image, g = args
      crop = image[k * g[0]:k * (g[0] + g[2]), k * g[1]:k * (g[1] + g[3])]
      return tf.cast(tf.image.resize(crop, k * g[4:6], method=method), tf.float32)

    out = tf.map_fn(one, (y, geometry),
                    fn_output_signature=tf.TensorSpec([None, None, None], tf.float32))
    return tf.ensure_shape(out, [None, None, None, y.shape[-1]])

  def call(self, x):
    return self.transform(x)[0]

  def get_config(self):
    config = super().get_config()
    config.update(lo=self.lo, hi=self.hi, method=self.method, seed=self.seed)
    return config

  def spec(self):
    text = f"resize:{self.lo:g}-{self.hi:g}"
    return text if self.method == "bilinear" else f"{text}:{self.method}"
