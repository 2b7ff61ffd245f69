"""Time of an evaluate sweep (official FDA + I-FGSM at every eps) against the sum
of the input gradients it needs, and of CLEVER against N_s single gradients.

    TFSR_DATA_DIR=../shared/data python benchmarks/evaluate_sweep.py
    TFSR_DATA_DIR=../shared/data python benchmarks/evaluate_sweep.py \\
        --max_images=2 --eps=1,4 --steps=10 --clever_samples=32       # a quick look

What it does, for EDSR-baseline x4 with the regularizer (random weights: the
time does not depend on them) on the LR images of --dataset:

1. Per image and per attack, the time of one input gradient: the time of a
   (1 + k)-step attack minus that of a 1-step attack, over k (minimum of
   --repeats timings; compiled loop, so the clean forward pass, the random
   start and the Python call are not counted).
2. The sum of the gradients the sweep needs: per image and eps,
   steps x t_grad(I-FGSM) + fda_steps x t_grad(FDA).
3. The sweep itself: ``evaluation.evaluate`` (clean PSNR/SSIM, both attacks at
   every eps, PSNRs of the outputs, rows written to disk, no plots) into a
   fresh temporary report directory, after a warm-up sweep on the first
   image at one eps (which warms TF's kernels; the timed call compiles its
   own loops once, as one run of the evaluate CLI does).
4. CLEVER: N_s = --clever_samples gradients in batches of --clever_batch on
   the first image, against N_s x t_grad(CLEVER's objective measured as in 1).

Goals (issue 14): sweep <= 1.2 x the sum of its gradients; CLEVER <= 1.1 x N_s
single gradients. Prints the command and the machine; the figures are ratios
within one run (shared machines vary by up to 40 %).
"""

import os
import tempfile
import time

from absl import app, flags
import numpy as np
import tensorflow as tf

from tfsr_defense import attacks, clever, data, evaluation, models

import machine  # benchmarks/machine.py: the command and machine header

flags.DEFINE_string("dataset", "set5", "LR images to attack (registered name or folder).")
flags.DEFINE_string("data_dir", None, "Data directory (default: $TFSR_DATA_DIR).")
flags.DEFINE_integer("max_images", None, "Only the first N images.")
flags.DEFINE_list("eps", ["1", "2", "4", "8", "16", "32"], "eps in units of 1/255.")
flags.DEFINE_integer("steps", 50, "I-FGSM iterations (paper: 50).")
flags.DEFINE_integer("fda_steps", attacks.fda.DEFAULT_STEPS, "FDA iterations (official: 10).")
flags.DEFINE_integer("grad_steps", 4, "k of step 1: extra steps timed per gradient measurement.")
flags.DEFINE_integer("repeats", 2, "Timings per gradient measurement; the minimum is kept.")
flags.DEFINE_integer("clever_samples", 256, "CLEVER N_s timed (0: skip CLEVER).")
flags.DEFINE_integer("clever_batch", clever.DEFAULT_BATCH, "CLEVER gradients per call.")
flags.DEFINE_integer("scale", 4, "SR scale.")
FLAGS = flags.FLAGS


def _timed(fn):
  start = time.perf_counter()
  out = fn()
  if hasattr(out, "numpy"):
    out.numpy()
  return time.perf_counter() - start


def gradient_seconds(run, k, repeats):
  """Seconds of one gradient: (t(1 + k steps) - t(1 step)) / k, minimum of ``repeats`` timings.

  ``run(steps)`` runs the compiled loop for ``steps`` iterations.
  """
  run(1)  # trace / warm up
  one = min(_timed(lambda: run(1)) for _ in range(repeats))
  many = min(_timed(lambda: run(1 + k)) for _ in range(repeats))
  return max(many - one, 0.0) / k


def main(argv):
  del argv
  machine.print_header()
  eps = [float(e) / 255.0 for e in FLAGS.eps]
  pairs = data.load_pairs(FLAGS.dataset, FLAGS.scale, data_dir=FLAGS.data_dir,
                          max_images=FLAGS.max_images)
  tf.keras.utils.set_random_seed(0)
  model = models.build_model("edsr", FLAGS.scale, entropy_weight=1.0)
  engine = attacks.GradientEngine(model)
  print(f"EDSR-baseline x{FLAGS.scale} + regularizer, {model.count_params():,} params; "
        f"{FLAGS.dataset}: {len(pairs)} images; eps {','.join(FLAGS.eps)}/255; "
        f"I-FGSM {FLAGS.steps} steps, FDA (all ReLU maps) {FLAGS.fda_steps} steps", flush=True)

  # 1-2. Gradient times per image and the sum the sweep needs.
  grad_sum = 0.0
  n_grads = 0
  for pair in pairs:
    x = data.to_float(pair.lr)[None]
    t_ifgsm = gradient_seconds(
        lambda n: attacks.ifgsm.attack(engine, x, eps=4 / 255, steps=n), FLAGS.grad_steps,
        FLAGS.repeats)
    t_fda = gradient_seconds(
        lambda n: attacks.fda.attack(engine, x, eps=4 / 255, steps=n), FLAGS.grad_steps,
        FLAGS.repeats)
    grad_sum += len(eps) * (FLAGS.steps * t_ifgsm + FLAGS.fda_steps * t_fda)
    n_grads += len(eps) * (FLAGS.steps + FLAGS.fda_steps)
    print(f"  {pair.name:12s} LR {x.shape[2]}x{x.shape[1]}: gradient I-FGSM {t_ifgsm:.4f} s, "
          f"FDA {t_fda:.4f} s", flush=True)

  # 3. The sweep (after a warm-up on one image and eps, in its own directory).
  with tempfile.TemporaryDirectory() as tmp:
    evaluation.evaluate({"edsr_er": model}, {FLAGS.dataset: pairs[:1]},
                        os.path.join(tmp, "warmup"), eps=eps[:1], steps=1, fda_steps=1,
                        num_examples=0, plots=False)
    start = time.perf_counter()
    evaluation.evaluate({"edsr_er": model}, {FLAGS.dataset: pairs}, os.path.join(tmp, "sweep"),
                        eps=eps, steps=FLAGS.steps, fda_steps=FLAGS.fda_steps, num_examples=0,
                        plots=False)
    sweep = time.perf_counter() - start
  print(f"sweep: {sweep:.1f} s for {len(pairs)} images x {len(eps)} eps x (FDA + I-FGSM); "
        f"sum of its {n_grads} gradients {grad_sum:.1f} s; ratio x{sweep / grad_sum:.3f} "
        f"(goal <= 1.2)", flush=True)

  # 4. CLEVER: N_s gradients against N_s single gradients of the same objective.
  if FLAGS.clever_samples > 0:
    x = data.to_float(pairs[0].lr)[None]

    def run_clever(n):
      return clever.clever_sr(engine, x, num_samples=n, batch_size=min(FLAGS.clever_batch, n))

    run_clever(FLAGS.clever_batch)  # trace / warm up
    t_one = gradient_seconds(
        lambda n: clever.clever_sr(engine, x, num_samples=n, batch_size=1).score,
        FLAGS.grad_steps, FLAGS.repeats)
    t_all = _timed(lambda: np.float64(run_clever(FLAGS.clever_samples).score))
    ns = FLAGS.clever_samples
    print(f"CLEVER N_s={ns} (batch {FLAGS.clever_batch}) on {pairs[0].name}: {t_all:.1f} s; "
          f"N_s x one gradient {ns * t_one:.1f} s ({t_one:.4f} s each); ratio "
          f"x{t_all / max(ns * t_one, 1e-9):.3f} (goal <= 1.1)", flush=True)


if __name__ == "__main__":
  app.run(main)
