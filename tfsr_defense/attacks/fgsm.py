"""FGSM for super-resolution (Goodfellow et al. 2015, with the SR loss of Choi et al. 2020).

    x_adv = clip_{x, eps}( x~_0 + eps sign( grad ||S(x~_0) - S(x)||_2 ) ),  x~_0 = x + U(-r, r)

One step of the full budget. As for I-FGSM the gradient is exactly zero at
x~ = x, so the step is taken from a small random start (r = eps/50 by
default, I-FGSM's step at T = 50); only the direction of that start matters
to first order.
"""

from tfsr_defense.attacks import engine as engine_lib

__all__ = ["attack"]

DEFAULT_START = 1.0 / 50


def attack(model, x_lr, *, eps, steps=1, random_start=None, seed=0, precision=None):
  """Single-step FGSM on the SR output distance.

  Args:
    model, x_lr, seed, precision: as ``ifgsm.attack``.
    eps: L-inf radius and step size, [0, 1] units.
    steps: must be 1 (accepted so that every attack takes the same arguments).
    random_start: fraction of eps in [0, 1]; None: 1/50 (float32) or 1
      (mixed_bfloat16).

  Returns:
    float32 x_adv of x_lr's shape in [0, 1], ||x_adv - x_lr||_inf <= eps.

  Raises:
    ValueError: as ``ifgsm.attack``, or steps != 1.
  """
  eps = engine_lib.check_common(eps, steps, random_start, precision)
  engine = engine_lib.as_engine(model, precision)
  if steps != 1:
    raise ValueError(f"FGSM takes a single step; got steps={steps} (use 'ifgsm' or 'pgd').")
  if random_start is None and engine.precision == "float32":
    random_start = DEFAULT_START
  return engine_lib.run_sign_loop(
      engine.sr_distance_loop(), x_lr, eps=eps, steps=1, step_size=eps,
      start_radius=engine_lib.start_radius(random_start, eps, 1, engine.precision),
      seed=seed)
