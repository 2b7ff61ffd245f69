"""I-FGSM for super-resolution (Choi et al., ICCV 2019; Choi et al., ACCV 2020, eq. 14).

    x~_0 = x + U(-r, r)                      (random start, see below)
    x~_{t+1} = clip_{x, alpha}( x~_t + (alpha / T) sign( grad_x~ ||S(x~_t) - S(x)||_2 ) ),  T steps

where clip_{x, alpha} projects onto the L-inf ball of radius alpha around x
and onto [0, 1]. The paper uses T = 50 and alpha in {1, 2, 4, 8, 16, 32}/255.

Why the random start: ||S(x~) - S(x)||_2 is minimal (zero) at x~ = x, so its
gradient there is exactly zero, sign(0) = 0 and the attack never moves.
Starting at a small random offset (one step, alpha/T, by default) gives the
gradient J^T J d / ||J d|| (J the Jacobian of S, d the offset): one power
iteration towards the most amplified input direction, whatever the size of d.
"""

from tfsr_defense.attacks import engine as engine_lib

__all__ = ["attack"]


def attack(model, x_lr, *, eps, steps=50, random_start=None, seed=0, precision=None,
           target=None):
  """I-FGSM on the SR output distance (paper eq. 14).

  Args:
    model: Keras SR model or callable: float32 (N, H, W, 3) in [0, 1] ->
      float32 (N, sH, sW, 3) in [0, 1] (a dict output uses its 'sr' entry).
    x_lr: float (N, H, W, 3) or (H, W, 3) LR images in [0, 1].
    eps: alpha, L-inf radius in [0, 1] units (e.g. 4/255). Step size eps/steps.
    steps: T >= 1 (paper: 50).
    random_start: start radius as a fraction of eps, in [0, 1]; None: 1/steps
      (float32) or 1 (mixed_bfloat16). 0 reproduces the textbook update, which
      does not move (see the module docstring).
    seed: int (image i uses seed + i), one int per image, or a
      tf.random.Generator. Each image's attack depends only on that image and
      its seed, not on the rest of the batch.
    precision: None (the engine's, else float32), 'float32', or
      'mixed_bfloat16' (Keras models only: the loop runs a bfloat16 copy of
      the network, ~1.5x faster per gradient on AVX512-BF16 CPUs, coarser
      gradients). ``model`` may be a ``GradientEngine`` (compiled once, reused).
    target: None (the paper: move S(x~) away from the clean output S(x)), or
      float32 (N, sH, sW, 3) images to move away from instead, e.g. the HR
      images (the HR-target variant of Choi et al.'s tf-sr-attack code). The
      distance to HR is not minimal at x~ = x, so that variant also moves
      without a random start.

  Returns:
    float32 x_adv of x_lr's shape, in [0, 1], with ||x_adv - x_lr||_inf <= eps.

  Raises:
    ValueError: eps outside [0, 1], steps < 1, random_start outside [0, 1],
      unknown precision, images not in [0, 1], bf16 for a non-Keras model.
  """
  eps = engine_lib.check_common(eps, steps, random_start, precision)
  engine = engine_lib.as_engine(model, precision)
  return engine_lib.run_sign_loop(
      engine.sr_distance_loop(to_target=target is not None), x_lr, eps=eps, steps=steps,
      step_size=eps / steps,
      start_radius=engine_lib.start_radius(random_start, eps, steps, engine.precision),
      seed=seed, target=target)
