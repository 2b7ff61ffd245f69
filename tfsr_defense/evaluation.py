"""Robustness evaluation of SR networks: attacks, metrics, CLEVER and reports (paper sec. 4-5).

``evaluate(models, datasets, report_dir, ...)`` computes, per model, dataset
and image:

* a ``clean`` row: PSNR-Y / SSIM-Y of the clipped S(x) against HR (Y of MATLAB
  rgb2ycbcr, shave = scale, peak 255);
* per attack and eps an ``attack`` row: LR-PSNR (x vs x~: RGB, no shave, peak
  1), SR-PSNR and SR-SSIM (S(x) vs S(x~): Y, shave = scale, peak 255), and the
  attacked output's PSNR-Y against HR;
* optionally a ``clever`` row: CLEVER for SR (paper eq. 15).

Every finished cell (model, dataset, image, kind, attack, eps, settings) is
appended at once to ``<report_dir>/rows.jsonl``; a re-run on the same
directory skips the cells found there, so an interrupted run resumes. After
every image the per-image CSV and the aggregated JSON / CSV / Markdown are
rewritten (atomically) from all rows of the directory:

    rows.jsonl  rows.csv           one row per cell
    summary.json  summary.csv      means over images per (model, dataset, kind, attack, eps)
    summary.md                     tables; header states channel, shave and peak
    examples/*.npz                 clean / attacked inputs, outputs, feature statistics
    plots/*.png                    figures (``plots.make_plots``)

Models are ``SRModel``s: ``load_sr_model(path)`` for an exported SavedModel
(run directory or SavedModel directory), ``SRModel.from_keras(model)`` for a
Keras network. No absl flags here; ``tfsr_defense.evaluate`` is the CLI.
"""

import csv
import io
import json
import math
import os
import re
import sys
import tempfile
import time
import warnings
import zlib

import numpy as np
import tensorflow as tf
import tqdm

from tfsr_defense import attacks as attacks_lib
from tfsr_defense import clever as clever_lib
from tfsr_defense import data, metrics, models, serving

__all__ = ["DEFAULT_EPS", "SRModel", "load_sr_model", "evaluate", "read_rows", "summarize",
           "ROWS_FILE", "SUMMARY_FILE", "MARKDOWN_FILE"]

# The paper's attack strengths, [0, 1] units.
DEFAULT_EPS = tuple(k / 255.0 for k in (1, 2, 4, 8, 16, 32))
ROWS_FILE = "rows.jsonl"
ROWS_CSV = "rows.csv"
SUMMARY_FILE = "summary.json"
SUMMARY_CSV = "summary.csv"
MARKDOWN_FILE = "summary.md"
EXAMPLES_DIR = "examples"
HIST_BINS = 64

METRIC_FIELDS = ("psnr_y", "ssim_y", "lr_psnr", "sr_psnr", "sr_ssim", "adv_psnr_y", "clever",
                 "clever_weibull", "seconds")
ROW_FIELDS = ("model", "dataset", "image", "kind", "attack", "eps", "eps_255", "steps", "seed",
              "precision", "num_samples", "scale") + METRIC_FIELDS + ("cell",)
SUMMARY_FIELDS = ("model", "dataset", "kind", "attack", "eps", "eps_255", "steps", "scale",
                  "images") + METRIC_FIELDS

CONVENTIONS = (
    "Clean PSNR-Y / SSIM-Y: S(x) (clipped to [0,1]) vs HR, Y channel of MATLAB rgb2ycbcr, "
    "shave = scale pixels, peak 255. "
    "LR-PSNR: x vs attacked x~, RGB, no shave, peak 1. "
    "SR-PSNR / SR-SSIM: S(x) vs S(x~), Y channel, shave = scale pixels, peak 255. "
    "adv PSNR-Y: S(x~) vs HR, Y, shave = scale, peak 255. "
    "eps in units of 1/255 of the [0,1] range. "
    "CLEVER: max_j ||grad_x ||S(x+D_j) - S(x)||_2||_1, D_j ~ U[-alpha_c, alpha_c]^n "
    "(paper eq. 15). "
    "SSIM: Gaussian window 11, sigma 1.5. Means over images; PSNR of identical images (inf) "
    "is stored as null and left out of means.")


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------

class SRModel:
  """An SR network as the evaluation sees it.

  Calling it maps float32 (N, H, W, 3) in [0, 1] to float32 (N, sH, sW, 3)
  (SavedModel 'sr_float': clipped to [0, 1]; Keras: not clipped). ``features``
  maps the same input to the float32 (N, H, W, D) feature map before the
  upsampler, or is None when the model has none (then FDA is impossible).

  Attributes:
    name: label in reports.
    scale: SR scale s.
    source: path of the SavedModel, or 'keras'.
    keras_model: the Keras network, or None for a SavedModel.
  """

  def __init__(self, name, scale, sr_fn, features_fn=None, keras_model=None, source="keras",
               keep=None):
    self.name = name
    self.scale = int(scale)
    self.source = source
    self.keras_model = keras_model
    self._sr_fn = sr_fn
    self.features = features_fn
    self._keep = keep  # the loaded SavedModel: its functions die with it

  def __call__(self, x):
    return self._sr_fn(x)

  @property
  def attack_target(self):
    """What the attacks receive: the Keras model (layer names, bf16) or this wrapper."""
    return self.keras_model if self.keras_model is not None else self

  @classmethod
  def from_keras(cls, model, name=None, scale=None):
    """Wrap a Keras SR model (float32 [0,1] in/out; features from its ``models.FEATURES`` layer).

    Args:
      scale: SR scale; None measures it on an 8 x 8 input.
    """
    sr = lambda x: model(x, training=False)  # noqa: E731
    layer_names = [l.name for l in model.layers]
    features = None
    if models.FEATURES in layer_names:
      extractor = models.feature_model(model)
      features = lambda x: extractor(x, training=False)  # noqa: E731
    scale = scale or _measure_scale(sr)
    return cls(name or model.name, scale, sr, features, keras_model=model)

  def __repr__(self):
    return f"SRModel({self.name!r}, x{self.scale}, {self.source})"


def _measure_scale(sr):
  out = sr(tf.zeros([1, 8, 8, 3], tf.float32))
  return int(out.shape[1]) // 8


def _savedmodel_dir(path):
  """The SavedModel directory of a run directory or SavedModel path."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"Model path not found: {path}")
  if os.path.isfile(os.path.join(path, "saved_model.pb")):
    return path
  export = os.path.join(path, "export", "1")
  if os.path.isfile(os.path.join(export, "saved_model.pb")):
    return export
  # TF Serving's layout <model>/<version>/: like the server, take the highest version.
  versions = [int(v) for v in os.listdir(path) if v.isdigit()
              and os.path.isfile(os.path.join(path, v, "saved_model.pb"))]
  if versions:
    return os.path.join(path, str(max(versions)))
  raise FileNotFoundError(
      f"No SavedModel at {path}: expected {path}/saved_model.pb, a TF Serving model directory "
      f"{path}/<version>/saved_model.pb, or a run directory with export/1/saved_model.pb "
      "(train with --export, or use tfsr_defense.export).")


def _default_name(sm_dir):
  """<run>/export/<n> -> run; <name>/<n> (TF Serving layout) -> name; else the folder name."""
  parts = os.path.normpath(os.path.abspath(sm_dir)).split(os.sep)
  if parts[-1].isdigit() and len(parts) >= 2:
    parts = parts[:-1]
    if parts[-1] == "export" and len(parts) >= 2:
      parts = parts[:-1]
  return parts[-1]


def load_sr_model(path, name=None):
  """Load an exported SR network (tfsr_defense.serving) for evaluation.

  Args:
    path: a run directory (its ``export/1`` is used), a SavedModel directory,
      or a TF Serving model directory ``<name>/<version>/`` (highest version).
    name: report label; default: the run directory's name (for
      ``<run>/export/1``), the model folder of a ``<name>/<version>``
      SavedModel, else the SavedModel folder's name.

  Returns:
    SRModel calling the 'sr_float' signature (float32 [0,1] -> clipped
    float32 [0,1]) and, when the SavedModel has one, the 'features' signature.

  Raises:
    FileNotFoundError: path missing, or no saved_model.pb there nor in export/1.
    ValueError: no 'sr_float' signature (the uint8 'serving_default' cannot
      be differentiated); the message lists the signatures found.
  """
  sm_dir = _savedmodel_dir(path)
  try:
    loaded = tf.saved_model.load(sm_dir)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"Cannot load SavedModel {sm_dir}: {e}") from e
  signatures = dict(getattr(loaded, "signatures", {}) or {})
  if "sr_float" not in signatures:
    raise ValueError(
        f"SavedModel {sm_dir} has no usable signature: attacks need 'sr_float' (float32 [0,1] "
        f"images -> sr), found {sorted(signatures) or 'none'}. Export with "
        "tfsr_defense.serving.export_saved_model.")
  sr_sig = signatures["sr_float"]
  sr = lambda x: sr_sig(images=tf.cast(x, tf.float32))["sr"]  # noqa: E731
  features = None
  if "features" in signatures:
    feat_sig = signatures["features"]
    features = lambda x: feat_sig(images=tf.cast(x, tf.float32))["features"]  # noqa: E731
  metadata = serving.load_metadata(sm_dir)
  scale = metadata.get("scale") or _measure_scale(sr)
  if name is None:
    name = _default_name(sm_dir)
  return SRModel(name, scale, sr, features, source=sm_dir, keep=loaded)


# ---------------------------------------------------------------------------
# Report files
# ---------------------------------------------------------------------------

def _finite(v):
  """JSON/CSV value: floats that are inf/NaN become None."""
  if isinstance(v, (float, np.floating)):
    v = float(v)
    return v if math.isfinite(v) else None
  if isinstance(v, np.integer):
    return int(v)
  return v


def read_rows(report_dir):
  """All rows of ``report_dir/rows.jsonl`` (list of dicts; [] if none).

  A truncated last line (an interrupted write) is dropped, and the file is
  rewritten without it so that appends stay line-aligned.
  """
  path = os.path.join(report_dir, ROWS_FILE)
  if not os.path.isfile(path):
    return []
  with open(path, encoding="utf-8") as f:
    text = f.read()
  rows, bad = [], 0
  for line in text.splitlines():
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      bad += 1
  if bad or (text and not text.endswith("\n")):
    if bad:
      warnings.warn(f"{path}: dropped {bad} unreadable line(s) (interrupted write).")
    _atomic_write(path, "".join(json.dumps(r) + "\n" for r in rows))
  return rows


def _atomic_write(path, text):
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".tmp")
  with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
    f.write(text)
  os.replace(tmp, path)


def _append_row(report_dir, row):
  with open(os.path.join(report_dir, ROWS_FILE), "a", encoding="utf-8") as f:
    f.write(json.dumps({k: _finite(v) for k, v in row.items()}) + "\n")
    f.flush()
    os.fsync(f.fileno())


def _csv_text(rows, fields):
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
  writer.writeheader()
  for r in rows:
    writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})
  return buf.getvalue()


def summarize(rows):
  """Means over images per (model, dataset, kind, attack, eps, steps).

  Returns:
    list of dicts with SUMMARY_FIELDS; metrics are means of the finite values
    (None if there are none), ``images`` the number of rows averaged.
  """
  groups = {}
  for r in rows:
    key = (r["model"], r["dataset"], r["kind"], r.get("attack") or "", r.get("eps_255") or 0.0,
           r.get("steps") or 0)
    groups.setdefault(key, []).append(r)
  kind_order = {"clean": 0, "clever": 1, "attack": 2}
  out = []
  for key in sorted(groups, key=lambda k: (k[0], k[1], kind_order.get(k[2], 9), k[3], k[4], k[5])):
    members = groups[key]
    first = members[0]
    s = dict(model=key[0], dataset=key[1], kind=key[2], attack=key[3] or None,
             eps=first.get("eps"), eps_255=first.get("eps_255"), steps=first.get("steps"),
             scale=first.get("scale"), images=len(members))
    for field in METRIC_FIELDS:
      values = [m[field] for m in members if isinstance(m.get(field), (int, float))
                and math.isfinite(m[field])]
      s[field] = float(np.mean(values)) if values else None
    out.append(s)
  return out


def _fmt(v, digits=2):
  return "–" if v is None else f"{v:.{digits}f}"


def markdown(summary, settings=None):
  """Markdown report: conventions, clean table, attack table, SR-PSNR by eps."""
  lines = ["# Robustness of SR networks (Choi et al., ACCV 2020, sec. 4-5)", ""]
  lines.append("Channel, shave, peak: " + CONVENTIONS)
  if settings:
    lines += ["", "Settings: " + ", ".join(f"{k}={v}" for k, v in sorted(settings.items()))]
  clean = {(s["model"], s["dataset"]): s for s in summary if s["kind"] == "clean"}
  clever = {(s["model"], s["dataset"]): s for s in summary if s["kind"] == "clever"}
  lines += ["", "## Clean (S(x) vs HR: Y, shave = scale, peak 255)", "",
            "| model | dataset | scale | images | PSNR-Y (dB) | SSIM-Y | CLEVER (max) "
            "| CLEVER (Weibull) |",
            "|---|---|---|---|---|---|---|---|"]
  for key in sorted(set(clean) | set(clever)):
    c, k = clean.get(key, {}), clever.get(key, {})
    lines.append(f"| {key[0]} | {key[1]} | {c.get('scale') or k.get('scale')} | "
                 f"{c.get('images', k.get('images'))} | {_fmt(c.get('psnr_y'))} | "
                 f"{_fmt(c.get('ssim_y'), 4)} | {_fmt(k.get('clever'), 1)} | "
                 f"{_fmt(k.get('clever_weibull'), 1)} |")
  attacked = [s for s in summary if s["kind"] == "attack"]
  if not attacked:
    return "\n".join(lines) + "\n"
  lines += ["", "## Attacks (LR-PSNR: RGB, no shave, peak 1; SR-PSNR / SR-SSIM: S(x) vs S(x~), "
            "Y, shave = scale, peak 255)", "",
            "| model | dataset | attack | eps (/255) | steps | images | LR-PSNR (dB) | SR-PSNR (dB) "
            "| SR-SSIM | adv PSNR-Y vs HR (dB) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
  for s in attacked:
    lines.append(f"| {s['model']} | {s['dataset']} | {s['attack']} | {s['eps_255']:g} | "
                 f"{s['steps']} | {s['images']} | {_fmt(s['lr_psnr'])} | {_fmt(s['sr_psnr'])} | "
                 f"{_fmt(s['sr_ssim'], 4)} | {_fmt(s['adv_psnr_y'])} |")
  eps_values = sorted({s["eps_255"] for s in attacked})
  lines += ["", "## SR-PSNR (dB) by eps (/255): S(x) vs S(x~), Y, shave = scale, peak 255", "",
            "| model | dataset | attack | " + " | ".join(f"{e:g}" for e in eps_values) + " |",
            "|---|---|---|" + "---|" * len(eps_values)]
  table = {}
  for s in attacked:
    table.setdefault((s["model"], s["dataset"], s["attack"]), {})[s["eps_255"]] = s["sr_psnr"]
  for key, by_eps in sorted(table.items()):
    lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " +
                 " | ".join(_fmt(by_eps.get(e)) for e in eps_values) + " |")
  return "\n".join(lines) + "\n"


def _settings_from_rows(rows, settings):
  """The call's settings, with what the rows themselves record taking precedence.

  A report directory filled by several commands (say CLEVER on one dataset
  only) then states every setting its rows were computed with.
  """
  out = dict(settings or {})
  found = {"steps": set(), "precision": set(), "clever_samples": set(), "clever_alpha_255": set()}
  for r in rows:
    if r.get("kind") == "attack":
      found["steps"].add(r.get("steps"))
      found["precision"].add(r.get("precision"))
    elif r.get("kind") == "clever":
      found["clever_samples"].add(r.get("num_samples"))
      found["clever_alpha_255"].add(r.get("eps_255"))
  for key, values in found.items():
    values = sorted(v for v in values if v is not None)
    if values:
      out[key] = values[0] if len(values) == 1 else values
  return out


def write_reports(report_dir, settings=None):
  """Rewrite rows.csv, summary.json, summary.csv and summary.md from rows.jsonl.

  Returns:
    the summary (list of dicts).
  """
  rows = read_rows(report_dir)
  summary = summarize(rows)
  settings = _settings_from_rows(rows, settings)
  _atomic_write(os.path.join(report_dir, ROWS_CSV), _csv_text(rows, ROW_FIELDS))
  _atomic_write(os.path.join(report_dir, SUMMARY_CSV), _csv_text(summary, SUMMARY_FIELDS))
  _atomic_write(os.path.join(report_dir, SUMMARY_FILE), json.dumps(
      dict(conventions=CONVENTIONS, settings=settings or {}, summary=summary), indent=2))
  _atomic_write(os.path.join(report_dir, MARKDOWN_FILE), markdown(summary, settings))
  return summary


def _safe(name):
  return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name))


def example_path(report_dir, model, dataset, image, attack, eps_255):
  """Path of an example .npz (inputs, outputs, feature statistics of one attacked image)."""
  return os.path.join(report_dir, EXAMPLES_DIR,
                      f"{_safe(model)}__{_safe(dataset)}__{_safe(image)}__{_safe(attack)}__"
                      f"{eps_255:g}.npz")


def _save_example(path, model, x, x_adv, sr, sr_adv, hr, eps_255, attack):
  arrays = dict(lr=x[0].numpy(), lr_adv=x_adv[0].numpy(), sr=sr[0].numpy(),
                sr_adv=sr_adv[0].numpy(), hr=hr, eps_255=np.float32(eps_255),
                attack=np.array(attack))
  if model.features is not None:
    phi = tf.cast(model.features(x), tf.float32)[0].numpy()
    phi_adv = tf.cast(model.features(x_adv), tf.float32)[0].numpy()
    lo = float(min(phi.min(), phi_adv.min()))
    hi = float(max(phi.max(), phi_adv.max()))
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, HIST_BINS + 1)
    arrays.update(phi_mean=phi.mean(axis=-1), phi_adv_mean=phi_adv.mean(axis=-1),
                  hist_edges=edges, hist_clean=np.histogram(phi, edges)[0],
                  hist_adv=np.histogram(phi_adv, edges)[0])
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp.npz"
  np.savez_compressed(tmp, **arrays)
  os.replace(tmp, path)


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------

def _eps_255(eps):
  return round(float(eps) * 255.0, 6)


def _image_seed(seed, dataset, image):
  """Per-image seed that does not depend on which other images are evaluated."""
  return (int(seed) + zlib.crc32(f"{dataset}/{image}".encode())) % (2 ** 31)


def _as_models(models_arg):
  if isinstance(models_arg, (SRModel, tf.keras.Model)):
    models_arg = [models_arg]
  if isinstance(models_arg, dict):
    items = [(name, m) for name, m in models_arg.items()]
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


def check_request(models_list, datasets, attacks, eps, steps, precision="float32"):
  """Validate an evaluation request before any computation.

  Raises:
    ValueError: unknown attack (lists the known ones), eps outside [0, 1],
      steps < 1, FDA on a model without a 'features' signature, bf16 on a
      SavedModel, an empty dataset, or LR/HR sizes that do not match a model's scale.
  """
  for name in attacks:
    attacks_lib.get_spec(name)
  for e in eps:
    if not 0.0 <= float(e) <= 1.0:
      raise ValueError(f"eps must be in [0, 1] (image units; 4/255 = {4 / 255:.5f}), got {e}.")
  if isinstance(steps, bool) or int(steps) != steps or steps < 1:
    raise ValueError(f"steps must be an integer >= 1, got {steps!r}.")
  for m in models_list:
    if any(attacks_lib.get_spec(a).needs_features for a in attacks) and m.features is None:
      raise ValueError(
          f"FDA is impossible for model '{m.name}' ({m.source}): it has no 'features' "
          "signature (no feature map to attack). Re-export it with "
          "tfsr_defense.serving.export_saved_model, or drop fda from the attacks.")
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


def evaluate(models, datasets, report_dir, *, attacks=("fda", "ifgsm"), eps=DEFAULT_EPS,
             steps=50, clever=False, clever_samples=clever_lib.DEFAULT_SAMPLES,
             clever_alpha=clever_lib.DEFAULT_ALPHA, clever_batch=clever_lib.DEFAULT_BATCH,
             clever_weibull=False,
             seed=0, precision="float32", num_examples=1, progress=False, plots=True):
  """Attack every image of every dataset with every attack and eps; write the report.

  Args:
    models: SRModel / Keras model, a list of them, or a dict name -> model.
    datasets: dict name -> list of data.ImagePair (uint8 LR, HR = scale x LR).
    report_dir: output directory (created); re-running resumes there.
    attacks: registered attack names (``attacks.known_attacks()``).
    eps: L-inf radii in [0, 1] units (default the paper's 1..32 / 255).
    steps: iterations of the iterative attacks (paper: 50); FGSM takes 1.
    clever: also compute CLEVER (clever_samples N_s, clever_alpha alpha_c,
      gradients in batches of clever_batch; clever_weibull adds the
      reverse-Weibull estimate).
    seed: base seed; each image's attacks / CLEVER use a seed derived from
      it and the (dataset, image) names.
    precision: 'float32' or 'mixed_bfloat16' for the attack loops (Keras models).
    num_examples: images per (model, dataset) whose inputs / outputs /
      feature statistics are saved under examples/ (for the figures).
    progress: tqdm progress bars on stdout.
    plots: draw the figures (``plots.make_plots``) at the end.

  Returns:
    dict(summary=list of aggregated rows, computed=cells computed now,
    skipped=cells found finished in report_dir, report_dir=...).

  Raises:
    ValueError / TypeError: see ``check_request``; nothing is computed then.
  """
  models_list = _as_models(models)
  attacks, eps = list(attacks), [float(e) for e in eps]
  check_request(models_list, datasets, attacks, eps, steps, precision)
  os.makedirs(report_dir, exist_ok=True)
  done = {r.get("cell") for r in read_rows(report_dir)}
  settings = dict(steps=int(steps), seed=int(seed), precision=precision,
                  clever_samples=int(clever_samples) if clever else None,
                  clever_alpha_255=round(clever_alpha * 255, 6) if clever else None)
  computed = skipped = 0
  # Image-major order: an interrupted run leaves every model with the same images done.
  for ds_name, pairs in datasets.items():
    bar = tqdm.tqdm(pairs, desc=ds_name, disable=not progress, file=sys.stdout, unit="img")
    for index, pair in enumerate(bar):
      for m in models_list:
        c, s = _evaluate_image(
            m, ds_name, pair, report_dir, done, attacks=attacks, eps=eps, steps=int(steps),
            clever=clever, clever_samples=int(clever_samples), clever_alpha=float(clever_alpha),
            clever_batch=int(clever_batch), clever_weibull=clever_weibull,
            seed=_image_seed(seed, ds_name, pair.name), precision=precision,
            save_examples=index < num_examples, bar=bar, progress=progress)
        computed += c
        skipped += s
        if c:
          write_reports(report_dir, settings)
  summary = write_reports(report_dir, settings)
  if plots:
    from tfsr_defense import plots as plots_lib  # pylint: disable=g-import-not-at-top
    plots_lib.make_plots(report_dir)
  return dict(summary=summary, computed=computed, skipped=skipped, report_dir=report_dir)


def _evaluate_image(m, ds_name, pair, report_dir, done, *, attacks, eps, steps, clever,
                    clever_samples, clever_alpha, clever_batch, clever_weibull, seed, precision,
                    save_examples, bar, progress=False):
  """All cells of one image; returns (computed, skipped)."""
  base = dict(model=m.name, dataset=ds_name, image=pair.name, scale=m.scale)
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
      cell = "|".join(map(str, (m.name, ds_name, pair.name, "clean")))
    elif kind == "clever":
      cell = "|".join(map(str, (m.name, ds_name, pair.name, "clever", clever_samples,
                                _eps_255(clever_alpha), seed, int(clever_weibull))))
    else:
      spec = attacks_lib.get_spec(attack)
      n_steps = 1 if spec.single_step else steps
      cell = "|".join(map(str, (m.name, ds_name, pair.name, "attack", attack, _eps_255(e),
                                n_steps, seed, precision)))
    example = None
    if kind == "attack" and save_examples:
      example = example_path(report_dir, m.name, ds_name, pair.name, attack, _eps_255(e))
    if cell in done and (example is None or os.path.isfile(example)):
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
      result = clever_lib.clever_sr(m.attack_target, x, num_samples=clever_samples,
                                    alpha=clever_alpha, batch_size=clever_batch, seed=seed,
                                    weibull=clever_weibull, progress=progress)
      row.update(clever=result.score, clever_weibull=result.weibull_loc,
                 num_samples=clever_samples, eps=clever_alpha, eps_255=_eps_255(clever_alpha),
                 seed=seed)
    else:
      if bar is not None:
        bar.set_postfix_str(f"{m.name} {pair.name} {attack} {_eps_255(e):g}/255")
      x_adv = spec.fn(m.attack_target, x, eps=e, steps=n_steps, seed=seed, precision=precision)
      sr_adv = tf.clip_by_value(tf.cast(m(x_adv), tf.float32), 0.0, 1.0)
      row.update(attack=attack, eps=e, eps_255=_eps_255(e), steps=n_steps, seed=seed,
                 precision=precision,
                 lr_psnr=float(metrics.lr_psnr(x, x_adv)[0]),
                 sr_psnr=float(metrics.sr_psnr(sr, sr_adv, m.scale)[0]),
                 sr_ssim=float(metrics.sr_ssim(sr, sr_adv, m.scale)[0]),
                 adv_psnr_y=float(metrics.psnr(sr_adv, hr, "y", shave=m.scale)[0]))
      if example is not None:
        _save_example(example, m, x, x_adv, sr, sr_adv, pair.hr, _eps_255(e), attack)
    row["seconds"] = time.perf_counter() - start
    if cell not in done:
      _append_row(report_dir, row)
      done.add(cell)
    computed += 1
  return computed, skipped
