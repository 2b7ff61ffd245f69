"""Feature Disruptive Attack (Ganeshan & Babu, ICCV 2019) on SR networks (Choi et al. 2020, eq. 13).

For a feature map Phi (N, H, W, D) and the clean features' channel mean
C(w, h) = mean_d Phi_clean(w, h, d), the attack maximises per image

    L(x~) = log || Phi(x~)[Phi_clean < C] ||_2  -  log || Phi(x~)[Phi_clean > C] ||_2

(raise the activations that were below their position's mean, lower those
above), averaged over the attacked feature maps, by projected sign steps on
the L-inf eps-ball and [0, 1].

Defaults follow the official FDA code (its configs: eps 16, eps_iter 2,
nb_iter 10 on the 0-255 scale, random start): every ReLU activation of the
network plus the regularized map ``models.FEATURES`` (``features='relu'``),
a uniform random start in the whole ball, T = 10 steps of eps / 8. The paper
does not name the layer for SR; eq. 13 on the single map before the
upsampler is ``features='features'``. (Measured on the committed 4000-step
EDSR pair: the single map hides the defense's effect, the official setting
shows it; README, Results.)
"""

import tensorflow as tf

from tfsr_defense.attacks import engine as engine_lib

__all__ = ["attack", "fda_objective", "fda_reference", "DEFAULT_STEPS", "STEP_FRACTION",
           "DEFAULT_FEATURES"]

DEFAULT_STEPS = 10          # official nb_iter
STEP_FRACTION = 1.0 / 8.0   # official eps_iter / eps = 2 / 16
DEFAULT_FEATURES = "relu"
# Keeps log finite when a mask selects nothing (e.g. D = 1); far below any real ||.||^2.
_TINY = 1e-30


def fda_reference(phis):
  """Masks (Phi_clean < C, Phi_clean > C) per feature map, C = channel mean at each (h, w)."""
  refs = []
  for phi in phis:
    c = tf.reduce_mean(phi, axis=-1, keepdims=True)
    refs.append((tf.cast(phi < c, tf.float32), tf.cast(phi > c, tf.float32)))
  return refs


def fda_objective(phis_adv, reference):
  """Paper eq. 13 per image, averaged over feature maps: float32 (N,).

  log ||v||_2 is computed as 0.5 log(sum v^2 + 1e-30).
  """
  terms = []
  for phi, (below, above) in zip(phis_adv, reference):
    axes = tf.range(1, tf.rank(phi))
    low = 0.5 * tf.math.log(tf.reduce_sum(tf.square(phi * below), axis=axes) + _TINY)
    high = 0.5 * tf.math.log(tf.reduce_sum(tf.square(phi * above), axis=axes) + _TINY)
    terms.append(low - high)
  return tf.add_n(terms) / float(len(terms))


def attack(model, x_lr, *, eps, steps=DEFAULT_STEPS, step_size=None, features=DEFAULT_FEATURES,
           random_start=1.0, seed=0, precision=None):
  """FDA on feature maps of an SR network (paper eq. 13; official FDA settings by default).

  Args:
    model: ``GradientEngine`` (compiled once, reused), Keras SR model (feature
      maps taken from its layers), or an SR model with ``features`` /
      ``activations`` methods (a SavedModel with those signatures).
    x_lr: float (N, H, W, 3) or (H, W, 3) LR images in [0, 1].
    eps: L-inf radius in [0, 1] units.
    steps: T >= 1 (official FDA: 10).
    step_size: [0, 1] units; None: eps / 8 (official FDA).
    features: 'relu' (every activation layer + the ``models.FEATURES`` map;
      default), 'features' (that map only), a layer name, several layer names
      (objectives averaged), or a callable x -> feature map(s).
    random_start: start radius as a fraction of eps (default 1: uniform in
      the whole ball, as the official code).
    seed: as ``ifgsm.attack`` (the random start).
    precision: None (the engine's, else float32), 'float32' or 'mixed_bfloat16'.

  Returns:
    float32 x_adv of x_lr's shape in [0, 1], ||x_adv - x_lr||_inf <= eps.

  Raises:
    ValueError: bad eps/steps/step_size/random_start/precision, images not
      in [0, 1] or not finite, unknown layer name (the message lists the
      model's layers), or no feature map available (e.g. a SavedModel
      without a 'features' signature).
  """
  eps = engine_lib.check_common(eps, steps, random_start, precision)
  if step_size is None:
    step_size = STEP_FRACTION * eps
  elif not float(step_size) >= 0.0:
    raise ValueError(f"step_size must be >= 0 ([0, 1] units), got {step_size}.")
  engine = engine_lib.as_engine(model, precision)
  key, feats = engine.feature_maps(features)
  loop = engine.loop(("fda",) + key,
                     prepare=lambda x, target: fda_reference(feats(x)),
                     objective=lambda x_adv, ref: fda_objective(feats(x_adv), ref))
  return engine_lib.run_sign_loop(loop, x_lr, eps=eps, steps=steps, step_size=float(step_size),
                                  start_radius=float(random_start or 0.0) * eps, seed=seed)
