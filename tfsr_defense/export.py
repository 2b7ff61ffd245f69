"""Export a trained run as a TF-Serving SavedModel.

    python -m tfsr_defense.export --run_dir=runs/edsr_x4_cpu                 # -> saved_models/edsr_x4_cpu/1
    python -m tfsr_defense.export --run_dir=runs/edsr_x4_cpu --output_dir=/models/edsr --version=2

Signatures: ``serving_default`` (uint8 -> uint8), ``sr_float`` (float32 [0,1])
and ``features`` (the regularized feature map); see tfsr_defense/serving.py.
"""

import json
import os

from absl import flags

from tfsr_defense import cli, serving, trainer

FLAGS = flags.FlagValues()  # this CLI's own flags (cli.py)
flags.DEFINE_string("run_dir", None,
                    "Finished training run directory (config.json + model.weights.h5).",
                    flag_values=FLAGS)
flags.DEFINE_string("output_dir", None, "Model base directory (default saved_models/<run name>).",
                    flag_values=FLAGS)
flags.DEFINE_integer("version", 1, "Numeric version sub-directory TF Serving loads.",
                     flag_values=FLAGS)
flags.mark_flag_as_required("run_dir", flag_values=FLAGS)
flags.register_validator("version", lambda v: v >= 1, "--version must be >= 1.", flag_values=FLAGS)


def export_run(run_dir, output_dir, version=1):
  """Rebuild the run's network in float32, load its final weights, export it.

  Returns:
    the SavedModel directory <output_dir>/<version>.

  Raises:
    FileNotFoundError: run_dir lacks config.json or model.weights.h5.
    trainer.CheckpointError: the weights do not fit the configured network.
  """
  config_path = os.path.join(run_dir, "config.json")
  weights_path = os.path.join(run_dir, "model.weights.h5")
  for path in (config_path, weights_path):
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path} not found: is {run_dir} a finished training run?")
  with open(config_path, encoding="utf-8") as f:
    saved = json.load(f)
  fields = set(trainer.TrainConfig.__dataclass_fields__)
  config = trainer.TrainConfig(**{k: v for k, v in saved.items() if k in fields})
  model = trainer.build_for_inference(config)
  try:
    model.load_weights(weights_path)
  except Exception as e:  # pylint: disable=broad-except
    raise trainer.CheckpointError(f"Cannot load {weights_path} into {config.model}: {e}") from e
  export_dir = os.path.join(output_dir, str(version))
  return serving.export_saved_model(model, export_dir, metadata=dict(
      model=config.model, scale=config.scale, entropy_weight=config.lam, delta=config.delta,
      noise=config.noise, estimate_entropy=config.estimate_entropy, run_dir=run_dir))


def main(argv):
  del argv  # cli.run refuses positional arguments
  output_dir = FLAGS.output_dir or os.path.join(
      "saved_models", os.path.basename(os.path.normpath(FLAGS.run_dir)))
  path = export_run(FLAGS.run_dir, output_dir, FLAGS.version)
  print(f"SavedModel written to {path}")


def run(argv=None):
  """Console entry point ``tfsr-export``."""
  cli.run(main, FLAGS, prog="tfsr_defense.export", doc=__doc__, argv=argv,
          errors=(ValueError, FileNotFoundError, trainer.CheckpointError))


if __name__ == "__main__":
  run()
