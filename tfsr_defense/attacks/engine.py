"""The gradient engine of the attacks and CLEVER: compiled input-gradient loops for one SR model.

``GradientEngine(model, precision)`` is made once per model by its caller
(the evaluation loop, a script, a test) and passed to every attack and to
CLEVER in place of the model:

    engine = attacks.GradientEngine(model)                 # float32
    x_fda = attacks.get_attack("fda")(engine, x, eps=4 / 255)
    x_ifgsm = attacks.get_attack("ifgsm")(engine, x, eps=4 / 255)
    score = clever.clever_sr(engine, x).score

It holds, as plain attributes of the object (no module-level cache):

* ``net``: the network the gradients run through: the model itself, or
  (``precision='mixed_bfloat16'``, Keras models) a bfloat16 copy whose
  weights are copied once, at construction (``sync_weights()`` re-copies);
* the compiled (``tf.function``) projected sign-gradient loops, one per
  objective (SR distance; FDA per choice of feature maps), each traced once
  for all image sizes;
* the feature extractors FDA uses, and CLEVER's batched gradient function.

Passing a bare model to an attack also works: a temporary engine is made for
that call (and its loop compiled again on the next call).

Shared machinery here as well: argument checks (``check_common``), image
conversion (``as_images``: float32, rank 3/4, finite, in [0, 1]), per-image
seeds (``image_seeds``), the SR objective ``sr_distance`` (Choi et al. 2020,
eq. 14) and the loop itself (``compile_sign_loop``). Images are float32 RGB
NHWC in [0, 1]; eps and step sizes in [0, 1] units (k/255 = k grey levels).
"""

import numpy as np
import tensorflow as tf

from tfsr_defense import models, precision as precision_lib

__all__ = ["ATTACK_PRECISIONS", "GradientEngine", "as_engine", "check_common", "as_images",
           "image_seeds", "sr_callable", "call_single", "sr_distance", "compile_sign_loop",
           "run_sign_loop", "start_radius"]

# Precisions of the attack loops (the training precisions are in precision.py).
ATTACK_PRECISIONS = ("float32", "mixed_bfloat16")

# Second word of every stateless seed: keeps the attacks' random streams apart
# from other users of the same integer seeds (CLEVER uses a different one).
_START_SALT = 0x5eed


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------

def check_common(eps, steps=1, random_start=0.0, precision="float32"):
  """ValueError unless 0 <= eps <= 1, steps >= 1 (int), random_start in [0, 1], known precision.

  Returns:
    eps as a float.
  """
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
  if precision is not None and precision not in ATTACK_PRECISIONS:
    raise ValueError(f"precision must be one of {', '.join(ATTACK_PRECISIONS)}, got {precision!r}.")
  return eps


def as_images(x):
  """float32 NHWC tensor from x (N, H, W, C) or (H, W, C) in [0, 1].

  Returns:
    (images (N, H, W, C) float32, squeeze) where squeeze says x had no batch axis.

  Raises:
    ValueError: integer dtype, rank not 3 or 4, empty, NaN/inf values, or
      values outside [0, 1].
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
  finite = tf.math.is_finite(x)
  if not bool(tf.reduce_all(finite)):
    bad = int(tf.size(x)) - int(tf.math.count_nonzero(finite))
    raise ValueError(f"x_lr must be in [0, 1]; it holds {bad} NaN/inf value(s).")
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


# ---------------------------------------------------------------------------
# Models as functions
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
  level (EDSR builds its tail in float32 for the same reason). Layer names
  are kept, so feature maps are found by the same names.
  """
  layers = model.layers
  weighted = [i for i, l in enumerate(layers) if l.weights]
  first, last = (weighted[0], weighted[-1]) if weighted else (len(layers), -1)
  keep = {l.name for i, l in enumerate(layers) if i <= first or i >= last}

  def clone_layer(layer):
    config = layer.get_config()
    config["dtype"] = "float32" if layer.name in keep else "mixed_bfloat16"
    return layer.__class__.from_config(config)

  with precision_lib.policy_scope("mixed_bfloat16"):
    clone = tf.keras.models.clone_model(model, clone_function=clone_layer)
  clone.set_weights(model.get_weights())
  return clone


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


# ---------------------------------------------------------------------------
# The projected sign-gradient loop
# ---------------------------------------------------------------------------

_SIGNATURE = (
    tf.TensorSpec([None, None, None, None], tf.float32, name="x"),
    tf.TensorSpec([], tf.float32, name="eps"),
    tf.TensorSpec([], tf.float32, name="step_size"),
    tf.TensorSpec([], tf.int32, name="steps"),
    tf.TensorSpec([], tf.float32, name="start_radius"),
    tf.TensorSpec([None, 2], tf.int64, name="seeds"),
    tf.TensorSpec([], tf.float32, name="momentum"),
    tf.TensorSpec(None, tf.float32, name="target"),
)


def compile_sign_loop(prepare, objective):
  """A tf.function running the projected sign-gradient ascent of one objective.

  Args:
    prepare: fn(x (N,H,W,C) float32, target) -> reference tensors (nested),
      computed once from the clean images (e.g. S(x)) or taken from the
      caller's ``target`` (e.g. the HR image).
    objective: fn(x_adv, reference) -> float32 (N,) per-image objective to
      maximise. Summed over the batch before differentiation: each image's
      gradient then depends on that image only.

  Returns:
    fn(x, eps, step_size, steps, start_radius, seeds, momentum, target) -> x_adv, traced
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
  def run(x, eps, step_size, steps, start_radius, seeds, momentum, target):
    reference = tf.nest.map_structure(tf.stop_gradient, prepare(x, target))
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


def run_sign_loop(loop, x_lr, *, eps, steps, step_size, start_radius, seed, momentum=0.0,
                  target=None):
  """Run a compiled loop on images; returns x_adv with x_lr's rank.

  Args:
    loop: from ``compile_sign_loop`` (e.g. ``GradientEngine.sr_distance_loop()``).
    x_lr: float (N, H, W, C) or (H, W, C) in [0, 1].
    eps, step_size, start_radius: [0, 1] units.
    steps: iterations.
    seed: see ``image_seeds``.
    momentum: MI-FGSM's decay (0: plain sign steps).
    target: tensor handed to the loop's ``prepare`` (e.g. HR images), or None.
  """
  x, squeeze = as_images(x_lr)
  target = tf.zeros([0]) if target is None else tf.cast(target, tf.float32)
  seeds = image_seeds(seed, int(x.shape[0]))
  x_adv = loop(x, tf.constant(eps, tf.float32), tf.constant(step_size, tf.float32),
               tf.constant(steps, tf.int32), tf.constant(start_radius, tf.float32),
               seeds, tf.constant(momentum, tf.float32), target)
  return x_adv[0] if squeeze else x_adv


# ---------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------

def _float_maps(out):
  if isinstance(out, dict):
    out = [out["features"]] if "features" in out else [out[k] for k in sorted(out)]
  elif not isinstance(out, (list, tuple)):
    out = [out]
  return [tf.cast(f, tf.float32) for f in out]


class GradientEngine:
  """Compiled gradient computations on one SR model, made once and reused.

  Args:
    model: a Keras SR model (float32 [0,1] (N,H,W,3) -> (N,sH,sW,3)), or any
      callable SR function (e.g. ``serving.SRModel`` of a SavedModel; a dict
      output uses its 'sr' entry). FDA needs feature maps: layer names of a
      Keras model, or a ``features`` / ``activations`` method.
    precision: 'float32', or 'mixed_bfloat16' (Keras models only: the loops
      run a bfloat16 copy of the network made here once, ~1.5x faster per
      gradient on CPUs with AVX512-BF16, coarser gradients).

  Raises:
    ValueError: unknown precision, or bfloat16 for a model that is not Keras.
    TypeError: model is not callable.
  """

  def __init__(self, model, precision="float32"):
    if isinstance(model, GradientEngine):
      raise TypeError("model is already a GradientEngine.")
    check_common(0.0, precision=precision)
    if precision != "float32" and not isinstance(model, tf.keras.Model):
      raise ValueError(f"precision={precision!r} needs a Keras model (it runs a bfloat16 copy); "
                       f"got {type(model).__name__}. Use precision='float32'.")
    self.model = model
    self.precision = precision
    self.net = _bfloat16_clone(model) if precision != "float32" else model
    self.sr = sr_callable(self.net)
    self._loops = {}
    self._extractors = {}
    self._clever = None

  def sync_weights(self):
    """Copy the model's current weights into the bfloat16 copy (after more training)."""
    if self.net is not self.model:
      self.net.set_weights(self.model.get_weights())

  def loop(self, key, prepare, objective):
    """The compiled sign loop of an objective, made on the first request for ``key``."""
    if key not in self._loops:
      self._loops[key] = compile_sign_loop(prepare, objective)
    return self._loops[key]

  def sr_distance_loop(self, to_target=False):
    """Loop maximising ||S(x~) - S(x)||_2 (I-FGSM, FGSM, PGD, MI-FGSM).

    With ``to_target`` it maximises ||S(x~) - target||_2 instead, the target
    (e.g. HR, tf-sr-attack's variant) given to ``run_sign_loop``.
    """
    def given_target(x, target):
      del x
      return target

    def clean_sr(x, target):
      del target
      return self.sr(x)

    def objective(x_adv, reference):
      return sr_distance(self.sr(x_adv), reference)

    return self.loop(("sr_distance", bool(to_target)), given_target if to_target else clean_sr,
                     objective)

  def feature_maps(self, features):
    """(key, fn): fn(x) -> list of float32 feature maps (N, h, w, D) for FDA.

    Args:
      features: 'relu' (every activation layer of the network, then the
        ``models.FEATURES`` map: the official FDA's layers), 'features' or None
        (the ``models.FEATURES`` map only: paper eq. 13 as written), a layer
        name, a sequence of layer names (Keras models), or a callable x ->
        feature map(s). 'relu' / 'features' on a model without a layer of
        that name (a SavedModel's ``SRModel``, a ``defenses.DefendedSR``)
        call its ``activations`` / ``features`` method.

    Raises:
      ValueError: unknown layer name (lists the model's layers), layer names
        for a model without layers, no feature map available, bfloat16 with a
        callable.
    """
    if callable(features) and not isinstance(features, str):
      if self.precision != "float32":
        raise ValueError("precision='mixed_bfloat16' needs layer names of a Keras model, "
                         "not a feature callable.")
      return ("callable", id(features)), lambda x: _float_maps(call_single(features, x))
    if features is None:
      features = "features"
    method = ({"features": "features", "relu": "activations"}.get(features)
              if isinstance(features, str) else None)
    has_layers = isinstance(self.net, tf.keras.Model) and models.FEATURES in [
        layer.name for layer in self.net.layers]
    if isinstance(self.net, tf.keras.Model) and (has_layers or method is None):
      names = self._layer_names(features)
      if names not in self._extractors:
        self._extractors[names] = models.feature_model(self.net, list(names))
      extractor = self._extractors[names]
      return ("layers", names), lambda x: _float_maps(extractor(x, training=False))
    fn = getattr(self.model, method, None) if method else None
    if method is None:
      raise ValueError(f"Layer names {features!r} need a Keras model; "
                       f"{type(self.model).__name__} has no layers. Pass a callable instead.")
    if not callable(fn):
      raise ValueError(
          f"FDA on {features!r} needs the model's feature maps: pass a Keras model, or an SR "
          f"model with a '{method}' method (a SavedModel exported with a '{method}' "
          f"signature). {type(self.model).__name__} has none.")
    return ("method", method), lambda x: _float_maps(fn(x))

  def _layer_names(self, features):
    if features == "features":
      return (models.FEATURES,)
    if features == "relu":
      return tuple(models.fda_layer_names(self.net))
    names = (features,) if isinstance(features, str) else tuple(features)
    if not names or not all(isinstance(n, str) for n in names):
      raise ValueError("features must be 'relu', 'features', None, a layer name, a list of "
                       f"layer names or a callable; got {features!r}.")
    return names

  def clever_gradients(self):
    """Compiled fn(x (1,H,W,C), sr_clean, indices, alpha, seed, clip) -> ||grad||_1 per sample.

    See ``tfsr_defense.clever`` (paper eq. 15); made on the first request.
    """
    if self._clever is None:
      from tfsr_defense import clever  # pylint: disable=g-import-not-at-top
      self._clever = clever.compile_gradient_norms(self.sr)
    return self._clever

  def __repr__(self):
    name = getattr(self.model, "name", type(self.model).__name__)
    return f"GradientEngine({name}, {self.precision})"


def as_engine(model, precision=None):
  """``model`` if it is a GradientEngine (precision must agree), else a new one.

  Args:
    model: GradientEngine, Keras SR model or SR callable.
    precision: None (the engine's, or float32 for a new one), 'float32' or
      'mixed_bfloat16'.

  Raises:
    ValueError: precision differs from the given engine's; see GradientEngine.
  """
  if isinstance(model, GradientEngine):
    if precision is not None and precision != model.precision:
      raise ValueError(f"precision={precision!r} differs from the engine's "
                       f"({model.precision!r}); make a GradientEngine with that precision.")
    return model
  return GradientEngine(model, precision or "float32")
