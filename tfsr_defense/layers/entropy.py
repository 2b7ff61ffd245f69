"""Entropy regularization of intermediate features (Choi et al., ACCV 2020, sec. 3).

The layer sits on a feature map Phi of shape (N, H, W, D) and, in training,

* adds uniform noise U(-delta/2, delta/2) to Phi (eq. 12, switch ``noise``),
  in float32 whatever the compute dtype;
* estimates the probability of every element of Phi with one learned
  cumulative c_d per channel (eqs. 3-10: Ballé et al. 2018's univariate
  density model, ``tfc.distributions.DeepFactorized`` with filters (3, 3, 3))
  and a bin of width delta, p_d(Phi) = c_d(Phi + delta/2) - c_d(Phi - delta/2)
  (eq. 11, switch ``estimate_entropy``);
* adds ``weight`` * L_e to the model's losses, where
  L_e = -(1 / (W H D)) sum log2 p_d(Phi) in bits per element (eq. 1),
  averaged over the batch, so that the total loss is L = L_r + lambda L_e (eq. 2).

At inference the layer is the identity: no noise, no loss.

L_e by value: like tensorflow-compression's entropy models, which return
``(outputs, bits)``, ``EntropyRegularizer.regularize(features, training)``
returns the outputs and L_e; the Keras ``call`` wraps it (``add_loss`` for
``fit`` and ``model.losses``) and keeps the L_e of its latest training call for
custom loops (``last_bits``, ``entropy_bits(model)``), so a loop never has to
recover L_e from the sum of the model's losses.

Evaluation: the density's parameters are tfc's variables
(``NoisyDeepFactorized``, so checkpoints and trained weights load as ever), but
-log2 p_d is evaluated by this module's own fused form of eqs. 3-11 rather
than by ``log_prob``: channels first, c(x + 1/2) and c(x - 1/2) in one pass,
log p = log sigmoid(u) + log sigmoid(-l) + log(-expm1(l - u)) for the logits
u > l of the two cumulatives (the same stable quantity as tfc's sign-flipped
log(exp(big) - exp(small))), an analytic backward pass, and both passes
compiled by XLA. It equals tfc's ``-log_prob / ln 2`` to ~1e-5 bits with the
same gradients, at about a third of the forward + backward time on a CPU
(``benchmarks/entropy_density.py``).
"""

import math

import tensorflow as tf
import tensorflow_compression as tfc

__all__ = ["EntropyRegularizer", "check_settings", "entropy_bits", "regularizers"]

_LN2 = 0.6931471805599453


def _density_logits(x, matrices, biases, factors):
  """Logits of the cumulatives c_d (eqs. 3-10), channels first, hidden units unrolled.

  Args:
    x: float32 (..., D, M) values in units of delta.
    matrices, biases, factors: tfc ``DeepFactorized``'s raw parameters,
      (D, out, in), (D, out, 1), (D, out, 1) per layer; M = softplus(matrix),
      a = tanh(factor) (eqs. 5, 9).

  Returns:
    (logits, inputs, tanhs): logits (..., D, M); inputs[i] the list of layer
    i's input units, tanhs[i] the list of tanh(M x + b) of hidden layer i
    (kept for the backward pass).
  """
  layers = len(matrices)
  units, inputs, tanhs = [x], [], []
  for i in range(layers):
    weight = tf.nn.softplus(matrices[i])
    outputs, layer_tanhs = [], []
    for j in range(weight.shape[1]):
      z = biases[i][:, j, :]
      for k in range(weight.shape[2]):
        z = z + weight[:, j, k, None] * units[k]
      if i < layers - 1:
        t = tf.math.tanh(z)  # g(z) = z + a tanh(z), eq. 8
        layer_tanhs.append(t)
        z = z + tf.math.tanh(factors[i][:, j, :]) * t
      outputs.append(z)
    inputs.append(units)
    tanhs.append(layer_tanhs)
    units = outputs
  return units[0], inputs, tanhs


def _split_params(params):
  layers = (len(params) + 1) // 3
  return (list(params[:layers]), list(params[layers:2 * layers]),
          list(params[2 * layers:]))


def _log_bin_prob(upper, lower):
  """log(sigmoid(upper) - sigmoid(lower)) for upper >= lower, stable on both tails."""
  return (tf.math.log_sigmoid(upper) + tf.math.log_sigmoid(-lower)
          + tf.math.log(-tf.math.expm1(lower - upper)))


def _bits_forward(x, *params):
  """-log2 p(x) of eq. 11 (unit bin), x float32 (D, M) in units of delta."""
  matrices, biases, factors = _split_params(params)
  logits, _, _ = _density_logits(tf.stack([x + 0.5, x - 0.5]), matrices, biases, factors)
  return -_log_bin_prob(logits[0], logits[1]) / _LN2


def _bits_backward(x, upstream, *params):
  """Gradients of sum(upstream * _bits_forward(x)) w.r.t. x and the raw parameters."""
  matrices, biases, factors = _split_params(params)
  logits, inputs, tanhs = _density_logits(
      tf.stack([x + 0.5, x - 0.5]), matrices, biases, factors)
  upper, lower = logits[0], logits[1]
  # d/du, d/dl of -log2(sigmoid(u) - sigmoid(l)).
  inv = 1.0 / tf.math.expm1(upper - lower)
  scale = upstream / _LN2
  grads = [tf.stack([-scale * (tf.math.sigmoid(-upper) + inv),
                     scale * (tf.math.sigmoid(lower) + inv)])]
  axes = [0, 2]  # the (x + 1/2, x - 1/2) stack and the positions
  layers = len(matrices)
  d_matrices, d_biases, d_factors = [None] * layers, [None] * layers, [None] * (layers - 1)
  for i in reversed(range(layers)):
    weight = tf.nn.softplus(matrices[i])
    if i < layers - 1:
      a = tf.math.tanh(factors[i][:, :, 0])
      d_a, pre = [], []
      for j, t in enumerate(tanhs[i]):
        d_a.append(tf.reduce_sum(grads[j] * t, axes))
        pre.append(grads[j] * (1.0 + a[:, j, None] * (1.0 - t * t)))
      d_factors[i] = (tf.stack(d_a, 1) * (1.0 - a * a))[:, :, None]
      grads = pre
    d_biases[i] = tf.stack([tf.reduce_sum(g, axes) for g in grads], 1)[:, :, None]
    d_weight = tf.stack([
        tf.stack([tf.reduce_sum(g * unit, axes) for unit in inputs[i]], 1) for g in grads], 1)
    d_matrices[i] = d_weight * tf.math.sigmoid(matrices[i])
    grads = [tf.add_n([weight[:, j, k, None] * g for j, g in enumerate(grads)])
             for k in range(weight.shape[2])]
  return [grads[0][0] + grads[0][1]] + d_matrices + d_biases + d_factors


# Below this many elements the fused passes run as plain TF ops: an XLA
# compilation (~3 s per new shape) would cost more than it saves.
_XLA_MIN_ELEMENTS = 1 << 18


def _make_fused_bits(jit_compile):
  """-log2 p (eq. 11, unit bin) on channels-first values with the analytic gradient.

  Returns fused(x, *params): x float32 (D, M) in units of delta; params tfc
  DeepFactorized's matrices, biases, factors (tensors); result float32 (D, M)
  bits. Forward and backward are separate functions (the backward recomputes
  the forward), XLA-compiled when ``jit_compile`` and x has at least
  ``_XLA_MIN_ELEMENTS`` elements.
  """
  plain = (_bits_forward, _bits_backward)
  compiled = plain
  if jit_compile:
    compiled = (tf.function(_bits_forward, jit_compile=True, autograph=False),
                tf.function(_bits_backward, jit_compile=True, autograph=False))

  def run(which, x, *args):
    size = x.shape.num_elements()
    if size is not None or compiled is plain:
      fns = compiled if size is None or size >= _XLA_MIN_ELEMENTS else plain
      return fns[which](x, *args)
    return tf.cond(tf.size(x) >= _XLA_MIN_ELEMENTS, lambda: compiled[which](x, *args),
                   lambda: plain[which](x, *args))

  @tf.custom_gradient
  def fused(x, *params):
    def grad(upstream):
      return run(1, x, upstream, *params)
    return run(0, x, *params), grad

  return fused


_fused_bits = _make_fused_bits(jit_compile=True)


def check_settings(weight, delta):
  """Validate lambda and delta of the regularizer (the one place they are checked).

  Args:
    weight: lambda of eq. 2; a finite number >= 0 (0: no entropy loss).
    delta: bin width of eq. 11; a finite number > 0 (feature units).

  Returns:
    (weight, delta) as Python floats.

  Raises:
    ValueError: naming the bad value (non-numbers, NaN, inf, lambda < 0,
      delta <= 0).
  """
  try:
    weight, delta = float(weight), float(delta)
  except (TypeError, ValueError):
    raise ValueError(f"entropy_weight (lambda) and delta must be numbers, got {weight!r}, "
                     f"{delta!r}.") from None
  if not (math.isfinite(weight) and weight >= 0):
    raise ValueError(f"entropy_weight (lambda) must be >= 0 and finite, got {weight}.")
  if not (math.isfinite(delta) and delta > 0):
    raise ValueError(f"delta must be > 0 and finite, got {delta}.")
  return weight, delta


@tf.keras.utils.register_keras_serializable(package="tfsr_defense")
class EntropyRegularizer(tf.keras.layers.Layer):
  """Entropy regularizer on NHWC features (paper eqs. 1-12).

  Args:
    weight: lambda >= 0 of eq. 2, multiplies L_e (bits per element) before it
      is added with ``add_loss``. The paper uses 1 for EDSR/RCAN/MSRN/CARN
      (L1 loss on [0,255] pixels) and 0.1 for SRResNet/SRGAN.
    delta: bin width delta > 0 of eq. 11, in the features' own units.
    noise: add U(-delta/2, delta/2) to the features in training (eq. 12).
    estimate_entropy: estimate p_d and add the entropy loss (eqs. 1, 11).
    num_filters: hidden widths of the per-channel cumulative (paper: K = 4,
      widths 1 -> 3 -> 3 -> 3 -> 1, i.e. (3, 3, 3)).
    init_scale: initial scale of the density in feature units (default 10,
      tfc's default), the same for every delta: the tfc model evaluated on
      Phi / delta is initialised with ``init_scale / delta``, so a delta sweep
      starts every run from the same density over the features (with
      ``init_scale`` passed to tfc unchanged, delta = 0.01 would start at
      scale 0.1 and delta = 10 at 100).

  Call:
    inputs: float tensor (N, H, W, D), any float dtype (bfloat16/float16 under a
      mixed policy: the noise and the density run in float32, cast in and out).
    training: bool; noise and loss only when True.

  Returns:
    Tensor of the same shape and dtype: Phi (+ noise in training).

  Losses and metrics:
    In training, ``weight * L_e`` is added with ``add_loss`` (so ``fit`` and
    ``model.losses`` see it), ``last_bits`` holds this call's L_e (bits per
    element, before lambda) and ``entropy_metric`` (a Mean named
    ``entropy_bits``) accumulates it: ``fit`` shows it, custom loops may read
    and reset it (the trainer logs it).

  Raises:
    ValueError: on a weight or delta ``check_settings`` refuses (NaN, inf,
      weight < 0, delta <= 0), or an input that is not rank 4 with a known
      channel count.
  """

  def __init__(self, weight=1.0, delta=1.0, noise=True, estimate_entropy=True,
               num_filters=(3, 3, 3), init_scale=10.0, **kwargs):
    super().__init__(**kwargs)
    self.weight, self.delta = check_settings(weight, delta)
    self.noise = bool(noise)
    self.estimate_entropy = bool(estimate_entropy)
    self.num_filters = tuple(int(f) for f in num_filters)
    self.init_scale = float(init_scale)
    if not (math.isfinite(self.init_scale) and self.init_scale > 0):
      raise ValueError(f"init_scale must be > 0 and finite, got {init_scale}.")
    self.density = None
    # A tracked metric object (not add_metric): it saves with the model in
    # every format.
    self.entropy_metric = tf.keras.metrics.Mean(name="entropy_bits")

  def build(self, input_shape):
    input_shape = tf.TensorShape(input_shape)
    if input_shape.rank != 4 or input_shape[-1] is None:
      raise ValueError(
          "EntropyRegularizer expects NHWC features (N, H, W, D) with a known "
          f"D, got shape {input_shape}.")
    channels = int(input_shape[-1])
    # One cumulative per channel: batch_shape (D,) broadcasts over N, H, W.
    # The density parameters are float32 whatever the layer's compute dtype.
    # It is evaluated on Phi / delta: scale init_scale / delta there is
    # init_scale in feature units.
    with tf.name_scope("density"):
      self.density = tfc.distributions.NoisyDeepFactorized(
          batch_shape=(channels,), num_filters=self.num_filters,
          init_scale=self.init_scale / self.delta, dtype=tf.float32)
    # Keras does not look inside a tfp distribution: hand its variables over so
    # they train, checkpoint and save with the layer.
    for v in self.density.trainable_variables:
      self._trainable_weights.append(v)
    super().build(input_shape)

  def cdf(self, x):
    """The learned cumulative c_d (eqs. 3-10) at x in units of delta.

    Args:
      x: float tensor (..., D); feature values in the features' own units.

    Returns:
      float32 tensor of x's shape, values in (0, 1): c_d(x / delta).
    """
    x = tf.cast(x, tf.float32) / self.delta
    return self.density.base.cdf(x)

  def bits(self, features):
    """Information content -log2 p_d(Phi) of every element (eq. 11), float32.

    Args:
      features: (N, H, W, D) tensor, any float dtype.

    Returns:
      float32 tensor (N, H, W, D) in bits; p_d uses the bin [Phi - delta/2,
      Phi + delta/2].
    """
    x = tf.cast(features, tf.float32) / self.delta
    # NoisyDeepFactorized(x) = c(x + 1/2) - c(x - 1/2): eq. 11 in units of delta,
    # evaluated channels first by the fused form (values of tfc's log_prob).
    shape, channels = tf.shape(x), x.shape[-1]
    x = tf.transpose(tf.reshape(x, [-1, channels]))
    bits = _fused_bits(x, *self._density_parameters())
    return tf.reshape(tf.transpose(bits), shape)

  def _density_parameters(self):
    """tfc DeepFactorized's raw matrices, biases and factors, float32 tensors, in that order."""
    base = self.density.base
    return [tf.convert_to_tensor(v, tf.float32)
            for v in list(base._matrices) + list(base._biases) + list(base._factors)]

  def entropy_loss(self, features):
    """L_e of eq. 1: mean bits per element over N, H, W, D (float32 scalar)."""
    return tf.reduce_mean(self.bits(features))

  def add_noise(self, features):
    """Phi + U(-delta/2, delta/2) (eq. 12), computed in float32.

    Args:
      features: (N, H, W, D) tensor, any float dtype.

    Returns:
      float32 tensor of the same shape. In float32 because bfloat16 (8-bit
      mantissa) or float16 would round most of a small delta's noise away.
    """
    features = tf.cast(features, tf.float32)
    half = self.delta / 2.0
    return features + tf.random.uniform(tf.shape(features), -half, half, dtype=tf.float32)

  def regularize(self, inputs, training=False):
    """Outputs and L_e, without side effects (tfc's ``(outputs, bits)`` convention).

    Args:
      inputs: float (N, H, W, D) features, any float dtype.
      training: bool; False returns (inputs, None).

    Returns:
      (outputs, bits): outputs of the inputs' dtype (Phi, + noise if
      ``noise``); bits the float32 scalar L_e of eq. 1 (bits per element,
      before lambda) of the (noisy) features, or None when not training or
      ``estimate_entropy`` is off.
    """
    if not training:
      return inputs, None
    features = self.add_noise(inputs) if self.noise else inputs
    bits = self.entropy_loss(features) if self.estimate_entropy else None
    return tf.cast(features, inputs.dtype), bits

  @property
  def last_bits(self):
    """L_e (float32 scalar, bits per element, before lambda) of the latest training call.

    Like Keras' ``layer.losses``: the tensor of this thread's most recent
    call (read it in the same step or tf.function as the call); None before a
    training call, after an inference call, or with ``estimate_entropy`` off.
    """
    return getattr(self._thread_local, "entropy_bits", None)

  def call(self, inputs, training=None):
    outputs, bits = self.regularize(inputs, bool(training))
    self._thread_local.entropy_bits = bits
    if bits is not None:
      self.entropy_metric.update_state(bits)
      if self.weight > 0:
        self.add_loss(self.weight * bits)
    return outputs

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    config = super().get_config()
    config.update(
        weight=self.weight, delta=self.delta, noise=self.noise,
        estimate_entropy=self.estimate_entropy,
        num_filters=list(self.num_filters), init_scale=self.init_scale)
    return config


def regularizers(model):
  """The EntropyRegularizer layers of a Keras model (nested models included), in order."""
  return [m for m in model.submodules if isinstance(m, EntropyRegularizer)]


def entropy_bits(model):
  """L_e of the model's latest training call: float32 scalar, bits per element.

  The sum over the model's EntropyRegularizer layers of ``last_bits`` (the
  registry's networks have one layer, so this is L_e of eq. 1), before lambda,
  whatever other losses the model adds. 0.0 for a model without a layer, or
  whose layers estimated nothing in that call (inference, ``estimate_entropy``
  off). Read it after ``model(x, training=True)`` in the same step.
  """
  values = [layer.last_bits for layer in regularizers(model) if layer.last_bits is not None]
  return tf.add_n(values) if values else tf.constant(0.0, tf.float32)
