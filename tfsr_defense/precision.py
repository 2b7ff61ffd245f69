"""Choice of numeric precision and tf.distribute strategy for training; loss scaling helpers."""

import contextlib
import functools
import json
import os

import tensorflow as tf

__all__ = ["TRAIN_PRECISIONS", "STRATEGIES", "cpu_has_bf16", "bf16_kernels_run",
           "check_bf16_kernels", "resolve_precision", "make_strategy", "policy_scope",
           "scale_loss", "unscale_gradients", "distributed_step"]

# Precisions the trainer accepts (--precision); the attacks have their own set.
TRAIN_PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
STRATEGIES = ("auto", "default", "mirrored", "multiworker")


def cpu_has_bf16():
  """True if /proc/cpuinfo lists AMX-bf16 or AVX512-bf16 (Linux; False elsewhere)."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("flags"):
          flags = line.split()
          return "amx_bf16" in flags or "avx512_bf16" in flags
  except OSError:
    pass
  return False


@functools.lru_cache(maxsize=None)
def bf16_kernels_run():
  """True if this process's TensorFlow kernels run a bfloat16 convolution and its gradient.

  False on an x86 CPU without AVX512 when TF's oneDNN kernels are on (as
  ``import tfsr_defense`` makes them by default): TF 2.14's oneDNN has bfloat16 only on AVX512
  platforms, yet its graph optimizer still fuses Conv2D + BiasAdd + ReLU into a bfloat16 op
  no kernel there implements (measured on an AVX2 EPYC). TF's Eigen kernels
  (``TF_ENABLE_ONEDNN_OPTS=0``) run bfloat16 on any CPU. Probed once per process with a
  1x4x4x1 convolution and its input gradient in a tf.function (milliseconds).
  """
  @tf.function
  def conv_and_gradient(x, kernel, bias):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, kernel, 1, "SAME"), bias))
    return y, tape.gradient(tf.reduce_sum(y), x)

  try:
    conv_and_gradient(tf.ones((1, 4, 4, 1), tf.bfloat16), tf.ones((3, 3, 1, 1), tf.bfloat16),
                      tf.zeros((1,), tf.bfloat16))
  except tf.errors.OpError:  # InvalidArgument (no kernel) or Aborted (no oneDNN primitive)
    return False
  return True


def check_bf16_kernels():
  """Raise ValueError naming the cause and the way out unless bfloat16 runs here.

  Raises:
    ValueError: :func:`bf16_kernels_run` is False (oneDNN on, CPU without AVX512).
  """
  if not bf16_kernels_run():
    raise ValueError(
        "mixed_bfloat16 cannot run in this process: TensorFlow's oneDNN kernels are on "
        f"(TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')}; "
        "tfsr_defense turns them on by default) and they have bfloat16 only on CPUs with "
        "AVX512. Use float32 (the faster choice on such a CPU), or start Python with "
        "TF_ENABLE_ONEDNN_OPTS=0 to run bfloat16 on TF's Eigen kernels.")


def resolve_precision(precision="auto"):
  """Keras mixed-precision policy name for ``precision``.

  auto: ``mixed_float16`` on a GPU (with loss scaling in the trainer),
  ``mixed_bfloat16`` on a CPU with AMX/AVX512-BF16 (several times faster than
  float32 there), else ``float32``.

  Raises:
    ValueError: unknown name.
  """
  if precision not in TRAIN_PRECISIONS:
    raise ValueError(f"Unknown precision '{precision}': use one of {', '.join(TRAIN_PRECISIONS)}.")
  if precision != "auto":
    return precision
  if tf.config.list_physical_devices("GPU"):
    return "mixed_float16"
  return "mixed_bfloat16" if cpu_has_bf16() else "float32"


def make_strategy(name="auto", devices=None):
  """A tf.distribute strategy.

  Args:
    name: 'auto' (MultiWorkerMirrored if $TF_CONFIG names several workers,
      Mirrored if there are several GPUs, else the default strategy),
      'default', 'mirrored' or 'multiworker'.
    devices: device list for 'mirrored' (e.g. two logical CPUs in tests).

  Raises:
    ValueError: unknown name.
  """
  if name not in STRATEGIES:
    raise ValueError(f"Unknown strategy '{name}': use one of {', '.join(STRATEGIES)}.")
  if name == "auto":
    workers = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {}).get("worker", [])
    if len(workers) > 1:
      name = "multiworker"
    elif len(tf.config.list_physical_devices("GPU")) > 1:
      name = "mirrored"
    else:
      name = "default"
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    return tf.distribute.MirroredStrategy(devices)
  return tf.distribute.MultiWorkerMirroredStrategy()


@contextlib.contextmanager
def policy_scope(name):
  """Set the global Keras mixed-precision policy (e.g. 'mixed_bfloat16') inside; restore after.

  Raises:
    ValueError: 'mixed_bfloat16' in a process whose kernels cannot run it
      (:func:`check_bf16_kernels`).
  """
  if name == "mixed_bfloat16":
    check_bf16_kernels()
  saved = tf.keras.mixed_precision.global_policy()
  tf.keras.mixed_precision.set_global_policy(name)
  try:
    yield
  finally:
    tf.keras.mixed_precision.set_global_policy(saved)


def scale_loss(optimizer, loss):
  """``loss`` scaled for a ``LossScaleOptimizer`` (mixed_float16), else unchanged."""
  if isinstance(optimizer, tf.keras.mixed_precision.LossScaleOptimizer):
    return optimizer.get_scaled_loss(loss)
  return loss


def unscale_gradients(optimizer, grads):
  """Gradients of a ``scale_loss`` loss back in loss units (identity without loss scaling)."""
  if isinstance(optimizer, tf.keras.mixed_precision.LossScaleOptimizer):
    return optimizer.get_unscaled_gradients(grads)
  return grads


def distributed_step(step_fn, strategy=None):
  """A tf.function running ``step_fn`` on every replica and summing its outputs.

  Args:
    step_fn: fn(*batch) -> dict of float32 scalars, each this replica's share
      of a global mean (losses averaged with the global batch size).
    strategy: tf.distribute strategy (default: the current one).

  Returns:
    tf.function(*distributed batch) -> dict of the global values (SUM over replicas).
  """
  strategy = strategy or tf.distribute.get_strategy()

  @tf.function
  def step(*batch):
    out = strategy.run(step_fn, args=batch)
    return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in out.items()}

  return step
