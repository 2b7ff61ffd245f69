"""Does bf16 training cost quality? The study recipe trained twice from the same
initialisation and batches, float32 and mixed_bfloat16, then Set5 PSNR-Y.

    TFSR_DATA_DIR=../shared/data taskset -c 1 python benchmarks/precision_quality.py  # 1000 steps
    TFSR_DATA_DIR=../shared/data python benchmarks/precision_quality.py --steps=20 \\
        --run_root=/tmp/precision_quality                                             # a quick look

Both runs use the recipe of the paper's studies (``flags/experiments/edsr_x4_study.cfg``:
EDSR-baseline x4 + regularizer, T91 + BSD200, LR patch 32, batch 16; with
--steps the learning-rate boundaries scale as in the experiment runner) and
the same seed, hence the same initial weights (float32 variables under both
policies) and the same patches in the same order; only the Keras policy
differs. Runs are ordinary training runs in ``<run_root>/<precision>``:
an interrupted benchmark resumes them, a finished one is not retrained.

Prints per precision Set5 PSNR-Y / SSIM-Y after the last step, the mean
training-step time, and the PSNR difference (goal, issue 14: |difference|
<= 0.05 dB at >= 1000 steps; the studies train in bf16). One seed: the
difference includes the run-to-run spread a different rounding alone causes.
"""

import dataclasses
import os

from absl import app, flags

from tfsr_defense import experiment, trainer

import machine  # benchmarks/machine.py: the command and machine header

flags.DEFINE_string("recipe", experiment.DEFAULT_RECIPE, "Recipe flag file.")
flags.DEFINE_integer("steps", 1000, "Training steps per precision.")
flags.DEFINE_string("run_root", "runs/precision_quality", "Parent of the two run directories.")
flags.DEFINE_string("data_dir", None, "Data directory (default: $TFSR_DATA_DIR).")
flags.DEFINE_list("precisions", ["float32", "mixed_bfloat16"], "Policies compared.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  machine.print_header()
  recipe = experiment.load_recipe(FLAGS.recipe, FLAGS.steps, FLAGS.data_dir)
  results = {}
  for prec in FLAGS.precisions:
    config = dataclasses.replace(recipe, precision=prec,
                                 run_dir=os.path.join(FLAGS.run_root, prec))
    config.validate()
    results[prec] = trainer.train(config, log=lambda line: print(line, flush=True))
  print(f"{recipe.model} x{recipe.scale}, lambda={recipe.lam}, {FLAGS.steps} steps of batch "
        f"{recipe.batch_size} (LR patch {recipe.patch_size}), seed {recipe.seed}, eval "
        f"{recipe.eval_data}:")
  for prec, r in results.items():
    print(f"  {prec:15s} PSNR-Y {r['psnr_y']:.3f} dB  SSIM-Y {r['ssim_y']:.4f}  "
          f"{r['seconds_per_step']:.3f} s/step")
  if len(results) == 2:
    (a, ra), (b, rb) = results.items()
    print(f"  {b} - {a}: {rb['psnr_y'] - ra['psnr_y']:+.3f} dB PSNR-Y (goal |diff| <= 0.05 dB); "
          f"step time x{rb['seconds_per_step'] / ra['seconds_per_step']:.2f}", flush=True)


if __name__ == "__main__":
  app.run(main)
