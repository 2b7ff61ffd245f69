"""How many EOT draws does the adaptive attack on random resizing need? SR-PSNR and
time of I-FGSM through the defense with k = 1, 2, 8 draws per gradient.

    TFSR_DATA_DIR=../shared/data taskset -c 1 python benchmarks/eot_samples.py \\
        --run_dir=runs/experiments/edsr_lambda0          # the studies' plain network
    TFSR_DATA_DIR=../shared/data python benchmarks/eot_samples.py --run_dir=RUN \\
        --images=1 --eps=4 --eot_samples=1,2 --steps=2 --report_dir=/tmp/eot   # a quick look

The attacks go through ``evaluation.evaluate`` exactly as in the experiment
runner's pre-processing suite (``defenses.defended_sr_models``, adaptive
threat model: each I-FGSM gradient is taken through the mean output of k
random resize-and-pad draws). Each k is one report name, so the rows land in
one report and an interrupted run resumes. The spread of the smallest k between two
defense seeds (``--repeat_seed``: other draws in the attack and in the
defended outputs) says how large a difference between two k
has to be to mean anything. The suites use k = 8 (``defended_sr_models``'s
default), and it is what dominates their evaluation cost (the gradient costs
k times the bare network's): this measurement decides whether fewer draws
give the same attack.

Prints, per eps, the means over the images of the SR-PSNR (dB, between the
defended outputs of the clean and the attacked LR image, each a fresh draw of
the defense; lower = stronger attack) and of the attacked output's PSNR-Y
against HR (dB; no draw-to-draw floor), the clean PSNR-Y, and per k the
seconds of the attacks.
"""

import os
import time

from absl import app, flags

from tfsr_defense import data, defenses, evaluation, reports, trainer

import machine  # benchmarks/machine.py: the command and machine header

flags.DEFINE_string("run_dir", "runs/experiments/edsr_lambda0", "Training run of the network.")
flags.DEFINE_string("defense", "resize:0.9-1.1", "Random pre-processing defense spec.")
flags.DEFINE_list("eot_samples", ["1", "2", "8"], "k values compared.")
flags.DEFINE_integer("repeat_seed", 1, "Defense seed of a second run of the smallest k "
                     "(the seed-to-seed spread); negative: none.")
flags.DEFINE_list("eps", ["4", "8"], "L-inf radii in /255 units.")
flags.DEFINE_integer("steps", 50, "I-FGSM steps (paper: 50).")
flags.DEFINE_string("dataset", "bsd100", "Dataset attacked (its first --images images).")
flags.DEFINE_integer("images", 3, "Images attacked.")
flags.DEFINE_string("data_dir", None, "Data directory (default: $TFSR_DATA_DIR).")
flags.DEFINE_string("report_dir", "runs/benchmarks/eot_samples", "Report of the attacks "
                    "(resumable).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  machine.print_header()
  config, net, _, _ = trainer.load_run_model(FLAGS.run_dir)
  pairs = data.load_pairs(FLAGS.dataset, config.scale, data_dir=FLAGS.data_dir,
                          max_images=FLAGS.images)
  ks = [int(k) for k in FLAGS.eot_samples]
  eps = [float(e) / 255 for e in FLAGS.eps]
  runs = [(k, 0) for k in ks] + ([(min(ks), FLAGS.repeat_seed)] if FLAGS.repeat_seed >= 0
                                 else [])
  print(f"{config.model} x{config.scale} from {FLAGS.run_dir} behind {FLAGS.defense}; "
        f"I-FGSM {FLAGS.steps} steps, adaptive (EOT); {FLAGS.dataset} first {len(pairs)} "
        f"images; eps {', '.join(FLAGS.eps)}/255", flush=True)
  seconds = {}
  for k, seed in runs:
    label = f"k={k}" + (f" seed={seed}" if seed else "")
    models = defenses.defended_sr_models(net, FLAGS.defense, name=label, scale=config.scale,
                                         threat_models=("adaptive",), eot_samples=k,
                                         seed=seed)
    start = time.perf_counter()
    result = evaluation.evaluate(models, {FLAGS.dataset: pairs}, FLAGS.report_dir,
                                 attacks=("ifgsm",), eps=eps, steps=FLAGS.steps, plots=False,
                                 progress=True)
    seconds[label] = (time.perf_counter() - start, result["computed"])
  summary = reports.summarize(reports.read_rows(FLAGS.report_dir))
  table = {}
  for s in summary:
    label = s["model"].split(" [")[0]
    if s["kind"] == "clean":
      table.setdefault(label, {})["clean"] = s["psnr_y"]
    elif s["kind"] == "attack" and s["steps"] == FLAGS.steps:
      table.setdefault(label, {})[s["eps_255"]] = (s["sr_psnr"], s["adv_psnr_y"])
  print(f"means over {len(pairs)} images: SR-PSNR (dB, defended S(x) vs S(x~), each call a "
        "fresh draw) | PSNR-Y of S(x~) vs HR (dB; clean: S(x) vs HR); seconds of the attacks "
        "computed in this run")
  print("k".ljust(16) + "".join(f"{e + '/255':>16}" for e in FLAGS.eps) + f"{'clean':>8}"
        + "   seconds")
  nan = (float("nan"), float("nan"))
  for label, (secs, computed) in seconds.items():
    row = table.get(label, {})
    cells = "".join("{:>8.2f} |{:>6.2f}".format(*row.get(float(e), nan)) for e in FLAGS.eps)
    note = f"{secs:9.0f}" if computed else "   (resumed: none computed now)"
    print(f"{label:16s}{cells}{row.get('clean', float('nan')):>8.2f}   {note}", flush=True)
  print(f"report: {os.path.abspath(FLAGS.report_dir)}")


if __name__ == "__main__":
  app.run(main)
