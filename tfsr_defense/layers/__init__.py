"""Keras layers: the entropy regularizer and the networks' building blocks."""

from tfsr_defense.layers.blocks import (CARNResBlock, CARNUpsampler, CascadingBlock,
                                        ChannelAttention, GroupConv2D, MeanShift, MSRB,
                                        PixelShuffle, PReLUUpsampler, RCAB, ResBlock,
                                        ResidualGroup, SRResBlock, Upsampler)
from tfsr_defense.layers.entropy import EntropyRegularizer

__all__ = ["EntropyRegularizer", "MeanShift", "PixelShuffle", "ResBlock", "Upsampler",
           "SRResBlock", "PReLUUpsampler", "ChannelAttention", "RCAB", "ResidualGroup",
           "MSRB", "GroupConv2D", "CARNResBlock", "CascadingBlock", "CARNUpsampler"]
