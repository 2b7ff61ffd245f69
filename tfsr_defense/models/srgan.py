"""SRGAN (Ledig et al., CVPR 2017): the registry entry of its generator.

The generator is SRResNet (same builder, 1,550,659 parameters at x4, [-1, 1]
pixels, lambda = 0.1 in Choi et al. 2020); ``build_model('srgan')`` returns it,
so validation, attacks and export treat SRGAN like any other network. The
adversarial part (discriminator, VGG54 content loss, the GAN training step)
lives in ``tfsr_defense.gan``; SRGAN is trained in two phases: SRResNet with
MSE (``--model=srresnet``), then the GAN phase initialised from it. The spec's
``loss`` ('l2') is the phase-one loss, used where a pixel loss is needed.
"""

from tfsr_defense.models import registry
from tfsr_defense.models.srresnet import build_srresnet

__all__ = ["build_srgan"]


def build_srgan(scale=4, regularizer=None, name="srgan", **kwargs):
  """The SRGAN generator: ``build_srresnet`` under another model name (same variables)."""
  return build_srresnet(scale, regularizer, name=name, **kwargs)


registry.register(registry.ModelSpec(
    name="srgan", builder=build_srgan, pixel_range=(-1.0, 1.0), loss="l2", entropy_weight=0.1,
    description="SRGAN generator (= SRResNet, 1,550,659 params at x4); GAN training in gan.py"))
