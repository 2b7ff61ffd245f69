"""SR purification as a classifier defense (Mustafa et al., IEEE TIP 2019): attack and report.

    python -m tfsr_defense.evaluate_classifier \\
        --classifier=../shared/data/classifiers/efficientnet_lite0_imagenet.h5 \\
        --input_size=224 --value_range=0-255 --data=nips2017dev --max_images=500 \\
        --sr_models=mustafa=results/edsr_x2_cpu/plain,mustafa_er=results/edsr_x2_cpu/entropy \\
        --defenses=none,mustafa,mustafa_er --attacks=fgsm,ifgsm,mifgsm,deepfool,cw \\
        --eps=1,2,4,8,16 --threat_models=graybox,adaptive \\
        --report_dir=results/classifier_defense

--classifier takes a Keras model file / SavedModel directory (with
--input_size and --value_range) or a keras.applications name (inception_v3,
..., ImageNet weights: needs the internet). --sr_models names SR networks
(run directories: their exported SavedModel, else their Keras network and
final weights, as the committed results/edsr_x2_cpu/{plain,entropy};
SavedModel directories; or 'bicubic' for a bicubic x2 stand-in); --defenses
takes none, jpeg (JPEG only), wavelet (denoising + JPEG) and those names
(the full purifier: wavelet denoising, JPEG, SR x2, resize back). --eps is
in units of 1/255. Images are resized to the classifier's input size first;
attacks and purification work there.

Threat models: graybox (the paper's: the attack sees the classifier only;
the adversarial image is purified afterwards) and adaptive (the attack
differentiates classifier(purifier(.)): BPDA through denoising / JPEG, true
gradients through SR); --adaptive_max_images and --adaptive_attacks limit the
(expensive) adaptive attacks to the first N images and to some attacks.

The report (rows.jsonl / rows.csv per image, summary.json / summary.csv /
summary.md, examples/, plots/) goes to --report_dir; re-running the same
command resumes there, skipping finished cells. Bad input (classifier whose
input size or value range does not match the flags, an image folder without
labels, unknown attack / defense / threat model, missing SR model) prints one
error line and exits with status 2.
"""

import os

from absl import flags

from tfsr_defense import classifier_attacks, classifier_evaluation, classifiers, cli
from tfsr_defense.defenses import purifier

FLAGS = flags.FlagValues()  # this CLI's own flags (cli.py)

flags.DEFINE_string("classifier", None, "Keras classifier: .h5 / .keras / SavedModel path, or a "
                    f"keras.applications name ({', '.join(sorted(classifiers.KERAS_APPLICATIONS))}"
                    "; needs the internet).", flag_values=FLAGS)
flags.DEFINE_integer("input_size", None, "The classifier's input size in pixels (square); "
                     "default for keras.applications names.", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_enum("value_range", None, list(classifiers.VALUE_RANGES),
                  "Pixel values the classifier expects; default for keras.applications names.",
                  flag_values=FLAGS)
flags.DEFINE_string("classifier_name", None, "Report name of the classifier (default: its file "
                    "name without extension).", flag_values=FLAGS)
flags.DEFINE_string("data", classifiers.NIPS2017DEV, "Labelled images: 'nips2017dev' (under "
                    "--data_dir) or a folder with images.csv (ImageId, TrueLabel 1-based).",
                    flag_values=FLAGS)
flags.DEFINE_string("data_dir", None, "Data directory (default $TFSR_DATA_DIR).",
                    flag_values=FLAGS)
flags.DEFINE_integer("max_images", None, "Evaluate the first N images only.", lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_integer("adaptive_max_images", None, "Attack adaptively only the first N images "
                     "(default: all).", lower_bound=0, flag_values=FLAGS)
flags.DEFINE_list("adaptive_attacks", None, "Attacks run adaptively (default: all of --attacks; "
                  "DeepFool and C&W through an SR network cost ~10-100 gradients each).",
                  flag_values=FLAGS)
flags.DEFINE_list("sr_models", [], "SR networks as name=path (run directory: its exported "
                  "SavedModel, else its Keras network and weights, e.g. results/edsr_x2_cpu/plain; "
                  "SavedModel directory; or 'bicubic' for a bicubic x2 stand-in).",
                  flag_values=FLAGS)
flags.DEFINE_list("defenses", None, "Defenses: none, jpeg, wavelet, and the --sr_models names "
                  "(default: none and every SR model).", flag_values=FLAGS)
flags.DEFINE_list("attacks", list(classifier_attacks.ATTACKS),
                  f"Attacks: {', '.join(classifier_attacks.ATTACKS)}.", flag_values=FLAGS)
flags.DEFINE_list("eps", ["1", "2", "4", "8", "16"], "L-inf radii of fgsm / ifgsm / mifgsm in "
                  "units of 1/255.", flag_values=FLAGS)
flags.DEFINE_list("threat_models", list(classifier_evaluation.THREAT_MODELS),
                  "Threat models: graybox (the paper's), adaptive (BPDA white-box).",
                  flag_values=FLAGS)
flags.DEFINE_integer("steps", 10, "Iterations of I-FGSM and MI-FGSM (step eps/steps).",
                     lower_bound=1, flag_values=FLAGS)
flags.DEFINE_float("mifgsm_decay", 1.0, "MI-FGSM momentum.", lower_bound=0.0, flag_values=FLAGS)
flags.DEFINE_integer("deepfool_max_iter", 50, "DeepFool iterations.", lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_float("deepfool_overshoot", 0.02, "DeepFool overshoot.", lower_bound=0.0,
                   flag_values=FLAGS)
flags.DEFINE_integer("deepfool_nb_grads", 10, "DeepFool: classes considered (top ones).",
                     lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("cw_max_iter", 10, "C&W-L2 iterations per binary-search step.",
                     lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("cw_binary_search_steps", 5, "C&W-L2 binary-search steps.", lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_float("cw_learning_rate", 0.01, "C&W-L2 learning rate.", lower_bound=0.0,
                   flag_values=FLAGS)
flags.DEFINE_float("cw_initial_const", 0.01, "C&W-L2 initial constant c.", lower_bound=0.0,
                   flag_values=FLAGS)
flags.DEFINE_float("cw_confidence", 0.0, "C&W-L2 confidence (kappa).", lower_bound=0.0,
                   flag_values=FLAGS)
flags.DEFINE_float("denoise_sigma", purifier.DEFAULT_SIGMA, "Wavelet-denoising sigma (the "
                   "authors': 0.04).", lower_bound=0.0, flag_values=FLAGS)
flags.DEFINE_string("wavelet", purifier.DEFAULT_WAVELET, "Wavelet (scikit-image's default "
                    "'db1' = Haar, as in the authors' code).", flag_values=FLAGS)
flags.DEFINE_enum("sigma_convention", "skimage0.14", list(purifier.SIGMA_CONVENTIONS),
                  "What sigma means: skimage0.14 (the authors': per normalised YCbCr channel) "
                  "or rgb (current scikit-image's rescale_sigma=True).", flag_values=FLAGS)
flags.DEFINE_integer("jpeg_quality", purifier.DEFAULT_JPEG_QUALITY, "JPEG quality between "
                     "denoising and SR (the authors' matplotlib saved at 95); 0: no JPEG.",
                     lower_bound=0, upper_bound=100, flag_values=FLAGS)
flags.DEFINE_enum("resize_method", "bilinear", list(purifier.RESIZE_METHODS),
                  "Resampling of the images to the classifier's input and of the SR output "
                  "back to it (antialiased).", flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "Base random seed.", flag_values=FLAGS)
flags.DEFINE_integer("examples", 1, "Images whose clean / attacked / purified images are saved "
                     "for the figures.", lower_bound=0, flag_values=FLAGS)
flags.DEFINE_float("example_eps", 8.0, "eps (/255) of the example figures.", flag_values=FLAGS)
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


def _parse_sr_models(items):
  """'name=path' items -> dict name -> path (bare paths: named by their folder)."""
  out = {}
  for item in items:
    name, sep, path = item.partition("=")
    if not sep:
      path, name = item, os.path.basename(os.path.normpath(item))
    name, path = name.strip(), path.strip()
    if not name or not path:
      raise ValueError(f"--sr_models takes name=path items, got {item!r}.")
    if name in out:
      raise ValueError(f"--sr_models names {name!r} twice.")
    out[name] = path
  return out


def _load_sr(name, path):
  if path.lower() == "bicubic":
    return purifier.BicubicUpsampler(2, name=name)
  from tfsr_defense import serving, trainer  # pylint: disable=g-import-not-at-top
  if (os.path.isfile(os.path.join(path, "config.json"))
      and not os.path.isdir(os.path.join(path, "export"))):
    # A run directory without an exported SavedModel (e.g. results/edsr_x2_cpu/plain):
    # its Keras network.
    _, net, _, _ = trainer.load_run_model(path)
    return serving.SRModel.from_keras(net, name=name)
  return serving.load_sr_model(path, name=name)


def run_from_flags():
  """Load everything, validate, evaluate. Raises ValueError/FileNotFoundError on bad input."""
  if not FLAGS.classifier:
    raise ValueError("--classifier is required (a Keras model path or a keras.applications "
                     "name).")
  if not FLAGS.report_dir:
    raise ValueError("--report_dir is required.")
  # Cheap checks first: names, numbers.
  for a in FLAGS.attacks + (FLAGS.adaptive_attacks or []):
    classifier_attacks.check_attack(a)
  for t in FLAGS.threat_models:
    if t not in classifier_evaluation.THREAT_MODELS:
      raise ValueError(f"Unknown threat model {t!r}. Known threat models: "
                       f"{', '.join(classifier_evaluation.THREAT_MODELS)}.")
  eps = _eps_values(FLAGS.eps)
  sr_paths = _parse_sr_models(FLAGS.sr_models)
  defense_names = FLAGS.defenses or (["none"] + list(sr_paths))
  known = list(classifier_evaluation.RESERVED_DEFENSES) + list(sr_paths)
  for name in defense_names:
    if name not in known:
      raise ValueError(f"Unknown defense {name!r}. Known defenses: {', '.join(known)} (SR "
                       "defenses are named by --sr_models=name=path).")
  settings = classifier_attacks.AttackSettings(
      steps=FLAGS.steps, decay=FLAGS.mifgsm_decay, deepfool_max_iter=FLAGS.deepfool_max_iter,
      deepfool_overshoot=FLAGS.deepfool_overshoot, deepfool_nb_grads=FLAGS.deepfool_nb_grads,
      cw_max_iter=FLAGS.cw_max_iter, cw_binary_search_steps=FLAGS.cw_binary_search_steps,
      cw_learning_rate=FLAGS.cw_learning_rate, cw_initial_const=FLAGS.cw_initial_const,
      cw_confidence=FLAGS.cw_confidence)
  images = classifiers.load_labeled_images(FLAGS.data, data_dir=FLAGS.data_dir,
                                           max_images=FLAGS.max_images)
  clf = classifiers.load_classifier(FLAGS.classifier, FLAGS.input_size, FLAGS.value_range,
                                    resize_method=FLAGS.resize_method)
  sr_models = {name: _load_sr(name, path) for name, path in sr_paths.items()
               if name in defense_names}
  defenses = classifier_evaluation.make_defenses(
      defense_names, sr_models, denoise_sigma=FLAGS.denoise_sigma, wavelet=FLAGS.wavelet,
      sigma_convention=FLAGS.sigma_convention, jpeg_quality=FLAGS.jpeg_quality or None,
      resize_method=FLAGS.resize_method)
  name = FLAGS.classifier_name or os.path.splitext(
      os.path.basename(os.path.normpath(FLAGS.classifier)))[0]
  dataset = (classifiers.NIPS2017DEV if FLAGS.data.lower() == classifiers.NIPS2017DEV
             else os.path.basename(os.path.normpath(FLAGS.data)))
  class_names = classifiers.imagenet_class_names(FLAGS.data_dir) if clf.num_classes == 1000 \
      else None
  return classifier_evaluation.evaluate_classifier(
      clf, images, FLAGS.report_dir, defenses, attacks=FLAGS.attacks, eps=eps,
      threat_models=FLAGS.threat_models, attack_settings=settings, classifier_name=name,
      dataset=dataset, adaptive_max_images=FLAGS.adaptive_max_images,
      adaptive_attacks=FLAGS.adaptive_attacks, seed=FLAGS.seed,
      num_examples=FLAGS.examples, example_eps=FLAGS.example_eps / 255.0,
      class_names=class_names, progress=True, plots=FLAGS.plots)


def main(argv):
  del argv  # cli.run refuses positional arguments
  cli.run_report(run_from_flags)


def run(argv=None):
  """Console entry point ``tfsr-evaluate-classifier``."""
  cli.run(main, FLAGS, prog="tfsr_defense.evaluate_classifier", doc=__doc__, argv=argv)


if __name__ == "__main__":
  run()
