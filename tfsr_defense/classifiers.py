"""Image classifiers and labelled images for the SR-as-a-defense evaluation (Mustafa et al. 2019).

* ``load_classifier(spec, input_size, value_range)``: a Keras classifier by
  path (.h5 / .keras / Keras SavedModel directory) or by
  ``keras.applications`` name (``KERAS_APPLICATIONS``, e.g. 'inception_v3',
  the paper's; ImageNet weights are downloaded, so offline these fail with
  an error naming the path option), wrapped as an ``ImageClassifier``:
  float32 RGB [0, 1] (N, H, W, 3) of any size -> float32 logits (N, K).
* ``load_labeled_images('nips2017dev')``: the NIPS 2017 adversarial
  competition's development images with their labels and attribution (or any
  folder in that layout).

Offline assets (../shared/data, see its MANIFEST.md):
``classifiers/efficientnet_lite0_imagenet.h5`` (input 224 x 224 RGB in 0..255,
normalisation inside, 1000 logits), ``classifiers/imagenet_class_index.json``,
``NIPS2017dev/`` (500 photos 299 x 299, ``images.csv``).
"""

import csv
import dataclasses
import json
import os

import numpy as np
import tensorflow as tf

from tfsr_defense import data
from tfsr_defense.defenses import purifier as purifier_lib

__all__ = ["VALUE_RANGES", "KERAS_APPLICATIONS", "NIPS2017DEV", "LABELS_FILE", "ImageClassifier",
           "load_classifier", "check_input_size", "check_value_range", "value_range_accuracy",
           "LabeledImage", "load_labeled_images", "imagenet_class_names", "prepare_images"]

# Declared input value ranges: name -> (value of a 0 pixel, value of a 1 pixel).
VALUE_RANGES = {"0-1": (0.0, 1.0), "0-255": (0.0, 255.0), "-1-1": (-1.0, 1.0)}

# keras.applications names -> (constructor, input size, value range of its preprocess_input).
KERAS_APPLICATIONS = {
    "inception_v3": ("InceptionV3", 299, "-1-1"),
    "xception": ("Xception", 299, "-1-1"),
    "inception_resnet_v2": ("InceptionResNetV2", 299, "-1-1"),
    "mobilenet_v2": ("MobileNetV2", 224, "-1-1"),
    "resnet50_v2": ("ResNet50V2", 224, "-1-1"),
    "efficientnet_b0": ("EfficientNetB0", 224, "0-255"),
}

NIPS2017DEV = "nips2017dev"
NIPS2017DEV_DIR = "NIPS2017dev"
LABELS_FILE = "images.csv"
CLASS_INDEX = os.path.join("classifiers", "imagenet_class_index.json")

# A leading affine layer maps the declared range to a span in this interval
# when the declaration is right (0..1, -1..1, standardised ~4, ...).
_NORMALISED_SPAN = (0.1, 20.0)


def _pair(size, what="input_size"):
  if isinstance(size, bool):
    raise ValueError(f"{what} must be an integer or (height, width), got {size!r}.")
  if isinstance(size, (int, np.integer)):
    size = (int(size), int(size))
  try:
    size = tuple(int(s) for s in size)
  except (TypeError, ValueError):
    raise ValueError(f"{what} must be an integer or (height, width), got {size!r}.") from None
  if len(size) != 2 or min(size) < 1:
    raise ValueError(f"{what} must be >= 1 (height, width), got {size!r}.")
  return size


def _check_range_name(value_range):
  if value_range not in VALUE_RANGES:
    raise ValueError(f"Unknown value_range {value_range!r}: use one of "
                     f"{', '.join(VALUE_RANGES)} (the pixel values the classifier expects).")
  return value_range


def _outputs_probabilities(model):
  """Whether the model's last layer applies a softmax (then logits = log p)."""
  last = model.layers[-1] if getattr(model, "layers", None) else None
  if last is None:
    return False
  if isinstance(last, tf.keras.layers.Softmax):
    return True
  activation = getattr(last, "activation", None)
  return activation is tf.keras.activations.softmax or \
      getattr(activation, "__name__", "") == "softmax"


class ImageClassifier(tf.keras.Model):
  """A classifier behind the project's image convention.

  Calling it: float (N, H, W, 3) RGB in [0, 1], any H x W -> float32 logits
  (N, K). Images of another size are resized to ``input_size`` with
  ``tf.image.resize(method=resize_method, antialias=antialias)`` (default
  bilinear with antialiasing), then mapped linearly to ``value_range``
  (0 -> lo, 1 -> hi). A model whose last layer is a softmax returns
  log-probabilities (valid logits: softmax(log p) = p; p floored at 1e-30).

  Attributes:
    model: the wrapped Keras model. input_size: (height, width).
    value_range: '0-1', '0-255' or '-1-1'. num_classes: K. source: path or
    keras.applications name.
  """

  def __init__(self, model, input_size, value_range, resize_method="bilinear", antialias=True,
               source=None, **kwargs):
    kwargs.setdefault("name", f"classifier_{model.name}")
    super().__init__(**kwargs)
    self.model = model
    self.input_size = _pair(input_size)
    self.value_range = _check_range_name(value_range)
    self.resize_method, self.antialias = purifier_lib.check_resize(resize_method, antialias)
    self.source = source or model.name
    self.probabilities = _outputs_probabilities(model)
    self.num_classes = int(model.output_shape[-1])

  def to_model_input(self, images):
    """[0, 1] images -> the wrapped model's input (resized, in ``value_range``)."""
    x = purifier_lib.resize_images(tf.cast(images, tf.float32), self.input_size,
                                   self.resize_method, self.antialias)
    lo, hi = VALUE_RANGES[self.value_range]
    return x * (hi - lo) + lo if (lo, hi) != (0.0, 1.0) else x

  def call(self, images, training=False):
    del training  # inference only
    y = tf.cast(self.model(self.to_model_input(images), training=False), tf.float32)
    if self.probabilities:
      y = tf.math.log(tf.maximum(y, 1e-30))
    return y

  def with_value_range(self, value_range):
    """The same model behind another declared range (``value_range_accuracy``)."""
    return ImageClassifier(self.model, self.input_size, value_range, self.resize_method,
                           self.antialias, source=self.source)


def check_input_size(model, input_size, source):
  """ValueError unless the Keras model takes RGB inputs of ``input_size`` (None dims accept any)."""
  shape = model.input_shape
  if isinstance(shape, list):
    if len(shape) != 1:
      raise ValueError(f"Classifier {source} has {len(shape)} inputs; one image input expected.")
    shape = shape[0]
  if len(shape) != 4 or shape[-1] not in (None, 3):
    raise ValueError(f"Classifier {source} takes inputs of shape {tuple(shape)}; an RGB image "
                     "input (N, H, W, 3) is expected.")
  h, w = _pair(input_size)
  if (shape[1] not in (None, h)) or (shape[2] not in (None, w)):
    raise ValueError(f"Classifier {source} takes {shape[1]}x{shape[2]} inputs, but the input "
                     f"size given is {h}x{w} (--input_size={h if h == w else (h, w)}): use "
                     f"--input_size={shape[1]}.")


def _leading_affine(model):
  """(scale, offset) per channel of the leading Rescaling / Normalization layers, or None."""
  scale, offset, found = np.ones(3), np.zeros(3), False
  for layer in model.layers:
    if isinstance(layer, tf.keras.layers.InputLayer):
      continue
    if isinstance(layer, tf.keras.layers.Rescaling):
      s, o = np.broadcast_to(np.asarray(layer.scale, np.float64), (3,)), \
          np.broadcast_to(np.asarray(layer.offset, np.float64), (3,))
    elif isinstance(layer, tf.keras.layers.Normalization) and getattr(layer, "mean", None) \
        is not None:
      mean = np.broadcast_to(np.asarray(layer.mean, np.float64).reshape(-1), (3,))
      std = np.sqrt(np.maximum(np.broadcast_to(
          np.asarray(layer.variance, np.float64).reshape(-1), (3,)), 1e-12))
      if getattr(layer, "invert", False):
        s, o = std, mean
      else:
        s, o = 1.0 / std, -mean / std
    else:
      break
    scale, offset, found = s * scale, s * offset + o, True
  return (scale, offset) if found else None


def check_value_range(model, value_range, source):
  """ValueError when the model's own input normalisation contradicts ``value_range``.

  Evidence used: leading ``Rescaling`` / ``Normalization`` layers (e.g. the
  Lite0 file's (x - 127) / 128). The declared range must come out of them
  with a span in [0.1, 20]: '0-1' into (x - 127) / 128 spans 0.008 and is
  refused. Models without such layers pass (no evidence; the evaluation also
  compares accuracies under the three ranges on the data,
  ``value_range_accuracy``).
  """
  _check_range_name(value_range)
  affine = _leading_affine(model)
  if affine is None:
    return
  lo, hi = VALUE_RANGES[value_range]
  span = float(np.max(np.abs(affine[0]) * (hi - lo)))
  if not _NORMALISED_SPAN[0] <= span <= _NORMALISED_SPAN[1]:
    fits = [name for name, (a, b) in VALUE_RANGES.items()
            if _NORMALISED_SPAN[0] <= float(np.max(np.abs(affine[0]) * (b - a))) <=
            _NORMALISED_SPAN[1]]
    hint = (f"it fits --value_range={' or '.join(fits)}" if fits
            else f"none of {', '.join(VALUE_RANGES)} fits it")
    raise ValueError(
        f"Classifier {source} does not take pixel values in {value_range} "
        f"(--value_range={value_range}): its input normalisation maps that range onto a span "
        f"of {span:.3g} instead of about 1 to 4; {hint}.")


def load_classifier(spec, input_size=None, value_range=None, resize_method="bilinear",
                    antialias=True):
  """Load a classifier and wrap it as an ``ImageClassifier``.

  Args:
    spec: path of a Keras model (.h5, .keras, or a Keras SavedModel
      directory), or a ``KERAS_APPLICATIONS`` name (ImageNet weights,
      downloaded by Keras; logits).
    input_size: the model's input size (int or (height, width)); required
      for a path, defaults to the application's for a name.
    value_range: '0-1', '0-255' or '-1-1': the pixel values the model
      expects; required for a path, defaults to the application's.
    resize_method, antialias: how other-sized inputs are resized.

  Returns:
    ImageClassifier.

  Raises:
    ValueError: neither an existing path nor a known name (the message
      names both options); missing input_size or
      value_range for a path; a model whose input shape differs from
      input_size or whose normalisation contradicts value_range
      (``check_value_range``); ImageNet weights that cannot be downloaded
      (offline: pass a saved model's path instead); a file Keras cannot load.
  """
  spec = str(spec)
  if spec in KERAS_APPLICATIONS and not os.path.exists(spec):
    ctor_name, size, app_range = KERAS_APPLICATIONS[spec]
    if input_size is not None and _pair(input_size) != (size, size):
      raise ValueError(f"keras.applications '{spec}' takes {size}x{size} inputs, but the input "
                       f"size given is {input_size}: use --input_size={size}.")
    if value_range is not None and value_range != app_range:
      raise ValueError(f"keras.applications '{spec}' takes pixel values in {app_range} (its "
                       f"preprocess_input), not {value_range}: use --value_range={app_range}.")
    try:
      model = getattr(tf.keras.applications, ctor_name)(weights="imagenet",
                                                        classifier_activation=None)
    except Exception as e:  # pylint: disable=broad-except  (download errors vary)
      raise ValueError(
          f"Cannot load keras.applications '{spec}' with ImageNet weights (they are downloaded; "
          f"offline?): {type(e).__name__}: {e}. Offline, pass a saved Keras classifier instead: "
          f"--classifier=/path/to/{spec}.h5 --input_size={size} --value_range={app_range} (save "
          f"one where the internet is: tf.keras.applications.{ctor_name}(weights='imagenet', "
          f"classifier_activation=None).save('{spec}.h5')).") from e
    return ImageClassifier(model, size, app_range, resize_method, antialias, source=spec)
  if not os.path.exists(spec):
    raise ValueError(f"Classifier {spec!r} not found: give the path of a Keras model (.h5, "
                     f".keras, SavedModel directory) or a keras.applications name "
                     f"({', '.join(sorted(KERAS_APPLICATIONS))}).")
  if input_size is None or value_range is None:
    raise ValueError(f"Classifier {spec}: give its input size and value range "
                     "(--input_size, --value_range: 0-1, 0-255 or -1-1).")
  _check_range_name(value_range)
  try:
    model = tf.keras.models.load_model(spec, compile=False)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"Cannot load classifier {spec} as a Keras model: {type(e).__name__}: "
                     f"{e}".splitlines()[0]) from e
  if not isinstance(model, tf.keras.Model):
    raise ValueError(f"Classifier {spec} is not a Keras model (a plain TF SavedModel?); save it "
                     "with model.save(...) from Keras.")
  check_input_size(model, input_size, spec)
  check_value_range(model, value_range, spec)
  return ImageClassifier(model, input_size, value_range, resize_method, antialias, source=spec)


def value_range_accuracy(classifier, images, labels):
  """Top-1 accuracy of the wrapped model under each declared range.

  Args:
    classifier: ImageClassifier. images: float32 (N, H, W, 3) in [0, 1].
    labels: int (N,) class indices.

  Returns:
    dict value range -> accuracy in [0, 1].
  """
  labels = np.asarray(labels)
  out = {}
  for name in VALUE_RANGES:
    pred = np.argmax(classifier.with_value_range(name)(images).numpy(), axis=-1)
    out[name] = float(np.mean(pred == labels))
  return out


# ---------------------------------------------------------------------------
# Labelled images
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class LabeledImage:
  """A labelled photo. ``image``: uint8 (H, W, 3) RGB; ``label``: 0-based class index;
  ``info``: the other columns of its ``images.csv`` row (URL, License, Author, ...)."""
  name: str
  image: np.ndarray
  label: int
  info: dict


def _find_image(folder, image_id):
  for sub in ("images", ""):
    for ext in data.IMAGE_EXTENSIONS:
      path = os.path.join(folder, sub, image_id + ext)
      if os.path.isfile(path):
        return path
  return None


def load_labeled_images(name_or_path, data_dir=None, max_images=None):
  """Labelled images in the NIPS 2017 layout (``images.csv`` + ``images/<ImageId>.png``).

  Args:
    name_or_path: 'nips2017dev' (``<data_dir>/NIPS2017dev``) or a folder with
      ``images.csv`` (columns ``ImageId`` and ``TrueLabel``, 1-based ImageNet
      labels as in the NIPS 2017 set: class index = TrueLabel - 1; other
      columns, e.g. the CC BY attribution, are kept in ``info``) and the
      images ``<ImageId>.<png|jpg|...>`` in ``images/`` or beside the csv.
    data_dir: data directory for 'nips2017dev' (default $TFSR_DATA_DIR).
    max_images: the first N rows of images.csv only.

  Returns:
    list of LabeledImage in the csv's order.

  Raises:
    FileNotFoundError: no such folder / data directory; an image of the csv missing.
    ValueError: a folder without images.csv (images without labels), a csv
      without ImageId / TrueLabel, a TrueLabel that is not an integer >= 1,
      no rows, max_images < 1.
  """
  if str(name_or_path).lower() == NIPS2017DEV:
    folder = os.path.join(data.resolve_data_dir(data_dir), NIPS2017DEV_DIR)
  else:
    folder = str(name_or_path)
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"Image folder not found: {folder} (--data takes '{NIPS2017DEV}' or "
                            "a folder with images.csv).")
  csv_path = os.path.join(folder, LABELS_FILE)
  if not os.path.isfile(csv_path):
    raise ValueError(
        f"Image folder {folder} has no labels: expected {csv_path} with columns ImageId,TrueLabel "
        "(1-based ImageNet labels, the NIPS 2017 layout); unlabelled images cannot be scored.")
  if max_images is not None and (isinstance(max_images, bool) or int(max_images) < 1):
    raise ValueError(f"max_images must be >= 1, got {max_images!r}.")
  with open(csv_path, encoding="utf-8", newline="") as f:
    reader = csv.DictReader(f)
    missing = [c for c in ("ImageId", "TrueLabel") if c not in (reader.fieldnames or [])]
    if missing:
      raise ValueError(f"{csv_path} lacks the column(s) {', '.join(missing)} (found: "
                       f"{', '.join(reader.fieldnames or [])}).")
    rows = list(reader)
  if max_images is not None:
    rows = rows[:int(max_images)]
  if not rows:
    raise ValueError(f"{csv_path} lists no images.")
  out = []
  for row in rows:
    image_id = row["ImageId"]
    try:
      label = int(row["TrueLabel"])
    except ValueError:
      label = 0
    if label < 1:
      raise ValueError(f"{csv_path}: TrueLabel of {image_id} is {row['TrueLabel']!r}; 1-based "
                       "integer labels are expected.")
    path = _find_image(folder, image_id)
    if path is None:
      raise FileNotFoundError(f"Image {image_id} of {csv_path} not found in {folder}/images/ "
                              f"nor {folder}/.")
    info = {k: v for k, v in row.items() if k not in ("ImageId", "TrueLabel")}
    out.append(LabeledImage(image_id, data.load_image(path), label - 1, info))
  return out


def imagenet_class_names(data_dir=None):
  """The ImageNet class names of ``classifiers/imagenet_class_index.json`` (None if absent)."""
  try:
    path = os.path.join(data.resolve_data_dir(data_dir), CLASS_INDEX)
  except FileNotFoundError:
    return None
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    index = json.load(f)
  return [index[str(i)][1] for i in range(len(index))]


def prepare_images(images, size, method="bilinear", antialias=True):
  """uint8 (H, W, 3) photos -> float32 (N, h, w, 3) [0, 1] at the classifier's input size.

  The evaluation attacks these (the authors attack at the classifier's
  input size). Resampling: ``tf.image.resize`` (default bilinear with
  antialiasing), not quantised.
  """
  size = _pair(size)
  return tf.concat([purifier_lib.resize_images(data.to_float(im)[None], size, method, antialias)
                    for im in images], axis=0)
