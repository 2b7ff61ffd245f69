"""Machinery shared by the attacks on SR networks.

* argument checks (``check_common``) and image conversion (``as_images``);
* the SR objective ``sr_distance`` = ||S(x~) - S(x)||_2 per image (Choi et al.
  2020, eq. 14; Choi et al., ICCV 2019) with a gradient that is defined (zero)
  where the distance is zero;
* per-image, seeded random starts (``image_seeds``), so that an image's attack
  does not depend on the other images of its batch;
* ``sign_attack``: one compiled (``tf.function``) projected sign-gradient loop
  for I-FGSM, FGSM, PGD, MI-FGSM and FDA, cached per model;
* ``sr_callable`` / ``compute_model``: any callable or Keras model as a
  float32 [0,1] -> [0,1] SR function, optionally a bfloat16 copy for speed.

Images are float32 RGB in [0, 1], NHWC; eps and step sizes in [0, 1] units
(k/255 means k grey levels).
"""

import threading
import weakref

import numpy as np
import tensorflow as tf

from tfsr_defense import precision

__all__ = ["PRECISIONS", "check_common", "as_images", "image_seeds", "sr_callable",
           "compute_model", "sr_distance", "sign_attack", "cached"]

PRECISIONS = ("float32", "mixed_bfloat16")

# Second word of every stateless seed: keeps the attacks' random streams apart
# from other users of the same integer seeds (CLEVER uses a different one).
_START_SALT = 0x5eed


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------

def check_common(eps, steps=1, random_start=0.0, precision="float32"):
  """Raise ValueError unless eps >= 0, steps >= 1 (int), 0 <= random_start <= 1, known precision."""
  try:
    eps = float(eps)
  except (TypeError, ValueError):
    raise ValueError(f"eps must be a number in [0, 1] units (k/255), got {eps!r}.") from None
  if not 0.0 <= eps <= 1.0:
    raise ValueError(f"eps must be in [0, 1] (image units, e.g. 8/255), got {eps}.")
  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
    raise ValueError(f"steps must be an integer >= 1, got {steps!r}.")
  if random_start is not None and not 0.0 <= float(random_start) <= 1.0:
    raise ValueError(f"random_start must be a fraction of eps in [0, 1], got {random_start}.")
  if precision not in PRECISIONS:
    raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
  return eps


def as_images(x):
  """float32 NHWC tensor from x (N, H, W, C) or (H, W, C) in [0, 1].

  Returns:
    (images (N, H, W, C) float32, squeeze) where squeeze says x had no batch axis.

  Raises:
    ValueError: rank not 3 or 4, empty, or values outside [0, 1].
  """
  x = tf.convert_to_tensor(x)
  if x.dtype.is_integer:
    raise ValueError(f"x_lr must be float in [0, 1], got dtype {x.dtype.name} "
                     "(convert uint8 with data.to_float).")
  x = tf.cast(x, tf.float32)
  if x.shape.rank not in (3, 4):
    raise ValueError(f"x_lr must be (N, H, W, C) or (H, W, C), got shape {x.shape}.")
  squeeze = x.shape.rank == 3
  if squeeze:
    x = x[None]
  if x.shape.num_elements() == 0:
    raise ValueError(f"x_lr is empty: shape {x.shape}.")
  lo, hi = float(tf.reduce_min(x)), float(tf.reduce_max(x))
  if lo < 0.0 or hi > 1.0:
    raise ValueError(f"x_lr must be in [0, 1]; got values in [{lo:.4g}, {hi:.4g}].")
  return x, squeeze


def image_seeds(seed, n):
  """(n, 2) int64 stateless seeds, one per image.

  Args:
    seed: int s (image i gets s + i, so image i of a batch attacked with
      seed=s gets the same random start as that image alone with seed=s + i),
      a sequence of n ints (one per image), or a tf.random.Generator (n seeds
      are drawn from it).

  Raises:
    ValueError: a sequence whose length is not n.
  """
  if isinstance(seed, tf.random.Generator):
    return tf.transpose(seed.make_seeds(n))  # (n, 2) int64
  if isinstance(seed, (int, np.integer)):
    firsts = np.arange(n, dtype=np.int64) + int(seed)
  else:
    firsts = np.asarray(seed, dtype=np.int64).reshape(-1)
    if firsts.shape[0] != n:
      raise ValueError(f"seed: got {firsts.shape[0]} per-image seeds for {n} images.")
  return tf.constant(np.stack([firsts, np.full(n, _START_SALT, np.int64)], axis=1))


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------

def _single_output(out, key):
  if isinstance(out, dict):
    if key in out:
      return out[key]
    if len(out) == 1:
      return next(iter(out.values()))
    raise ValueError(f"Model returned a dict with keys {sorted(out)}; expected '{key}'.")
  if isinstance(out, (list, tuple)):
    if len(out) != 1:
      raise ValueError(f"Model returned {len(out)} outputs; expected one SR image.")
    return out[0]
  return out


def call_single(fn, x):
  """fn(x), also for a SavedModel signature (keyword-only: fn(images=x))."""
  sig = getattr(fn, "structured_input_signature", None)
  if sig is not None and not sig[0] and len(sig[1]) == 1:
    return fn(**{next(iter(sig[1])): x})
  return fn(x)


def sr_callable(model):
  """fn(x float32 (N,H,W,3) in [0,1]) -> float32 (N,sH,sW,3) SR for any model.

  Keras models run with ``training=False`` (no feature noise); SavedModel
  signatures (keyword-only input, dict outputs) are called with their one
  input and give their ``sr`` entry.

  Raises:
    TypeError: model is not callable.
  """
  if isinstance(model, tf.keras.Model):
    return lambda x: tf.cast(model(x, training=False), tf.float32)
  if not callable(model):
    raise TypeError(f"model must be callable (Keras model or SR function), got {type(model)}.")
  return lambda x: tf.cast(_single_output(call_single(model, x), "sr"), tf.float32)


def _bfloat16_clone(model):
  """Copy of a Keras model computing in bfloat16 except at its pixel ends.

  Layers up to the first layer with weights and from the last layer with
  weights on stay float32: bfloat16 (8 significant bits) cannot resolve a
  1/255 perturbation of the input nor hold [0, 255] output pixels to a grey
  level (EDSR builds its tail in float32 for the same reason).
  """
  layers = model.layers
  weighted = [i for i, l in enumerate(layers) if l.weights]
  first, last = (weighted[0], weighted[-1]) if weighted else (len(layers), -1)
  keep = {l.name for i, l in enumerate(layers) if i <= first or i >= last}

  def clone_layer(layer):
    config = layer.get_config()
    config["dtype"] = "float32" if layer.name in keep else "mixed_bfloat16"
    return layer.__class__.from_config(config)

  with precision.policy_scope("mixed_bfloat16"):
    clone = tf.keras.models.clone_model(model, clone_function=clone_layer)
  return clone


def compute_model(model, precision):
  """The model the gradient loop runs: ``model`` itself, or its bfloat16 copy.

  The copy is cached per model and its weights re-synchronised on every call.

  Raises:
    ValueError: precision 'mixed_bfloat16' for something that is not a Keras model.
  """
  if precision == "float32":
    return model
  if not isinstance(model, tf.keras.Model):
    raise ValueError("precision='mixed_bfloat16' needs a Keras model (it runs a bfloat16 "
                     f"copy); got {type(model).__name__}. Use precision='float32'.")
  clone = cached(model, ("bfloat16_clone",), lambda: _bfloat16_clone(model))
  clone.set_weights(model.get_weights())
  return clone


# ---------------------------------------------------------------------------
# Per-model cache of compiled functions
# ---------------------------------------------------------------------------

_CACHE = weakref.WeakKeyDictionary()
_STRONG_CACHE = {}  # for callables that cannot be weakly referenced
_LOCK = threading.RLock()


def cached(owner, key, factory):
  """``factory()`` once per (owner, key); the entry dies with ``owner`` when weak-referenceable."""
  with _LOCK:
    try:
      table = _CACHE.setdefault(owner, {})
    except TypeError:
      table = _STRONG_CACHE.setdefault(id(owner), (owner, {}))[1]
    if key not in table:
      table[key] = factory()
    return table[key]


# ---------------------------------------------------------------------------
# Objective and loop
# ---------------------------------------------------------------------------

def sr_distance(sr_adv, sr_clean):
  """||S(x~) - S(x)||_2 per image: float32 (N,) from two (N, H, W, C) tensors.

  sqrt has an infinite derivative at 0; the double ``where`` gives the norm
  the subgradient 0 there instead of NaN. (So the gradient at x~ = x is
  exactly zero: the reason the SR attacks start randomly.)
  """
  diff = tf.cast(sr_adv, tf.float32) - tf.cast(sr_clean, tf.float32)
  sq = tf.reduce_sum(tf.square(diff), axis=tf.range(1, tf.rank(diff)))
  positive = sq > 0.0
  return tf.where(positive, tf.sqrt(tf.where(positive, sq, 1.0)), 0.0)


_SIGNATURE = (
    tf.TensorSpec([None, None, None, None], tf.float32, name="x"),
    tf.TensorSpec([], tf.float32, name="eps"),
    tf.TensorSpec([], tf.float32, name="step_size"),
    tf.TensorSpec([], tf.int32, name="steps"),
    tf.TensorSpec([], tf.float32, name="start_radius"),
    tf.TensorSpec([None, 2], tf.int64, name="seeds"),
    tf.TensorSpec([], tf.float32, name="momentum"),
)


def compile_sign_loop(prepare, objective):
  """A tf.function running the projected sign-gradient ascent of one objective.

  Args:
    prepare: fn(x (N,H,W,C) float32) -> reference tensors (nested), computed
      once from the clean images (e.g. S(x)).
    objective: fn(x_adv, reference) -> float32 (N,) per-image objective to
      maximise. Summed over the batch before differentiation: each image's
      gradient then depends on that image only.

  Returns:
    fn(x, eps, step_size, steps, start_radius, seeds, momentum) -> x_adv, traced
    once for every image size (shapes are left unknown in its signature).

  The loop (Kurakin et al. 2017; momentum: Dong et al. 2018, with the
  gradient normalised by its per-image L1 norm):
    x~_0 = clip(x + start_radius * U(-1, 1), ball)
    g_t = momentum * g_{t-1} + grad_t / ||grad_t||_1
    x~_t = clip(x~_{t-1} + step_size * sign(g_t), ball)
  where ball = [max(x - eps, 0), min(x + eps, 1)], the projection onto the
  L-inf eps-ball intersected with [0, 1].
  """

  @tf.function(input_signature=_SIGNATURE)
  def run(x, eps, step_size, steps, start_radius, seeds, momentum):
    reference = tf.nest.map_structure(tf.stop_gradient, prepare(x))
    lo = tf.maximum(x - eps, 0.0)
    hi = tf.minimum(x + eps, 1.0)
    image_shape = tf.shape(x)[1:]
    noise = tf.map_fn(
        lambda s: tf.random.stateless_uniform(image_shape, seed=s, minval=-1.0, maxval=1.0),
        seeds, fn_output_signature=tf.float32)
    x_adv = tf.clip_by_value(x + start_radius * noise, lo, hi)

    def body(i, x_adv, g):
      with tf.GradientTape() as tape:
        tape.watch(x_adv)
        loss = tf.reduce_sum(objective(x_adv, reference))
      grad = tf.cast(tape.gradient(loss, x_adv), tf.float32)
      l1 = tf.reduce_sum(tf.abs(grad), axis=[1, 2, 3], keepdims=True)
      g = momentum * g + tf.math.divide_no_nan(grad, l1)
      x_adv = tf.clip_by_value(x_adv + step_size * tf.sign(g), lo, hi)
      return i + 1, x_adv, g

    _, x_adv, _ = tf.while_loop(lambda i, *_: i < steps, body,
                                (tf.constant(0), x_adv, tf.zeros_like(x)))
    return x_adv

  return run


def sign_attack(loop, x_lr, *, eps, steps, step_size, start_radius, seed, momentum=0.0):
  """Run a compiled loop on images; returns x_adv with x_lr's rank.

  Args:
    loop: from ``compile_sign_loop``.
    x_lr: float (N, H, W, C) or (H, W, C) in [0, 1].
    eps, step_size, start_radius: [0, 1] units.
    steps: iterations.
    seed: see ``image_seeds``.
  """
  x, squeeze = as_images(x_lr)
  seeds = image_seeds(seed, int(x.shape[0]))
  x_adv = loop(x, tf.constant(eps, tf.float32), tf.constant(step_size, tf.float32),
               tf.constant(steps, tf.int32), tf.constant(start_radius, tf.float32),
               seeds, tf.constant(momentum, tf.float32))
  return x_adv[0] if squeeze else x_adv


def sr_loop(model, precision):
  """The cached compiled loop maximising ||S(x~) - S(x)||_2 for ``model``."""
  net = compute_model(model, precision)

  def build():
    call = weak_callable(net)
    sr = lambda x: sr_callable(call())(x)  # noqa: E731
    return compile_sign_loop(
        prepare=sr, objective=lambda x_adv, sr_clean: sr_distance(sr(x_adv), sr_clean))

  return cached(model, ("sr_loop", precision), build)


def weak_callable(obj):
  """fn() -> obj, holding obj weakly where Python allows (so cache entries can die with it)."""
  try:
    ref = weakref.WeakMethod(obj) if hasattr(obj, "__self__") and hasattr(obj, "__func__") \
        else weakref.ref(obj)
  except TypeError:
    return lambda: obj
  return ref


def start_radius(random_start, eps, steps, precision):
  """Radius of the uniform random start in [0, 1] units.

  ``random_start`` is a fraction of eps; None picks one step (eps/steps) in
  float32 and the whole ball (eps) under mixed_bfloat16, where smaller
  perturbations vanish in the network's bfloat16 rounding and the gradient
  would again be exactly zero.
  """
  if random_start is None:
    random_start = 1.0 if precision == "mixed_bfloat16" else 1.0 / steps
  return float(random_start) * eps
