"""SR networks, one file each, and their registry (``build_model(name, scale, ...)``)."""

from tfsr_defense.models import edsr  # noqa: F401  (registers)
from tfsr_defense.models.registry import (FEATURES, ModelSpec, build_model, feature_model,
                                          find_regularizer, get_spec, known_models,
                                          register)

__all__ = ["FEATURES", "ModelSpec", "build_model", "feature_model", "find_regularizer",
           "get_spec", "known_models", "register"]
