"""An SR network behind an input pre-processing defense, and the two threat models.

``DefendedSR(sr_model, defense)`` is a Keras model mapping float32 RGB
(N, H, W, 3) in [0, 1] to float32 (N, sH, sW, 3) (not clipped, like the bare
network): the defense transforms the LR input, the SR network runs, and the
defense's ``restore`` maps the output back to the bare network's geometry

    D(x) = restore(S(t(x)))           (JPEG: D(x) = S(JPEG_q(x))).

Calling the model is the deployed defense: one random draw per image and
call. It is what an evaluation measures, clean and attacked.

Threat models (Athalye et al., ICML 2018; Choi et al., ACCV 2020, sec. 5.6):

* non-adaptive (``adaptive=False``): the attacker does not know the defense;
  it attacks the bare network S (``attack_target`` is ``bare``) and the
  defense is then applied to the attacked image: x_adv = A(S, x), measured
  on D(x_adv).
* adaptive (``adaptive=True``, the default): the attacker differentiates
  through the defense. JPEG has no useful gradient, so its layer uses BPDA
  (identity backward pass, ``JpegCompression(bpda=True)``); random resizing
  is differentiable but random, so the attacker attacks the expectation over
  transformation: ``attack_target`` averages the output over
  ``eot_samples`` = k independent draws,

      D_k(x) = (1/k) sum_j restore(S(t_j(x))),  t_j i.i.d.  ~  E_t[S(t(x))],

  with fresh draws at every attack step. The attack objective
  ||D_k(x~) - D_k(x)||_2 thus attacks the expected output E_t[S(t(x~))],
  whereas Athalye et al.'s EOT maximises the expected loss E_t[L(t(x~))],
  whose gradient is E_t[grad L]. For the (convex) SR distance
  ||E_t S(t(x~)) - c|| <= E_t ||S(t(x~)) - c|| (Jensen): this objective
  rewards perturbations that move the output the same way under every draw
  and ignores draw-specific damage that averages out. The two coincide for
  k = 1 (one draw per step, a single-sample estimate of both gradients) and
  for losses linear in the output. With the project's attacks, whose
  objective is fixed, averaging the model's output is the form EOT can take.

Evaluation loop, either threat model:

    defended = DefendedSR(net, parse_defense("resize:0.9-1.1"), adaptive=True, eot_samples=8)
    target = defended.attack_target          # fixed object: make its GradientEngine once
    x_adv = attacks.get_attack("ifgsm")(target, x, eps=4 / 255, steps=50, seed=0)
    sr_clean, sr_adv = defended(x), defended(x_adv)      # the deployed defense

``attack_target`` returns the same object on every access (the EOT view is
cached), so the attacks' compiled loops can be reused across images.

FDA: FDA by layer name (``models.feature_model``: the attacks' default
``features='relu'`` and ``'features'``) needs a functional model whose own
layers include the named ones. A DefendedSR is a subclassed model (no
symbolic inputs) and those layers live inside the nested bare network, so
FDA by name cannot reach them through the wrapper: it raises the ValueError
listing the wrapper's layers (``edsr, jpeg_compression``). The non-adaptive
FDA attacks ``bare`` by name as usual. For the adaptive FDA,
``features(x, layer_names)`` / ``activations(x)`` (the official FDA's
layers: the bare network's ReLUs + ``models.FEATURES``) give the bare
network's maps at the defended input, mapped back onto x's grid by the
defense's ``restore`` (same draws as the output; the EOT view averages
them), to pass as a feature callable:
``fda.attack(target, x, eps=..., features=target.activations)``.

Gradient-based attacks through ``DefendedSR`` run in float32 only: the
attacks' ``precision='mixed_bfloat16'`` clones functional Keras models, and
this is a subclassed one.
"""


import numpy as np
import tensorflow as tf

from tfsr_defense import models

__all__ = ["InputDefense", "NoDefense", "DefendedSR"]


class InputDefense(tf.keras.layers.Layer):
  """Base class of the SR-input defenses (Keras layers).

  A defense maps float (N, H, W, C) images in [0, 1] to float32 images
  (``call``). Around an SR network it is used as

      x_t, state = defense.transform(x)    # state: whatever restore needs, or None
      y = defense.restore(S(x_t), state)   # back to the bare network's geometry

  The default ``transform`` is ``call`` with no state and ``restore`` is the
  identity (defenses that keep the image size). ``stochastic`` says whether
  two calls can differ (then EOT averaging makes sense).
  """

  stochastic = False

  def transform(self, x):
    """(self(x), None)."""
    return self(x), None

  def restore(self, y, state):
    """y as float32 (``state`` unused)."""
    del state
    return tf.cast(y, tf.float32)

  def spec(self):
    """The ``parse_defense`` form of this defense (reports)."""
    raise NotImplementedError


@tf.keras.utils.register_keras_serializable(package="tfsr_defense")
class NoDefense(InputDefense):
  """The identity ('none'): float (N, H, W, C) -> the same values as float32."""

  def __init__(self, **kwargs):
    kwargs.setdefault("dtype", "float32")
    super().__init__(**kwargs)

  def call(self, x):
    return tf.identity(tf.cast(x, tf.float32))

  def compute_output_shape(self, input_shape):
    return tf.TensorShape(input_shape)

  def spec(self):
    return "none"


@tf.keras.utils.register_keras_serializable(package="tfsr_defense")
class DefendedSR(tf.keras.Model):
  """An SR Keras model behind an input defense (see the module docstring).

  Calling it: float (N, H, W, 3) in [0, 1] -> float32 (N, sH, sW, 3), the
  bare network's geometry; one draw of a random defense per image and call.

  Args:
    sr_model: Keras SR model, float32 (N, H, W, 3) in [0, 1] ->
      (N, sH, sW, 3) (e.g. ``models.build_model``). Shared, not copied.
    defense: an ``InputDefense`` layer, or its ``parse_defense`` spec string
      (e.g. 'jpeg:75', 'resize:0.9-1.1', 'none').
    adaptive: threat model of ``attack_target``: True, attack through the
      defense (BPDA / EOT); False, attack the bare network.
    eot_samples: k >= 1 draws averaged by ``attack_target`` in the adaptive
      model (ignored for deterministic defenses, where every draw is equal).
    **kwargs: Keras Model arguments (name).

  Raises:
    ValueError: sr_model not a Keras model, defense not an InputDefense or a
      valid spec, eot_samples not an integer >= 1.
  """

  samples = 1  # draws averaged by call (the EOT view overrides it)

  def __init__(self, sr_model, defense, adaptive=True, eot_samples=1, **kwargs):
    if not isinstance(sr_model, tf.keras.Model):
      raise ValueError(f"sr_model must be a Keras model, got {type(sr_model).__name__}.")
    if isinstance(defense, str):
      from tfsr_defense.defenses import parse_defense  # pylint: disable=import-outside-toplevel
      defense = parse_defense(defense)
    if not isinstance(defense, InputDefense):
      raise ValueError("defense must be an InputDefense layer or a spec string "
                       f"such as 'jpeg:75', got {type(defense).__name__}.")
    if isinstance(eot_samples, bool) or not isinstance(eot_samples, (int, np.integer)) \
        or eot_samples < 1:
      raise ValueError(f"eot_samples must be an integer >= 1, got {eot_samples!r}.")
    kwargs.setdefault("name", f"defended_{sr_model.name}")
    super().__init__(**kwargs)
    self.sr_model = sr_model
    self.defense = defense
    self.adaptive = bool(adaptive)
    self.eot_samples = int(eot_samples)
    object.__setattr__(self, "_extractors", {})  # layer names -> feature model (not tracked)
    # The EOT attack target, made once; kept out of Keras' attribute tracking (the
    # view shares the wrapper's layers: tracking it would make the wrapper its own child).
    object.__setattr__(self, "_eot_view", None)

  @property
  def bare(self):
    """The undefended SR network."""
    return self.sr_model

  @property
  def attack_target(self):
    """The model to hand to an attack under this wrapper's threat model.

    ``bare`` if not adaptive; else this model (one draw per step) or, for a
    stochastic defense with eot_samples > 1, a Keras model sharing its layers
    that averages eot_samples draws (cached: the attacks compile once per model).
    """
    if not self.adaptive:
      return self.bare
    if self.eot_samples == 1 or not self.defense.stochastic:
      return self
    if self._eot_view is None:
      object.__setattr__(self, "_eot_view", _EOTView(
          self.sr_model, self.defense, samples=self.eot_samples,
          name=f"{self.name}_eot{self.eot_samples}"))
    return self._eot_view

  def _draws(self):
    return self.samples if self.defense.stochastic else 1

  def _average(self, fn, x):
    """Mean over self._draws() draws of fn(t_j(x), state_j) (tensor or list); one tiled batch."""
    x = tf.cast(x, tf.float32)
    k = self._draws()
    tiled = tf.tile(x, [k, 1, 1, 1]) if k > 1 else x
    x_t, state = self.defense.transform(tiled)
    out = fn(x_t, state)
    if k == 1:
      return out

    def mean(y):
      y = tf.reshape(y, tf.concat([[k, tf.shape(x)[0]], tf.shape(y)[1:]], axis=0))
      return tf.reduce_mean(y, axis=0)

    return [mean(y) for y in out] if isinstance(out, list) else mean(out)

  def call(self, inputs, training=False):
    """float (N, H, W, 3) in [0, 1] -> float32 (N, sH, sW, 3): restore(S(t(x)))."""
    def run(x_t, state):
      y = tf.cast(self.sr_model(x_t, training=training), tf.float32)
      return self.defense.restore(y, state)
    return self._average(run, inputs)

  def features(self, x, layer_names=(models.FEATURES,)):
    """The bare network's feature map(s) at the defended input, on x's grid.

    Args:
      x: float (N, H, W, 3) in [0, 1].
      layer_names: layers of the bare network (default ``models.FEATURES``).

    Returns:
      float32 (N, kH, kW, D) per layer (a list for several names), each map
      passed through the defense's ``restore`` (k: the map's resolution over
      the padded input's, 1 before the upsampler) and averaged over the same
      draws as the output.

    Raises:
      ValueError: a name is not a layer of the bare network.
    """
    names = tuple(layer_names)
    extractor = self._extractors.get(names)
    if extractor is None:
      extractor = models.feature_model(self.sr_model, names)
      self._extractors[names] = extractor

    def run(x_t, state):
      maps = extractor(x_t, training=False)
      maps = list(maps) if isinstance(maps, (list, tuple)) else [maps]
      return [self.defense.restore(tf.cast(m, tf.float32), state) for m in maps]

    out = self._average(run, x)
    return out[0] if len(names) == 1 else out

  def activations(self, x):
    """``features`` at the official FDA's layers: the bare network's ReLU layers + FEATURES.

    The same maps as the attacks' ``features='relu'`` on the bare network
    (``models.fda_layer_names``), through the defense; a list.
    """
    names = models.fda_layer_names(self.sr_model)
    return self.features(x, layer_names=names)

  def get_config(self):
    return dict(name=self.name,
                sr_model=tf.keras.layers.serialize(self.sr_model),
                defense=tf.keras.layers.serialize(self.defense),
                adaptive=self.adaptive, eot_samples=self.eot_samples)

  @classmethod
  def from_config(cls, config, custom_objects=None):
    config = dict(config)
    sr_model = tf.keras.layers.deserialize(config.pop("sr_model"), custom_objects=custom_objects)
    defense = tf.keras.layers.deserialize(config.pop("defense"), custom_objects=custom_objects)
    return cls(sr_model, defense, **config)


class _EOTView(DefendedSR):
  """D_k: the output averaged over k draws; shares sr_model and defense (attack target)."""

  def __init__(self, sr_model, defense, samples, **kwargs):
    super().__init__(sr_model, defense, adaptive=True, eot_samples=samples, **kwargs)
    self.samples = int(samples)

  @property
  def attack_target(self):
    return self
