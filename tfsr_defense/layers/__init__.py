"""Keras layers: the entropy regularizer and the networks' building blocks."""

from tfsr_defense.layers.blocks import (GroupConv2D, MeanShift, PixelShuffle, carn_res_block,
                                        cascading_block, channel_attention, msrb, rcab,
                                        res_block, residual_group, srres_block, upsampler)
from tfsr_defense.layers.entropy import EntropyRegularizer, entropy_bits

__all__ = ["EntropyRegularizer", "entropy_bits", "MeanShift", "PixelShuffle", "GroupConv2D",
           "res_block", "srres_block", "channel_attention", "rcab", "residual_group", "msrb",
           "carn_res_block", "cascading_block", "upsampler"]
