"""Compare two evaluated networks image by image (paired differences; command line).

    python -m tfsr_defense.compare --report_dirs=results/fda_steps_check/steps_10 \
        --model=lambda10 --baseline=lambda0 --metrics=sr_psnr,lr_psnr

Reads the rows of one or more ``tfsr_defense.evaluate`` reports and prints, per
clean set, CLEVER, attack, dataset and eps, the mean difference model − baseline
over the images both have, its standard error and on how many images the model
is the higher (``comparison.compare_reports``): pairing removes the spread between
images. ``--output`` also writes the tables to a file.
"""

from absl import flags

from tfsr_defense import cli, comparison, fileio

FLAGS = flags.FlagValues()
flags.DEFINE_list("report_dirs", None, "Evaluation report directories (rows merged).",
                  flag_values=FLAGS)
flags.DEFINE_string("model", None, "Report name of the network compared.", flag_values=FLAGS)
flags.DEFINE_string("baseline", None, "Report name of the network it is compared with.",
                    flag_values=FLAGS)
flags.DEFINE_list("metrics", ["sr_psnr"], "Attack metrics compared: "
                  f"{', '.join(comparison.ATTACK_METRICS)}.", flag_values=FLAGS)
flags.DEFINE_string("output", None, "Also write the Markdown here.", flag_values=FLAGS)
for _name in ("report_dirs", "model", "baseline"):
  flags.mark_flag_as_required(_name, flag_values=FLAGS)


def main(argv):
  del argv
  text = comparison.compare_reports(FLAGS.report_dirs, FLAGS.model, FLAGS.baseline,
                                    tuple(FLAGS.metrics))
  print(text, end="")
  if FLAGS.output:
    fileio.atomic_write(FLAGS.output, text)


def run(argv=None):
  """Console entry point ``tfsr-compare``."""
  cli.run(main, FLAGS, prog="tfsr_defense.compare", doc=__doc__, argv=argv)


if __name__ == "__main__":
  run()
