"""Adversarial attacks on SR networks, one file each, and their registry.

Every attack has the functional core

    attack(model, x_lr, *, eps, steps, ...) -> x_adv

on float32 RGB NHWC images in [0, 1], with eps in [0, 1] units (the paper's
{1, 2, 4, 8, 16, 32}/255). ``model`` is a ``GradientEngine`` (engine.py: the
compiled gradient loops of one model, made once by the caller and reused), or
a Keras model / SR callable (a temporary engine is made for that call).
Attacks are batched, each image attacked independently of the others in its
batch.

    from tfsr_defense import attacks
    engine = attacks.GradientEngine(model)
    x_adv = attacks.get_attack("ifgsm")(engine, x, eps=4 / 255, steps=50)
"""

import dataclasses
from typing import Callable

from tfsr_defense.attacks import engine, fda, fgsm, ifgsm, mifgsm, pgd
from tfsr_defense.attacks.engine import GradientEngine, as_engine

__all__ = ["AttackSpec", "GradientEngine", "as_engine", "get_attack", "get_spec",
           "known_attacks", "engine", "fda", "fgsm", "ifgsm", "mifgsm", "pgd"]


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
               description="Feature Disruptive Attack (paper eq. 13; official: all ReLU maps, "
               "random start, 10 steps of eps/8)"),
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
