"""The activation maps of a network, by layer name (for the official FDA).

The official Feature Disruptive Attack (Ganeshan & Babu, ICCV 2019) attacks
all ReLU activations of a network, averaging its loss (eq. 13 of Choi et al.
2020) over them. Every network of ``tfsr_defense.models`` keeps each
activation as a top-level layer of its functional model (see
``tfsr_defense.layers.blocks``), so

    names = activation_layer_names(model) + [models.FEATURES]
    maps = models.feature_model(model, names)(lr_images)

gives the ReLU maps and the regularized map in one forward pass.

Rectifier maps per network at x4 (``activation_layer_names(model)``):
EDSR-baseline 16 (``body_{i}_relu``); RCAN 400 (``group_{g}_rcab_{b}_relu``
and the channel attention's ``..._ca_relu``); MSRN 32 (``msrb_{i}_relu*``);
CARN 32, CARN-M 41 (``*_relu*``, 2 of them in the upsampler); SRResNet and
SRGAN 19 PReLU outputs (``head_prelu``, ``body_{i}_prelu``,
``upsampler_prelu{j}``): a PReLU network has no ReLU, its "ReLU maps" are the
PReLU outputs.
"""

import tensorflow as tf

__all__ = ["ACTIVATION_KINDS", "UPSAMPLER_PREFIX", "activation_layer_names", "fda_layer_names"]

# What each kind selects: a layer class, or (for ``Activation`` layers) the
# name of its activation function.
_KIND_CLASSES = {
    # Rectifiers: ReLU, and PReLU / LeakyReLU (the ReLU maps of a PReLU network).
    "relu": (tf.keras.layers.ReLU, tf.keras.layers.PReLU, tf.keras.layers.LeakyReLU),
    "sigmoid": (),
}
_KIND_FUNCTIONS = {"relu": ("relu",), "sigmoid": ("sigmoid",)}
ACTIVATION_KINDS = tuple(_KIND_CLASSES)

# Layers of the networks' sub-pixel upsamplers are named ``upsampler_*``.
UPSAMPLER_PREFIX = "upsampler_"


def _kind_of(layer):
  """The kind of an activation layer, or None for any other layer."""
  for kind, classes in _KIND_CLASSES.items():
    if classes and isinstance(layer, classes):
      return kind
  if isinstance(layer, tf.keras.layers.Activation):
    function = getattr(layer.activation, "__name__", None)
    for kind, functions in _KIND_FUNCTIONS.items():
      if function in functions:
        return kind
  return None


def activation_layer_names(model, kinds=("relu",), include_upsampler=True):
  """Names of the model's activation layers, in the model's layer order.

  Args:
    model: a functional ``tf.keras.Model`` (e.g. from ``models.build_model``).
    kinds: which activations, a non-empty subset of ``ACTIVATION_KINDS``:
      'relu' = the rectifiers, i.e. ``ReLU`` layers, ``PReLU`` and
      ``LeakyReLU`` layers (SRResNet / SRGAN have no ReLU: their ReLU maps are
      the PReLU outputs), and ``Activation('relu')`` layers; 'sigmoid' =
      ``Activation('sigmoid')`` layers (RCAN's channel-attention gates).
      Activations fused into another layer (``Conv2D(activation=...)``) are
      not layers of their own and are not found.
    include_upsampler: also the activations of the sub-pixel upsampler (layers
      named ``upsampler_*``: CARN's ReLUs, SRResNet's PReLUs, on the
      upsampled maps); False keeps those of the body (before the upsampler).

  Returns:
    list of str, each a layer name for ``models.feature_model`` (ordered as
    ``model.layers``, i.e. from input to output); empty if the model has none.
    Each such layer's output is a float tensor (N, H', W', C') in the model's
    compute dtype.

  Raises:
    ValueError: ``kinds`` empty or naming an unknown kind (lists the kinds);
      ``model`` not a Keras model.
  """
  if isinstance(kinds, str):
    kinds = (kinds,)
  kinds = tuple(kinds)
  unknown = [k for k in kinds if k not in ACTIVATION_KINDS]
  if not kinds or unknown:
    raise ValueError(f"activation kinds must be a non-empty subset of {ACTIVATION_KINDS}, "
                     f"got {kinds}.")
  if not isinstance(model, tf.keras.Model):
    raise ValueError(f"activation_layer_names needs a Keras model, got {type(model).__name__}.")
  return [layer.name for layer in model.layers
          if _kind_of(layer) in kinds
          and (include_upsampler or not layer.name.startswith(UPSAMPLER_PREFIX))]


def fda_layer_names(model):
  """The maps the official FDA attacks: every rectifier of the body, then ``models.FEATURES``.

  The body's activations (``activation_layer_names(model, include_upsampler=False)``)
  and the regularized map (the layer named 'features', after Choi et al.,
  whichever position it was built at), without duplicates, in model order.
  Used by ``attacks.fda`` (``features='relu'``), the 'activations' SavedModel
  signature and ``defenses.DefendedSR.activations``.
  """
  from tfsr_defense.models.registry import FEATURES  # pylint: disable=g-import-not-at-top
  names = activation_layer_names(model, include_upsampler=False)
  return [n for n in names if n != FEATURES] + [FEATURES]
