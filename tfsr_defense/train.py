"""Train an SR network with the entropy regularizer.

    python -m tfsr_defense.train --model=edsr                       # short run, embedded photos
    python -m tfsr_defense.train --flagfile=flags/edsr_x4_cpu.cfg   # CPU recipe on T91 + BSD200
    python -m tfsr_defense.train --flagfile=flags/edsr_x4.cfg       # the paper's recipe (DIV2K)

Interrupt and re-run the same command to resume from the last checkpoint.
"""

import dataclasses
import math
import os

from absl import flags

from tfsr_defense import adversarial_training, cli, data, gan, models, precision, trainer
from tfsr_defense.models import registry

FLAGS = flags.FlagValues()  # this CLI's own flags (cli.py)
_D = trainer.TrainConfig()

flags.DEFINE_string("model", _D.model, f"Network: one of {', '.join(models.known_models())}.",
                    flag_values=FLAGS)
flags.DEFINE_integer("scale", _D.scale, "SR scale (2, 3 or 4).", flag_values=FLAGS)
flags.DEFINE_float("entropy_weight", None,
                   "lambda of eq. 2 (>= 0). Default: the paper's value for the model "
                   "(1 for EDSR). 0 trains the plain network.", flag_values=FLAGS)
flags.DEFINE_float("delta", _D.delta, "Bin width delta of eq. 11 (> 0).", flag_values=FLAGS)
flags.DEFINE_bool("noise", _D.noise, "Uniform noise on the features in training (eq. 12).",
                  flag_values=FLAGS)
flags.DEFINE_bool("estimate_entropy", _D.estimate_entropy,
                  "Probability estimation + entropy loss (eqs. 1, 11).", flag_values=FLAGS)
flags.DEFINE_enum("entropy_layer", _D.entropy_layer, registry.ENTROPY_LAYERS,
                  "Where the regularizer sits (paper sec. 5.4): pre_upsampler = the last "
                  "feature map before the upsampler (the paper's default), first = the output "
                  "of the first convolution (the head).", flag_values=FLAGS)
flags.DEFINE_enum("adversarial", _D.adversarial, adversarial_training.METHODS,
                  "Adversarial training (paper sec. 5.6): ifgsm = every step trains on the "
                  "I-FGSM-attacked LR batch, against the same HR.", flag_values=FLAGS)
flags.DEFINE_float("adv_eps", _D.adv_eps * 255.0,
                   "Adversarial training: alpha, the L-inf radius in /255 units (8 = 8/255 of "
                   "the [0,1] range; the unit of evaluate's --eps).", flag_values=FLAGS)
flags.DEFINE_integer("adv_steps", _D.adv_steps, "Adversarial training: I-FGSM steps T (step "
                     "alpha/T).", flag_values=FLAGS)
flags.DEFINE_bool("adv_mix", _D.adv_mix, "Adversarial training: train on the clean and the "
                  "attacked batch together (2x batch) instead of the attacked one.",
                  flag_values=FLAGS)
flags.DEFINE_enum("adv_objective", _D.adv_objective, adversarial_training.OBJECTIVES,
                  "Adversarial training: what I-FGSM maximises: loss = the training "
                  "reconstruction loss against HR (default: has a gradient at the clean input); "
                  "sr_distance = ||S(x~) - S(x)||_2 from a random start (the paper's attack).",
                  flag_values=FLAGS)
flags.DEFINE_string("train_data", _D.train_data,
                    "Comma-separated datasets: embedded (scikit-image photos, no download), "
                    "t91, bsd200, set5, ... (under --data_dir), folders of HR images, or div2k "
                    "(tensorflow-datasets, needs the internet once).", flag_values=FLAGS)
flags.DEFINE_string("eval_data", _D.eval_data, "Validation set (name or folder); '' for none.",
                    flag_values=FLAGS)
flags.DEFINE_string("data_dir", None,
                    f"Data directory for dataset names (default ${data.DATA_DIR_ENV}).",
                    flag_values=FLAGS)
flags.DEFINE_integer("max_train_images", None, "Use only the first N images of each training set.",
                     flag_values=FLAGS)
flags.DEFINE_integer("eval_max_images", None, "Validate on the first N images only.",
                     flag_values=FLAGS)
flags.DEFINE_integer("patch_size", _D.patch_size, "LR patch side in pixels (>= 1).",
                     flag_values=FLAGS)
flags.DEFINE_integer("batch_size", _D.batch_size, "Global batch size.", flag_values=FLAGS)
flags.DEFINE_integer("steps", _D.steps, "Total training steps.", flag_values=FLAGS)
flags.DEFINE_float("learning_rate", _D.learning_rate, "Initial Adam learning rate.",
                   flag_values=FLAGS)
flags.DEFINE_integer("lr_decay_steps", _D.lr_decay_steps,
                     "Halve (x lr_decay_factor) every N steps.", flag_values=FLAGS)
flags.DEFINE_float("lr_decay_factor", _D.lr_decay_factor, "Learning-rate decay factor.",
                   flag_values=FLAGS)
flags.DEFINE_list("lr_boundaries", None, "Piecewise-constant learning rate: the steps where it "
                  "changes (overrides --learning_rate and the decay flags).", flag_values=FLAGS)
flags.DEFINE_list("lr_values", None, "The len(--lr_boundaries) + 1 learning rates.",
                  flag_values=FLAGS)
flags.DEFINE_float("clip_norm", _D.clip_norm, "Global gradient-norm clip (0: none; CARN: 10).",
                   flag_values=FLAGS)
flags.DEFINE_enum("precision", _D.precision, precision.TRAIN_PRECISIONS,
                  "auto: bf16 on AMX/AVX512-BF16 CPUs, fp16 (loss scaling) on GPUs, else float32.",
                  flag_values=FLAGS)
flags.DEFINE_enum("strategy", _D.strategy, precision.STRATEGIES,
                  "tf.distribute strategy; auto: MultiWorkerMirrored with a multi-worker "
                  "TF_CONFIG, Mirrored with several GPUs, else default.", flag_values=FLAGS)
flags.DEFINE_string("run_dir", None, "Run directory (default runs/<model>_x<scale>).",
                    flag_values=FLAGS)
flags.DEFINE_integer("checkpoint_every", _D.checkpoint_every, "Checkpoint every N steps.",
                     flag_values=FLAGS)
flags.DEFINE_integer("eval_every", _D.eval_every, "Validate every N steps (0: at the end only).",
                     flag_values=FLAGS)
flags.DEFINE_integer("log_every", _D.log_every, "TensorBoard/progress update every N steps.",
                     flag_values=FLAGS)
flags.DEFINE_integer("seed", _D.seed, "Random seed.", flag_values=FLAGS)
flags.DEFINE_string("init_from", None, "Start from the weights of a finished run directory "
                    "(or a .weights.h5 file); ignored when resuming.", flag_values=FLAGS)
flags.DEFINE_string("vgg_weights", _D.vgg_weights,
                    "SRGAN content loss: path of Keras' VGG19 no-top weights .h5, or 'imagenet' "
                    "(downloaded once where the internet is).", flag_values=FLAGS)
flags.DEFINE_bool("export", _D.export, "Export a SavedModel to <run_dir>/export/1 at the end.",
                  flag_values=FLAGS)

flags.register_validator("entropy_weight", lambda v: v is None or (math.isfinite(v) and v >= 0),
                         "--entropy_weight (lambda) must be >= 0 and finite.", flag_values=FLAGS)
flags.register_validator("delta", lambda v: math.isfinite(v) and v > 0,
                         "--delta must be > 0 and finite.", flag_values=FLAGS)
flags.register_validator("learning_rate", lambda v: math.isfinite(v) and v > 0,
                         "--learning_rate must be > 0 and finite.", flag_values=FLAGS)
flags.register_validator("lr_decay_factor", lambda v: math.isfinite(v) and v > 0,
                         "--lr_decay_factor must be > 0 and finite.", flag_values=FLAGS)
flags.register_validator("clip_norm", lambda v: math.isfinite(v) and v >= 0,
                         "--clip_norm must be >= 0 and finite.", flag_values=FLAGS)
flags.register_validator("adv_eps", lambda v: math.isfinite(v) and 0 < v <= 255,
                         "--adv_eps must be in (0, 255] (/255 units) and finite.",
                         flag_values=FLAGS)
flags.register_validator("adv_steps", lambda v: v >= 1, "--adv_steps must be >= 1.",
                         flag_values=FLAGS)
flags.register_validator("patch_size", lambda v: v >= 1, "--patch_size must be >= 1.",
                         flag_values=FLAGS)
flags.register_validator("batch_size", lambda v: v >= 1, "--batch_size must be >= 1.",
                         flag_values=FLAGS)
flags.register_validator("steps", lambda v: v >= 1, "--steps must be >= 1.", flag_values=FLAGS)
flags.register_validator("scale", lambda v: v in (2, 3, 4), "--scale must be 2, 3 or 4.",
                         flag_values=FLAGS)


def config_from_flags():
  """TrainConfig from the parsed flags (the only place that reads FLAGS)."""
  fields = {f.name for f in dataclasses.fields(trainer.TrainConfig)}
  values = {name: FLAGS[name].value for name in fields if name in FLAGS}
  if values["lr_boundaries"]:
    try:
      values["lr_boundaries"] = [int(b) for b in values["lr_boundaries"]]
      values["lr_values"] = [float(v) for v in values["lr_values"] or []]
    except ValueError as e:
      raise ValueError(f"--lr_boundaries takes integers, --lr_values numbers: {e}") from None
    if not all(math.isfinite(v) and v > 0 for v in values["lr_values"]):
      raise ValueError(f"--lr_values must be > 0 and finite, got {values['lr_values']}.")
  values["adv_eps"] = values["adv_eps"] / 255.0  # flag: /255 units; TrainConfig: [0,1] units
  if values["run_dir"] is None:
    values["run_dir"] = os.path.join("runs", f"{FLAGS.model}_x{FLAGS.scale}")
  return trainer.TrainConfig(**values)


def flags_text(config):
  """The effective flags of ``config`` as flag-file lines (run_dir/flags.txt)."""
  return "".join(FLAGS[name].serialize() + "\n" for name in sorted(dataclasses.asdict(config))
                 if name in FLAGS and FLAGS[name].value is not None)


def main(argv):
  del argv  # cli.run refuses positional arguments
  config = config_from_flags()
  # flags.txt and config.json are written by the trainer once every check passed.
  trainer.train(config, flags_text=flags_text(config))


def run(argv=None):
  """Console entry point ``tfsr-train``."""
  cli.run(main, FLAGS, prog="tfsr_defense.train", doc=__doc__, argv=argv,
          errors=(ValueError, FileNotFoundError, trainer.CheckpointError,
                  trainer.NonFiniteLossError, gan.VGGWeightsError))


if __name__ == "__main__":
  run()
