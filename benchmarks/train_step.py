"""Seconds per training step of SR networks, with and without the entropy regularizer,
float32 vs mixed_bfloat16, on this machine.

    python benchmarks/train_step.py --models=edsr --batch_size=16 --patch_size=48

Prints one line per (model, regularizer, precision) and the machine; compare the
figures as ratios within one run (shared machines vary by up to 40 %).
``srgan`` times the phase-two GAN step (generator + discriminator + VGG19
conv5_4 content loss; VGG randomly initialised, which costs the same as the
ImageNet weights); every other name (``srresnet`` = SRGAN's phase one included)
times a reconstruction-loss step.
"""

import time

from absl import app, flags
import tensorflow as tf

from tfsr_defense import gan, losses, models

import machine  # benchmarks/machine.py: the command and machine header

flags.DEFINE_list("models", ["edsr"], "Registered networks to time.")
flags.DEFINE_list("precisions", ["float32", "mixed_bfloat16"], "Keras policies to time.")
flags.DEFINE_integer("batch_size", 16, "Batch size.")
flags.DEFINE_integer("patch_size", 48, "LR patch side.")
flags.DEFINE_integer("scale", 4, "SR scale.")
flags.DEFINE_integer("steps", 5, "Timed steps (after 2 warm-up steps).")
FLAGS = flags.FLAGS


def time_train_step(name, lam, policy, batch, patch, scale, steps):
  """Mean seconds of one Adam step (forward, L_r + lambda L_e, backward, update; GAN: G and D)."""
  tf.keras.mixed_precision.set_global_policy(policy)
  spec = models.get_spec(name)
  model = models.build_model(name, scale, entropy_weight=lam)
  opt = tf.keras.optimizers.Adam(1e-4)
  lr = tf.random.uniform([batch, patch, patch, 3])
  hr = tf.random.uniform([batch, patch * scale, patch * scale, 3])

  def reconstruction_step():
    with tf.GradientTape() as tape:
      sr = model(lr, training=True)
      loss = tf.reduce_mean(losses.reconstruction_loss(sr, hr, spec.loss, spec.pixel_range))
      if model.losses:
        loss += tf.add_n(model.losses)
    grads = tape.gradient(loss, model.trainable_variables)
    opt.apply_gradients(zip(grads, model.trainable_variables))
    return loss

  if gan.is_gan_model(name):
    gan_step = gan.make_gan_train_step(model, gan.build_discriminator(), gan.build_vgg54(None),
                                       opt, tf.keras.optimizers.Adam(1e-4))

    def step():
      return gan_step(lr, hr)["loss"]
  else:
    step = tf.function(reconstruction_step)

  for _ in range(2):
    step().numpy()
  start = time.perf_counter()
  for _ in range(steps):
    step().numpy()
  tf.keras.mixed_precision.set_global_policy("float32")
  return (time.perf_counter() - start) / steps


def main(_):
  machine.print_header()
  print(f"batch {FLAGS.batch_size}, LR patch {FLAGS.patch_size}, x{FLAGS.scale}, "
        f"mean of {FLAGS.steps} steps")
  for name in FLAGS.models:
    for lam_label, lam in (("plain", 0.0), ("entropy", None)):
      row = []
      for policy in FLAGS.precisions:
        s = time_train_step(name, lam, policy, FLAGS.batch_size, FLAGS.patch_size,
                            FLAGS.scale, FLAGS.steps)
        row.append(f"{policy} {s:.3f} s/step")
      print(f"{name:8s} {lam_label:8s} " + " | ".join(row), flush=True)


if __name__ == "__main__":
  app.run(main)
