"""Adversarial attacks on SR networks, one file each, and their registry.

Every attack has the functional core

    attack(model, x_lr, *, eps, steps, ...) -> x_adv

on float32 RGB NHWC images in [0, 1], with eps in [0, 1] units (the paper's
{1, 2, 4, 8, 16, 32}/255). ``model`` maps [0, 1] LR to [0, 1] SR: a Keras model
or any callable (e.g. a SavedModel signature wrapper). Attacks are compiled
once per model (``tf.function``, cached) and batched, each image attacked
independently of the others in its batch.

    from tfsr_defense import attacks
    x_adv = attacks.get_attack("ifgsm")(model, x, eps=4 / 255, steps=50)
"""

import dataclasses
from typing import Callable

from tfsr_defense.attacks import fda, fgsm, ifgsm, mifgsm, pgd

__all__ = ["AttackSpec", "get_attack", "get_spec", "known_attacks", "fda", "fgsm", "ifgsm",
           "mifgsm", "pgd"]


@dataclasses.dataclass(frozen=True)
class AttackSpec:
  """An attack of the registry.

  Attributes:
    name: registry key.
    fn: attack(model, x_lr, *, eps, steps, seed, precision, ...) -> x_adv.
    needs_features: attacks a feature map (the model must expose one).
    single_step: takes steps=1 only (FGSM).
    description: one line for --help and reports.
  """
  name: str
  fn: Callable
  needs_features: bool = False
  single_step: bool = False
  description: str = ""


_REGISTRY = {spec.name: spec for spec in (
    AttackSpec("ifgsm", ifgsm.attack, description="I-FGSM on ||S(x~) - S(x)||_2 (paper eq. 14)"),
    AttackSpec("fda", fda.attack, needs_features=True,
               description="Feature Disruptive Attack on the feature map (paper eq. 13)"),
    AttackSpec("fgsm", fgsm.attack, single_step=True,
               description="FGSM on ||S(x~) - S(x)||_2, one step of eps"),
    AttackSpec("pgd", pgd.attack, description="PGD (random start in the ball, step 2.5 eps/T)"),
    AttackSpec("mifgsm", mifgsm.attack, description="MI-FGSM, momentum 1.0"),
)}


def known_attacks():
  """Sorted registered attack names."""
  return sorted(_REGISTRY)


def get_spec(name):
  """AttackSpec of ``name``. Raises ValueError listing the known names."""
  try:
    return _REGISTRY[name]
  except KeyError:
    raise ValueError(f"Unknown attack '{name}'. Known attacks: "
                     f"{', '.join(known_attacks())}.") from None


def get_attack(name):
  """The attack function of ``name``. Raises ValueError listing the known names."""
  return get_spec(name).fn
