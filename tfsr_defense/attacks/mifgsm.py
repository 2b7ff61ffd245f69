"""MI-FGSM for super-resolution (Dong et al., CVPR 2018, with the SR loss of Choi et al. 2020).

    g_t = mu g_{t-1} + grad_t / ||grad_t||_1
    x~_{t+1} = clip_{x, eps}( x~_t + (eps / T) sign(g_t) )

with grad_t = grad ||S(x~_t) - S(x)||_2 and the L1 norm taken per image.
mu = 1.0 as in Dong et al. Starts randomly for the reason given in
``ifgsm`` (zero gradient at x~ = x).
"""

from tfsr_defense.attacks import engine as engine_lib

__all__ = ["attack"]


def attack(model, x_lr, *, eps, steps=50, momentum=1.0, random_start=None, seed=0,
           precision=None):
  """Momentum iterative FGSM on the SR output distance.

  Args:
    model, x_lr, random_start, seed, precision: as ``ifgsm.attack``.
    eps: L-inf radius in [0, 1] units; step size eps / steps.
    steps: T >= 1.
    momentum: decay mu >= 0 (Dong et al.: 1.0; 0 gives I-FGSM).

  Returns:
    float32 x_adv of x_lr's shape in [0, 1], ||x_adv - x_lr||_inf <= eps.

  Raises:
    ValueError: as ``ifgsm.attack``, or momentum < 0.
  """
  eps = engine_lib.check_common(eps, steps, random_start, precision)
  engine = engine_lib.as_engine(model, precision)
  if not float(momentum) >= 0.0:
    raise ValueError(f"momentum must be >= 0, got {momentum}.")
  return engine_lib.run_sign_loop(
      engine.sr_distance_loop(), x_lr, eps=eps, steps=steps, step_size=eps / steps,
      start_radius=engine_lib.start_radius(random_start, eps, steps, engine.precision),
      seed=seed, momentum=float(momentum))
