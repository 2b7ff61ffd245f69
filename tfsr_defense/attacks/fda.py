"""Feature Disruptive Attack (Ganeshan & Babu, ICCV 2019) on SR features (Choi et al. 2020, eq. 13).

For a feature map Phi (N, H, W, D) and the clean features' channel mean
C(w, h) = mean_d Phi_clean(w, h, d), the attack maximises per image

    L(x~) = log || Phi(x~)[Phi_clean < C] ||_2  -  log || Phi(x~)[Phi_clean > C] ||_2

(raise the activations that were below their position's mean, lower those
above), with T = 50 sign steps of eps / T projected onto the L-inf eps-ball
and [0, 1]. The objective has a non-zero gradient at x~ = x, so no random
start is needed. With several feature maps the objectives are averaged.
The paper attacks the regularized feature map before the upsampler (the
layer ``models.FEATURES``).
"""

import tensorflow as tf

from tfsr_defense import models
from tfsr_defense.attacks import base

__all__ = ["attack", "fda_objective", "fda_reference", "feature_callable"]

NAME = "fda"
# Keeps log finite when a mask selects nothing (e.g. D = 1); far below any real ||.||^2.
_TINY = 1e-30


def _as_list(out):
  if isinstance(out, dict):
    if "features" in out:
      return [out["features"]]
    return [out[k] for k in sorted(out)]
  if isinstance(out, (list, tuple)):
    return list(out)
  return [out]


def _names(features):
  """features -> tuple of layer names, or None for a callable."""
  if features is None:
    return (models.FEATURES,)
  if isinstance(features, str):
    return (features,)
  if callable(features):
    return None
  names = tuple(features) if isinstance(features, (list, tuple)) else ()
  if not names or not all(isinstance(n, str) for n in names):
    raise ValueError("features must be None, a layer name, a list of layer names or a "
                     f"callable; got {features!r}.")
  return names


def feature_callable(model, features=None, precision="float32"):
  """fn(x (N,H,W,3) float32 [0,1]) -> list of float32 feature maps (N,h,w,D), cached.

  Args:
    model: Keras SR model, or a callable with a ``features`` method (e.g.
      ``evaluation.SRModel`` of a SavedModel with a 'features' signature).
    features: None (the model's ``models.FEATURES`` layer, or
      ``model.features``), a layer name, a sequence of layer names (Keras
      models), or a callable x -> feature map(s) (a dict output uses its
      'features' entry).
    precision: 'float32' or 'mixed_bfloat16' (Keras models with layer names).

  Returns:
    (owner, key, fn): the object the compiled attack is cached on, its cache
    key, and the feature function.

  Raises:
    ValueError: unknown layer name (lists the model's layers), layer names
      for a non-Keras model, no feature map available, bf16 without Keras.
  """
  names = _names(features)
  if names is None:  # a feature callable
    if precision != "float32":
      raise ValueError("precision='mixed_bfloat16' needs layer names of a Keras model, "
                       "not a feature callable.")
    call = base.weak_callable(features)
    return features, ("fda", "callable"), lambda x: _float_maps(base.call_single(call(), x))
  if isinstance(model, tf.keras.Model):
    net = base.compute_model(model, precision)
    key = ("fda", names, precision)
    extractor = base.cached(model, key + ("extractor",), lambda: models.feature_model(net, names))
    return model, key, lambda x: _float_maps(extractor(x, training=False))
  if features is not None:
    raise ValueError(f"Layer names {list(names)} need a Keras model; {type(model).__name__} "
                     "has no layers. Pass features=<callable> instead.")
  if not callable(getattr(model, "features", None)):
    raise ValueError(
        "FDA needs the model's feature map: pass a Keras model, an SR model with a "
        "'features' method (a SavedModel with a 'features' signature), or "
        f"features=<callable>. {type(model).__name__} has none.")
  if precision != "float32":
    raise ValueError("precision='mixed_bfloat16' needs a Keras model.")
  call = base.weak_callable(model)
  return model, ("fda", "features_method"), lambda x: _float_maps(call().features(x))


def _float_maps(out):
  return [tf.cast(f, tf.float32) for f in _as_list(out)]


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


def attack(model, x_lr, *, eps, steps=50, features=None, random_start=0.0, seed=0,
           precision="float32"):
  """FDA on a feature map of an SR network (paper eq. 13).

  Args:
    model: Keras SR model (features taken from its layers), or any callable
      with a ``features`` method returning (N, h, w, D) float maps; only the
      features are used (and ``model`` not at all when ``features`` is a callable).
    x_lr: float (N, H, W, 3) or (H, W, 3) LR images in [0, 1].
    eps: L-inf radius in [0, 1] units; step size eps / steps.
    steps: T >= 1 (paper: 50).
    features: which feature map(s): None (the ``models.FEATURES`` layer /
      ``model.features``), a layer name, several layer names (objectives
      averaged), or a callable x -> feature map(s).
    random_start: start radius as a fraction of eps (default 0: FDA starts at x).
    seed: as ``ifgsm.attack`` (used only with a random start).
    precision: 'float32' or 'mixed_bfloat16' (Keras models).

  Returns:
    float32 x_adv of x_lr's shape in [0, 1], ||x_adv - x_lr||_inf <= eps.

  Raises:
    ValueError: bad eps/steps/random_start/precision, images outside [0, 1],
      unknown layer name (the message lists the model's layers), or no
      feature map available (e.g. a SavedModel without a 'features' signature).
  """
  eps = base.check_common(eps, steps, random_start, precision)
  owner, key, feats = feature_callable(model, features, precision)

  def build():
    return base.compile_sign_loop(
        prepare=lambda x: fda_reference(feats(x)),
        objective=lambda x_adv, ref: fda_objective(feats(x_adv), ref))

  loop = base.cached(owner, key + ("loop",), build)
  return base.sign_attack(loop, x_lr, eps=eps, steps=steps, step_size=eps / steps,
                          start_radius=float(random_start or 0.0) * eps, seed=seed)
