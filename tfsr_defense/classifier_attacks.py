"""Attacks on image classifiers, from IBM's adversarial-robustness-toolbox (ART 1.20).

The attacks of Mustafa et al. (IEEE TIP 2019) on a classifier, all untargeted
with the true label, on float32 RGB NHWC images in [0, 1] (ART's
``clip_values=(0, 1)``):

* ``fgsm``: FGSM (Goodfellow et al. 2015), one step of eps, L-inf
  (``art.attacks.evasion.FastGradientMethod``).
* ``ifgsm``: I-FGSM / BIM (Kurakin et al. 2017), ``steps`` steps of eps/steps,
  projected to the eps-ball, no random start (``BasicIterativeMethod``).
* ``mifgsm``: MI-FGSM (Dong et al. 2018), ``steps`` steps of eps/steps,
  momentum ``decay`` (1.0) on L1-normalised gradients (ART's NumPy
  ``ProjectedGradientDescentNumpy(decay=...)``, which ``MomentumIterativeMethod``
  is; with a TF-2 estimator that class dispatches to ART's TF PGD, where
  momentum is disabled, ART issue #2439).
* ``deepfool``: DeepFool (Moosavi-Dezfooli et al. 2016), L2 minimal
  perturbation over the top ``nb_grads`` classes, overshoot 0.02
  (``DeepFool``); no eps.
* ``cw``: Carlini & Wagner L2 (2017), ``binary_search_steps`` x ``max_iter``
  (``CarliniL2Method``); no eps.

eps is in [0, 1] units (the paper's 1..16/255). The model is anything
callable as ``model(x, training=False)`` -> logits (a classifier, or the
classifier behind a purifier for the adaptive attacker): ``art_classifier``
wraps it in ``art.estimators.classification.TensorFlowV2Classifier`` with
sparse softmax cross-entropy on the logits, and the attacks run through
ART's numpy loops, gradients from TF (eager tape over a compiled forward).

    est = classifier_attacks.art_classifier(model, (224, 224, 3), 1000)
    x_adv = classifier_attacks.run_attack("ifgsm", est, x, labels, eps=8 / 255)
"""

import dataclasses
import logging
import warnings

import numpy as np
import tensorflow as tf

with warnings.catch_warnings():  # "PyTorch not found. Not importing DeepZ ..." (ART)
  warnings.filterwarnings("ignore", message="PyTorch not found")
  from art.estimators.classification import TensorFlowV2Classifier

__all__ = ["ATTACKS", "EPS_ATTACKS", "THREAT_MODELS", "AttackSettings", "known_attacks",
           "check_attack", "CompiledModel", "art_classifier", "make_attack", "run_attack"]

ATTACKS = ("fgsm", "ifgsm", "mifgsm", "deepfool", "cw")
# What the attacker sees: 'graybox' (the paper's), the bare classifier; 'adaptive' (white-box,
# Athalye et al. 2018), classifier(purifier(.)) with BPDA through the non-differentiable steps.
THREAT_MODELS = ("graybox", "adaptive")
EPS_ATTACKS = ("fgsm", "ifgsm", "mifgsm")   # L-inf, bounded by eps
_DESCRIPTIONS = {
    "fgsm": "FGSM, one step of eps (L-inf)",
    "ifgsm": "I-FGSM / BIM, steps x eps/steps (L-inf)",
    "mifgsm": "MI-FGSM, steps x eps/steps, momentum decay (L-inf)",
    "deepfool": "DeepFool (L2, minimal, no eps)",
    "cw": "Carlini-Wagner L2 (minimal, no eps)",
}


def known_attacks():
  """The attack names, in the paper's order."""
  return list(ATTACKS)


def check_attack(name):
  """``name`` unchanged; ValueError listing the known attacks otherwise."""
  if name not in ATTACKS:
    raise ValueError(f"Unknown attack {name!r}. Known attacks: "
                     + "; ".join(f"{a} ({_DESCRIPTIONS[a]})" for a in ATTACKS) + ".")
  return name


@dataclasses.dataclass(frozen=True)
class AttackSettings:
  """The attacks' parameters (besides eps). Defaults: see the module docstring.

  Attributes:
    steps: iterations of I-FGSM and MI-FGSM (step eps/steps; Dong et al.: 10).
    decay: MI-FGSM momentum (Dong et al.: 1.0).
    deepfool_max_iter, deepfool_overshoot, deepfool_nb_grads: DeepFool's
      iterations, overshoot (original: 0.02) and classes considered.
    cw_max_iter, cw_binary_search_steps, cw_learning_rate, cw_initial_const,
    cw_confidence: C&W-L2's optimisation (ART's line-search variant).
  """
  steps: int = 10
  decay: float = 1.0
  deepfool_max_iter: int = 50
  deepfool_overshoot: float = 0.02
  deepfool_nb_grads: int = 10
  cw_max_iter: int = 10
  cw_binary_search_steps: int = 5
  cw_learning_rate: float = 0.01
  cw_initial_const: float = 0.01
  cw_confidence: float = 0.0

  def __post_init__(self):
    for name in ("steps", "deepfool_max_iter", "deepfool_nb_grads", "cw_max_iter",
                 "cw_binary_search_steps"):
      v = getattr(self, name)
      if isinstance(v, bool) or int(v) != v or v < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {v!r}.")
    for name in ("decay", "deepfool_overshoot", "cw_initial_const", "cw_confidence"):
      v = getattr(self, name)
      if not np.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {v!r}.")
    if not np.isfinite(self.cw_learning_rate) or self.cw_learning_rate <= 0:
      raise ValueError(f"cw_learning_rate must be > 0, got {self.cw_learning_rate!r}.")

  def describe(self, attack):
    """The settings that change ``attack``'s result, as a short string (report keys)."""
    check_attack(attack)
    if attack == "fgsm":
      return "single step"
    if attack == "ifgsm":
      return f"steps={self.steps}"
    if attack == "mifgsm":
      return f"steps={self.steps} decay={self.decay:g}"
    if attack == "deepfool":
      return (f"max_iter={self.deepfool_max_iter} overshoot={self.deepfool_overshoot:g} "
              f"nb_grads={self.deepfool_nb_grads}")
    return (f"bss={self.cw_binary_search_steps} max_iter={self.cw_max_iter} "
            f"lr={self.cw_learning_rate:g} c0={self.cw_initial_const:g} "
            f"kappa={self.cw_confidence:g}")


class CompiledModel:
  """``model`` behind compiled ``tf.function``s (float32 (N, H, W, 3) -> logits (N, K)).

  Callable as ``m(x, training=False)`` (what ART calls); ``training`` is
  ignored (inference). Gradients flow through it from an outer tape.
  ``class_gradient(x, idx)``: d logits[n, idx[n]] / d x, compiled.
  """

  def __init__(self, model, input_shape):
    self.model = model
    self.input_shape = tuple(int(s) for s in input_shape)
    spec = tf.TensorSpec((None,) + self.input_shape, tf.float32)

    def forward(x):
      return tf.cast(model(x, training=False), tf.float32)

    def class_gradient(x, idx):
      with tf.GradientTape() as tape:
        tape.watch(x)
        logits = forward(x)
        selected = tf.gather(logits, idx, axis=1, batch_dims=1)
      return tape.gradient(selected, x)

    self._forward = tf.function(forward, input_signature=[spec])
    self._class_gradient = tf.function(
        class_gradient, input_signature=[spec, tf.TensorSpec([None], tf.int32)])

  def __call__(self, x, training=False):
    del training
    return self._forward(tf.cast(x, tf.float32))

  def class_gradient(self, x, idx):
    """float32 (N, H, W, 3) gradient of logit idx[n] of image n (int32 idx (N,))."""
    return self._class_gradient(tf.cast(x, tf.float32), tf.cast(idx, tf.int32))


class _Estimator(TensorFlowV2Classifier):
  """ART's ``TensorFlowV2Classifier`` over a ``CompiledModel``, first-order class gradients.

  ART's own ``class_gradient`` records the gradient computation on a
  persistent tape (second order: slow, and it fails on ops without a second
  derivative such as bicubic resizing); DeepFool and C&W use it.
  """

  def class_gradient(self, x, label=None, training_mode=False, **kwargs):
    """d logit[label] / d x: (N, 1, H, W, C) for an int or per-sample labels,
    (N, K, H, W, C) for label=None."""
    del training_mode, kwargs
    x = tf.convert_to_tensor(np.asarray(x, np.float32))
    n = int(x.shape[0])
    if label is None:
      grads = [self._model.class_gradient(x, tf.fill([n], k)).numpy()
               for k in range(self.nb_classes)]
      return np.stack(grads, axis=1)
    if isinstance(label, (int, np.integer)):
      idx = np.full([n], int(label), np.int32)
    else:
      idx = np.asarray(label, np.int32).reshape(-1)
      if idx.shape[0] != n:
        raise ValueError(f"{idx.shape[0]} labels for {n} images.")
    return self._model.class_gradient(x, tf.constant(idx))[:, None].numpy()


def art_classifier(model, input_shape, num_classes):
  """ART's ``TensorFlowV2Classifier`` over ``model`` (compiled; logits; clip_values (0, 1)).

  Args:
    model: callable ``model(x, training=False)`` -> float32 logits (N, K)
      on float32 [0, 1] images (N, H, W, 3), or a ``CompiledModel`` of it.
    input_shape: (H, W, 3) of one image.
    num_classes: K.

  Returns:
    a ``TensorFlowV2Classifier`` (subclass: ``class_gradient`` compiled and
    first-order; everything else is ART's).
  """
  logging.getLogger("art").setLevel(logging.WARNING)
  input_shape = tuple(int(s) for s in input_shape)
  if not isinstance(model, CompiledModel):
    model = CompiledModel(model, input_shape)
  return _Estimator(
      model=model, nb_classes=int(num_classes), input_shape=input_shape,
      loss_object=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      clip_values=(0.0, 1.0))


def _check_eps(attack, eps):
  if attack in EPS_ATTACKS:
    if eps is None or not np.isfinite(eps) or not 0.0 < float(eps) <= 1.0:
      raise ValueError(f"{attack} needs eps in (0, 1] ([0, 1] image units; 8/255 = "
                       f"{8 / 255:.5f}), got {eps!r}.")
  elif eps is not None:
    raise ValueError(f"{attack} is not bounded by eps (it finds a minimal L2 perturbation); "
                     f"pass eps=None, got {eps!r}.")


def make_attack(name, estimator, eps=None, settings=None, batch_size=1):
  """The ART attack object for ``name`` (see the module docstring for the parameters).

  Raises:
    ValueError: unknown attack; eps missing / outside (0, 1] for the L-inf
      attacks, or given for DeepFool / C&W.
  """
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="PyTorch not found")
    from art.attacks import evasion  # pylint: disable=g-import-not-at-top
  check_attack(name)
  _check_eps(name, eps)
  s = settings or AttackSettings()
  if name == "fgsm":
    return evasion.FastGradientMethod(estimator, norm=np.inf, eps=float(eps), eps_step=float(eps),
                                      targeted=False, batch_size=batch_size)
  if name == "ifgsm":
    return evasion.BasicIterativeMethod(estimator, eps=float(eps), eps_step=float(eps) / s.steps,
                                        max_iter=s.steps, targeted=False, batch_size=batch_size,
                                        verbose=False)
  if name == "mifgsm":
    # ART's MomentumIterativeMethod dispatches to its TF-2 PGD, where momentum is
    # disabled (ART issue #2439); its NumPy PGD implements it (L1-normalised).
    return evasion.ProjectedGradientDescentNumpy(
        estimator, norm=np.inf, eps=float(eps), eps_step=float(eps) / s.steps, decay=s.decay,
        max_iter=s.steps, targeted=False, num_random_init=0, batch_size=batch_size,
        verbose=False)
  if name == "deepfool":
    return evasion.DeepFool(estimator, max_iter=s.deepfool_max_iter,
                            epsilon=s.deepfool_overshoot, nb_grads=s.deepfool_nb_grads,
                            batch_size=batch_size, verbose=False)
  return evasion.CarliniL2Method(estimator, confidence=s.cw_confidence, targeted=False,
                                 learning_rate=s.cw_learning_rate,
                                 binary_search_steps=s.cw_binary_search_steps,
                                 max_iter=s.cw_max_iter, initial_const=s.cw_initial_const,
                                 batch_size=batch_size, verbose=False)


def run_attack(name, estimator, x, labels, eps=None, settings=None, seed=0):
  """Attack the images ``x`` (untargeted, true labels) and return the adversarial images.

  Args:
    name: one of ``ATTACKS``.
    estimator: ``art_classifier(...)``.
    x: float32 (N, H, W, 3) in [0, 1] (NumPy or tensor).
    labels: int (N,) true class indices.
    eps: L-inf radius in [0, 1] units for fgsm / ifgsm / mifgsm; None for
      deepfool / cw.
    settings: AttackSettings (default: the defaults).
    seed: NumPy / TF seed set before the attack (the attacks here draw no
      random numbers; kept for reproducibility of ART internals).

  Returns:
    float32 NumPy (N, H, W, 3) in [0, 1]; for the L-inf attacks
    |x_adv - x| <= eps (+ float rounding).

  Raises:
    ValueError: see ``make_attack``; labels not matching x.
  """
  x = np.asarray(x, np.float32)
  labels = np.asarray(labels, np.int64).reshape(-1)
  if labels.shape[0] != x.shape[0]:
    raise ValueError(f"{labels.shape[0]} labels for {x.shape[0]} images.")
  attack = make_attack(name, estimator, eps, settings, batch_size=max(1, x.shape[0]))
  np.random.seed(int(seed) % (2 ** 32))
  tf.random.set_seed(int(seed))
  y = np.eye(estimator.nb_classes, dtype=np.float32)[labels]
  x_adv = np.asarray(attack.generate(x=x, y=y), np.float32)
  x_adv = np.clip(x_adv, 0.0, 1.0)
  if name in EPS_ATTACKS:  # ART projects already; guard against float drift
    x_adv = np.clip(x_adv, x - float(eps), x + float(eps))
  return x_adv
