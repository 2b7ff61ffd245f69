"""SR networks, one file each, and their registry (``build_model(name, scale, ...)``)."""

from tfsr_defense.models import edsr  # noqa: F401  (registers)
from tfsr_defense.models import srresnet  # noqa: F401  (registers)
from tfsr_defense.models import srgan  # noqa: F401  (registers)
from tfsr_defense.models import rcan  # noqa: F401  (registers)
from tfsr_defense.models import msrn  # noqa: F401  (registers)
from tfsr_defense.models import carn  # noqa: F401  (registers carn and carn_m)
from tfsr_defense.models.registry import (FEATURES, ModelSpec, build_model, feature_model,
                                          find_regularizer, get_spec, known_models,
                                          register)

__all__ = ["FEATURES", "ModelSpec", "build_model", "feature_model", "find_regularizer",
           "get_spec", "known_models", "register"]
