"""Attack exported SR networks, compute CLEVER, and write a report.

    python -m tfsr_defense.evaluate --models=runs/a,runs/b --datasets=set5 \\
        --attacks=fda,ifgsm --eps=1,2,4 --steps=50 --clever --max_images=2 \\
        --report_dir=results/x

--models takes run directories (their export/1 SavedModel) or SavedModel
directories; --eps is in units of 1/255. The report (rows.jsonl / rows.csv
per image, summary.json / summary.csv / summary.md, examples/, plots/) goes to
--report_dir; re-running the same command resumes there, skipping finished
cells. Bad input (missing model, SavedModel without the 'sr_float' signature,
FDA without a 'features' signature, unknown dataset or attack) prints one
error line and exits with status 2.
"""

import sys

from absl import flags

from tfsr_defense import attacks, cli, data, evaluation

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
flags.DEFINE_integer("steps", 50, "Iterations of the iterative attacks (paper: 50).",
                     flag_values=FLAGS)
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


def _eps_values(values):
  out = []
  for v in values:
    try:
      out.append(float(v) / 255.0)
    except ValueError:
      raise ValueError(f"--eps takes numbers in units of 1/255 (e.g. 1,2,4); got {v!r}.") from None
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
  sr_models = [evaluation.load_sr_model(p, name=n) for p, n in zip(FLAGS.models, names)]
  by_scale = {}
  for m in sr_models:
    by_scale.setdefault(m.scale, []).append(m)
  # Load and check every dataset and model before the (long) computation.
  jobs = []
  for scale, group in sorted(by_scale.items()):
    datasets = {name: data.load_pairs(name, scale, data_dir=FLAGS.data_dir,
                                      max_images=FLAGS.max_images) for name in FLAGS.datasets}
    evaluation.check_request(group, datasets, FLAGS.attacks, eps, FLAGS.steps)
    jobs.append((group, datasets))
  result = None
  for group, datasets in jobs:
    result = evaluation.evaluate(
        group, datasets, FLAGS.report_dir, attacks=FLAGS.attacks, eps=eps, steps=FLAGS.steps,
        clever=FLAGS.clever, clever_samples=FLAGS.clever_samples,
        clever_batch=FLAGS.clever_batch, clever_weibull=FLAGS.clever_weibull, seed=FLAGS.seed,
        num_examples=FLAGS.examples, progress=True, plots=FLAGS.plots)
  return result


def main(argv):
  del argv  # cli.run refuses positional arguments
  try:
    result = run_from_flags()
  except KeyboardInterrupt:
    print("Interrupted: finished cells are saved; re-run the same command to resume.",
          file=sys.stderr)
    raise
  print(f"{result['computed']} cells computed, {result['skipped']} already done. "
        f"Report: {result['report_dir']}/{evaluation.MARKDOWN_FILE}")


def run(argv=None):
  """Console entry point ``tfsr-evaluate``."""
  cli.run(main, FLAGS, prog="tfsr_defense.evaluate", doc=__doc__, argv=argv)


if __name__ == "__main__":
  run()
