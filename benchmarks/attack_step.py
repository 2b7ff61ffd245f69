"""Seconds per I-FGSM step per image (float32 vs mixed_bfloat16), one float32 input
gradient with and without XLA (``jit_compile``), and CLEVER with batched vs
one-at-a-time gradients, for EDSR-baseline x4 on a 120 x 80 LR image.

    python benchmarks/attack_step.py                    # full size: EDSR-baseline, N_s = 1024
    python benchmarks/attack_step.py --num_samples=128  # quicker CLEVER comparison
    python benchmarks/attack_step.py --n_resblocks=1 --n_feats=8 --height=16 --width=24 \\
        --steps=2 --num_samples=8 --clever_batch=4               # smoke test

I-FGSM: the time of a (1 + steps)-step attack minus that of a 1-step attack
(each the minimum of --repeats timings), divided by steps and by the batch size (so the
clean forward pass and the start are not counted), after a warm-up call that traces the
loop. XLA: the gradient of ||S(x~) - S(x)||_2 in a tf.function with jit_compile False / True
(mean of --steps calls after two warm-up calls). CLEVER:
the whole N_s-sample score with ``batch_size`` = --clever_batch vs 1, after a
warm-up; at N_s = 1024 that is 2 x 1024 input gradients of the full network
(about 1 s each in float32 on these CPUs: over half an hour). Prints the
command and the machine; compare as ratios within one run
(shared machines vary by up to 40 %).
"""

import time

from absl import app, flags
import numpy as np
import tensorflow as tf

from tfsr_defense import attacks, clever, models

import machine  # benchmarks/machine.py: the command and machine header

flags.DEFINE_integer("height", 80, "LR height (pixels).")
flags.DEFINE_integer("width", 120, "LR width (pixels).")
flags.DEFINE_integer("scale", 4, "SR scale.")
flags.DEFINE_integer("batch", 1, "Images attacked together.")
flags.DEFINE_integer("steps", 5, "Timed I-FGSM steps.")
flags.DEFINE_integer("repeats", 2, "Timings per measurement; the minimum is kept.")
flags.DEFINE_list("precisions", ["float32", "mixed_bfloat16"], "Attack loop precisions.")
flags.DEFINE_integer("n_resblocks", 16, "EDSR residual blocks (16: EDSR-baseline).")
flags.DEFINE_integer("n_feats", 64, "EDSR channels (64: EDSR-baseline).")
flags.DEFINE_float("entropy_weight", 1.0, "lambda (the regularizer is the identity at inference).")
flags.DEFINE_integer("num_samples", 1024, "CLEVER N_s (paper: 1024).")
flags.DEFINE_integer("clever_batch", 16, "CLEVER gradients per call in the batched run.")
flags.DEFINE_bool("xla", True, "Time one float32 input gradient with and without XLA.")
flags.DEFINE_bool("clever", True, "Time CLEVER too.")
FLAGS = flags.FLAGS


def time_ifgsm_step(model, x, steps, prec, repeats):
  """Seconds per I-FGSM step per image under ``prec`` (min over ``repeats`` timings)."""
  fn = attacks.ifgsm.attack
  fn(model, x, eps=4 / 255, steps=1, precision=prec).numpy()  # trace / warm up

  def timed(n):
    start = time.perf_counter()
    fn(model, x, eps=4 / 255, steps=n, precision=prec).numpy()
    return time.perf_counter() - start

  one = min(timed(1) for _ in range(repeats))
  many = min(timed(1 + steps) for _ in range(repeats))
  return (many - one) / steps / int(x.shape[0])


def time_gradient(model, x, steps, jit_compile):
  """Seconds per float32 input gradient of ||S(x~) - S(x)||_2 (mean of ``steps`` calls)."""
  reference = model(x, training=False)

  def gradient(x_adv):
    with tf.GradientTape() as tape:
      tape.watch(x_adv)
      loss = tf.norm(model(x_adv, training=False) - reference)
    return tape.gradient(loss, x_adv)

  fn = tf.function(gradient, jit_compile=jit_compile)
  x_adv = x + 1 / 255
  for _ in range(2):
    fn(x_adv).numpy()
  start = time.perf_counter()
  for _ in range(steps):
    fn(x_adv).numpy()
  return (time.perf_counter() - start) / steps


def time_clever(model, x, num_samples, batch_size):
  """Seconds for one CLEVER score (N_s gradients) with ``batch_size`` gradients per call."""
  clever.clever_sr(model, x, num_samples=min(batch_size, num_samples), batch_size=batch_size)
  start = time.perf_counter()
  result = clever.clever_sr(model, x, num_samples=num_samples, batch_size=batch_size)
  return time.perf_counter() - start, result.score


def main(argv):
  del argv
  machine.print_header()
  tf.keras.utils.set_random_seed(0)
  model = models.build_model("edsr", FLAGS.scale, entropy_weight=FLAGS.entropy_weight,
                             n_resblocks=FLAGS.n_resblocks, n_feats=FLAGS.n_feats)
  print(f"EDSR x{FLAGS.scale}: {FLAGS.n_resblocks} res blocks, {FLAGS.n_feats} ch, "
        f"{model.count_params():,} params; LR {FLAGS.width}x{FLAGS.height}, batch {FLAGS.batch}")
  x = tf.random.stateless_uniform([FLAGS.batch, FLAGS.height, FLAGS.width, 3], [0, 1])
  for prec in FLAGS.precisions:
    s = time_ifgsm_step(model, x, FLAGS.steps, prec, FLAGS.repeats)
    note = "" if s > 0 else " (below timer noise: use more --steps)"
    print(f"I-FGSM {prec:15s} {s:.4f} s/step/image (mean of {FLAGS.steps} steps){note}",
          flush=True)
  if FLAGS.xla:
    plain, xla = (time_gradient(model, x, FLAGS.steps, jit) for jit in (False, True))
    print(f"input gradient float32: tf.function {plain:.4f} s, jit_compile=True {xla:.4f} s "
          f"(XLA's time / tf.function's: {xla / max(plain, 1e-9):.2f})", flush=True)
  if FLAGS.clever:
    image = x[:1]
    batched, score_b = time_clever(model, image, FLAGS.num_samples, FLAGS.clever_batch)
    single, score_s = time_clever(model, image, FLAGS.num_samples, 1)
    print(f"CLEVER N_s={FLAGS.num_samples}: batched ({FLAGS.clever_batch}/call) {batched:.2f} s, "
          f"one at a time {single:.2f} s, speed-up x{single / max(batched, 1e-9):.2f}; "
          f"scores {score_b:.4g} / {score_s:.4g} (equal up to float32 rounding: "
          f"{np.isclose(score_b, score_s, rtol=1e-4)})", flush=True)


if __name__ == "__main__":
  app.run(main)
