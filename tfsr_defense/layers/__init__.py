"""Keras layers: the entropy regularizer and the networks' building blocks."""

from tfsr_defense.layers.blocks import MeanShift, PixelShuffle, ResBlock, Upsampler
from tfsr_defense.layers.entropy import EntropyRegularizer

__all__ = ["EntropyRegularizer", "MeanShift", "PixelShuffle", "ResBlock", "Upsampler"]
