"""SavedModel export of an SR network for TF Serving (used by ``python -m tfsr_defense.export``).

Signatures (all take NHWC RGB batches of any H x W):

* ``serving_default``: ``images`` uint8 (N, H, W, 3) -> ``sr`` uint8 (N, sH, sW, 3)
  (rounded, clipped).
* ``sr_float``: ``images`` float32 (N, H, W, 3) in [0,1] -> ``sr`` float32 in
  [0,1] (clipped).
* ``features``: ``images`` float32 in [0,1] -> ``features`` float32
  (N, H, W, D), the regularized feature map before the upsampler (what FDA
  attacks).

The directory also carries ``assets/tfsr_metadata.json`` (model name, scale,
entropy settings).
"""

import json
import os
import tempfile

import tensorflow as tf

from tfsr_defense import models

__all__ = ["export_saved_model", "load_metadata"]

METADATA_FILE = "tfsr_metadata.json"


class _SRServing(tf.Module):
  """tf.Module with the serving functions; holds the Keras model's variables."""

  def __init__(self, model, metadata_path):
    super().__init__(name="tfsr_serving")
    self.model = model
    self.feature_extractor = models.feature_model(model)
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
    with open(path, "w", encoding="utf-8") as f:
      json.dump(metadata, f, indent=2, sort_keys=True)
    module = _SRServing(model, path)
    tf.saved_model.save(module, export_dir, signatures={
        "serving_default": module.serve_uint8,
        "sr_float": module.sr_float,
        "features": module.features,
    })
  return export_dir


def load_metadata(export_dir):
  """The metadata dict of an exported SavedModel ({} if it has none)."""
  path = os.path.join(export_dir, "assets", METADATA_FILE)
  if not os.path.isfile(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f)

