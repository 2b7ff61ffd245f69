"""Input pre-processing defenses in front of an SR network (Choi et al., ACCV 2020, sec. 2.3, 5.6).

The paper's baselines transform the LR input before the SR network:

* ``jpeg:Q`` -- JPEG compression at quality Q in 1..100 (Das et al. 2018),
  ``JpegCompression``; non-differentiable, attacked adaptively with BPDA
  (identity backward pass, Athalye et al. 2018).
* ``resize:LO-HI`` (optionally ``resize:LO-HI:METHOD``) -- random resizing by
  r ~ U[LO, HI) and zero padding at a random offset (Xie et al. 2018),
  undone on the SR output so the output keeps the bare network's geometry,
  ``RandomResizePad``; attacked adaptively with expectation over
  transformation.
* ``none`` -- the identity, ``NoDefense``.

``DefendedSR(sr_model, defense)`` wraps any SR Keras model behind a defense
and gives both threat models (``attack_target``: the bare network for the
non-adaptive attacker, the defended / EOT-averaged model for the adaptive
one). All images are float32 RGB NHWC in [0, 1].

    from tfsr_defense import attacks, defenses, models
    net = models.build_model("edsr", 4)
    defended = defenses.DefendedSR(net, defenses.parse_defense("jpeg:75"), adaptive=True)
    x_adv = attacks.get_attack("ifgsm")(defended.attack_target, x, eps=4 / 255, steps=50)
    sr_adv = defended(x_adv)
"""

import re

from tfsr_defense.defenses.defended_sr import DefendedSR, InputDefense, NoDefense
from tfsr_defense.defenses.jpeg import JpegCompression
from tfsr_defense.defenses.random_resize import METHODS, RandomResizePad

__all__ = ["DefendedSR", "InputDefense", "JpegCompression", "NoDefense", "RandomResizePad",
           "THREAT_MODELS", "defended_sr_models", "known_defenses", "parse_defense"]

_FORMS = ("none", "jpeg:<quality 1..100>", "resize:<lo>-<hi>[:" + "|".join(METHODS) + "]")
_NUMBER = r"([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?)"
_JPEG = re.compile(r"jpeg:([-+]?\d+)")
_RESIZE = re.compile(rf"resize:{_NUMBER}-{_NUMBER}(?::(\w+))?")


def known_defenses():
  """The accepted spec forms, e.g. ['jpeg:<quality 1..100>', 'none', 'resize:<lo>-<hi>[...]']."""
  return sorted(_FORMS)


def _bad(spec, reason):
  return ValueError(f"Bad defense {spec!r}: {reason}. Known forms: {', '.join(known_defenses())} "
                    "(e.g. 'jpeg:75', 'resize:0.9-1.1').")


def parse_defense(spec, seed=0):
  """The defense layer named by ``spec``.

  Args:
    spec: 'none', 'jpeg:Q' (Q integer in 1..100), or 'resize:LO-HI' with
      0 < LO <= HI (decimal numbers), optionally ':bilinear' (default),
      ':nearest' or ':bicubic'. Case and surrounding spaces are ignored.
    seed: integer seed of a random defense (ignored by deterministic ones).

  Returns:
    an ``InputDefense`` Keras layer: ``NoDefense``, ``JpegCompression(Q)``
    (BPDA on) or ``RandomResizePad(LO, HI, method, seed)``.

  Raises:
    ValueError: unknown name, malformed or out-of-range parameter; the
      message names the problem and lists the known forms.
  """
  if not isinstance(spec, str):
    raise _bad(spec, "not a string")
  text = spec.strip().lower()
  if text == "none":
    return NoDefense()
  match = _JPEG.fullmatch(text)
  if match:
    try:
      return JpegCompression(int(match.group(1)))
    except ValueError as e:
      raise _bad(spec, str(e).rstrip(".")) from None
  match = _RESIZE.fullmatch(text)
  if match:
    lo, hi, method = match.group(1), match.group(2), match.group(3) or "bilinear"
    try:
      return RandomResizePad(float(lo), float(hi), method=method, seed=seed)
    except ValueError as e:
      raise _bad(spec, str(e).rstrip(".")) from None
  name = text.split(":", 1)[0]
  if name in ("jpeg", "resize"):
    raise _bad(spec, f"malformed parameters for '{name}'")
  raise _bad(spec, f"unknown defense '{name}'")


THREAT_MODELS = ("non-adaptive", "adaptive")


def defended_sr_models(net, spec, *, name, scale=None, threat_models=THREAT_MODELS,
                       eot_samples=8, seed=0):
  """The evaluation's view of a trained SR network behind a defense, one per threat model.

  Args:
    net: Keras SR network (float32 [0, 1] in and out).
    spec: a ``parse_defense`` spec; 'none' gives the bare network alone.
    name: report name of the network; each model is named
      '<name> [<threat model>]'.
    scale: SR scale (None: measured).
    threat_models: 'non-adaptive' (the attacker differentiates the bare
      network; the defended one is evaluated) and / or 'adaptive' (through
      the defense: BPDA for JPEG, EOT over ``eot_samples`` draws for the
      random resize).
    eot_samples: k of the adaptive attack on a random defense.
    seed: seed of a random defense.

  Returns:
    dict report name -> ``serving.SRModel`` whose call is the deployed
    defense (one fresh draw per call), whose attack target follows the
    threat model, and whose fingerprint covers the weights, the defense and
    the threat model (so report cells never mix them).

  Raises:
    ValueError: bad spec (see ``parse_defense``), unknown threat model.
  """
  from tfsr_defense import serving  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  layer = parse_defense(spec, seed=seed)
  if isinstance(layer, NoDefense):
    return {name: serving.SRModel.from_keras(net, name=name, scale=scale)}
  unknown = [t for t in threat_models if t not in THREAT_MODELS]
  if unknown or not threat_models:
    raise ValueError(f"Unknown threat model(s) {unknown or list(threat_models)}: use "
                     f"{', '.join(THREAT_MODELS)}.")
  bare = serving.SRModel.from_keras(net, name=name, scale=scale)
  out = {}
  for threat in threat_models:
    defended = DefendedSR(net, layer, adaptive=threat == "adaptive", eot_samples=eot_samples)
    deployed = tf.function(lambda x, d=defended: d(x, training=False), reduce_retracing=True)
    label = f"{name} [{threat}]"
    fingerprint = serving.fingerprint_text(f"{bare.fingerprint}|{layer.spec()}|{threat}|"
                                           f"{eot_samples}|{seed}")
    # Non-adaptive: the attacks differentiate the bare network, as for the undefended model.
    attack_fingerprint = bare.fingerprint if threat == "non-adaptive" else fingerprint
    out[label] = serving.SRModel(label, bare.scale, deployed, bare.features,
                                 keras_model=defended.attack_target, source=f"keras+{spec}",
                                 activations_fn=bare.activations, fingerprint=fingerprint,
                                 attack_fingerprint=attack_fingerprint)
  return out
