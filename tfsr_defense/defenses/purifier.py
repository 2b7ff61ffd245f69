"""Super-resolution as a defense for image classifiers (Mustafa et al., IEEE TIP 2019).

Mustafa, Khan, Hayat, Shen, Shao, "Image Super-Resolution as a Defense Against
Adversarial Attacks" (arXiv 1901.01677; IEEE TIP 29, 2020). An image meant for a
classifier is purified before classification; the classifier is unchanged and
nothing is trained for the defense. ``SRPurifier`` maps float32 RGB
(N, H, W, 3) in [0, 1] to float32 (N, H', W', 3) in [0, 1] in four stages,
following the authors' released code (``Wavelet_Denoising.py``, then their
EDSR ``main.py --scale 2``):

1. Wavelet denoising, ``skimage.restoration.denoise_wavelet(image,
   sigma=denoise_sigma, wavelet='db1', mode='soft', method='BayesShrink',
   convert2ycbcr=True, channel_axis=-1)`` on each image (float64), clipped
   to [0, 1]. The authors call it with ``sigma=0.04`` (later 0-0.04, "a
   smaller sigma for small perturbations") and leave the wavelet at
   scikit-image's default, Haar ('db1'). What sigma means changed in
   scikit-image after their code (0.14, 2018): 0.14 applied sigma as is to
   every YCbCr channel after normalising that channel to [0, 1] by its own
   min / max; current versions divide sigma by the channel's range again
   (``rescale_sigma=False``) or first convert it from RGB to YCbCr units
   (``rescale_sigma=True``). ``sigma_convention`` picks one:

   * ``'skimage0.14'`` (default, the authors'): passes the per-channel
     sigma ``denoise_sigma * (max_c - min_c)`` of the image's
     ``skimage.color.rgb2ycbcr`` channels with ``rescale_sigma=False``, so
     that each normalised channel is thresholded with ``denoise_sigma``
     exactly as under 0.14. (0.14 also clipped each normalised channel to
     [0, 1] before undoing the normalisation; current scikit-image does
     not. On scikit-image's astronaut / coffee / chelsea photos the two
     differ on a few pixels only: mean |difference| <= 1.3e-6, max 0.09.)
   * ``'rgb'``: today's ``rescale_sigma=True``: sigma is the noise std of
     the RGB image in [0, 1] units (when Y spans its full range, 0.67 x the
     0.14 threshold on Y, and 1.4-2.7 x on the narrower chroma channels;
     mean |difference| of the outputs 0.006-0.010 on those photos).

2. JPEG round trip at ``jpeg_quality`` (default 95): the authors save the
   denoised image with ``matplotlib.pyplot.imsave(..._wd.jpg)`` and their
   EDSR reads that file. Matplotlib of their time (< 3.3) saved JPEGs at
   ``rcParams['savefig.jpeg_quality'] = 95`` through Pillow; 95 is the
   default here. (Matplotlib truncated floats to uint8; here they are
   rounded.) ``defenses.jpeg.jpeg_round_trip``: 8-bit quantisation, libjpeg
   4:2:0, accurate integer IDCT, equal to Pillow's encode / decode.
3. SR x2 with any SR network: a Keras model of ``tfsr_defense.models``
   (``build_model('edsr', 2)``: the authors' EDSR-baseline x2), an exported
   SavedModel (``tfsr_defense.serving.load_sr_model(path)``), or any
   callable float32 [0, 1] (N, H, W, 3) -> (N, sH, sW, 3); its output is
   clipped to [0, 1]. ``BicubicUpsampler`` is a non-learned stand-in.
4. Back to ``output_size`` (default: the input's H x W, i.e. the
   classifier's input when the purifier sits in front of it) with
   ``tf.image.resize(method=resize_method, antialias=antialias)``, default
   bilinear with antialiasing (for the x2 reduction a triangle filter two
   output pixels wide, like PIL's bilinear reduction), clipped to [0, 1].
   The authors' ``Accuracy.py`` loads the 598 x 598 SR PNGs for a 299 x 299
   Inception-v3 instead; a fixed-size classifier needs this step.

Gradients (the adaptive attacker, Athalye et al., ICML 2018): stages 1-2 are
NumPy / piecewise constant. With ``bpda=True`` (default) their backward pass
is the identity (BPDA with g(x) = x, the straight-through estimator), while
the SR network (3) and the resizing (4) give their true gradients. So
``classifier(purifier(x))`` can be differentiated end to end.

``defended_classifier(classifier, purifier)`` puts the purifier in front of a
classifier (resizing first to the classifier's input size when it has one,
as the authors' pipeline does); the result is a Keras model,
float32 [0, 1] images -> the classifier's logits.

    from tfsr_defense import models, classifiers
    from tfsr_defense.defenses import purifier
    sr = models.build_model("edsr", 2)                  # trained weights: load them
    clf = classifiers.load_classifier("lite0.h5", input_size=224, value_range="0-255")
    defended = purifier.defended_classifier(clf, purifier.SRPurifier(sr, denoise_sigma=0.04))
    logits = defended(images)                            # (N, 1000)
"""

import numpy as np
import tensorflow as tf

from tfsr_defense.defenses import jpeg as jpeg_lib

__all__ = ["DEFAULT_SIGMA", "DEFAULT_WAVELET", "DEFAULT_JPEG_QUALITY", "SIGMA_CONVENTIONS",
           "RESIZE_METHODS", "wavelet_denoise", "denoise_arguments", "straight_through",
           "check_resize", "resize_images", "BicubicUpsampler", "SRPurifier", "DefendedClassifier",
           "defended_classifier"]

DEFAULT_SIGMA = 0.04          # Wavelet_Denoising.py of the authors
DEFAULT_WAVELET = "db1"       # scikit-image's default (Haar); the authors do not set it
DEFAULT_JPEG_QUALITY = 95     # matplotlib < 3.3 savefig.jpeg_quality (the authors' plt.imsave)
SIGMA_CONVENTIONS = ("skimage0.14", "rgb")
RESIZE_METHODS = ("bilinear", "area", "bicubic", "lanczos3", "nearest")


def _check_sigma(sigma):
  if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.floating)) \
      or not np.isfinite(sigma) or sigma < 0:
    raise ValueError(f"denoise_sigma must be a finite number >= 0 ([0, 1] pixel units), "
                     f"got {sigma!r}.")
  return float(sigma)


def _check_convention(convention):
  if convention not in SIGMA_CONVENTIONS:
    raise ValueError(f"Unknown sigma_convention {convention!r}: use one of "
                     f"{', '.join(SIGMA_CONVENTIONS)}.")
  return convention


def _check_wavelet(wavelet):
  import pywt  # pylint: disable=g-import-not-at-top
  if wavelet not in pywt.wavelist(kind="discrete"):
    raise ValueError(f"Unknown wavelet {wavelet!r}: use a discrete PyWavelets name "
                     "(e.g. 'db1' = Haar, 'db2', 'sym4').")
  return wavelet


def denoise_arguments(image, sigma=DEFAULT_SIGMA, wavelet=DEFAULT_WAVELET,
                      sigma_convention="skimage0.14"):
  """The keyword arguments ``wavelet_denoise`` passes to ``denoise_wavelet`` for ``image``.

  Args:
    image: float (H, W, 3) RGB in [0, 1].
    sigma, wavelet, sigma_convention: see ``wavelet_denoise``.

  Returns:
    dict for ``skimage.restoration.denoise_wavelet(image, **kwargs)``.
  """
  from skimage import color  # pylint: disable=g-import-not-at-top
  kwargs = dict(wavelet=wavelet, mode="soft", method="BayesShrink", convert2ycbcr=True,
                channel_axis=-1)
  if sigma_convention == "skimage0.14":
    ycbcr = color.rgb2ycbcr(np.asarray(image, np.float64))
    ranges = ycbcr.reshape(-1, 3).max(axis=0) - ycbcr.reshape(-1, 3).min(axis=0)
    kwargs.update(sigma=[float(sigma * r) for r in ranges], rescale_sigma=False)
  else:
    kwargs.update(sigma=float(sigma), rescale_sigma=True)
  return kwargs


def wavelet_denoise(images, sigma=DEFAULT_SIGMA, wavelet=DEFAULT_WAVELET,
                    sigma_convention="skimage0.14"):
  """BayesShrink soft wavelet denoising in YCbCr of every image (stage 1, NumPy).

  Args:
    images: float (N, H, W, 3) or (H, W, 3) RGB in [0, 1] (NumPy or tensor).
    sigma: noise standard deviation, >= 0 (authors: 0.04); its units depend
      on ``sigma_convention`` (module docstring).
    wavelet: PyWavelets discrete wavelet (default 'db1' = Haar, scikit-image's
      default, as in the authors' code).
    sigma_convention: 'skimage0.14' (the authors' scikit-image) or 'rgb'.

  Returns:
    float32 array of the input's shape, clipped to [0, 1].

  Raises:
    ValueError: bad sigma, wavelet or convention; images not (..., H, W, 3).
  """
  sigma = _check_sigma(sigma)
  _check_convention(sigma_convention)
  _check_wavelet(wavelet)
  from skimage.restoration import denoise_wavelet  # pylint: disable=g-import-not-at-top
  x = np.asarray(images, dtype=np.float64)
  single = x.ndim == 3
  if single:
    x = x[None]
  if x.ndim != 4 or x.shape[-1] != 3:
    raise ValueError(f"wavelet_denoise wants RGB images (N, H, W, 3) or (H, W, 3), got shape "
                     f"{np.shape(images)}.")
  out = np.empty(x.shape, np.float32)
  for i, image in enumerate(x):
    out[i] = np.clip(denoise_wavelet(image, **denoise_arguments(image, sigma, wavelet,
                                                                sigma_convention)), 0.0, 1.0)
  return out[0] if single else out


def straight_through(fn, x, bpda=True):
  """y = fn(x) computed in NumPy, with the BPDA identity gradient.

  Args:
    fn: NumPy function float32 (N, H, W, C) -> float32 of the same shape.
    x: float32 tensor (N, H, W, C).
    bpda: True: dy/dx := I (Athalye et al. 2018, BPDA with g(x) = x);
      False: zero gradient.

  Returns:
    float32 tensor of x's shape (static shape kept).
  """
  @tf.custom_gradient
  def op(v):
    y = tf.numpy_function(fn, [v], tf.float32, stateful=False)
    y = tf.reshape(y, tf.shape(v))
    y.set_shape(v.shape)

    def grad(upstream):
      return tf.identity(upstream) if bpda else tf.zeros_like(upstream)

    return y, grad

  return op(tf.convert_to_tensor(x, tf.float32))


def check_resize(method, antialias):
  """(method, bool(antialias)); ValueError unless ``method`` is one of ``RESIZE_METHODS``."""
  if method not in RESIZE_METHODS:
    raise ValueError(f"Unknown resize method {method!r}: use one of {', '.join(RESIZE_METHODS)}.")
  return method, bool(antialias)


def resize_images(images, size, method="bilinear", antialias=True):
  """Resize float32 [0, 1] NHWC images to ``size`` = (height, width), clipped to [0, 1].

  ``tf.image.resize(method=..., antialias=...)`` (half-pixel centres); the
  identity (no resampling) when the static size already equals ``size``.
  """
  images = tf.convert_to_tensor(images, tf.float32)
  size = [int(s) for s in size] if not tf.is_tensor(size) else size
  if not tf.is_tensor(size) and list(images.shape[1:3]) == list(size):
    return images
  out = tf.image.resize(images, size, method=method, antialias=antialias)
  return tf.clip_by_value(tf.cast(out, tf.float32), 0.0, 1.0)


@tf.keras.utils.register_keras_serializable(package="tfsr_defense")
class BicubicUpsampler(tf.keras.layers.Layer):
  """Non-learned SR stand-in: bicubic x``scale`` upsampling (float32 [0, 1] in, clipped out).

  ``tf.image.resize(method='bicubic')``: Keys cubic a = -0.5, half-pixel
  centres, no antialiasing (upsampling). (N, H, W, 3) -> (N, sH, sW, 3).
  """

  def __init__(self, scale=2, **kwargs):
    kwargs.setdefault("dtype", "float32")
    super().__init__(**kwargs)
    if isinstance(scale, bool) or int(scale) != scale or scale < 1:
      raise ValueError(f"scale must be an integer >= 1, got {scale!r}.")
    self.scale = int(scale)

  def call(self, x):
    x = tf.cast(x, tf.float32)
    size = tf.shape(x)[1:3] * self.scale
    out = tf.image.resize(x, size, method="bicubic")
    return tf.clip_by_value(out, 0.0, 1.0)

  def get_config(self):
    config = super().get_config()
    config.update(scale=self.scale)
    return config


def _is_keras(obj):
  return isinstance(obj, (tf.keras.Model, tf.keras.layers.Layer))


@tf.keras.utils.register_keras_serializable(package="tfsr_defense")
class SRPurifier(tf.keras.layers.Layer):
  """The purifier of Mustafa et al.: wavelet denoising, JPEG, SR x2, resize (module docstring).

  Input float (N, H, W, 3) RGB in [0, 1] (any H, W; batched, each image
  denoised on its own); output float32 (N, H', W', 3) in [0, 1],
  (H', W') = ``output_size`` or (H, W).

  Args:
    sr_model: SR network: a Keras model / layer (called with
      ``training=False``), any callable float32 (N, H, W, 3) -> (N, sH, sW, 3)
      in [0, 1] (e.g. ``serving.load_sr_model(path)``), or None (no SR stage).
    denoise_sigma: wavelet-denoising sigma >= 0 (default 0.04, the
      authors'), or None to skip denoising.
    wavelet: PyWavelets wavelet, default 'db1' (Haar; scikit-image's default).
    sigma_convention: 'skimage0.14' (default) or 'rgb' (``wavelet_denoise``).
    jpeg_quality: JPEG quality 1..100 between denoising and SR (default 95),
      or None to skip JPEG.
    output_size: (height, width) or int of the output; None: the input's.
    resize_method: ``tf.image.resize`` method of stage 4 (default 'bilinear').
    antialias: antialiasing of stage 4 (default True).
    bpda: identity backward pass through stages 1-2 (default True); False:
      zero gradient there (what an attacker without BPDA would see).
    **kwargs: Keras Layer arguments (name, ...).

  Raises:
    ValueError: bad sigma, wavelet, convention, JPEG quality, size or method;
      a non-callable sr_model.
  """

  def __init__(self, sr_model=None, denoise_sigma=DEFAULT_SIGMA, wavelet=DEFAULT_WAVELET,
               sigma_convention="skimage0.14", jpeg_quality=DEFAULT_JPEG_QUALITY,
               output_size=None, resize_method="bilinear", antialias=True, bpda=True, **kwargs):
    kwargs.setdefault("dtype", "float32")
    super().__init__(**kwargs)
    if sr_model is not None and not callable(sr_model):
      raise ValueError(f"sr_model must be a Keras model or a callable, got "
                       f"{type(sr_model).__name__}.")
    self.sr_model = sr_model
    self.denoise_sigma = None if denoise_sigma is None else _check_sigma(denoise_sigma)
    self.wavelet = _check_wavelet(wavelet)
    self.sigma_convention = _check_convention(sigma_convention)
    self.jpeg_quality = None if jpeg_quality is None else jpeg_lib.check_quality(jpeg_quality)
    if output_size is not None:
      if isinstance(output_size, (int, np.integer)):
        output_size = (int(output_size), int(output_size))
      output_size = tuple(int(s) for s in output_size)
      if len(output_size) != 2 or min(output_size) < 1:
        raise ValueError(f"output_size must be (height, width) >= 1, got {output_size!r}.")
    self.output_size = output_size
    self.resize_method, self.antialias = check_resize(resize_method, antialias)
    self.bpda = bool(bpda)

  # -- stages ---------------------------------------------------------------

  def _numpy_stage(self, images):
    """Stage 1 in NumPy (float32 (N, H, W, 3) -> same)."""
    return wavelet_denoise(images, self.denoise_sigma, self.wavelet, self.sigma_convention)

  def denoise(self, x):
    """Stage 1 with the BPDA gradient (identity when ``denoise_sigma`` is None)."""
    x = tf.cast(x, tf.float32)
    if self.denoise_sigma is None:
      return x
    return straight_through(self._numpy_stage, x, self.bpda)

  def compress(self, x):
    """Stage 2: JPEG round trip with the BPDA gradient (identity when ``jpeg_quality`` is None)."""
    x = tf.cast(x, tf.float32)
    if self.jpeg_quality is None:
      return x
    quality, bpda = self.jpeg_quality, self.bpda

    @tf.custom_gradient
    def op(v):
      def grad(upstream):
        return tf.identity(upstream) if bpda else tf.zeros_like(upstream)
      return jpeg_lib.jpeg_round_trip(v, quality), grad

    return op(x)

  def super_resolve(self, x):
    """Stage 3: the SR network, clipped to [0, 1] (identity when ``sr_model`` is None)."""
    x = tf.cast(x, tf.float32)
    if self.sr_model is None:
      return x
    y = self.sr_model(x, training=False) if _is_keras(self.sr_model) else self.sr_model(x)
    return tf.clip_by_value(tf.cast(y, tf.float32), 0.0, 1.0)

  def resample(self, y, size):
    """Stage 4: ``resize_images(y, size)`` with this purifier's method and antialiasing."""
    return resize_images(y, size, self.resize_method, self.antialias)

  def _target_size(self, x):
    if self.output_size is not None:
      return self.output_size
    if x.shape[1] is not None and x.shape[2] is not None:
      return (int(x.shape[1]), int(x.shape[2]))
    return tf.shape(x)[1:3]

  def stages(self, images):
    """Every stage's output (for figures and timing).

    Returns:
      dict denoised, jpeg, sr, output: float32 tensors (stage 3 at the SR
      resolution).
    """
    x = tf.convert_to_tensor(images, tf.float32)
    denoised = self.denoise(x)
    compressed = self.compress(denoised)
    sr = self.super_resolve(compressed)
    return dict(denoised=denoised, jpeg=compressed, sr=sr,
                output=self.resample(sr, self._target_size(x)))

  def call(self, images):
    x = tf.cast(images, tf.float32)
    if x.shape.rank != 4 or x.shape[-1] not in (None, 3):
      raise ValueError(f"SRPurifier wants RGB images (N, H, W, 3), got shape {x.shape}.")
    y = self.super_resolve(self.compress(self.denoise(x)))
    return self.resample(y, self._target_size(x))

  def compute_output_shape(self, input_shape):
    shape = tf.TensorShape(input_shape).as_list()
    if self.output_size is not None:
      shape[1:3] = list(self.output_size)
    return tf.TensorShape(shape)

  def describe(self):
    """The settings that change the output, as a dict (report keys)."""
    return dict(denoise_sigma=self.denoise_sigma, wavelet=self.wavelet,
                sigma_convention=self.sigma_convention, jpeg_quality=self.jpeg_quality,
                resize=f"{self.resize_method}{'+aa' if self.antialias else ''}",
                output_size=list(self.output_size) if self.output_size else None)

  def get_config(self):
    """Config mirroring ``__init__``; the SR model is serialised when it is a Keras object.

    Raises:
      NotImplementedError: ``sr_model`` is a plain callable (e.g. a loaded
        SavedModel), which Keras cannot serialise; save its path instead.
    """
    if self.sr_model is not None and not _is_keras(self.sr_model):
      raise NotImplementedError(
          f"SRPurifier with a non-Keras SR callable ({type(self.sr_model).__name__}) cannot be "
          "serialised; keep the SR SavedModel's path and rebuild the purifier from it.")
    config = super().get_config()
    config.update(
        sr_model=(None if self.sr_model is None
                  else tf.keras.utils.serialize_keras_object(self.sr_model)),
        denoise_sigma=self.denoise_sigma, wavelet=self.wavelet,
        sigma_convention=self.sigma_convention, jpeg_quality=self.jpeg_quality,
        output_size=list(self.output_size) if self.output_size else None,
        resize_method=self.resize_method, antialias=self.antialias, bpda=self.bpda)
    return config

  @classmethod
  def from_config(cls, config):
    config = dict(config)
    if config.get("sr_model") is not None:
      config["sr_model"] = tf.keras.utils.deserialize_keras_object(config["sr_model"])
    return cls(**config)


class DefendedClassifier(tf.keras.Model):
  """``classifier(purifier(x))``: float32 [0, 1] (N, H, W, 3) -> the classifier's logits (N, K).

  When the classifier has an ``input_size`` (``classifiers.ImageClassifier``)
  and the input differs from it, the input is first resized to it with the
  purifier's resampling, as the authors resize the image to the classifier's
  input before denoising. Differentiable end to end (BPDA in stages 1-2).
  """

  def __init__(self, classifier, purifier, **kwargs):
    super().__init__(**kwargs)
    self.classifier = classifier
    self.purifier = purifier

  def purify(self, images):
    """The purified images the classifier sees (float32, its input size)."""
    x = tf.cast(images, tf.float32)
    size = getattr(self.classifier, "input_size", None)
    if size is not None:
      x = resize_images(x, size, getattr(self.purifier, "resize_method", "bilinear"),
                        getattr(self.purifier, "antialias", True))
    return self.purifier(x)

  def call(self, images, training=False):
    del training  # inference only: the classifier and SR run with training=False
    return self.classifier(self.purify(images), training=False)


def defended_classifier(classifier, purifier, name=None):
  """The classifier behind the purifier, as a Keras model (see ``DefendedClassifier``).

  Args:
    classifier: Keras model or ``classifiers.ImageClassifier`` taking
      float32 [0, 1] images.
    purifier: ``SRPurifier`` (or any Keras layer mapping [0, 1] images to
      [0, 1] images of the same size).
    name: Keras name (default 'defended_<classifier name>').

  Returns:
    DefendedClassifier.
  """
  return DefendedClassifier(classifier, purifier,
                            name=name or f"defended_{getattr(classifier, 'name', 'classifier')}")
