"""Adversarial training of SR networks (Choi et al., ACCV 2020, sec. 5.6).

In every training step the LR batch x is replaced by (or, with ``mix``,
concatenated with) its I-FGSM-attacked version x~, against the same HR
images; the trainer then takes its usual step on x~.

I-FGSM (Kurakin et al. 2017; for SR: Choi et al., ICCV 2019), T steps of
size alpha / T, each projected to the L-inf ball of radius alpha around x
and to [0, 1]:

    x~_0 = x                       (objective 'loss')
    x~_0 = x + U(-alpha, alpha)    (objective 'sr_distance': random start)
    x~_t = clip_[0,1](clip_[x-alpha, x+alpha](x~_{t-1} + alpha/T sign(grad J(x~_{t-1}))))

Objectives J:

* ``'loss'`` (the default): the training reconstruction loss L_r(S(x~), HR)
  in the network's native range (``losses.reconstruction_loss``), the usual
  adversarial-training objective (Madry et al. 2018). It has a gradient at
  x~ = x, so the paper's T = 1 step from the clean image moves it.
* ``'sr_distance'``: the paper's attack objective ||S(x~) - S(x)||_2 (eq.
  14). Its gradient is exactly zero at x~ = x, so it needs (and gets) the
  random start; the step uses the sign of the gradient of the squared
  distance, which per example is that of the distance.

The network is run with ``training=False`` while attacking (no regularizer
noise, batch-norm statistics not updated), and no gradient flows from the
training loss back through x~ (the attack is a constant input to the step).
"""

import math

import tensorflow as tf

from tfsr_defense import losses

__all__ = ["METHODS", "OBJECTIVES", "check_settings", "ifgsm_batch", "adversarial_batch"]

# --adversarial values: 'none' trains on clean inputs.
METHODS = ("none", "ifgsm")
OBJECTIVES = ("loss", "sr_distance")


def check_settings(method, eps, steps, objective):
  """Validate adversarial-training settings; ValueError naming the first bad one.

  Args:
    method: one of ``METHODS``.
    eps: alpha, the L-inf radius in [0, 1] pixel units; finite, 0 < eps <= 1.
    steps: T >= 1.
    objective: one of ``OBJECTIVES``.
  """
  if method not in METHODS:
    raise ValueError(f"Unknown adversarial training {method!r}: use one of {', '.join(METHODS)}.")
  if objective not in OBJECTIVES:
    raise ValueError(f"Unknown adv_objective {objective!r}: use one of {', '.join(OBJECTIVES)}.")
  try:
    eps = float(eps)
  except (TypeError, ValueError):
    raise ValueError(f"adv_eps must be a number, got {eps!r}.") from None
  if not (math.isfinite(eps) and 0 < eps <= 1):
    raise ValueError(f"adv_eps must be in (0, 1] in [0,1] pixel units (8/255 = 0.0314), got {eps}.")
  if int(steps) != steps or steps < 1:
    raise ValueError(f"adv_steps must be an integer >= 1, got {steps}.")


def ifgsm_batch(model, lr, hr, *, eps, steps=1, objective="loss", loss="l1",
                pixel_range=(0.0, 255.0)):
  """I-FGSM-attacked LR batch for one training step (graph-compatible).

  Args:
    model: Keras SR model, float32 [0,1] RGB (N, h, w, 3) -> (N, sh, sw, 3).
    lr: float32 (N, h, w, 3) LR batch in [0, 1].
    hr: float32 (N, sh, sw, 3) HR batch in [0, 1] (objective 'loss' only).
    eps: alpha, L-inf radius in [0, 1] units (the paper: 8/255).
    steps: T (the paper: 1); step size eps / T.
    objective: 'loss' (default, L_r(S(x~), HR)) or 'sr_distance'
      (||S(x~) - S(x)||_2 from a random start); see the module docstring.
    loss, pixel_range: the network's reconstruction loss and native range
      (``models.get_spec(name).loss / .pixel_range``).

  Returns:
    float32 (N, h, w, 3) x~ with |x~ - x| <= eps and 0 <= x~ <= 1 elementwise,
    without gradient.

  Raises:
    ValueError: bad eps, steps or objective.
  """
  check_settings("ifgsm", eps, steps, objective)
  x = tf.stop_gradient(tf.cast(lr, tf.float32))
  hr = tf.cast(hr, tf.float32)
  lo, hi = tf.maximum(x - eps, 0.0), tf.minimum(x + eps, 1.0)
  if objective == "loss":
    x_adv = x
    target = hr
  else:
    x_adv = tf.clip_by_value(x + tf.random.uniform(tf.shape(x), -eps, eps), lo, hi)
    target = tf.stop_gradient(tf.cast(model(x, training=False), tf.float32))
  step_size = eps / steps
  for _ in range(int(steps)):
    with tf.GradientTape() as tape:
      tape.watch(x_adv)
      sr = tf.cast(model(x_adv, training=False), tf.float32)
      if objective == "loss":
        objective_value = tf.reduce_sum(losses.reconstruction_loss(sr, target, loss, pixel_range))
      else:
        objective_value = tf.reduce_sum(tf.square(sr - target))
    grad = tape.gradient(objective_value, x_adv)
    x_adv = tf.clip_by_value(x_adv + step_size * tf.sign(grad), lo, hi)
  return tf.stop_gradient(x_adv)


def adversarial_batch(model, lr, hr, *, eps, steps=1, objective="loss", mix=False, loss="l1",
                      pixel_range=(0.0, 255.0)):
  """The (lr, hr) batch a training step trains on: attacked, or clean + attacked.

  Args:
    As ``ifgsm_batch``; mix: concatenate [x; x~] and [HR; HR] (2N examples)
    instead of replacing x by x~ (N examples).

  Returns:
    (lr, hr) float32 tensors: N or 2N examples.
  """
  x_adv = ifgsm_batch(model, lr, hr, eps=eps, steps=steps, objective=objective, loss=loss,
                      pixel_range=pixel_range)
  hr = tf.cast(hr, tf.float32)
  if mix:
    return tf.concat([tf.cast(lr, tf.float32), x_adv], 0), tf.concat([hr, hr], 0)
  return x_adv, hr
