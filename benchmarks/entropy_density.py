"""Cost of the entropy regularizer's density: tfc's log_prob vs the fused form, and in an EDSR step.

    taskset -c 0 python benchmarks/entropy_density.py --repeats=5 --step_repeats=2

Part 1 times forward + backward of L_e (gradients w.r.t. the features and the
density's 11 variables) on a (16, 48, 48, 64) float32 map: tfc's
``NoisyDeepFactorized.log_prob`` in a tf.function, the same under XLA, and the
layer's fused form (eqs. 3-11 channels first, analytic backward) as plain TF ops
and XLA-compiled (the layer's default for maps of >= 2^18 elements). Part 1b
splits the fused XLA form into its passes (forward; backward = the forward
recomputed + the input gradient + the per-channel reductions of the density's
parameter gradients), each compiled alone so XLA drops what it does not return:
where the regularizer's time goes. Part 2
times the EDSR x4 training step (benchmarks/train_step.py) without the
regularizer, with it (fused density), and with tfc's log_prob swapped in, float32
and mixed_bfloat16. All variants interleaved in one process, medians of the
repeats; compare them as ratios within one run.
"""

import os
import sys
import time

from absl import app, flags
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_step  # noqa: E402  (the EDSR step timer; defines its own flags)

from tfsr_defense.layers import entropy  # noqa: E402

import machine  # benchmarks/machine.py: the command and machine header

flags.DEFINE_integer("repeats", 5, "Interleaved repeats of the density timings (median).")
flags.DEFINE_integer("step_repeats", 2, "Interleaved repeats of the train-step timings (median).")
flags.DEFINE_list("density_shape", ["16", "48", "48", "64"], "Feature map N,H,W,D.")
flags.DEFINE_bool("train_steps", True, "Also time the EDSR step (part 2).")
FLAGS = flags.FLAGS


def _tfc_bits(layer, features):
  return -layer.density.log_prob(tf.cast(features, tf.float32) / layer.delta) / entropy._LN2


def density_variants(layer):
  """name -> tf.function(x) returning (L_e, gradients) for each density implementation."""
  fused_plain = entropy._make_fused_bits(jit_compile=False)

  def plain_bits(features):
    x = tf.cast(features, tf.float32) / layer.delta
    shape, channels = tf.shape(x), x.shape[-1]
    x = tf.transpose(tf.reshape(x, [-1, channels]))
    return tf.reshape(tf.transpose(fused_plain(x, *layer._density_parameters())), shape)

  def step(bits_fn, jit=False):
    def run(x):
      with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_mean(bits_fn(x))
      return loss, tape.gradient(loss, [x] + layer.trainable_weights)
    return tf.function(run, jit_compile=jit)

  return {
      "tfc log_prob, tf.function": step(lambda x: _tfc_bits(layer, x)),
      "tfc log_prob, jit_compile": step(lambda x: _tfc_bits(layer, x), jit=True),
      "fused, plain TF ops": step(plain_bits),
      "fused, layer (XLA >= 2^18)": step(layer.bits),
  }


def time_density(repeats, shape):
  tf.random.set_seed(0)
  layer = entropy.EntropyRegularizer(weight=1.0, delta=1.0, noise=False)
  layer.build((None, None, None, shape[-1]))
  for v in layer.trainable_weights:
    v.assign(v + tf.random.normal(v.shape) * 0.3)
  x = tf.random.normal(shape) * 30.0
  variants = density_variants(layer)
  ref_loss, ref_grads = None, None
  for name, fn in variants.items():  # compile, and check against tfc
    loss, grads = fn(x)
    if ref_loss is None:
      ref_loss, ref_grads = loss, grads
    rel = max(float(tf.reduce_max(tf.abs(g - r)) / tf.reduce_max(tf.abs(r)))
              for g, r in zip(grads, ref_grads))
    print(f"  {name:28s} L_e {float(loss):.6f} bits (tfc - this: {float(ref_loss - loss):+.1e}), "
          f"max gradient error / max |gradient| {rel:.1e}", flush=True)
  times = {name: [] for name in variants}
  for _ in range(repeats):
    for name, fn in variants.items():
      start = time.perf_counter()
      loss, grads = fn(x)
      grads[0].numpy()
      times[name].append(time.perf_counter() - start)
  base = np.median(times["tfc log_prob, tf.function"])
  for name, t in times.items():
    print(f"  {name:28s} {1000 * np.median(t):7.1f} ms (median of {repeats}; "
          f"{np.median(t) / base:.2f} x tfc)", flush=True)


def profile_fused(repeats, shape):
  """Part 1b: the fused density's XLA passes timed one by one (ms, medians)."""
  tf.random.set_seed(0)
  layer = entropy.EntropyRegularizer(weight=1.0, delta=1.0, noise=False)
  layer.build((None, None, None, shape[-1]))
  params = [tf.convert_to_tensor(p) for p in layer._density_parameters()]
  x = tf.transpose(tf.reshape(tf.random.normal(shape) * 30.0, [-1, shape[-1]]))  # (D, M)
  upstream = tf.fill(tf.shape(x), 1.0 / float(np.prod(shape)))

  def logits_only(x, *params):
    matrices, biases, factors = entropy._split_params(params)
    return entropy._density_logits(tf.stack([x + 0.5, x - 0.5]), matrices, biases, factors)[0]

  def input_gradient_only(x, upstream, *params):
    return entropy._bits_backward(x, upstream, *params)[0]

  xla = lambda f: tf.function(f, jit_compile=True, autograph=False)  # noqa: E731
  parts = {
      "forward (bits)": (xla(entropy._bits_forward), (x,)),
      "forward logits only": (xla(logits_only), (x,)),
      "backward, input gradient only": (xla(input_gradient_only), (x, upstream)),
      "backward, full (as trained)": (xla(entropy._bits_backward), (x, upstream)),
  }
  times = {name: [] for name in parts}
  for name, (fn, args) in parts.items():
    fn(*args, *params)  # compile
  for _ in range(repeats):
    for name, (fn, args) in parts.items():
      start = time.perf_counter()
      out = fn(*args, *params)
      tf.nest.flatten(out)[0].numpy()
      times[name].append(time.perf_counter() - start)
  ms = {name: 1000 * float(np.median(t)) for name, t in times.items()}
  for name, t in ms.items():
    print(f"  {name:32s} {t:7.1f} ms", flush=True)
  total = ms["forward (bits)"] + ms["backward, full (as trained)"]
  params_part = ms["backward, full (as trained)"] - ms["backward, input gradient only"]
  print(f"  forward + backward {total:.1f} ms = forward {ms['forward (bits)']:.1f} "
        f"({ms['forward (bits)'] / total:.0%}) + backward's forward recompute + input gradient "
        f"{ms['backward, input gradient only']:.1f} "
        f"({ms['backward, input gradient only'] / total:.0%}) + parameter-gradient reductions "
        f"{params_part:.1f} ({params_part / total:.0%})", flush=True)


def time_steps(repeats):
  tfc_bits = lambda self, features: _tfc_bits(self, features)  # noqa: E731
  fused_bits = entropy.EntropyRegularizer.bits
  configs = [("plain", 0.0, fused_bits), ("entropy", None, fused_bits),
             ("entropy-tfc", None, tfc_bits)]
  times = {}
  for _ in range(repeats):
    for policy in FLAGS.precisions:
      for label, lam, bits in configs:
        entropy.EntropyRegularizer.bits = bits
        try:
          s = train_step.time_train_step("edsr", lam, policy, FLAGS.batch_size, FLAGS.patch_size,
                                         FLAGS.scale, FLAGS.steps)
        finally:
          entropy.EntropyRegularizer.bits = fused_bits
        times.setdefault((label, policy), []).append(s)
  for label, _, _ in configs:
    row = []
    for policy in FLAGS.precisions:
      t = np.median(times[(label, policy)])
      plain = np.median(times[("plain", policy)])
      row.append(f"{policy} {t:.3f} s/step ({t / plain:.3f} x plain)")
    print(f"edsr  {label:12s} " + " | ".join(row), flush=True)


def main(_):
  machine.print_header()
  shape = [int(s) for s in FLAGS.density_shape]
  print(f"part 1: L_e forward + backward (d/dPhi, d/d 11 density variables), map {shape} float32")
  time_density(FLAGS.repeats, shape)
  print(f"part 1b: the fused XLA density's passes, map {shape} float32 (channels first)")
  profile_fused(FLAGS.repeats, shape)
  if FLAGS.train_steps:
    print(f"part 2: EDSR x4 train step, batch {FLAGS.batch_size}, LR patch {FLAGS.patch_size}, "
          f"mean of {FLAGS.steps} steps, median of {FLAGS.step_repeats} interleaved repeats")
    time_steps(FLAGS.step_repeats)


if __name__ == "__main__":
  app.run(main)
