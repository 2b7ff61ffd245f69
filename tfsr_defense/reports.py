"""The evaluation's report files: the per-cell store and the tables rendered from it.

One directory per report:

    rows.jsonl  rows.csv           one row per computed cell (model, dataset,
                                   image, kind, attack, eps, settings); rows.jsonl
                                   is the store, appended cell by cell and fsync'ed
    summary.json  summary.csv      means over images per (model, dataset, kind,
                                   attack, eps, steps)
    summary.md                     tables; its header states channel, shave and peak
    examples/*.npz                 clean / attacked inputs, outputs, feature statistics
    plots/*.png                    figures (``plots.make_plots`` reads these files)

Everything here is strict JSON (``fileio``: inf/NaN stored as null). The loop that fills
the store is ``evaluation.evaluate``.
"""

import csv
import io
import json
import math
import os
import re
import warnings

import numpy as np

from tfsr_defense import fileio

__all__ = ["ROWS_FILE", "ROWS_CSV", "SUMMARY_FILE", "SUMMARY_CSV", "MARKDOWN_FILE",
           "EXAMPLES_DIR", "CONVENTIONS", "METRIC_FIELDS", "ROW_FIELDS", "SUMMARY_FIELDS",
           "read_rows", "append_row", "attack_label", "summarize", "markdown", "write_reports",
           "example_path", "save_example", "safe_name", "finite_or_none", "csv_text"]

ROWS_FILE = "rows.jsonl"
ROWS_CSV = "rows.csv"
SUMMARY_FILE = "summary.json"
SUMMARY_CSV = "summary.csv"
MARKDOWN_FILE = "summary.md"
EXAMPLES_DIR = "examples"
HIST_BINS = 64

METRIC_FIELDS = ("psnr_y", "ssim_y", "lr_psnr", "sr_psnr", "sr_ssim", "adv_psnr_y", "clever",
                 "clever_weibull", "seconds")
ROW_FIELDS = ("model", "dataset", "image", "kind", "attack", "attack_variant", "eps", "eps_255",
              "steps", "step_size_255", "random_start", "seed", "precision", "num_samples",
              "scale") + METRIC_FIELDS + ("model_id", "cell")
SUMMARY_FIELDS = ("model", "dataset", "kind", "attack", "attack_variant", "eps", "eps_255", "steps",
                  "precision", "scale", "images") + METRIC_FIELDS

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


def finite_or_none(v):
  """JSON/CSV value: floats that are inf/NaN become None, numpy scalars Python ones."""
  if isinstance(v, (float, np.floating)):
    v = float(v)
    return v if math.isfinite(v) else None
  if isinstance(v, np.integer):
    return int(v)
  return v


def read_rows(report_dir, repair=True):
  """All rows of ``report_dir/rows.jsonl`` (list of dicts; [] if none).

  A truncated last line (an interrupted write) is dropped, and (``repair``)
  the file is rewritten without it so that appends stay line-aligned. Read
  another process's store with ``repair=False``: it may be mid-append.
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
  if repair and (bad or (text and not text.endswith("\n"))):
    if bad:
      warnings.warn(f"{path}: dropped {bad} unreadable line(s) (interrupted write).")
    fileio.atomic_write(path, "".join(fileio.json_text(r) + "\n" for r in rows))
  return rows


def append_row(report_dir, row):
  with open(os.path.join(report_dir, ROWS_FILE), "a", encoding="utf-8") as f:
    f.write(fileio.json_text(row) + "\n")
    f.flush()
    os.fsync(f.fileno())


def csv_text(rows, fields):
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
  writer.writeheader()
  for r in rows:
    writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})
  return buf.getvalue()


def attack_label(row):
  """The attack and its variant: 'ifgsm', 'ifgsm (hr)' (HR target), 'fda (relu)', ..."""
  variant = row.get("attack_variant")
  label = f"{row['attack']} ({variant})" if variant else row["attack"]
  if row.get("precision") not in (None, "float32"):  # gradients in bfloat16
    label += " [bf16]" if row["precision"] == "mixed_bfloat16" else f" [{row['precision']}]"
  return label


def summarize(rows):
  """Means over images per (model, dataset, kind, attack, variant, eps, steps, precision).

  Returns:
    list of dicts with SUMMARY_FIELDS; metrics are means of the finite values
    (None if there are none), ``images`` the number of rows averaged.
  """
  groups = {}
  for r in rows:
    key = (r["model"], r["dataset"], r["kind"], r.get("attack") or "",
           r.get("attack_variant") or "", r.get("eps_255") or 0.0, r.get("steps") or 0,
           r.get("precision") or "float32")
    groups.setdefault(key, []).append(r)
  kind_order = {"clean": 0, "clever": 1, "attack": 2}
  out = []
  for key in sorted(groups, key=lambda k: (k[0], k[1], kind_order.get(k[2], 9)) + k[3:]):
    members = groups[key]
    first = members[0]
    s = dict(model=key[0], dataset=key[1], kind=key[2], attack=key[3] or None,
             attack_variant=key[4] or None, eps=first.get("eps"), eps_255=first.get("eps_255"),
             steps=first.get("steps"), precision=key[7], scale=first.get("scale"),
             images=len(members))
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
            "| model | dataset | attack | eps (/255) | steps | images | LR-PSNR (dB) "
            "| SR-PSNR (dB) | SR-SSIM | adv PSNR-Y vs HR (dB) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
  for s in attacked:
    lines.append(f"| {s['model']} | {s['dataset']} | {attack_label(s)} | {s['eps_255']:g} | "
                 f"{s['steps']} | {s['images']} | {_fmt(s['lr_psnr'])} | {_fmt(s['sr_psnr'])} | "
                 f"{_fmt(s['sr_ssim'], 4)} | {_fmt(s['adv_psnr_y'])} |")
  eps_values = sorted({s["eps_255"] for s in attacked})
  lines += ["", "## SR-PSNR (dB) by eps (/255): S(x) vs S(x~), Y, shave = scale, peak 255", "",
            "| model | dataset | attack | steps | " + " | ".join(f"{e:g}" for e in eps_values)
            + " |", "|---|---|---|---|" + "---|" * len(eps_values)]
  table = {}
  for s in attacked:
    table.setdefault((s["model"], s["dataset"], attack_label(s), s["steps"]),
                     {})[s["eps_255"]] = s["sr_psnr"]
  for key, by_eps in sorted(table.items()):
    lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | " +
                 " | ".join(_fmt(by_eps.get(e)) for e in eps_values) + " |")
  return "\n".join(lines) + "\n"


def _settings_from_rows(rows, settings):
  """The call's settings, with what the rows themselves record taking precedence.

  A report directory filled by several commands (say CLEVER on one dataset
  only) then states every setting its rows were computed with.
  """
  out = dict(settings or {})
  found = {"steps": set(), "precision": set(), "clever_samples": set(), "clever_alpha_255": set(),
           "fda_layers": set(), "fda_steps": set(), "fda_step_size_255": set(),
           "fda_random_start": set()}
  for r in rows:
    if r.get("kind") == "attack" and r.get("attack") == "fda":
      found["fda_layers"].add(r.get("attack_variant"))
      found["fda_steps"].add(r.get("steps"))
      found["fda_step_size_255"].add(r.get("step_size_255"))
      found["fda_random_start"].add(r.get("random_start"))
      found["precision"].add(r.get("precision"))
    elif r.get("kind") == "attack":
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
  fileio.atomic_write(os.path.join(report_dir, ROWS_CSV), csv_text(rows, ROW_FIELDS))
  fileio.atomic_write(os.path.join(report_dir, SUMMARY_CSV), csv_text(summary, SUMMARY_FIELDS))
  fileio.atomic_write(os.path.join(report_dir, SUMMARY_FILE), fileio.json_text(
      dict(conventions=CONVENTIONS, settings=settings or {}, summary=summary), indent=2))
  fileio.atomic_write(os.path.join(report_dir, MARKDOWN_FILE), markdown(summary, settings))
  return summary


def safe_name(name):
  """``name`` for a file name: runs of characters other than [A-Za-z0-9._-] become one '_'.

  'fda (relu)' -> 'fda_relu'.
  """
  return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("_")


def example_path(report_dir, model, dataset, image, attack, eps_255):
  """Path of an example .npz (inputs, outputs, feature statistics of one attacked image)."""
  return os.path.join(report_dir, EXAMPLES_DIR,
                      f"{safe_name(model)}__{safe_name(dataset)}__{safe_name(image)}__"
                      f"{safe_name(attack)}__"
                      f"{eps_255:g}.npz")


def save_example(path, *, lr, lr_adv, sr, sr_adv, hr, eps_255, attack, phi=None, phi_adv=None):
  """Write one attacked image's example .npz (atomically) for the figures.

  Args:
    path: from ``example_path``.
    lr, lr_adv: float32 (H, W, 3) clean / attacked LR in [0, 1].
    sr, sr_adv: float32 (sH, sW, 3) their SR outputs; hr: uint8 HR.
    eps_255: eps in 1/255 units; attack: its name.
    phi, phi_adv: float32 (H, W, D) feature maps, or None: stored as channel
      means and a common 64-bin histogram.
  """
  arrays = dict(lr=lr, lr_adv=lr_adv, sr=sr, sr_adv=sr_adv, hr=hr, eps_255=np.float32(eps_255),
                attack=np.array(attack))
  if phi is not None:
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
