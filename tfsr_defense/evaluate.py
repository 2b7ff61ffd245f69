"""Attack exported SR networks, compute CLEVER, and write a report.

    python -m tfsr_defense.evaluate --models=runs/a,runs/b --datasets=set5 \\
        --attacks=fda,ifgsm --eps=1,2,4 --steps=50 --clever --max_images=2 \\
        --report_dir=results/x

--models takes run directories (their export/1 SavedModel, or their Keras
network when they have no export) or SavedModel directories; --eps is in units
of 1/255. --defenses=jpeg:75,resize:0.9-1.1
puts input pre-processing in front (both threat models) and
--precision=mixed_bfloat16 computes the gradients in bfloat16: both use the
Keras network of a training run directory. The report (rows.jsonl / rows.csv
per image, summary.json / summary.csv / summary.md, examples/, plots/) goes to
--report_dir; re-running the same command resumes there, skipping finished
cells. Bad input (missing model, SavedModel without the 'sr_float' signature,
FDA without a 'features' signature, unknown dataset or attack) prints one
error line and exits with status 2.
"""

import os

from absl import flags

from tfsr_defense import (attacks, cli, data, defenses, evaluation, precision, reports, serving,
                          trainer)

FLAGS = flags.FlagValues()  # this CLI's own flags (cli.py)

flags.DEFINE_list("models", None, "Run directories or SavedModel directories (comma-separated).",
                  flag_values=FLAGS)
flags.DEFINE_list("names", None, "Report names of the models (default: run directory names).",
                  flag_values=FLAGS)
flags.DEFINE_list("datasets", ["set5"], "Datasets: set5, set14, bsd100 (under --data_dir), "
                  "embedded_val, or folders.", flag_values=FLAGS)
flags.DEFINE_string("data_dir", None, f"Data directory (default ${data.DATA_DIR_ENV}).",
                    flag_values=FLAGS)
flags.DEFINE_integer("max_images", None, "Evaluate the first N images of each dataset only.",
                     flag_values=FLAGS)
flags.DEFINE_list("attacks", ["fda", "ifgsm"], f"Attacks: {', '.join(attacks.known_attacks())}.",
                  flag_values=FLAGS)
flags.DEFINE_list("eps", ["1", "2", "4", "8", "16", "32"],
                  "L-inf radii in units of 1/255 (the paper's 1,2,4,8,16,32).", flag_values=FLAGS)
flags.DEFINE_integer("steps", 50, "Iterations of the iterative SR attacks: I-FGSM, PGD, "
                     "MI-FGSM (paper: 50).", flag_values=FLAGS)
flags.DEFINE_string("fda_layers", "relu",
                    "FDA's feature maps: relu (every activation layer + the regularized "
                    "'features' map: the official FDA), features (that map only), or "
                    "comma-separated layer names (Keras models).", flag_values=FLAGS)
flags.DEFINE_integer("fda_steps", attacks.fda.DEFAULT_STEPS,
                     "FDA iterations (official FDA: 10).", flag_values=FLAGS)
flags.DEFINE_float("fda_step_size", attacks.fda.STEP_FRACTION,
                   "FDA step size as a fraction of eps (official FDA: 1/8 = 0.125).",
                   flag_values=FLAGS)
flags.DEFINE_float("fda_random_start", 1.0,
                   "Radius of FDA's uniform random start as a fraction of eps (official FDA: 1, "
                   "the whole ball; 0 starts at x).", flag_values=FLAGS)
flags.DEFINE_enum("ifgsm_target", "clean_sr", ("clean_sr", "hr"),
                  "I-FGSM pushes S(x~) away from the clean output S(x) (the paper; random start) "
                  "or from HR (tf-sr-attack's HR-target variant).", flag_values=FLAGS)
flags.DEFINE_enum("precision", "float32", attacks.engine.ATTACK_PRECISIONS,
                  "Precision of the attack and CLEVER gradients: mixed_bfloat16 runs them "
                  "on a bfloat16 copy (faster on CPUs with AVX512-BF16; needs training run "
                  "directories in --models); PSNRs are always measured in float32.",
                  flag_values=FLAGS)
flags.DEFINE_list("defenses", ["none"],
                  "Input pre-processing in front of every model (tfsr_defense.defenses): none, "
                  "jpeg:<quality>, resize:<lo>-<hi>[:bilinear|nearest|bicubic]. Other than none "
                  "needs training run directories in --models.", flag_values=FLAGS)
flags.DEFINE_list("threat_models", list(defenses.THREAT_MODELS),
                  "Threat models of the defended models: non-adaptive (attack the bare "
                  "network) and/or adaptive (BPDA through JPEG, EOT through random resize).",
                  flag_values=FLAGS)
flags.DEFINE_integer("eot_samples", 8, "Draws averaged by the adaptive attack on a random "
                     "defense (expectation over transformation).", flag_values=FLAGS)
flags.DEFINE_bool("clever", False, "Also compute the CLEVER score (paper eq. 15).",
                  flag_values=FLAGS)
flags.DEFINE_integer("clever_samples", 1024, "CLEVER N_s (paper: 1024).", flag_values=FLAGS)
flags.DEFINE_integer("clever_batch", 16, "Perturbed copies per CLEVER gradient call "
                     "(memory: ~150 MB each for EDSR-baseline on a 120x80 image).",
                     flag_values=FLAGS)
flags.DEFINE_bool("clever_weibull", False, "Add the reverse-Weibull CLEVER estimate.",
                  flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "Base random seed.", flag_values=FLAGS)
flags.DEFINE_integer("examples", 1,
                     "Images per model and dataset whose outputs are saved for the figures.",
                     flag_values=FLAGS)
flags.DEFINE_bool("plots", True, "Draw the figures into <report_dir>/plots.", flag_values=FLAGS)
flags.DEFINE_string("report_dir", None, "Output directory (resumable).", flag_values=FLAGS)
flags.DEFINE_string("adversarial_dir", None,
                    "Cache the attacked LR images here (.npy per model, image and attack), so "
                    "that a network's non-adaptive views behind --defenses reuse its attacks "
                    "instead of recomputing them (default: no cache).", flag_values=FLAGS)


def _eps_values(values):
  """--eps (units of 1/255) -> [0, 1] units. Raises ValueError naming the flag's units."""
  out = []
  for v in values:
    try:
      e = float(v)
    except ValueError:
      raise ValueError(f"--eps takes numbers in units of 1/255 (e.g. 1,2,4); got {v!r}.") from None
    if not 0.0 <= e <= 255.0:
      raise ValueError(f"--eps is in units of 1/255 and must be in [0, 255]; got {v!r}.")
    out.append(e / 255.0)
  return out


def run_from_flags():
  """Load everything, validate, evaluate. Raises ValueError/FileNotFoundError on bad input."""
  if not FLAGS.models:
    raise ValueError("--models is required (run directories or SavedModel directories).")
  if not FLAGS.report_dir:
    raise ValueError("--report_dir is required.")
  if FLAGS.names and len(FLAGS.names) != len(FLAGS.models):
    raise ValueError(f"--names has {len(FLAGS.names)} entries for {len(FLAGS.models)} models.")
  for name in FLAGS.attacks:
    attacks.get_spec(name)
  eps = _eps_values(FLAGS.eps)
  names = FLAGS.names or [None] * len(FLAGS.models)
  for spec in FLAGS.defenses:
    defenses.parse_defense(spec)
  for threat in FLAGS.threat_models:
    if threat not in defenses.THREAT_MODELS:
      raise ValueError(f"Unknown threat model {threat!r}: use "
                       f"{', '.join(defenses.THREAT_MODELS)}.")
  if FLAGS.precision == "mixed_bfloat16":
    precision.check_bf16_kernels()  # before any work: one error, nothing half-written
  keras = FLAGS.precision != "float32" or any(spec != "none" for spec in FLAGS.defenses)
  sr_models = []
  for path, name in zip(FLAGS.models, names):
    # A run directory without an exported SavedModel is evaluated through its Keras network.
    run_without_export = (os.path.isfile(os.path.join(path, "config.json"))
                          and not os.path.isdir(os.path.join(path, "export")))
    if not keras and not run_without_export:
      sr_models.append(serving.load_sr_model(path, name=name))
      continue
    if not os.path.isfile(os.path.join(path, "config.json")):
      raise FileNotFoundError(
          f"--precision={FLAGS.precision} / --defenses={','.join(FLAGS.defenses)} need the Keras "
          f"network of a training run directory (config.json + weights); {path} is not one.")
    config, net, _, _ = trainer.load_run_model(path)
    base = name or os.path.basename(os.path.normpath(path))
    for spec in FLAGS.defenses:
      label = base if spec == "none" else f"{base} + {spec}"
      sr_models += defenses.defended_sr_models(
          net, spec, name=label, scale=config.scale, threat_models=FLAGS.threat_models,
          eot_samples=FLAGS.eot_samples).values()
  by_scale = {}
  for m in sr_models:
    by_scale.setdefault(m.scale, []).append(m)
  # Load and check every dataset and model before the (long) computation.
  jobs = []
  for scale, group in sorted(by_scale.items()):
    datasets = {name: data.load_pairs(name, scale, data_dir=FLAGS.data_dir,
                                      max_images=FLAGS.max_images) for name in FLAGS.datasets}
    evaluation.check_request(group, datasets, FLAGS.attacks, eps, FLAGS.steps, FLAGS.precision,
                             **_fda_options())
    jobs.append((group, datasets))
  result = None
  for group, datasets in jobs:
    result = evaluation.evaluate(
        group, datasets, FLAGS.report_dir, attacks=FLAGS.attacks, eps=eps, steps=FLAGS.steps,
        clever=FLAGS.clever, clever_samples=FLAGS.clever_samples,
        clever_batch=FLAGS.clever_batch, clever_weibull=FLAGS.clever_weibull, seed=FLAGS.seed,
        precision=FLAGS.precision, num_examples=FLAGS.examples, progress=True, plots=FLAGS.plots,
        adversarial_dir=FLAGS.adversarial_dir or None, **_fda_options())
  return result


def _fda_options():
  return dict(fda_layers=FLAGS.fda_layers, fda_steps=FLAGS.fda_steps,
              fda_step_fraction=FLAGS.fda_step_size, fda_random_start=FLAGS.fda_random_start,
              ifgsm_target=FLAGS.ifgsm_target)


def main(argv):
  del argv  # cli.run refuses positional arguments
  cli.run_report(run_from_flags, reports.MARKDOWN_FILE)


def run(argv=None):
  """Console entry point ``tfsr-evaluate``."""
  cli.run(main, FLAGS, prog="tfsr_defense.evaluate", doc=__doc__, argv=argv,
          errors=(ValueError, FileNotFoundError, trainer.CheckpointError))


if __name__ == "__main__":
  run()
