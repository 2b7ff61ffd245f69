"""Robustness evaluation of SR networks: the loop over models, images, attacks, eps (sec. 4-5).

``evaluate(models, datasets, report_dir, ...)`` computes, per model, dataset
and image:

* a ``clean`` row: PSNR-Y / SSIM-Y of the clipped S(x) against HR (Y of MATLAB
  rgb2ycbcr, shave = scale, peak 255);
* per attack and eps an ``attack`` row: LR-PSNR (x vs x~: RGB, no shave, peak
  1), SR-PSNR and SR-SSIM (S(x) vs S(x~): Y, shave = scale, peak 255), and the
  attacked output's PSNR-Y against HR;
* optionally a ``clever`` row: CLEVER for SR (paper eq. 15).

Every finished cell is appended at once to the report store
(``reports.py``: ``<report_dir>/rows.jsonl``), keyed by the model's weights
fingerprint and by every setting that changes its numbers; a re-run on the
same directory skips the cells found there, so an interrupted run resumes
(a CLEVER cell from its last finished gradient batch, kept under
``<report_dir>/partial/``).
A report name whose rows came from other weights is refused. After every
image the CSV / JSON / Markdown reports are rewritten from the store.

Models are ``serving.SRModel``s (``serving.load_sr_model(path)`` for an
exported SavedModel, ``SRModel.from_keras(model)`` or a bare Keras network).
Each model gets one ``attacks.GradientEngine`` for the whole run (compiled
loops reused across images, attacks and CLEVER). No absl flags here;
``tfsr_defense.evaluate`` is the CLI.
"""

import hashlib
import os
import sys
import time
import zlib

import numpy as np
import tensorflow as tf
import tqdm

from tfsr_defense import attacks as attacks_lib
from tfsr_defense import clever as clever_lib
from tfsr_defense import data, metrics, reports
from tfsr_defense.serving import SRModel

__all__ = ["DEFAULT_EPS", "FDA_LAYERS", "IFGSM_TARGETS", "PARTIAL_DIR", "check_request",
           "evaluate", "clever_partial_path"]

# The paper's attack strengths, [0, 1] units.
DEFAULT_EPS = tuple(k / 255.0 for k in (1, 2, 4, 8, 16, 32))
# FDA's feature-map choices by name (others: comma-separated layer names).
FDA_LAYERS = ("relu", "features")
# What I-FGSM pushes S(x~) away from.
IFGSM_TARGETS = ("clean_sr", "hr")
# Under a report directory: the state of unfinished CLEVER cells.
PARTIAL_DIR = "partial"


def _eps_255(eps):
  return round(float(eps) * 255.0, 6)


def _image_seed(seed, dataset, image):
  """Per-image seed that does not depend on which other images are evaluated."""
  return (int(seed) + zlib.crc32(f"{dataset}/{image}".encode())) % (2 ** 31)


def _as_models(models_arg):
  if isinstance(models_arg, (SRModel, tf.keras.Model)):
    models_arg = [models_arg]
  if isinstance(models_arg, dict):
    items = list(models_arg.items())
  else:
    items = [(None, m) for m in models_arg]
  out = []
  for name, m in items:
    if isinstance(m, tf.keras.Model):
      m = SRModel.from_keras(m, name=name)
    elif not isinstance(m, SRModel):
      raise TypeError(f"models: expected SRModel or Keras model, got {type(m).__name__}.")
    elif name is not None:
      m.name = name
    out.append(m)
  names = [m.name for m in out]
  dupes = sorted({n for n in names if names.count(n) > 1})
  if dupes:
    raise ValueError(f"Two models share the report name(s) {dupes}; give them distinct names.")
  if not out:
    raise ValueError("No model to evaluate.")
  return out


def _fda_features(fda_layers):
  """evaluate's fda_layers -> the fda.attack ``features`` argument."""
  if fda_layers in FDA_LAYERS:
    return fda_layers
  names = [n.strip() for n in str(fda_layers).split(",") if n.strip()]
  if not names:
    raise ValueError(f"fda_layers must be one of {FDA_LAYERS} or layer names, got {fda_layers!r}.")
  return names


def check_request(models_list, datasets, attacks, eps, steps, precision="float32",
                  fda_layers="relu", fda_steps=attacks_lib.fda.DEFAULT_STEPS,
                  fda_step_fraction=attacks_lib.fda.STEP_FRACTION, fda_random_start=1.0,
                  ifgsm_target="clean_sr"):
  """Validate an evaluation request before any computation.

  Raises:
    ValueError: unknown attack (lists the known ones), eps outside [0, 1],
      steps or fda_steps < 1, fda_step_fraction <= 0, fda_random_start
      outside [0, 1], FDA on a SavedModel
      without the signature its layers need ('activations' for 'relu',
      'features' otherwise), layer names for a SavedModel, bf16 on a
      SavedModel, an empty dataset, or LR/HR sizes that do not match a
      model's scale.
  """
  for name in attacks:
    attacks_lib.get_spec(name)
  for e in eps:
    if not 0.0 <= float(e) <= 1.0:
      raise ValueError(f"eps must be in [0, 1] (image units; 4/255 = {4 / 255:.5f}), got {e}.")
  for label, value in (("steps", steps), ("fda_steps", fda_steps)):
    if isinstance(value, bool) or int(value) != value or value < 1:
      raise ValueError(f"{label} must be an integer >= 1, got {value!r}.")
  if not float(fda_step_fraction) > 0:
    raise ValueError(f"fda_step_fraction (step size / eps) must be > 0, got {fda_step_fraction}.")
  if ifgsm_target not in IFGSM_TARGETS:
    raise ValueError(f"ifgsm_target must be one of {IFGSM_TARGETS}, got {ifgsm_target!r}.")
  if not 0.0 <= float(fda_random_start) <= 1.0:
    raise ValueError(f"fda_random_start (a fraction of eps) must be in [0, 1], got "
                     f"{fda_random_start}.")
  features = _fda_features(fda_layers)
  for m in models_list:
    if "fda" in attacks and m.keras_model is None:
      needed = {"relu": "activations", "features": "features"}.get(features)
      if needed is None:
        raise ValueError(f"fda_layers={fda_layers!r} (layer names) needs a Keras model; "
                         f"'{m.name}' is a SavedModel ({m.source}). Use 'relu' or 'features'.")
      if getattr(m, needed) is None:
        raise ValueError(
            f"FDA on '{fda_layers}' is impossible for model '{m.name}' ({m.source}): it has no "
            f"'{needed}' signature. Re-export it with tfsr_defense.export (or "
            "serving.export_saved_model), or drop fda from the attacks.")
    if precision != "float32" and m.keras_model is None:
      raise ValueError(f"precision={precision!r} needs a Keras model; '{m.name}' is a SavedModel "
                       f"({m.source}). Use precision='float32'.")
    for ds_name, pairs in datasets.items():
      if not pairs:
        raise ValueError(f"Dataset '{ds_name}' has no images.")
      p = pairs[0]
      if p.hr.shape[0] != m.scale * p.lr.shape[0] or p.hr.shape[1] != m.scale * p.lr.shape[1]:
        raise ValueError(
            f"Dataset '{ds_name}' image {p.name}: HR {p.hr.shape[1]}x{p.hr.shape[0]} is not "
            f"x{m.scale} of LR {p.lr.shape[1]}x{p.lr.shape[0]} (model '{m.name}' is x{m.scale}).")


def _check_identity(rows, models_list, report_dir):
  """Refuse a report name whose stored rows were computed from other weights.

  Raises:
    ValueError: naming the model, the report directory and both fingerprints.
  """
  stored = {}
  for r in rows:
    stored.setdefault(r.get("model"), set()).add(r.get("model_id"))
  for m in models_list:
    other = stored.get(m.name, set()) - {m.fingerprint}
    if other:
      found = ", ".join(sorted(str(v) if v else "none recorded" for v in other))
      raise ValueError(
          f"{report_dir} holds rows for model '{m.name}' computed from other weights "
          f"(stored fingerprint {found}; this model {m.fingerprint}, {m.source}). Use another "
          "--report_dir, or another name (--names) for this model.")


def evaluate(models, datasets, report_dir, *, attacks=("fda", "ifgsm"), eps=DEFAULT_EPS,
             steps=50, fda_layers="relu", fda_steps=attacks_lib.fda.DEFAULT_STEPS,
             fda_step_fraction=attacks_lib.fda.STEP_FRACTION, fda_random_start=1.0,
             ifgsm_target="clean_sr", clever=False,
             clever_samples=clever_lib.DEFAULT_SAMPLES, clever_alpha=clever_lib.DEFAULT_ALPHA,
             clever_batch=clever_lib.DEFAULT_BATCH, clever_weibull=False,
             seed=0, precision="float32", num_examples=1, adversarial_dir=None, progress=False,
             plots=True):
  """Attack every image of every dataset with every attack and eps; write the report.

  Args:
    models: SRModel / Keras model, a list of them, or a dict name -> model.
    datasets: dict name -> list of data.ImagePair (uint8 LR, HR = scale x LR).
    report_dir: output directory (created); re-running resumes there.
    attacks: registered attack names (``attacks.known_attacks()``).
    eps: L-inf radii in [0, 1] units (default the paper's 1..32 / 255).
    steps: iterations of the iterative SR attacks (paper: 50); FGSM takes 1.
    fda_layers: FDA's feature maps: 'relu' (every activation + the features
      map: the official FDA), 'features' (the regularized map only: eq. 13 as
      the paper writes it), or comma-separated layer names (Keras models).
    fda_steps: FDA iterations (official: 10); fda_step_fraction: its step
      size as a fraction of eps (official: 1/8); fda_random_start: the radius
      of its uniform random start as a fraction of eps (official: 1, the
      whole ball; 0 starts at x).
    ifgsm_target: 'clean_sr' (the paper: push S(x~) away from S(x), from a
      random start of one step) or 'hr' (away from the HR image: the
      HR-target variant of tf-sr-attack; reported as 'ifgsm (hr)').
    clever: also compute CLEVER (clever_samples N_s, clever_alpha alpha_c,
      gradients in batches of clever_batch; clever_weibull adds the
      reverse-Weibull estimate).
    seed: base seed; each image's attacks / CLEVER use a seed derived from
      it and the (dataset, image) names.
    precision: 'float32' or 'mixed_bfloat16' for the attack and CLEVER
      gradients (Keras models); PSNRs are always computed on the float32 model.
    num_examples: images per (model, dataset) whose inputs / outputs /
      feature statistics are saved under examples/ (for the figures) when
      their cells are computed; a finished cell is not computed again for a
      missing example (a results copy without examples/ resumes for free).
    adversarial_dir: None, or a directory caching every attacked LR image
      (float32 .npy) under the model's ``attack_fingerprint``, the image and
      the attack's settings: a model whose attacks are the same computation
      as an earlier one's (the non-adaptive view of a network behind a
      defense, after the bare network) reuses them instead of attacking again.
    progress: tqdm progress bars on stdout.
    plots: draw the figures (``plots.make_plots``) at the end.

  Returns:
    dict(summary=list of aggregated rows, computed=cells computed now,
    skipped=cells found finished in report_dir, report_dir=...).

  Raises:
    ValueError / TypeError: see ``check_request``; a report name whose rows
      in report_dir came from other weights. Nothing is computed then.
  """
  models_list = _as_models(models)
  attacks, eps = list(attacks), [float(e) for e in eps]
  check_request(models_list, datasets, attacks, eps, steps, precision, fda_layers, fda_steps,
                fda_step_fraction, fda_random_start, ifgsm_target)
  rows = reports.read_rows(report_dir)
  _check_identity(rows, models_list, report_dir)
  os.makedirs(report_dir, exist_ok=True)
  done = {r.get("cell") for r in rows}
  settings = dict(steps=int(steps), seed=int(seed), precision=precision,
                  clever_samples=int(clever_samples) if clever else None,
                  clever_alpha_255=round(clever_alpha * 255, 6) if clever else None)
  options = dict(attacks=attacks, eps=eps, steps=int(steps), fda_features=_fda_features(fda_layers),
                 fda_steps=int(fda_steps), fda_step_fraction=float(fda_step_fraction),
                 fda_random_start=float(fda_random_start), ifgsm_target=ifgsm_target,
                 clever=clever, clever_samples=int(clever_samples),
                 clever_alpha=float(clever_alpha), clever_batch=int(clever_batch),
                 clever_weibull=clever_weibull, precision=precision,
                 adversarial_dir=adversarial_dir)
  engines = {}
  computed = skipped = 0
  # Image-major order: an interrupted run leaves every model with the same images done.
  for ds_name, pairs in datasets.items():
    bar = tqdm.tqdm(pairs, desc=ds_name, disable=not progress, file=sys.stdout, unit="img")
    for index, pair in enumerate(bar):
      for m in models_list:
        if m.name not in engines:  # made on first use: a finished run compiles nothing
          engines[m.name] = _LazyEngine(m, precision)
        c, s = _evaluate_image(
            m, engines[m.name], ds_name, pair, report_dir, done,
            seed=_image_seed(seed, ds_name, pair.name), save_examples=index < num_examples,
            bar=bar, progress=progress, **options)
        computed += c
        skipped += s
        if c:
          reports.write_reports(report_dir, settings)
  summary = reports.write_reports(report_dir, settings)
  if plots:
    from tfsr_defense import plots as plots_lib  # pylint: disable=g-import-not-at-top
    plots_lib.make_plots(report_dir)
  return dict(summary=summary, computed=computed, skipped=skipped, report_dir=report_dir)


def _cached_attack(adversarial_dir, m, ds_name, image, key, x, compute):
  """``compute()`` (the attacked LR image), through the ``adversarial_dir`` cache if given.

  The file is named by the model's attack fingerprint, the image and a digest
  of the attack's settings (the cell key without the report name and
  weights fingerprint); written atomically; one that cannot be read or has
  another shape is recomputed.
  """
  if adversarial_dir is None:
    return compute()
  digest = hashlib.sha256("|".join(map(str, key[2:])).encode()).hexdigest()[:16]
  path = os.path.join(adversarial_dir, str(m.attack_fingerprint),
                      f"{reports.safe_name(ds_name)}__{reports.safe_name(image)}__{digest}.npy")
  if os.path.isfile(path):
    try:
      cached = np.load(path)
    except (OSError, ValueError):
      cached = None
    if cached is not None and cached.shape == tuple(x.shape):
      return tf.constant(cached, tf.float32)
  x_adv = compute()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "wb") as f:
    np.save(f, np.asarray(x_adv, np.float32))
  os.replace(tmp, path)
  return x_adv


def clever_partial_path(report_dir, cell):
  """Where an unfinished CLEVER cell keeps its gradient norms (``clever.clever_sr``'s partial_path).

  ``report_dir/partial/clever__<digest of the cell key>.json``: the key names
  the dataset, image, model, weights fingerprint and settings, so a resumed
  run picks up only its own cell. Removed when the cell's row is written.
  """
  digest = hashlib.sha256(cell.encode()).hexdigest()[:16]
  return os.path.join(report_dir, PARTIAL_DIR, f"clever__{digest}.json")


class _LazyEngine:
  """The model's GradientEngine, made when the first attack or CLEVER cell needs it."""

  def __init__(self, model, precision):
    self._model, self._precision, self._engine = model, precision, None

  def get(self):
    if self._engine is None:
      self._engine = attacks_lib.GradientEngine(self._model.attack_target, self._precision)
    return self._engine


def _attack_cell(m, attack, e, *, steps, fda_features, fda_steps, fda_step_fraction,
                 fda_random_start, ifgsm_target, hr, seed, precision):
  """(kwargs for the attack, row fields, cell key) of one attack cell."""
  spec = attacks_lib.get_spec(attack)
  kwargs = dict(eps=e, seed=seed)
  fields = dict(attack=attack, eps=e, eps_255=_eps_255(e), seed=seed, precision=precision)
  if attack == "fda":
    layers = fda_features if isinstance(fda_features, str) else ",".join(fda_features)
    kwargs.update(steps=fda_steps, step_size=fda_step_fraction * e, features=fda_features,
                  random_start=fda_random_start)
    fields.update(steps=fda_steps, attack_variant=layers,
                  step_size_255=_eps_255(fda_step_fraction * e), random_start=fda_random_start)
  else:
    kwargs["steps"] = 1 if spec.single_step else steps
    fields.update(steps=kwargs["steps"])
    if attack == "ifgsm" and ifgsm_target == "hr":
      kwargs["target"] = hr
      fields["attack_variant"] = "hr"
  key = (m.name, m.fingerprint, "attack", attack, fields.get("attack_variant"), fields["eps_255"],
         fields["steps"], fields.get("step_size_255"), seed, precision)
  if attack == "fda" and fda_random_start != 1.0:  # (the default keeps the keys it had)
    key += (f"start{fda_random_start:g}",)
  return kwargs, fields, key


def _evaluate_image(m, engine, ds_name, pair, report_dir, done, *, attacks, eps, steps,
                    fda_features, fda_steps, fda_step_fraction, fda_random_start, ifgsm_target,
                    clever, clever_samples,
                    clever_alpha, clever_batch, clever_weibull, seed, precision, save_examples,
                    bar, adversarial_dir=None, progress=False):
  """All cells of one image; returns (computed, skipped)."""
  base = dict(model=m.name, model_id=m.fingerprint, dataset=ds_name, image=pair.name,
              scale=m.scale)
  cells = [("clean", None, None)]
  if clever:
    cells.append(("clever", None, None))
  cells += [("attack", a, e) for a in attacks for e in eps]
  computed = skipped = 0
  cache = {}

  def clean_sr():
    if "sr" not in cache:
      cache["x"] = data.to_float(pair.lr)[None]
      cache["sr"] = tf.clip_by_value(tf.cast(m(cache["x"]), tf.float32), 0.0, 1.0)
    return cache["x"], cache["sr"]

  hr = data.to_float(pair.hr)[None]
  for kind, attack, e in cells:
    if kind == "clean":
      key = (m.name, m.fingerprint, "clean")
    elif kind == "clever":
      key = (m.name, m.fingerprint, "clever", clever_samples, _eps_255(clever_alpha), seed,
             int(clever_weibull), precision)
    else:
      kwargs, fields, key = _attack_cell(
          m, attack, e, steps=steps, fda_features=fda_features, fda_steps=fda_steps,
          fda_step_fraction=fda_step_fraction, fda_random_start=fda_random_start,
          ifgsm_target=ifgsm_target, hr=hr, seed=seed, precision=precision)
    cell = "|".join(map(str, (ds_name, pair.name) + key))
    example = None
    if kind == "attack" and save_examples:
      example = reports.example_path(report_dir, m.name, ds_name, pair.name,
                                     reports.attack_label(fields), _eps_255(e))
    if cell in done:  # its example file, if missing (not committed), is not worth the attack
      skipped += 1
      continue
    x, sr = clean_sr()
    start = time.perf_counter()
    row = dict(base, kind=kind, cell=cell)
    if kind == "clean":
      row.update(psnr_y=float(metrics.psnr(sr, hr, "y", shave=m.scale)[0]),
                 ssim_y=float(metrics.ssim(sr, hr, "y", shave=m.scale)[0]))
    elif kind == "clever":
      if bar is not None:
        bar.set_postfix_str(f"{m.name} {pair.name} CLEVER")
      result = clever_lib.clever_sr(engine.get(), x, num_samples=clever_samples,
                                    alpha=clever_alpha, batch_size=clever_batch, seed=seed,
                                    weibull=clever_weibull, progress=progress,
                                    partial_path=clever_partial_path(report_dir, cell))
      row.update(clever=result.score, clever_weibull=result.weibull_loc,
                 num_samples=clever_samples, eps=clever_alpha, eps_255=_eps_255(clever_alpha),
                 seed=seed, precision=precision)
    else:
      if bar is not None:
        bar.set_postfix_str(f"{m.name} {pair.name} {attack} {_eps_255(e):g}/255")
      x_adv = _cached_attack(
          adversarial_dir, m, ds_name, pair.name, key, x,
          lambda: attacks_lib.get_attack(attack)(engine.get(), x, **kwargs))
      sr_adv = tf.clip_by_value(tf.cast(m(x_adv), tf.float32), 0.0, 1.0)
      row.update(fields,
                 lr_psnr=float(metrics.lr_psnr(x, x_adv)[0]),
                 sr_psnr=float(metrics.sr_psnr(sr, sr_adv, m.scale)[0]),
                 sr_ssim=float(metrics.sr_ssim(sr, sr_adv, m.scale)[0]),
                 adv_psnr_y=float(metrics.psnr(sr_adv, hr, "y", shave=m.scale)[0]))
      if example is not None:
        phi = phi_adv = None
        if m.features is not None:
          phi = tf.cast(m.features(x), tf.float32)[0].numpy()
          phi_adv = tf.cast(m.features(x_adv), tf.float32)[0].numpy()
        reports.save_example(example, lr=x[0].numpy(), lr_adv=x_adv[0].numpy(),
                             sr=sr[0].numpy(), sr_adv=sr_adv[0].numpy(), hr=pair.hr,
                             eps_255=_eps_255(e), attack=reports.attack_label(fields),
                             phi=phi, phi_adv=phi_adv)
    row["seconds"] = time.perf_counter() - start
    if cell not in done:
      reports.append_row(report_dir, row)
      done.add(cell)
    computed += 1
  return computed, skipped
