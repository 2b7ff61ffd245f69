"""PGD for super-resolution (Madry et al. 2018, with the SR loss of Choi et al. 2020).

    x~_0 = clip(x + U(-eps, eps))
    x~_{t+1} = clip_{x, eps}( x~_t + a sign( grad ||S(x~_t) - S(x)||_2 ) )

Projected sign-gradient ascent from a uniform random point of the whole
eps-ball, with step a = 2.5 eps / T (Madry et al.'s rule: the iterate can
cross the ball from any start).
"""

from tfsr_defense.attacks import engine as engine_lib

__all__ = ["attack"]

STEP_FACTOR = 2.5


def attack(model, x_lr, *, eps, steps=50, step_size=None, random_start=1.0, seed=0,
           precision=None):
  """PGD (L-inf) on the SR output distance.

  Args:
    model, x_lr, seed, precision: as ``ifgsm.attack``.
    eps: L-inf radius in [0, 1] units.
    steps: T >= 1.
    step_size: [0, 1] units; None: 2.5 eps / T.
    random_start: start radius as a fraction of eps (default 1: whole ball).

  Returns:
    float32 x_adv of x_lr's shape in [0, 1], ||x_adv - x_lr||_inf <= eps.

  Raises:
    ValueError: as ``ifgsm.attack``, or step_size < 0.
  """
  eps = engine_lib.check_common(eps, steps, random_start, precision)
  engine = engine_lib.as_engine(model, precision)
  if step_size is None:
    step_size = STEP_FACTOR * eps / steps
  elif not float(step_size) >= 0.0:
    raise ValueError(f"step_size must be >= 0 ([0, 1] units), got {step_size}.")
  return engine_lib.run_sign_loop(
      engine.sr_distance_loop(), x_lr, eps=eps, steps=steps, step_size=float(step_size),
      start_radius=engine_lib.start_radius(random_start, eps, steps, engine.precision),
      seed=seed)
