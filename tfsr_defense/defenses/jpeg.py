"""JPEG compression of the SR network's input (Das et al. 2018), with a BPDA gradient.

Forward: every image of the batch is quantised to 8 bits, JPEG-encoded at
quality q (libjpeg's standard quantisation tables scaled by q, 4:2:0 chroma
subsampling, baseline Huffman coding: ``tf.io.encode_jpeg``, the encoder PIL
uses too) and decoded with the accurate integer IDCT
(``dct_method="INTEGER_ACCURATE"``). The round trip therefore equals PIL's
``Image.save(format="JPEG", quality=q)`` + ``Image.open`` byte for byte
(``tf.image.adjust_jpeg_quality`` decodes with the fast IDCT and differs from
PIL by up to 32 grey levels at q = 100).

Gradient: JPEG's quantisation is piecewise constant, so its true derivative
is zero almost everywhere (and the TF ops have none). With ``bpda=True`` (the
default) the layer's backward pass is the identity: Backward Pass
Differentiable Approximation with g(x) = x (Athalye et al., ICML 2018,
sec. 4.1), the straight-through estimator, which is what an adaptive attacker
uses against JPEG. With ``bpda=False`` the backward pass returns zeros (the
true a.e. derivative): gradient-based attacks through the layer then see no
signal (gradient masking), which is the non-adaptive view.
"""

import tensorflow as tf

from tfsr_defense.defenses.defended_sr import InputDefense

__all__ = ["JpegCompression", "check_quality", "jpeg_round_trip"]


def check_quality(quality):
  """Validate a JPEG quality: an integer in 1..100; returns it as int.

  Raises:
    ValueError: not an integer (bools and non-integral floats included) or
      outside 1..100.
  """
  if isinstance(quality, bool) or not isinstance(quality, (int, float)) \
      or (isinstance(quality, float) and not quality.is_integer()):
    raise ValueError(f"JPEG quality must be an integer in 1..100, got {quality!r}.")
  if not 1 <= quality <= 100:
    raise ValueError(f"JPEG quality must be in 1..100, got {quality}.")
  return int(quality)


def jpeg_round_trip(x, quality):
  """JPEG encode + decode of a batch, no gradient.

  Args:
    x: float (N, H, W, C) images, C = 1 or 3, values in [0, 1] (clipped to
      [0, 1], then rounded to the nearest of the 256 levels k/255).
    quality: JPEG quality, 1..100 (checked by the caller).

  Returns:
    float32 (N, H, W, C) in [0, 1], multiples of 1/255.
  """
  x = tf.convert_to_tensor(x, tf.float32)
  pixels = tf.cast(tf.round(tf.clip_by_value(x, 0.0, 1.0) * 255.0), tf.uint8)

  def one(image):
    data = tf.io.encode_jpeg(image, quality=quality)
    # channels=0: as encoded (1 or 3); works when the static channel count is unknown.
    return tf.io.decode_jpeg(data, channels=0, dct_method="INTEGER_ACCURATE")

  out = tf.map_fn(one, pixels, fn_output_signature=tf.TensorSpec([None, None, None], tf.uint8))
  out = tf.reshape(out, tf.shape(x))  # same shape; also restores the static shape
  return tf.cast(out, tf.float32) / 255.0


@tf.keras.utils.register_keras_serializable(package="tfsr_defense")
class JpegCompression(InputDefense):
  """JPEG compression at quality q as a Keras layer (Das et al. 2018), batched.

  Input float (N, H, W, C) in [0, 1] (C = 1 or 3, any H, W, float32 or
  bfloat16); output float32 of the same shape in [0, 1], multiples of 1/255
  (see ``jpeg_round_trip``). Deterministic, no weights; runs in float32
  whatever the global dtype policy.

  Args:
    quality: JPEG quality, integer in 1..100 (Das et al. use 20..80; the
      paper's baseline section names no value).
    bpda: True (default): identity backward pass (BPDA / straight-through,
      Athalye et al. 2018): d out / d x := I. False: zero gradient (the true
      derivative almost everywhere).
    **kwargs: Keras Layer arguments (name, ...).

  Raises:
    ValueError: bad quality; an input that is not rank 4 with 1 or 3 channels.
  """

  def __init__(self, quality=75, bpda=True, **kwargs):
    kwargs.setdefault("dtype", "float32")
    super().__init__(**kwargs)
    self.quality = check_quality(quality)
    self.bpda = bool(bpda)

  def call(self, x):
    if x.shape.rank != 4 or x.shape[-1] not in (None, 1, 3):
      raise ValueError(f"JpegCompression wants (N, H, W, 1 or 3) images, got shape {x.shape}.")
    quality, bpda = self.quality, self.bpda

    @tf.custom_gradient
    def compress(images):
      out = jpeg_round_trip(images, quality)

      def grad(upstream):
        return tf.identity(upstream) if bpda else tf.zeros_like(upstream)

      return out, grad

    return compress(tf.cast(x, tf.float32))

  def compute_output_shape(self, input_shape):
    return tf.TensorShape(input_shape)

  def get_config(self):
    config = super().get_config()
    config.update(quality=self.quality, bpda=self.bpda)
    return config

  def spec(self):
    return f"jpeg:{self.quality}"
