"""tfsr_defense: adversarially robust deep image super-resolution (Choi et al., ACCV 2020)."""

from tfsr_defense import layers, models  # noqa: F401

__version__ = "0.1.0"
