"""SavedModel export of an SR network for TF Serving (used by ``python -m tfsr_defense.export``).

Signatures (all take NHWC RGB batches of any H x W):

* ``serving_default``: ``images`` uint8 (N, H, W, 3) -> ``sr`` uint8 (N, sH, sW, 3)
  (rounded, clipped).
* ``sr_float``: ``images`` float32 (N, H, W, 3) in [0,1] -> ``sr`` float32 in
  [0,1] (clipped).
* ``features``: ``images`` float32 in [0,1] -> ``features`` float32
  (N, H, W, D), the regularized feature map (``models.FEATURES``; eq. 13 of
  the paper on that map).
* ``activations``: ``images`` float32 in [0,1] -> one float32 map per
  activation layer of the network's body (``models.fda_layer_names``) and the
  ``features`` map, keyed by layer name (what the official FDA attacks).

The directory also carries ``assets/tfsr_metadata.json`` (model name, scale,
entropy settings).

Loading for evaluation and attacks: ``load_sr_model(path)`` gives an
``SRModel`` (also made from a Keras network with ``SRModel.from_keras``).
"""

import hashlib
import json
import os
import tempfile

import numpy as np
import tensorflow as tf

from tfsr_defense import fileio, models

__all__ = ["export_saved_model", "load_metadata", "SRModel", "load_sr_model",
           "savedmodel_dir", "fingerprint_weights", "fingerprint_text"]

METADATA_FILE = "tfsr_metadata.json"


class _SRServing(tf.Module):
  """tf.Module with the serving functions; holds the Keras model's variables."""

  def __init__(self, model, metadata_path):
    super().__init__(name="tfsr_serving")
    self.model = model
    self.feature_extractor = models.feature_model(model)
    self.activation_names = models.fda_layer_names(model)
    self.activation_extractor = models.feature_model(model, self.activation_names)
    self.metadata = tf.saved_model.Asset(metadata_path)

  @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="images")])
  def sr_float(self, images):
    return {"sr": tf.clip_by_value(self.model(images, training=False), 0.0, 1.0)}

  @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
  def serve_uint8(self, images):
    sr = self.model(tf.cast(images, tf.float32) / 255.0, training=False)
    sr = tf.round(tf.clip_by_value(sr, 0.0, 1.0) * 255.0)
    return {"sr": tf.cast(sr, tf.uint8)}

  @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="images")])
  def features(self, images):
    return {"features": tf.cast(self.feature_extractor(images, training=False), tf.float32)}

  @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="images")])
  def activations(self, images):
    maps = self.activation_extractor(images, training=False)
    maps = maps if isinstance(maps, (list, tuple)) else [maps]
    return {name: tf.cast(m, tf.float32) for name, m in zip(self.activation_names, maps)}


def export_saved_model(model, export_dir, metadata=None):
  """Write ``model`` as a TF-Serving SavedModel into ``export_dir``.

  Args:
    model: Keras SR model from ``models.build_model`` (float32 [0,1] in/out).
      Build it under the float32 policy for serving.
    export_dir: target directory, e.g. ``saved_models/edsr_x4/1`` (TF Serving
      wants a numeric version folder). Overwritten if it exists.
    metadata: JSON-serializable dict stored as ``assets/tfsr_metadata.json``.

  Returns:
    export_dir.
  """
  metadata = dict(metadata or {})
  metadata.setdefault("keras_name", model.name)
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, METADATA_FILE)
    fileio.write_json(path, metadata)
    module = _SRServing(model, path)
    tf.saved_model.save(module, export_dir, signatures={
        "serving_default": module.serve_uint8,
        "sr_float": module.sr_float,
        "features": module.features,
        "activations": module.activations,
    })
  return export_dir


def load_metadata(export_dir):
  """The metadata dict of an exported SavedModel ({} if it has none)."""
  path = os.path.join(export_dir, "assets", METADATA_FILE)
  if not os.path.isfile(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f)


# ---------------------------------------------------------------------------
# Loading for evaluation
# ---------------------------------------------------------------------------

class SRModel:
  """An SR network as the evaluation and the attacks see it.

  Calling it maps float32 (N, H, W, 3) in [0, 1] to float32 (N, sH, sW, 3)
  (SavedModel 'sr_float': clipped to [0, 1]; Keras: not clipped). ``features``
  maps the same input to the float32 (N, H, W, D) regularized feature map
  (``models.FEATURES``), ``activations`` to the list of every activation map
  and that map (what the official FDA attacks); either is None when the model
  lacks it (then FDA on it is impossible).

  Attributes:
    name: label in reports.
    scale: SR scale s.
    source: path of the SavedModel, or 'keras'.
    keras_model: the Keras network, or None for a SavedModel.
    fingerprint: 16 hex digits identifying the weights (SavedModel files or
      Keras weight values): evaluation reports key their cells by it.
    attack_fingerprint: identifies what the attacks differentiate (default:
      ``fingerprint``). Two models with the same one get the same adversarial
      images from the same attack settings, e.g. a bare network and its
      non-adaptive view behind a pre-processing defense (``evaluation``'s
      ``adversarial_dir`` cache shares them).
  """

  def __init__(self, name, scale, sr_fn, features_fn=None, keras_model=None, source="keras",
               keep=None, activations_fn=None, fingerprint=None, attack_fingerprint=None):
    self.name = name
    self.scale = int(scale)
    self.source = source
    self.keras_model = keras_model
    self._sr_fn = sr_fn
    self.features = features_fn
    self.activations = activations_fn
    self.fingerprint = fingerprint
    self.attack_fingerprint = attack_fingerprint or fingerprint
    self._keep = keep  # the loaded SavedModel: its functions die with it

  def __call__(self, x):
    return self._sr_fn(x)

  @property
  def attack_target(self):
    """What the attacks receive: the Keras model (layer names, bf16) or this wrapper."""
    return self.keras_model if self.keras_model is not None else self

  @classmethod
  def from_keras(cls, model, name=None, scale=None):
    """Wrap a Keras SR model (float32 [0,1] in/out; features from its ``models.FEATURES`` layer).

    Args:
      scale: SR scale; None measures it on an 8 x 8 input.
    """
    sr = lambda x: model(x, training=False)  # noqa: E731
    layer_names = [l.name for l in model.layers]
    features = activations = None
    if models.FEATURES in layer_names:
      extractor = models.feature_model(model)
      features = lambda x: extractor(x, training=False)  # noqa: E731
      all_maps = models.feature_model(
          model, models.fda_layer_names(model))
      activations = lambda x: all_maps(x, training=False)  # noqa: E731
    scale = scale or _measure_scale(sr)
    return cls(name or model.name, scale, sr, features, keras_model=model,
               activations_fn=activations, fingerprint=fingerprint_weights(model.get_weights()))

  def __repr__(self):
    return f"SRModel({self.name!r}, x{self.scale}, {self.source})"


def _measure_scale(sr):
  out = sr(tf.zeros([1, 8, 8, 3], tf.float32))
  return int(out.shape[1]) // 8


def fingerprint_weights(arrays):
  """16 hex digits of SHA-256 over a list of numpy arrays (shapes, dtypes and bytes)."""
  digest = hashlib.sha256()
  for a in arrays:
    a = np.ascontiguousarray(a)
    digest.update(f"{a.dtype.str}{a.shape}".encode())
    digest.update(a.tobytes())
  return digest.hexdigest()[:16]


def fingerprint_text(text):
  """16 hex digits of SHA-256 of a string (e.g. combined fingerprints and settings)."""
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def _fingerprint_files(sm_dir):
  """16 hex digits of SHA-256 over a SavedModel's graph and variable files."""
  digest = hashlib.sha256()
  paths = [os.path.join(sm_dir, "saved_model.pb")]
  variables = os.path.join(sm_dir, "variables")
  if os.path.isdir(variables):
    paths += sorted(os.path.join(variables, f) for f in os.listdir(variables))
  for path in paths:
    digest.update(os.path.basename(path).encode())
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
  return digest.hexdigest()[:16]


def savedmodel_dir(path):
  """The SavedModel directory of a run directory or SavedModel path."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"Model path not found: {path}")
  if os.path.isfile(os.path.join(path, "saved_model.pb")):
    return path
  export = os.path.join(path, "export", "1")
  if os.path.isfile(os.path.join(export, "saved_model.pb")):
    return export
  # TF Serving's layout <model>/<version>/: like the server, take the highest version.
  versions = [int(v) for v in os.listdir(path) if v.isdigit()
              and os.path.isfile(os.path.join(path, v, "saved_model.pb"))]
  if versions:
    return os.path.join(path, str(max(versions)))
  raise FileNotFoundError(
      f"No SavedModel at {path}: expected {path}/saved_model.pb, a TF Serving model directory "
      f"{path}/<version>/saved_model.pb, or a run directory with export/1/saved_model.pb "
      "(train with --export, or use tfsr_defense.export).")


def _default_name(sm_dir):
  """<run>/export/<n> -> run; <name>/<n> (TF Serving layout) -> name; else the folder name."""
  parts = os.path.normpath(os.path.abspath(sm_dir)).split(os.sep)
  if parts[-1].isdigit() and len(parts) >= 2:
    parts = parts[:-1]
    if parts[-1] == "export" and len(parts) >= 2:
      parts = parts[:-1]
  return parts[-1]


def load_sr_model(path, name=None):
  """Load an exported SR network (tfsr_defense.serving) for evaluation.

  Args:
    path: a run directory (its ``export/1`` is used), a SavedModel directory,
      or a TF Serving model directory ``<name>/<version>/`` (highest version).
    name: report label; default: the run directory's name (for
      ``<run>/export/1``), the model folder of a ``<name>/<version>``
      SavedModel, else the SavedModel folder's name.

  Returns:
    SRModel calling the 'sr_float' signature (float32 [0,1] -> clipped
    float32 [0,1]) and, when the SavedModel has them, the 'features' and
    'activations' signatures (exports older than 'activations' give
    ``activations=None``: the official FDA then needs a re-export).

  Raises:
    FileNotFoundError: path missing, or no saved_model.pb there nor in export/1.
    ValueError: no 'sr_float' signature (the uint8 'serving_default' cannot
      be differentiated); the message lists the signatures found.
  """
  sm_dir = savedmodel_dir(path)
  try:
    loaded = tf.saved_model.load(sm_dir)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"Cannot load SavedModel {sm_dir}: {e}") from e
  signatures = dict(getattr(loaded, "signatures", {}) or {})
  if "sr_float" not in signatures:
    raise ValueError(
        f"SavedModel {sm_dir} has no usable signature: attacks need 'sr_float' (float32 [0,1] "
        f"images -> sr), found {sorted(signatures) or 'none'}. Export with "
        "tfsr_defense.serving.export_saved_model.")
  sr_sig = signatures["sr_float"]
  sr = lambda x: sr_sig(images=tf.cast(x, tf.float32))["sr"]  # noqa: E731
  features = activations = None
  if "features" in signatures:
    feat_sig = signatures["features"]
    features = lambda x: feat_sig(images=tf.cast(x, tf.float32))["features"]  # noqa: E731
  if "activations" in signatures:
    act_sig = signatures["activations"]
    # Keyed by layer name; the order does not matter to FDA (it averages).
    activations = lambda x: [v for _, v in sorted(  # noqa: E731
        act_sig(images=tf.cast(x, tf.float32)).items())]
  metadata = load_metadata(sm_dir)
  scale = metadata.get("scale") or _measure_scale(sr)
  if name is None:
    name = _default_name(sm_dir)
  return SRModel(name, scale, sr, features, source=sm_dir, keep=loaded,
                 activations_fn=activations, fingerprint=_fingerprint_files(sm_dir))

