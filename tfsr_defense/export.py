"""Export a trained run as a TF-Serving SavedModel.

    python -m tfsr_defense.export --run_dir=runs/edsr_x4_cpu    # -> saved_models/edsr_x4_cpu/1
    python -m tfsr_defense.export --run_dir=runs/edsr_x4_cpu --output_dir=/models/edsr --version=2

Signatures: ``serving_default`` (uint8 -> uint8), ``sr_float`` (float32 [0,1])
and ``features`` (the regularized feature map); see tfsr_defense/serving.py.

A finished run exports its final weights (model.weights.h5); an interrupted
one (checkpoints, no final weights) its newest checkpoint. Non-finite weights
are refused.
"""

import os

from absl import flags

from tfsr_defense import cli, serving, trainer

FLAGS = flags.FlagValues()  # this CLI's own flags (cli.py)
flags.DEFINE_string("run_dir", None,
                    "Training run directory: config.json + model.weights.h5 (finished run) "
                    "or + ckpt/ (interrupted run: its newest checkpoint).", flag_values=FLAGS)
flags.DEFINE_string("output_dir", None, "Model base directory (default saved_models/<run name>).",
                    flag_values=FLAGS)
flags.DEFINE_integer("version", 1, "Numeric version sub-directory TF Serving loads.",
                     flag_values=FLAGS)
flags.mark_flag_as_required("run_dir", flag_values=FLAGS)
flags.register_validator("version", lambda v: v >= 1, "--version must be >= 1.", flag_values=FLAGS)


def export_run(run_dir, output_dir, version=1, log=None):
  """Rebuild the run's network in float32, load its weights, export it.

  The weights: ``model.weights.h5`` of a finished run, else the newest
  checkpoint in ``ckpt/`` (an interrupted run; ``trainer.latest_checkpoint``).

  Args:
    run_dir: training run directory (holds config.json).
    output_dir: model base directory; the SavedModel goes to <output_dir>/<version>.
    version: integer >= 1.
    log: fn(str) for warnings (e.g. a garbled checkpoint state file), or None.

  Returns:
    the SavedModel directory <output_dir>/<version>.

  Raises:
    FileNotFoundError: run_dir lacks config.json, or has neither final
      weights nor a checkpoint.
    trainer.CheckpointError: the weights do not fit the configured network,
      or are not finite.
  """
  config, model, source, step = trainer.load_run_model(run_dir, log=log)
  extra = {} if step is None else dict(step=step)
  export_dir = os.path.join(output_dir, str(version))
  return serving.export_saved_model(model, export_dir, metadata=trainer.export_metadata(
      config, run_dir=run_dir, weights=source, **extra))


def main(argv):
  del argv  # cli.run refuses positional arguments
  output_dir = FLAGS.output_dir or os.path.join(
      "saved_models", os.path.basename(os.path.normpath(FLAGS.run_dir)))
  path = export_run(FLAGS.run_dir, output_dir, FLAGS.version, log=print)
  print(f"SavedModel written to {path}")


def run(argv=None):
  """Console entry point ``tfsr-export``."""
  cli.run(main, FLAGS, prog="tfsr_defense.export", doc=__doc__, argv=argv,
          errors=(ValueError, FileNotFoundError, trainer.CheckpointError))


if __name__ == "__main__":
  run()
