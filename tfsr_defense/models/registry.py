"""A small registry of SR networks: name -> builder and training conventions."""

import dataclasses
from typing import Callable, Tuple

import tensorflow as tf

from tfsr_defense.layers.blocks import MeanShift, conv2d
from tfsr_defense.layers.entropy import EntropyRegularizer

__all__ = ["ModelSpec", "register", "get_spec", "known_models", "build_model",
           "FEATURES", "regularized_features", "feature_model", "find_regularizer",
           "rgb255_input", "rgb255_output"]

# Name of the layer whose output is the regularized feature map (FDA, plots).
FEATURES = "features"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """How to build and train one network.

  Attributes:
    name: registry key (``--model``).
    builder: fn(scale, regularizer_kwargs or None, **kwargs) -> tf.keras.Model.
    pixel_range: native (lo, hi) range the network works in.
    loss: 'l1' or 'l2' reconstruction loss (measured in pixel_range).
    entropy_weight: the paper's lambda for this network.
    description: one line for --help and the README.
  """
  name: str
  builder: Callable
  pixel_range: Tuple[float, float]
  loss: str
  entropy_weight: float
  description: str = ""


_REGISTRY = {}


def register(spec):
  """Add a ModelSpec; returns it. Raises ValueError on a duplicate name."""
  if spec.name in _REGISTRY:
    raise ValueError(f"Model '{spec.name}' is already registered.")
  _REGISTRY[spec.name] = spec
  return spec


def known_models():
  return sorted(_REGISTRY)


def get_spec(name):
  """The ModelSpec of ``name``; ValueError listing the known names otherwise."""
  try:
    return _REGISTRY[name]
  except KeyError:
    raise ValueError(f"Unknown model '{name}'. Known models: {', '.join(known_models())}.") from None


def build_model(name, scale=4, entropy_weight=None, delta=1.0, noise=True,
                estimate_entropy=True, **kwargs):
  """Build a registered SR network.

  Args:
    name: registry name (see ``known_models()``).
    scale: SR scale s (2, 3 or 4).
    entropy_weight: lambda >= 0; None takes the paper's value for the network;
      0 builds the plain network (no regularizer layer).
    delta, noise, estimate_entropy: EntropyRegularizer settings.
    **kwargs: network-specific options.

  Returns:
    tf.keras.Model mapping float32 RGB (N, H, W, 3) in [0, 1] to float32
    (N, sH, sW, 3) in [0, 1] (not clipped). The feature map before the
    upsampler is the output of the layer named ``FEATURES``.

  Raises:
    ValueError: unknown name, bad scale, lambda < 0, delta <= 0.
  """
  spec = get_spec(name)
  if scale not in (2, 3, 4):
    raise ValueError(f"scale must be 2, 3 or 4, got {scale}.")
  weight = spec.entropy_weight if entropy_weight is None else float(entropy_weight)
  if weight < 0:
    raise ValueError(f"entropy_weight (lambda) must be >= 0, got {weight}.")
  if not delta > 0:
    raise ValueError(f"delta must be > 0, got {delta}.")
  regularizer = None
  if weight > 0:
    regularizer = dict(weight=weight, delta=float(delta), noise=bool(noise),
                       estimate_entropy=bool(estimate_entropy))
  return spec.builder(scale=scale, regularizer=regularizer, **kwargs)


def regularized_features(x, regularizer):
  """Attach the regularizer (or, for the plain network, a named identity) to x.

  Either way the returned tensor is the output of a layer named ``FEATURES``.
  """
  if regularizer is None:
    return tf.keras.layers.Activation("linear", name=FEATURES)(x)
  return EntropyRegularizer(name=FEATURES, **regularizer)(x)


def rgb255_input(inputs):
  """[0,1] RGB -> [0,255] minus the DIV2K mean (EDSR, RCAN, MSRN, CARN heads)."""
  x = tf.keras.layers.Rescaling(255.0, name="to_native")(inputs)
  return MeanShift(sign=-1, name="sub_mean")(x)


def rgb255_output(x, tail_name="tail"):
  """Last 3x3 conv to RGB, + DIV2K mean, back to [0,1]; all in float32.

  Float32 even under a mixed policy: bf16 cannot hold [0,255] pixels to
  better than ~1 grey level.
  """
  x = conv2d(3, 3, name=tail_name, dtype="float32")(x)
  x = MeanShift(sign=1, name="add_mean", dtype="float32")(x)
  return tf.keras.layers.Rescaling(1.0 / 255.0, name="sr", dtype="float32")(x)


def find_regularizer(model):
  """The model's EntropyRegularizer layer, or None for a plain network."""
  for layer in model.layers:
    if isinstance(layer, EntropyRegularizer):
      return layer
  return None


def feature_model(model, layer_names=(FEATURES,)):
  """A Keras model x -> [outputs of the named layers] sharing ``model``'s weights.

  Raises:
    ValueError: a name is not a layer of the model (lists the known names).
  """
  known = [l.name for l in model.layers]
  missing = [n for n in layer_names if n not in known]
  if missing:
    raise ValueError(f"No layer named {missing} in model '{model.name}'. Layers: {', '.join(known)}.")
  outputs = [model.get_layer(n).output for n in layer_names]
  return tf.keras.Model(model.inputs, outputs if len(outputs) > 1 else outputs[0])
