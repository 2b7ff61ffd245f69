"""Is the input pipeline off the critical path? EDSR x4 training steps fed by the
real T91 + BSD200 patch pipeline against the same steps on fixed tensors.

    TFSR_DATA_DIR=../shared/data python benchmarks/input_pipeline.py
    TFSR_DATA_DIR=../shared/data python benchmarks/input_pipeline.py --steps=3 --rounds=1

The pipeline is the trainer's (``data.train_dataset``): LR images made once
per image and scale when the pairs are loaded (MATLAB bicubic, or the
dataset's own LR files), then per patch only a random aligned crop, flips and
a transpose in parallel ``map`` calls, batching and prefetch. Printed, as
medians over --rounds interleaved rounds:

* the pipeline alone: batches per second (no training);
* one training step (forward, L1 + lambda L_e, backward, Adam; the
  regularizer on, --precision) with each batch taken from the pipeline
  iterator, and with one fixed batch of the same shape;
* their ratio (goal: ~1.0, i.e. the pipeline hides behind the step).

Prints the command and the machine; compare as ratios (shared machines vary).
"""

import statistics
import time

from absl import app, flags
import tensorflow as tf

from tfsr_defense import data, losses, models, precision

import machine  # benchmarks/machine.py: the command and machine header

flags.DEFINE_list("train_data", ["t91", "bsd200"], "Training datasets (registered names).")
flags.DEFINE_string("data_dir", None, "Data directory (default: $TFSR_DATA_DIR).")
flags.DEFINE_integer("batch_size", 16, "Batch size.")
flags.DEFINE_integer("patch_size", 32, "LR patch side (the study recipe's).")
flags.DEFINE_integer("scale", 4, "SR scale.")
flags.DEFINE_integer("steps", 5, "Timed steps per round and feed (after 2 warm-up steps).")
flags.DEFINE_integer("rounds", 3, "Interleaved rounds; medians are reported.")
flags.DEFINE_enum("precision", "auto", ["auto", "float32", "mixed_bfloat16"],
                  "Keras policy of the step (auto: bf16 on CPUs with bf16 instructions).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  machine.print_header()
  start = time.perf_counter()
  pairs = [p for name in FLAGS.train_data
           for p in data.load_pairs(name, FLAGS.scale, data_dir=FLAGS.data_dir)]
  print(f"{'+'.join(FLAGS.train_data)}: {len(pairs)} pairs loaded (LR made once) in "
        f"{time.perf_counter() - start:.1f} s", flush=True)
  iterator = iter(data.train_dataset(pairs, FLAGS.patch_size, FLAGS.scale, FLAGS.batch_size,
                                     seed=0))
  lr0, hr0 = next(iterator)

  policy = precision.resolve_precision(FLAGS.precision)
  tf.keras.utils.set_random_seed(0)
  with precision.policy_scope(policy):
    model = models.build_model("edsr", FLAGS.scale, entropy_weight=1.0)
  spec = models.get_spec("edsr")
  opt = tf.keras.optimizers.Adam(1e-4)

  @tf.function
  def step(lr, hr):
    with tf.GradientTape() as tape:
      sr = model(lr, training=True)
      loss = tf.reduce_mean(losses.reconstruction_loss(sr, hr, spec.loss, spec.pixel_range))
      loss += tf.add_n(model.losses)
    grads = tape.gradient(loss, model.trainable_variables)
    opt.apply_gradients(zip(grads, model.trainable_variables))
    return loss

  def timed(fn, n):
    for _ in range(2):
      fn()
    start = time.perf_counter()
    for _ in range(n):
      fn()
    return (time.perf_counter() - start) / n

  def pipeline_batch():
    lr, _ = next(iterator)
    lr.numpy()

  def step_pipeline():
    step(*next(iterator)).numpy()

  def step_fixed():
    step(lr0, hr0).numpy()

  results = {"pipeline": [], "step_pipeline": [], "step_fixed": []}
  for r in range(FLAGS.rounds):
    results["pipeline"].append(timed(pipeline_batch, 10 * FLAGS.steps))
    results["step_pipeline"].append(timed(step_pipeline, FLAGS.steps))
    results["step_fixed"].append(timed(step_fixed, FLAGS.steps))
    print(f"round {r + 1}/{FLAGS.rounds} done", flush=True)
  med = {k: statistics.median(v) for k, v in results.items()}
  print(f"EDSR x{FLAGS.scale} + regularizer, {policy}, batch {FLAGS.batch_size} of LR "
        f"{FLAGS.patch_size}x{FLAGS.patch_size}:")
  print(f"  pipeline alone: {1 / med['pipeline']:.1f} batches/s ({med['pipeline'] * 1e3:.1f} ms "
        f"per batch)")
  print(f"  step fed by the pipeline {med['step_pipeline']:.3f} s, on a fixed batch "
        f"{med['step_fixed']:.3f} s: ratio x{med['step_pipeline'] / med['step_fixed']:.3f}",
        flush=True)


if __name__ == "__main__":
  app.run(main)
