"""A small registry of SR networks: name -> builder and training conventions."""

import dataclasses
from typing import Callable, Tuple

import tensorflow as tf

from tfsr_defense.layers.blocks import MeanShift, conv2d
from tfsr_defense.layers import entropy
from tfsr_defense.layers.entropy import EntropyRegularizer

__all__ = ["ModelSpec", "register", "get_spec", "known_models", "build_model",
           "FEATURES", "SCALES", "ENTROPY_LAYERS", "DEFAULT_ENTROPY_LAYER", "check_scale",
           "check_entropy_layer", "resolve_entropy_weight", "entropy_bits",
           "regularized_features", "feature_model", "find_regularizer",
           "rgb255_input", "rgb255_output"]

# Name of the layer whose output is the regularized feature map (FDA, plots).
FEATURES = "features"
# SR scales the networks are built for.
SCALES = (2, 3, 4)
# Where the regularizer sits (paper sec. 5.4): the last feature map before the
# upsampler (the paper's default) or the output of the first convolution.
ENTROPY_LAYERS = ("pre_upsampler", "first")
DEFAULT_ENTROPY_LAYER = "pre_upsampler"
# L_e of a model's latest training call, by value (see layers/entropy.py).
entropy_bits = entropy.entropy_bits


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
    raise ValueError(f"Unknown model '{name}'. Known models: {', '.join(known_models())}.") \
        from None


def check_scale(scale):
  """``scale`` as an int; ValueError unless it is 2, 3 or 4."""
  if scale not in SCALES:
    raise ValueError(f"scale must be 2, 3 or 4, got {scale}.")
  return int(scale)


def check_entropy_layer(entropy_layer):
  """``entropy_layer`` unchanged; ValueError listing ``ENTROPY_LAYERS`` otherwise."""
  if entropy_layer not in ENTROPY_LAYERS:
    raise ValueError(f"Unknown entropy_layer {entropy_layer!r}: use one of "
                     f"{', '.join(ENTROPY_LAYERS)}.")
  return entropy_layer


def resolve_entropy_weight(name, entropy_weight=None):
  """lambda of a run: ``entropy_weight``, or the paper's value for network ``name`` if None.

  The one place the default lambda is chosen (trainer, CLI, SRGAN and
  ``build_model`` call it).

  Returns:
    float lambda >= 0 (0: the plain network).

  Raises:
    ValueError: unknown network, or a lambda ``EntropyRegularizer`` refuses
      (negative, NaN, inf).
  """
  spec = get_spec(name)
  weight = spec.entropy_weight if entropy_weight is None else entropy_weight
  return entropy.check_settings(weight, 1.0)[0]


def build_model(name, scale=4, entropy_weight=None, delta=1.0, noise=True,
                estimate_entropy=True, entropy_layer=DEFAULT_ENTROPY_LAYER, **kwargs):
  """Build a registered SR network.

  Args:
    name: registry name (see ``known_models()``).
    scale: SR scale s (2, 3 or 4).
    entropy_weight: lambda >= 0; None takes the paper's value for the network
      (``resolve_entropy_weight``); 0 builds the plain network (no regularizer
      layer).
    delta, noise, estimate_entropy: EntropyRegularizer settings.
    entropy_layer: where the regularizer sits, one of ``ENTROPY_LAYERS``;
      passed to the network's builder as ``entropy_layer=`` only when it is
      not the default ``'pre_upsampler'``.
    **kwargs: network-specific options.

  Returns:
    tf.keras.Model mapping float32 RGB (N, H, W, 3) in [0, 1] to float32
    (N, sH, sW, 3) in [0, 1] (not clipped). The feature map before the
    upsampler is the output of the layer named ``FEATURES``.

  Raises:
    ValueError: unknown name or entropy_layer, bad scale, a lambda or delta
      that ``EntropyRegularizer`` refuses (``layers.entropy.check_settings``).
  """
  spec = get_spec(name)
  scale = check_scale(scale)
  weight = resolve_entropy_weight(name, entropy_weight)
  weight, delta = entropy.check_settings(weight, delta)
  if check_entropy_layer(entropy_layer) != DEFAULT_ENTROPY_LAYER:
    kwargs["entropy_layer"] = entropy_layer
  regularizer = None
  if weight > 0:
    regularizer = dict(weight=weight, delta=delta, noise=bool(noise),
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
    raise ValueError(f"No layer named {missing} in model '{model.name}'. "
                     f"Layers: {', '.join(known)}.")
  outputs = [model.get_layer(n).output for n in layer_names]
  return tf.keras.Model(model.inputs, outputs if len(outputs) > 1 else outputs[0])
