"""SR networks, one file each, and their registry (``build_model(name, scale, ...)``)."""

from tfsr_defense.models import edsr  # noqa: F401  (registers)
from tfsr_defense.models import srresnet  # noqa: F401  (registers)
from tfsr_defense.models import srgan  # noqa: F401  (registers)
from tfsr_defense.models import rcan  # noqa: F401  (registers)
from tfsr_defense.models import msrn  # noqa: F401  (registers)
from tfsr_defense.models import carn  # noqa: F401  (registers carn and carn_m)
from tfsr_defense.models.activations import (ACTIVATION_KINDS, activation_layer_names,
                                             fda_layer_names)
from tfsr_defense.models.registry import (DEFAULT_ENTROPY_LAYER, ENTROPY_LAYERS, FEATURES,
                                          ModelSpec, build_model, check_entropy_layer,
                                          check_scale, feature_model, find_regularizer,
                                          get_spec, known_models, register,
                                          resolve_entropy_weight)

__all__ = ["ACTIVATION_KINDS", "activation_layer_names", "fda_layer_names", "FEATURES",
           "DEFAULT_ENTROPY_LAYER", "ENTROPY_LAYERS", "ModelSpec", "build_model",
           "check_entropy_layer", "check_scale", "feature_model", "find_regularizer", "get_spec",
           "known_models", "register", "resolve_entropy_weight"]
