"""Evaluate SR purification as a classifier defense (Mustafa et al., IEEE TIP 2019).

``evaluate_classifier(classifier, images, report_dir, defenses=...)`` attacks
every image with every attack (``classifier_attacks``: FGSM, I-FGSM, MI-FGSM
at each L-inf eps; DeepFool and C&W-L2 once) under two threat models and
records top-1 correctness:

* ``graybox`` (the paper's): the attacker sees the classifier only. One
  adversarial image per (image, attack, eps) is made against the bare
  classifier and then purified by every defense.
* ``adaptive`` (white-box, Athalye et al. 2018): the attacker differentiates
  classifier(purifier(x)): true gradients through the SR network and the
  resizing, BPDA (identity) through wavelet denoising and JPEG. One
  adversarial image per defense. For the defense 'none' it equals gray-box
  and is not repeated.

Images are first resized to the classifier's input size (float32 [0, 1],
``classifiers.prepare_images``: bilinear with antialiasing); attacks, eps and
purification work at that size, as in the authors' pipeline (299 for
Inception-v3).

Per image and defense a ``clean`` row holds the prediction on the clean image
without and with the defense; per (image, defense, threat model, attack, eps)
an ``attack`` row holds the predictions on the adversarial image without
(``attacked``) and with the defense (``defended_attacked``), the clean ones
again (so every summary group is self-contained), and the perturbation's
L-inf (/255) and L2 ([0, 1] units) norms. Each row is appended at once to
``<report_dir>/rows.jsonl``, keyed (``cell``) by every setting that changes
its numbers (classifier weights, input preparation, defense and SR weights,
threat model, attack and its parameters, eps, seed); a re-run skips finished
cells. After every image the reports (``classifier_reports``) and figures
(``classifier_plots``) are rewritten:

    rows.jsonl  rows.csv        one row per cell
    summary.json  summary.csv   top-1 accuracies per (defense, threat model, attack, eps)
    summary.md                  tables
    examples/*.npz              clean / attacked / purified images of the first image(s)
    plots/accuracy_vs_eps.png   top-1 vs eps per defense and threat model, one panel per attack
    plots/examples_*.png        clean / attacked / purified grids

No absl flags here; ``tfsr_defense.evaluate_classifier`` is the CLI.
"""

import dataclasses
import os
import sys
import time
import zlib

import numpy as np
import tensorflow as tf
import tqdm

from tfsr_defense import (classifier_attacks, classifier_plots, classifier_reports, classifiers,
                          reports, serving)
from tfsr_defense.defenses import purifier as purifier_lib

__all__ = ["THREAT_MODELS", "DEFAULT_EPS", "RESERVED_DEFENSES", "Defense", "make_defenses",
           "evaluate_classifier", "check_request"]

THREAT_MODELS = classifier_attacks.THREAT_MODELS
DEFAULT_EPS = tuple(k / 255.0 for k in (1, 2, 4, 8, 16))
RESERVED_DEFENSES = ("none", "jpeg", "wavelet")
EXAMPLES_DIR = reports.EXAMPLES_DIR


# ---------------------------------------------------------------------------
# Defenses
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class Defense:
  """A named defense: ``purifier`` (an ``SRPurifier``, or None for no defense) and
  ``config``, the string of every setting that changes its output (report key)."""
  name: str
  purifier: object
  config: str


def _sr_identity(sr):
  """A short string identifying an SR model's weights."""
  if sr is None:
    return "none"
  if isinstance(sr, purifier_lib.BicubicUpsampler):
    return f"bicubic-x{sr.scale}"
  fingerprint = getattr(sr, "fingerprint", None)
  if fingerprint:
    return f"{getattr(sr, 'name', 'sr')}@{fingerprint}"
  if isinstance(sr, (tf.keras.Model, tf.keras.layers.Layer)):
    return f"{sr.name}@{serving.fingerprint_weights(sr.get_weights())}"
  return f"{type(sr).__name__}@{id(sr)}"


def describe_defense(purifier):
  """The config string of a purifier (or 'none')."""
  if purifier is None:
    return "none"
  settings = dict(purifier.describe()) if hasattr(purifier, "describe") else {}
  settings["sr"] = _sr_identity(getattr(purifier, "sr_model", None))
  return " ".join(f"{k}={v}" for k, v in sorted(settings.items()))


def make_defenses(names, sr_models=None, *, denoise_sigma=purifier_lib.DEFAULT_SIGMA,
                  wavelet=purifier_lib.DEFAULT_WAVELET, sigma_convention="skimage0.14",
                  jpeg_quality=purifier_lib.DEFAULT_JPEG_QUALITY, resize_method="bilinear",
                  antialias=True):
  """Build the named defenses.

  Args:
    names: defense names: 'none' (no defense), 'jpeg' (JPEG at jpeg_quality
      only), 'wavelet' (denoising + JPEG, no SR), or a key of ``sr_models``
      (the full purifier with that SR network).
    sr_models: dict name -> SR model (Keras model, ``serving.SRModel``, any
      callable, or ``purifier.BicubicUpsampler``).
    denoise_sigma, wavelet, sigma_convention, jpeg_quality, resize_method,
      antialias: ``purifier.SRPurifier`` settings (jpeg_quality None: no JPEG).

  Returns:
    list of Defense in the order of ``names``.

  Raises:
    ValueError: an unknown name (lists the known ones), a duplicate, an SR
      model named like a reserved defense, or bad purifier settings.
  """
  sr_models = dict(sr_models or {})
  clash = sorted(set(sr_models) & set(RESERVED_DEFENSES))
  if clash:
    raise ValueError(f"SR model name(s) {clash} clash with the built-in defenses "
                     f"{', '.join(RESERVED_DEFENSES)}; rename them (--sr_models=name=path).")
  names = list(names)
  if not names:
    raise ValueError("No defense given (e.g. none,<sr model name>).")
  dupes = sorted({n for n in names if names.count(n) > 1})
  if dupes:
    raise ValueError(f"Defense(s) {dupes} given twice.")
  known = list(RESERVED_DEFENSES) + sorted(sr_models)
  common = dict(wavelet=wavelet, sigma_convention=sigma_convention, resize_method=resize_method,
                antialias=antialias)
  out = []
  for name in names:
    if name == "none":
      p = None
    elif name == "jpeg":
      if jpeg_quality is None:
        raise ValueError("Defense 'jpeg' needs a JPEG quality (--jpeg_quality in 1..100).")
      p = purifier_lib.SRPurifier(None, denoise_sigma=None, jpeg_quality=jpeg_quality, **common)
    elif name == "wavelet":
      p = purifier_lib.SRPurifier(None, denoise_sigma=denoise_sigma, jpeg_quality=jpeg_quality,
                                  **common)
    elif name in sr_models:
      p = purifier_lib.SRPurifier(sr_models[name], denoise_sigma=denoise_sigma,
                                  jpeg_quality=jpeg_quality, **common)
    else:
      raise ValueError(f"Unknown defense {name!r}. Known defenses: {', '.join(known)} (SR "
                       "defenses are named by --sr_models=name=path).")
    out.append(Defense(name, p, describe_defense(p)))
  return out


def _as_defenses(defenses):
  if isinstance(defenses, dict):
    return [d if isinstance(d, Defense) else Defense(name, d, describe_defense(d))
            for name, d in defenses.items()]
  out = list(defenses)
  if not all(isinstance(d, Defense) for d in out):
    raise TypeError("defenses: a dict name -> purifier (or None), or a list of Defense.")
  return out


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------

def _eps_255(eps):
  return None if eps is None else round(float(eps) * 255.0, 6)


def check_request(classifier, images, defenses, attacks, eps, threat_models):
  """Validate an evaluation request before any computation.

  Raises:
    ValueError: unknown attack or threat model (lists the known ones), eps
      outside (0, 1], no images, a label outside the classifier's classes,
      duplicate defense names, or a classifier whose declared value range is
      contradicted by the data (``classifiers.value_range_accuracy`` on the
      first 16 images: another range scores at least half of them more).
  """
  for a in attacks:
    classifier_attacks.check_attack(a)
  if not attacks:
    raise ValueError("No attack given.")
  for t in threat_models:
    if t not in THREAT_MODELS:
      raise ValueError(f"Unknown threat model {t!r}. Known threat models: "
                       f"{', '.join(THREAT_MODELS)}.")
  if not threat_models:
    raise ValueError("No threat model given (graybox, adaptive).")
  if any(a in classifier_attacks.EPS_ATTACKS for a in attacks) and not eps:
    raise ValueError("FGSM / I-FGSM / MI-FGSM need at least one eps.")
  for e in eps:
    if not 0.0 < float(e) <= 1.0:
      raise ValueError(f"eps must be in (0, 1] (image units; 8/255 = {8 / 255:.5f}), got {e}.")
  names = [d.name for d in defenses]
  if len(set(names)) != len(names):
    raise ValueError(f"Defense names must be distinct, got {names}.")
  if not images:
    raise ValueError("No images to evaluate.")
  k = getattr(classifier, "num_classes", None)
  for im in images:
    if k is not None and not 0 <= im.label < k:
      raise ValueError(f"Image {im.name}: label {im.label} is outside the classifier's "
                       f"{k} classes.")
  if isinstance(classifier, classifiers.ImageClassifier) and len(images) >= 4:
    probe = images[:16]
    x = classifiers.prepare_images([im.image for im in probe], classifier.input_size)
    acc = classifiers.value_range_accuracy(classifier, x, [im.label for im in probe])
    declared = acc[classifier.value_range]
    best = max(acc, key=acc.get)
    if acc[best] - declared >= 0.5:
      raise ValueError(
          f"Classifier {classifier.source} seems to take pixel values in {best}, not "
          f"{classifier.value_range}: top-1 on the first {len(probe)} images is "
          f"{declared:.2f} with --value_range={classifier.value_range} and {acc[best]:.2f} with "
          f"--value_range={best}.")


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------

def _image_seed(seed, dataset, image):
  return (int(seed) + zlib.crc32(f"{dataset}/{image}".encode())) % (2 ** 31)


def _to_uint8(x):
  return np.round(np.clip(np.asarray(x, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def _example_path(report_dir, image, defense, threat, attack, eps_255):
  eps = "-" if eps_255 is None else f"{eps_255:g}"
  return os.path.join(report_dir, EXAMPLES_DIR,
                      f"{reports.safe_name(image)}__{reports.safe_name(defense)}__{threat}__"
                      f"{attack}__{eps}.npz")


def _save_npz(path, **arrays):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp.npz"
  np.savez_compressed(tmp, **arrays)
  os.replace(tmp, path)


class _Runner:
  """Compiled models and ART estimators of one evaluation, made on first use.

  Models are named by defense; 'none' (also when not among the defenses) is
  the bare classifier.
  """

  def __init__(self, classifier, defenses, input_shape, num_classes):
    self.classifier = classifier
    self.purifiers = {d.name: d.purifier for d in defenses}
    self.input_shape = input_shape
    self.num_classes = num_classes
    self._compiled, self._estimators, self._defended = {}, {}, {}

  def defended(self, name):
    if name not in self._defended:
      p = self.purifiers.get(name)
      self._defended[name] = (self.classifier if p is None
                              else purifier_lib.defended_classifier(self.classifier, p))
    return self._defended[name]

  def compiled(self, name):
    if name not in self._compiled:
      self._compiled[name] = classifier_attacks.CompiledModel(self.defended(name),
                                                              self.input_shape)
    return self._compiled[name]

  def predict(self, name, x):
    """Arg-max class of the (defended) classifier on x (1, H, W, 3)."""
    return int(np.argmax(self.compiled(name)(x).numpy()[0]))

  def purify(self, name, x):
    """What the classifier sees behind defense ``name`` (float32 NumPy)."""
    if self.purifiers.get(name) is None:
      return np.asarray(x, np.float32)
    return self.defended(name).purify(x).numpy()

  def estimator(self, name):
    if name not in self._estimators:
      self._estimators[name] = classifier_attacks.art_classifier(
          self.compiled(name), self.input_shape, self.num_classes)
    return self._estimators[name]


def evaluate_classifier(classifier, images, report_dir, defenses, *,
                        attacks=classifier_attacks.ATTACKS, eps=DEFAULT_EPS,
                        threat_models=THREAT_MODELS, attack_settings=None, classifier_name=None,
                        dataset="nips2017dev", adaptive_max_images=None, adaptive_attacks=None,
                        seed=0, num_examples=1,
                        example_eps=8 / 255, class_names=None, progress=False, plots=True):
  """Attack, purify and classify every image; write the report (module docstring).

  Args:
    classifier: ``classifiers.ImageClassifier`` (float32 [0, 1] images ->
      logits; its ``input_size`` is where images are attacked).
    images: list of ``classifiers.LabeledImage``.
    report_dir: output directory (created); re-running resumes there.
    defenses: dict name -> ``purifier.SRPurifier`` or None (no defense), or
      a list of ``Defense`` (``make_defenses``).
    attacks: names of ``classifier_attacks.ATTACKS``.
    eps: L-inf radii in [0, 1] units for fgsm / ifgsm / mifgsm (default
      1, 2, 4, 8, 16 / 255).
    threat_models: subset of ('graybox', 'adaptive').
    attack_settings: ``classifier_attacks.AttackSettings`` (default: defaults).
    classifier_name: report label (default: the classifier's Keras name).
    dataset: dataset label.
    adaptive_max_images: attack adaptively only the first N images (the
      adaptive attack back-propagates through the SR network, tens of times
      the cost of the gray-box one); None: all.
    adaptive_attacks: the attacks run adaptively (a subset of ``attacks``;
      None: all of them).
    seed: base seed (per image: derived from it and the image name).
    num_examples: images whose clean / attacked / purified images are saved
      (at the eps closest to ``example_eps``, and for DeepFool / C&W).
    class_names: list of class names for the example figures (optional).
    progress: tqdm progress bar on stdout.
    plots: draw the figures at the end.

  Returns:
    dict(summary=..., computed=cells computed now, skipped=cells found done,
    report_dir=...).

  Raises:
    ValueError / TypeError: see ``check_request``; nothing is computed then.
  """
  defenses = _as_defenses(defenses)
  attacks, threat_models = list(attacks), list(threat_models)
  eps = [float(e) for e in eps]
  check_request(classifier, images, defenses, attacks, eps, threat_models)
  adaptive_attacks = list(attacks if adaptive_attacks is None else adaptive_attacks)
  extra = sorted(set(adaptive_attacks) - set(attacks))
  if extra:
    raise ValueError(f"adaptive_attacks {extra} are not among the attacks {attacks}.")
  settings = attack_settings or classifier_attacks.AttackSettings()
  size = tuple(classifier.input_size)
  input_shape = size + (3,)
  num_classes = int(classifier.num_classes)
  name = classifier_name or classifier.name
  clf_id = f"{name}@{serving.fingerprint_weights(classifier.model.get_weights())}"
  prep = f"{size[0]}x{size[1]} {classifier.resize_method}{'+aa' if classifier.antialias else ''}"
  example_e = min(eps, key=lambda e: abs(e - example_eps)) if eps else None
  os.makedirs(report_dir, exist_ok=True)
  done = {r.get("cell") for r in reports.read_rows(report_dir)}
  runner = _Runner(classifier, defenses, input_shape, num_classes)
  run_settings = dict(
      classifier=name, classifier_source=getattr(classifier, "source", None),
      classifier_id=clf_id, input=prep, value_range=getattr(classifier, "value_range", None),
      dataset=dataset, seed=int(seed), adaptive_max_images=adaptive_max_images,
      adaptive_attacks=adaptive_attacks,
      attack_settings=dataclasses.asdict(settings),
      defenses={d.name: d.config for d in defenses})
  computed = skipped = 0
  bar = tqdm.tqdm(images, desc=dataset, disable=not progress, file=sys.stdout, unit="img")
  for index, im in enumerate(bar):
    adaptive = adaptive_max_images is None or index < adaptive_max_images
    c, s = _evaluate_image(
        runner, im, report_dir, done, classifier_name=name, clf_id=clf_id, prep=prep,
        dataset=dataset, defenses=defenses, attacks=attacks, eps=eps,
        threat_models=threat_models, settings=settings,
        adaptive_attacks=adaptive_attacks if adaptive else [],
        seed=_image_seed(seed, dataset, im.name), save_examples=index < num_examples,
        example_eps=example_e, bar=bar)
    computed += c
    skipped += s
    if c:
      classifier_reports.write_reports(report_dir, run_settings)
  summary = classifier_reports.write_reports(report_dir, run_settings)
  if plots:
    classifier_plots.make_plots(report_dir, class_names=class_names)
  return dict(summary=summary, computed=computed, skipped=skipped, report_dir=report_dir)


def _evaluate_image(runner, im, report_dir, done, *, classifier_name, clf_id, prep, dataset,
                    defenses, attacks, eps, threat_models, settings, adaptive_attacks, seed,
                    save_examples, example_eps, bar):
  """All cells of one image; returns (computed, skipped)."""
  base = dict(classifier=classifier_name, classifier_id=clf_id, dataset=dataset, image=im.name,
              label=int(im.label), input=prep)
  cache = {}

  def x_clean():
    if "x" not in cache:
      cache["x"] = classifiers.prepare_images([im.image], runner.input_shape[:2]).numpy()
    return cache["x"]

  def clean_preds(d):
    """(prediction without, with defense d) on the clean image."""
    if ("clean", d.name) not in cache:
      x = x_clean()
      if "pred" not in cache:
        cache["pred"] = runner.predict("none", x)
      cache[("clean", d.name)] = (cache["pred"], runner.predict(d.name, x)
                                  if d.purifier is not None else cache["pred"])
    return cache[("clean", d.name)]

  def key(*parts):
    return "|".join(str(p) for p in (clf_id, prep, dataset, im.name) + parts)

  computed = skipped = 0
  for d in defenses:
    cell = key("clean", d.name, d.config)
    if cell in done:
      skipped += 1
      continue
    start = time.perf_counter()
    p, pd = clean_preds(d)
    row = dict(base, kind="clean", defense=d.name, defense_config=d.config, pred_clean=p,
               correct_clean=p == im.label, pred_defended_clean=pd,
               correct_defended_clean=pd == im.label, seconds=time.perf_counter() - start,
               cell=cell)
    reports.append_row(report_dir, row)
    done.add(cell)
    computed += 1

  for attack in attacks:
    eps_list = eps if attack in classifier_attacks.EPS_ATTACKS else [None]
    attack_config = settings.describe(attack)
    for e in eps_list:
      e255 = _eps_255(e)
      example = save_examples and (e is None or e == example_eps)
      jobs = []  # (threat, defenses sharing one adversarial image, attacked model name)
      if "graybox" in threat_models:
        jobs.append(("graybox", defenses, "none"))
      if "adaptive" in threat_models and attack in adaptive_attacks:
        jobs += [("adaptive", [d], d.name) for d in defenses if d.purifier is not None]
      for threat, group, target in jobs:
        cells = {d.name: key("attack", d.name, d.config, threat, attack, attack_config, e255, seed)
                 for d in group}
        paths = {d.name: _example_path(report_dir, im.name, d.name, threat, attack, e255)
                 for d in group} if example else {}
        # A finished cell is not attacked again for a missing (uncommitted) example file.
        todo = [d for d in group if cells[d.name] not in done]
        skipped += len(group) - len(todo)
        if not todo:
          continue
        if bar is not None:
          bar.set_postfix_str(f"{threat} {attack}"
                              + ("" if e is None else f" {e255:g}/255")
                              + ("" if threat == "graybox" else f" vs {target}"))
        start = time.perf_counter()
        x = x_clean()
        x_adv = classifier_attacks.run_attack(attack, runner.estimator(target), x, [im.label], e,
                                              settings, seed)
        attack_seconds = time.perf_counter() - start
        pa = runner.predict("none", x_adv)
        delta = (x_adv - x).astype(np.float64)
        for d in todo:
          t0 = time.perf_counter()
          p, pd = clean_preds(d)
          pda = pa if d.purifier is None else runner.predict(d.name, x_adv)
          row = dict(base, kind="attack", defense=d.name, defense_config=d.config,
                     threat_model=threat, attack=attack, attack_config=attack_config, eps=e,
                     eps_255=e255, seed=seed, pred_clean=p, correct_clean=p == im.label,
                     pred_defended_clean=pd, correct_defended_clean=pd == im.label,
                     pred_attacked=pa, correct_attacked=pa == im.label,
                     pred_defended_attacked=pda, correct_defended_attacked=pda == im.label,
                     linf_255=float(np.max(np.abs(delta)) * 255.0),
                     l2=float(np.sqrt(np.sum(delta ** 2))),
                     seconds=attack_seconds / len(todo) + time.perf_counter() - t0,
                     cell=cells[d.name])
          if example:
            _save_npz(paths[d.name], x=_to_uint8(x[0]), x_adv=_to_uint8(x_adv[0]),
                      purified_clean=_to_uint8(runner.purify(d.name, x)[0]),
                      purified_adv=_to_uint8(runner.purify(d.name, x_adv)[0]),
                      label=im.label, pred_clean=p, pred_defended_clean=pd, pred_attacked=pa,
                      pred_defended_attacked=pda, defense=np.array(d.name),
                      threat_model=np.array(threat), attack=np.array(attack),
                      eps_255=np.float32(np.nan if e255 is None else e255))
          if cells[d.name] not in done:
            reports.append_row(report_dir, row)
            done.add(cells[d.name])
          computed += 1
  return computed, skipped
