"""Data: MATLAB-compatible bicubic degradation, dataset registry, tf.data pipelines.

Images cross this module's public functions as uint8 RGB arrays (H, W, 3)
(every image mode is converted to 8-bit RGB: ``load_image``) or, in the tf.data pipelines, as
float32 RGB in [0, 1], NHWC.

Benchmark LR images (Set5, Set14, BSD100) are MATLAB ``imresize(HR, 1/s,
'bicubic')`` output; ``imresize`` below reproduces them bit for bit, and the
same function makes the training LR so that train and test degradations agree.
"""

import dataclasses
import os
import warnings

import numpy as np
import tensorflow as tf
from PIL import Image

__all__ = [
    "DATA_DIR_ENV", "DATASETS", "ImagePair", "imresize", "bicubic_downscale",
    "modcrop", "load_image", "resolve_data_dir", "load_pairs", "train_dataset",
    "div2k_train_dataset", "embedded_images",
]

DATA_DIR_ENV = "TFSR_DATA_DIR"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# name -> folder under the data directory (layout of ../shared/data:
# <folder>/HR/*.png and, for test sets, <folder>/LR_bicubic/X<s>/*.png).
DATASETS = {
    "set5": "Set5",
    "set14": "Set14",
    "bsd100": "BSD100",
    "t91": "T91",
    "bsd200": "BSD200",
}
EMBEDDED = "embedded"          # photographs shipped in scikit-image, for training
EMBEDDED_VAL = "embedded_val"  # one held-out photograph, for validation
_EMBEDDED_TRAIN = ("astronaut", "chelsea", "rocket", "immunohistochemistry",
                   "hubble_deep_field")
_EMBEDDED_VAL = ("coffee",)
DIV2K = "div2k"


# ---------------------------------------------------------------------------
# MATLAB imresize (bicubic, antialiased)
# ---------------------------------------------------------------------------

def _cubic(x):
  """Keys cubic kernel with a = -0.5 (MATLAB's 'bicubic')."""
  absx = tf.abs(x)
  absx2 = absx * absx
  absx3 = absx2 * absx
  near = (1.5 * absx3 - 2.5 * absx2 + 1.0) * tf.cast(absx <= 1.0, x.dtype)
  far = (-0.5 * absx3 + 2.5 * absx2 - 4.0 * absx + 2.0) * tf.cast(
      (absx > 1.0) & (absx <= 2.0), x.dtype)
  return near + far


def _resize_matrix(in_size, out_size, scale):
  """Dense (out_size, in_size) float64 matrix of MATLAB's contributions().

  Antialiasing widens the kernel by 1/scale when downscaling. Out-of-range
  taps replicate the border pixel: this, not a symmetric fold, reproduces
  every benchmark LR file bit for bit (tests/test_data.py).
  """
  in_size = tf.cast(in_size, tf.int64)
  scale = tf.constant(scale, tf.float64)
  kernel_scale = tf.minimum(scale, 1.0)
  kernel_width = 4.0 / kernel_scale
  x = tf.range(1, tf.cast(out_size, tf.int64) + 1, dtype=tf.int64)
  u = tf.cast(x, tf.float64) / scale + 0.5 * (1.0 - 1.0 / scale)
  left = tf.floor(u - kernel_width / 2.0)
  taps = tf.cast(tf.math.ceil(kernel_width), tf.int64) + 2
  indices = left[:, None] + tf.cast(tf.range(taps), tf.float64)[None, :]
  weights = kernel_scale * _cubic(kernel_scale * (u[:, None] - indices))
  weights = weights / tf.reduce_sum(weights, axis=1, keepdims=True)
  idx = tf.clip_by_value(tf.cast(indices, tf.int64) - 1, 0, in_size - 1)
  return tf.reduce_sum(
      tf.one_hot(idx, tf.cast(in_size, tf.int32), dtype=tf.float64) * weights[..., None],
      axis=1)


def imresize(image, scale):
  """MATLAB ``imresize(image, scale, 'bicubic')`` (antialiased), in TensorFlow.

  Args:
    image: (H, W, C) uint8 or float tensor/array.
    scale: resize factor (e.g. 1/4 to downscale by 4). The output size is
      ceil(H * scale) x ceil(W * scale), as in MATLAB.

  Returns:
    Tensor (ceil(H*scale), ceil(W*scale), C) of the input dtype. For uint8 the
    result is rounded half away from zero and clipped after each pass
    (vertical first), as MATLAB's uint8 path does; float inputs are not
    rounded or clipped.

  Runs in float64; usable eagerly and inside tf.data / tf.function.
  """
  image = tf.convert_to_tensor(image)
  in_dtype = image.dtype
  is_uint8 = in_dtype == tf.uint8
  x = tf.cast(image, tf.float64)
  shape = tf.shape(x, out_type=tf.int64)
  out_h = tf.cast(tf.math.ceil(tf.cast(shape[0], tf.float64) * scale), tf.int64)
  out_w = tf.cast(tf.math.ceil(tf.cast(shape[1], tf.float64) * scale), tf.int64)

  def to_uint8_range(v):
    return tf.floor(tf.clip_by_value(v, 0.0, 255.0) + 0.5) if is_uint8 else v

  x = to_uint8_range(tf.einsum("oh,hwc->owc", _resize_matrix(shape[0], out_h, scale), x))
  x = to_uint8_range(tf.einsum("ow,hwc->hoc", _resize_matrix(shape[1], out_w, scale), x))
  return tf.cast(x, in_dtype)


def modcrop(image, scale):
  """Crop (H, W, ...) at the top-left to multiples of ``scale`` (the benchmark convention)."""
  h, w = image.shape[0], image.shape[1]
  return image[: h - h % scale, : w - w % scale]


def bicubic_downscale(hr, scale):
  """LR image of the benchmarks: MATLAB bicubic of the modcropped HR.

  Args:
    hr: uint8 (H, W, C) array or tensor.
    scale: integer SR scale s.

  Returns:
    uint8 numpy array (H // s, W // s, C).
  """
  hr = modcrop(np.asarray(hr), scale)
  return imresize(hr, 1.0 / scale).numpy()


# ---------------------------------------------------------------------------
# Files and the dataset registry
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class ImagePair:
  """An LR/HR pair. ``lr``: uint8 (h, w, 3); ``hr``: uint8 (s*h, s*w, 3), modcropped."""
  name: str
  lr: np.ndarray
  hr: np.ndarray


def _png_header(path):
  """(bit depth, colour type) of a PNG file, or None for other files."""
  with open(path, "rb") as f:
    head = f.read(26)
  if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
    return None
  return head[24], head[25]


def _to_uint8(samples, bits):
  """Unsigned ``bits``-bit samples -> uint8, rounded: round(v * 255 / (2^bits - 1))."""
  top = float(2 ** bits - 1)
  return np.floor(np.asarray(samples, np.float64) * (255.0 / top) + 0.5).astype(np.uint8)


def _drop_alpha(path, rgb, alpha, top):
  if alpha is not None and np.any(np.asarray(alpha) < top):
    warnings.warn(f"{path}: the alpha channel (transparency) is dropped; the colour channels "
                  "are used as stored.")
  return rgb


def _grey_or_rgb(path, array, bits):
  """(H, W, C) unsigned samples with C in 1..4 (grey, grey+alpha, RGB, RGBA) -> uint8 RGB."""
  channels = array.shape[-1]
  alpha = array[..., -1] if channels in (2, 4) else None
  colour = array[..., :3] if channels >= 3 else np.repeat(array[..., :1], 3, axis=-1)
  return _to_uint8(_drop_alpha(path, colour, alpha, 2 ** bits - 1), bits)


def load_image(path):
  """Read an image file as uint8 RGB (H, W, 3), whatever its mode.

  Modes (Pillow's names) and what becomes of them: ``1`` (bilevel: 0 / 255),
  ``L`` and ``P`` (palette) -> grey or palette colours replicated to RGB;
  ``I;16*`` and ``I`` (16-bit grey; ``I`` values are read as 16-bit samples)
  -> round(v * 255 / 65535); 16-bit RGB/RGBA PNG (decoded with all 16 bits by
  ``tf.io.decode_png``, Pillow truncates them) -> round(v * 255 / 65535);
  ``LA``, ``PA``, ``RGBA`` and palettes with transparency -> the colour
  channels, alpha dropped with a warning when it is not fully opaque;
  ``RGB``, ``CMYK``, ``YCbCr`` -> RGB (Pillow's conversion).

  Raises:
    FileNotFoundError: the file does not exist.
    ValueError: the file cannot be decoded as an image, or its mode
      (e.g. ``F``, floating point) has no defined 8-bit RGB form (names the
      file and mode).
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Image file not found: {path}")
  try:
    header = _png_header(path)
    if header is not None and header[0] == 16:  # 16-bit PNG: all 16 bits through TensorFlow
      with open(path, "rb") as f:
        array = tf.io.decode_png(f.read(), dtype=tf.uint16).numpy()
      return _grey_or_rgb(path, array, 16)
    with Image.open(path) as img:
      img.load()
      mode = img.mode
      if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
      if mode in ("1", "L"):
        return np.repeat(np.asarray(img.convert("L"), np.uint8)[..., None], 3, axis=-1)
      if mode.startswith("I;16") or mode == "I":
        values = np.asarray(img, dtype=np.int64)
        if values.min() < 0 or values.max() > 65535:
          raise ValueError(f"mode {mode} with values in [{values.min()}, {values.max()}], "
                           "outside the 16-bit range [0, 65535]")
        return _grey_or_rgb(path, values[..., None], 16)
      if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
        if mode == "RGB":
          return np.asarray(img, dtype=np.uint8)
      if mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        img = img.convert("LA" if mode in ("LA", "La") else "RGBA")
        return _grey_or_rgb(path, np.asarray(img, np.uint8), 8)
      if mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
      raise ValueError(f"mode {mode} has no defined 8-bit RGB form")
  except (OSError, SyntaxError, ValueError, tf.errors.OpError) as e:
    raise ValueError(f"Cannot read image {path}: {e}") from e


def _list_images(folder):
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"Image folder not found: {folder}")
  files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
  if not files:
    raise FileNotFoundError(
        f"No images ({', '.join(IMAGE_EXTENSIONS)}) in folder {folder}")
  return [os.path.join(folder, f) for f in files]


def resolve_data_dir(data_dir=None):
  """The data directory: ``data_dir`` if given, else $TFSR_DATA_DIR.

  Raises:
    FileNotFoundError: neither is set, or the directory does not exist.
  """
  data_dir = data_dir or os.environ.get(DATA_DIR_ENV)
  if not data_dir:
    raise FileNotFoundError(
        f"No data directory: pass --data_dir or set ${DATA_DIR_ENV} "
        "(e.g. to ../shared/data).")
  if not os.path.isdir(data_dir):
    raise FileNotFoundError(f"Data directory does not exist: {data_dir}")
  return data_dir


def embedded_images(names=_EMBEDDED_TRAIN):
  """Colour photographs shipped inside scikit-image's wheel (no download).

  Returns:
    list of (name, uint8 (H, W, 3)) in the order of ``names``.
  """
  import skimage.data  # pylint: disable=g-import-not-at-top
  return [(name, np.ascontiguousarray(np.asarray(getattr(skimage.data, name)())[..., :3]))
          for name in names]


def _pairs_from_hr(named_hr, scale):
  return [ImagePair(name, bicubic_downscale(hr, scale), modcrop(hr, scale))
          for name, hr in named_hr]


def _folder_pairs(folder, scale, max_images=None):
  """Pairs from <folder>/HR (+ LR_bicubic/X<s> if present) or a plain image folder."""
  hr_dir = os.path.join(folder, "HR")
  if not os.path.isdir(hr_dir):
    hr_dir = folder
  lr_dir = os.path.join(folder, "LR_bicubic", f"X{scale}")
  files = _list_images(hr_dir)[:max_images]
  pairs = []
  for path in files:
    name = os.path.splitext(os.path.basename(path))[0]
    hr = modcrop(load_image(path), scale)
    lr_path = os.path.join(lr_dir, os.path.basename(path))
    if os.path.isfile(lr_path):
      lr = load_image(lr_path)
      if lr.shape[0] * scale != hr.shape[0] or lr.shape[1] * scale != hr.shape[1]:
        raise ValueError(
            f"LR {lr_path} is {lr.shape[1]}x{lr.shape[0]} but HR {path} modcropped "
            f"to x{scale} is {hr.shape[1]}x{hr.shape[0]}.")
    else:
      lr = bicubic_downscale(hr, scale)
    pairs.append(ImagePair(name, lr, hr))
  return pairs


def load_pairs(name, scale, data_dir=None, max_images=None):
  """LR/HR pairs of a named dataset or a folder.

  Args:
    name: a registered name (``set5``, ``set14``, ``bsd100``, ``t91``,
      ``bsd200``: resolved under the data directory), ``embedded`` /
      ``embedded_val`` (scikit-image's photographs: 5 to train, 1 held out), or
      a folder path (either HR/ + LR_bicubic/X<s>/ or a flat folder of HR
      images; missing LR are made with ``imresize``).
    scale: SR scale s.
    data_dir: data directory for registered names (else $TFSR_DATA_DIR).
    max_images: keep only the first images (sorted by file name).

  Returns:
    list of ImagePair, uint8, HR modcropped to s.

  Raises:
    FileNotFoundError / ValueError: unknown name, missing folder, no images,
      unreadable image, LR/HR size mismatch.
  """
  key = name.lower()
  if key in (EMBEDDED, EMBEDDED_VAL):
    names = _EMBEDDED_TRAIN if key == EMBEDDED else _EMBEDDED_VAL
    return _pairs_from_hr(embedded_images(names)[:max_images], scale)
  if key in DATASETS:
    folder = os.path.join(resolve_data_dir(data_dir), DATASETS[key])
    if not os.path.isdir(folder):
      raise FileNotFoundError(f"Dataset '{name}' not found: no folder {folder}")
    return _folder_pairs(folder, scale, max_images)
  if os.path.isdir(name):
    return _folder_pairs(name, scale, max_images)
  raise ValueError(
      f"Unknown dataset '{name}': use one of {sorted(DATASETS) + [EMBEDDED, EMBEDDED_VAL]} "
      "or an existing folder.")


# ---------------------------------------------------------------------------
# tf.data pipelines
# ---------------------------------------------------------------------------

def random_patch(lr, hr, patch_size, scale, augment=True, seed=None):
  """Aligned random LR patch (p, p, 3) and HR patch (sp, sp, 3), flips + transpose.

  Args:
    lr: uint8 (h, w, 3) tensor; hr: uint8 (s*h, s*w, 3) tensor.
    seed: int (2,) stateless seed: the same seed gives the same patch, whatever
      thread of a parallel ``Dataset.map`` runs it. None: TF's stateful RNG.

  Returns:
    (lr_patch, hr_patch) float32 in [0, 1].
  """
  shape = tf.shape(lr)
  if seed is None:
    y = tf.random.uniform([], 0, shape[0] - patch_size + 1, dtype=tf.int32)
    x = tf.random.uniform([], 0, shape[1] - patch_size + 1, dtype=tf.int32)
    flips = tf.random.uniform([3]) < 0.5
  else:
    seeds = tf.random.experimental.stateless_split(seed, 3)
    y = tf.random.stateless_uniform([], seeds[0], 0, shape[0] - patch_size + 1, dtype=tf.int32)
    x = tf.random.stateless_uniform([], seeds[1], 0, shape[1] - patch_size + 1, dtype=tf.int32)
    flips = tf.random.stateless_uniform([3], seeds[2]) < 0.5
  lr = lr[y:y + patch_size, x:x + patch_size]
  hr = hr[y * scale:(y + patch_size) * scale, x * scale:(x + patch_size) * scale]
  if augment:
    lr, hr = [tf.cond(flips[0], lambda t=t: tf.reverse(t, [1]), lambda t=t: t) for t in (lr, hr)]
    lr, hr = [tf.cond(flips[1], lambda t=t: tf.reverse(t, [0]), lambda t=t: t) for t in (lr, hr)]
    lr, hr = [tf.cond(flips[2], lambda t=t: tf.transpose(t, [1, 0, 2]), lambda t=t: t)
              for t in (lr, hr)]
  lr = tf.ensure_shape(tf.image.convert_image_dtype(lr, tf.float32), [patch_size, patch_size, 3])
  hr = tf.ensure_shape(tf.image.convert_image_dtype(hr, tf.float32),
                       [patch_size * scale, patch_size * scale, 3])
  return lr, hr


def train_dataset(pairs, patch_size, scale, batch_size, augment=True, seed=None, skip_batches=0):
  """Infinite batched dataset of random aligned patches from in-memory pairs.

  Args:
    pairs: list of ImagePair (uint8). Images with an LR side < patch_size are
      skipped with a warning.
    patch_size: LR patch side p >= 1 (pixels). HR patches are s*p.
    batch_size: global batch size.
    augment: random flips and transpose.
    seed: int seed of the image order and of every patch's crop and flips.
    skip_batches: start after this many batches: the dataset then yields what
      the same call with skip_batches=0 yields from batch ``skip_batches`` on
      (a resumed training run continues the uninterrupted run's sequence),
      without computing the skipped patches.

  Returns:
    tf.data.Dataset of (lr (B, p, p, 3), hr (B, sp, sp, 3)) float32 in [0, 1].

  Raises:
    ValueError: patch_size < 1, skip_batches < 0, or no image is large enough.
  """
  if skip_batches < 0:
    raise ValueError(f"skip_batches must be >= 0, got {skip_batches}.")
  if patch_size < 1:
    raise ValueError(f"patch_size must be >= 1, got {patch_size}.")
  usable = []
  for p in pairs:
    if min(p.lr.shape[:2]) < patch_size:
      warnings.warn(f"Skipping {p.name}: LR {p.lr.shape[1]}x{p.lr.shape[0]} is smaller "
                    f"than the {patch_size}x{patch_size} patch.")
    else:
      usable.append(p)
  if not usable:
    raise ValueError(f"No training image has an LR side >= patch size {patch_size}.")
  rng = np.random.default_rng(seed)
  # Patch k's crop and flips come from the stateless seed (base, k): the same
  # seed gives the same batches even with parallel map threads (a stateful RNG
  # there hands out its numbers in thread order).
  base = int(rng.integers(2**31))
  skip = int(skip_batches) * int(batch_size)  # patches already drawn

  def images():
    # The same permutations in the same order as an unskipped run: draw and
    # drop the skipped ones (index arithmetic only).
    left = skip
    while True:
      order = rng.permutation(len(usable))
      if left < len(order):
        break
      left -= len(order)
    order = order[left:]
    while True:
      for i in order:
        yield usable[i].lr, usable[i].hr
      order = rng.permutation(len(usable))

  sig = (tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([None, None, 3], tf.uint8))
  ds = tf.data.Dataset.from_generator(images, output_signature=sig).enumerate(start=skip)
  ds = ds.map(lambda k, pair: random_patch(*pair, patch_size, scale, augment,
                                           seed=tf.stack([tf.constant(base, tf.int64), k])),
              num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def div2k_train_dataset(scale, patch_size, batch_size, data_dir=None, augment=True,
                        shuffle_buffer=64):
  """DIV2K training patches through tensorflow-datasets (``div2k/bicubic_x<s>``).

  Needs the internet the first time (tfds downloads and prepares DIV2K);
  DIV2K's LR files are MATLAB bicubic like the benchmarks. ``data_dir`` is
  tfds' data directory (the trainer passes its --data_dir; None: tfds'
  default, ~/tensorflow_datasets).

  Returns:
    tf.data.Dataset of (lr (B, p, p, 3), hr (B, sp, sp, 3)) float32 in [0, 1].

  Raises:
    RuntimeError: the dataset cannot be loaded (no internet and not prepared).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    ds = tfds.load(f"div2k/bicubic_x{scale}", split="train", data_dir=data_dir,
                   shuffle_files=True)
  except Exception as e:  # pylint: disable=broad-except
    raise RuntimeError(
        f"Cannot load DIV2K through tensorflow-datasets (div2k/bicubic_x{scale}): {e}. "
        "It needs the internet once to download; offline, train on a folder or "
        "on t91,bsd200 from the data directory.") from e
  ds = ds.repeat().shuffle(shuffle_buffer)
  ds = ds.map(lambda ex: random_patch(ex["lr"], ex["hr"], patch_size, scale, augment),
              num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def to_float(image):
  """uint8 (..., 3) array -> float32 [0, 1] tensor."""
  return tf.image.convert_image_dtype(tf.convert_to_tensor(image), tf.float32)
