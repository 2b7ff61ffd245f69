"""Paired per-image differences between two evaluated networks (a study's "by how much").

For a network V and its baseline B evaluated on the same images, per cell kind
(clean, CLEVER, attack), dataset, attack and eps, over the images both have:

    d_i = m(V, image i) - m(B, image i)
    mean d,  standard error  s_d / sqrt(n)  (s_d: sample standard deviation),
    and on how many of the n images V's value is the higher one.

m: clean PSNR-Y (dB, higher = closer to HR), CLEVER (paper eq. 15, lower =
more robust), and per attack SR-PSNR (dB; S(x) vs S(x~): higher = more robust),
the attacked output's PSNR-Y against HR, or the attacked input's LR-PSNR (x vs
x~: higher = the attack moved x less, within the same eps). Pairing removes the spread between
images, so a small but consistent gain stands out, and an evaluation still
in progress is compared on the images it has done. Rows are those of
``reports.read_rows`` (one report may hold both networks).
"""

import math
import os

import numpy as np

from tfsr_defense import reports

__all__ = ["paired_differences", "markdown_lines", "compare_reports", "ATTACK_METRICS"]

# What an attack row is compared by: SR-PSNR, the attacked output's PSNR-Y against HR, or the
# attacked input's LR-PSNR (how far the attack moved x: higher = less far).
ATTACK_METRICS = ("sr_psnr", "adv_psnr_y", "lr_psnr")
_KIND_ORDER = {"clean": 0, "clever": 1, "attack": 2}


def _metric(row, attack_metric):
  return {"clean": "psnr_y", "clever": "clever"}.get(row["kind"], attack_metric)


def paired_differences(rows, name, baseline, attack_metric="sr_psnr"):
  """Paired differences of report ``name`` against report ``baseline``.

  Args:
    rows: evaluation rows (dicts with model, dataset, image, kind and the
      metrics; ``attack`` rows also attack, eps_255, steps).
    name, baseline: report (model) names in ``rows``.
    attack_metric: 'sr_psnr', 'adv_psnr_y' or 'lr_psnr' for the attack rows.

  Returns:
    list of dicts, one per (dataset, kind, attack label, eps_255, steps) that
    both have a finite value on at least one common image, in the order
    clean, CLEVER, attacks: dataset, kind, attack (label or None), eps_255,
    steps, metric, n (common images), mean (of name - baseline), se
    (standard error; None for n = 1), higher (images where name's value is
    the larger).

  Raises:
    ValueError: an unknown attack_metric.
  """
  if attack_metric not in ATTACK_METRICS:
    raise ValueError(f"attack_metric must be one of {ATTACK_METRICS}, got {attack_metric!r}.")
  values = {}
  for r in rows:
    if r.get("model") not in (name, baseline):
      continue
    metric = _metric(r, attack_metric)
    v = r.get(metric)
    if not isinstance(v, (int, float)) or not math.isfinite(v):
      continue
    attack = reports.attack_label(r) if r["kind"] == "attack" else None
    key = (r["dataset"], r["kind"], attack, r.get("eps_255") or 0.0, r.get("steps") or 0, metric)
    values.setdefault(key, {}).setdefault(r["model"], {})[r["image"]] = float(v)
  out = []
  for key in sorted(values, key=lambda k: (_KIND_ORDER.get(k[1], 9), k[0], k[2] or "", k[3])):
    ours, theirs = values[key].get(name, {}), values[key].get(baseline, {})
    common = sorted(set(ours) & set(theirs))
    if not common:
      continue
    d = np.array([ours[i] - theirs[i] for i in common])
    n = len(d)
    out.append(dict(dataset=key[0], kind=key[1], attack=key[2], eps_255=key[3] or None,
                    steps=key[4] or None, metric=key[5], n=n, mean=float(d.mean()),
                    se=float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else None,
                    higher=int((d > 0).sum())))
  return out


def _cell(p, digits=2):
  se = "" if p["se"] is None else f" ± {p['se']:.{digits}f}"
  return f"{p['mean']:+.{digits}f}{se} ({p['higher']}/{p['n']})"


def markdown_lines(pairs):
  """Markdown tables of ``[(name, baseline, paired_differences(...)), ...]``.

  One table of clean PSNR-Y (per dataset) and CLEVER, one of the attacks
  (a row per pair, attack and dataset; a column per eps/255). A cell reads
  'mean ± se (k/n)': k of the n common images have the higher value.
  """
  datasets = sorted({p["dataset"] for _, _, ps in pairs for p in ps if p["kind"] == "clean"})
  has_clever = any(p["kind"] == "clever" for _, _, ps in pairs for p in ps)
  columns = [("clean", d) for d in datasets] + ([("clever", "set5")] if has_clever else [])
  lines = []
  if columns:
    lines += ["| variant | baseline | " + " | ".join(
        f"PSNR-Y {d} (dB)" if k == "clean" else "CLEVER set5" for k, d in columns) + " |",
              "|---|---|" + "---|" * len(columns)]
    for name, baseline, ps in pairs:
      by = {(p["kind"], p["dataset"]): p for p in ps if p["kind"] in ("clean", "clever")}
      cells = [_cell(by[c], 1 if c[0] == "clever" else 2) if c in by else "–" for c in columns]
      lines.append(f"| {name} | {baseline} | " + " | ".join(cells) + " |")
  attacked = [(name, baseline, [p for p in ps if p["kind"] == "attack"])
              for name, baseline, ps in pairs]
  eps_values = sorted({p["eps_255"] for _, _, ps in attacked for p in ps})
  if eps_values:
    lines += [""] if lines else []
    lines += ["| variant | baseline | attack | dataset | " + " | ".join(
        f"{e:g}/255" for e in eps_values) + " |", "|---|---|---|---|" + "---|" * len(eps_values)]
    # An attack run with several step counts (e.g. FDA with 10 and 100 steps) gets a row each.
    counts = {}
    for _, _, ps in attacked:
      for p in ps:
        counts.setdefault((p["attack"], p["dataset"]), set()).add(p["steps"])
    for name, baseline, ps in attacked:
      groups = {}
      for p in ps:
        attack = p["attack"] if len(counts[(p["attack"], p["dataset"])]) == 1 else \
            f"{p['attack']}, {p['steps']} steps"
        groups.setdefault((attack, p["dataset"]), {})[p["eps_255"]] = p
      for (attack, dataset), by_eps in sorted(groups.items()):
        lines.append(f"| {name} | {baseline} | {attack} | {dataset} | " + " | ".join(
            _cell(by_eps[e]) if e in by_eps else "–" for e in eps_values) + " |")
  return lines


_METRIC_TEXT = {
    "sr_psnr": "SR-PSNR (dB; S(x) vs S(x~), Y, shave = scale, peak 255; higher = more robust)",
    "adv_psnr_y": "the attacked output's PSNR-Y against HR (dB; Y, shave = scale, peak 255)",
    "lr_psnr": "the attacked input's LR-PSNR (dB; x vs x~, RGB, no shave, peak 1; higher = "
               "the attack moved x less within the same eps)",
}


def compare_reports(report_dirs, name, baseline, attack_metrics=("sr_psnr",)):
  """Markdown of ``name`` against ``baseline``, image by image, from evaluation reports.

  Args:
    report_dirs: report directories of ``evaluation.evaluate`` (their rows are
      merged, so the two networks may be in different reports).
    name, baseline: report (model) names, as in the rows' ``model`` field.
    attack_metrics: what attack rows are compared by, each of
      ``ATTACK_METRICS``; the first table also has clean PSNR-Y and CLEVER.

  Returns:
    str: per metric a heading line and ``markdown_lines`` of the paired
    differences (mean ± standard error (k/n), name − baseline).

  Raises:
    FileNotFoundError: a directory without a report (rows.jsonl).
    ValueError: an unknown metric, a name missing from the rows (naming the
      models they hold), or no image that both networks have a value for.
  """
  unknown = [m for m in attack_metrics if m not in ATTACK_METRICS]
  if unknown or not attack_metrics:
    raise ValueError(f"Unknown metric(s) {unknown}: use some of {', '.join(ATTACK_METRICS)}.")
  rows = []
  for report_dir in report_dirs:
    path = os.path.join(report_dir, reports.ROWS_FILE)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"No evaluation report in {report_dir}: {path} does not exist.")
    rows += reports.read_rows(report_dir, repair=False)
  models = sorted({str(r.get("model")) for r in rows})
  missing = [m for m in (name, baseline) if m not in models]
  if missing:
    raise ValueError(f"Model(s) {missing} not in the report(s) {', '.join(report_dirs)}; "
                     f"they hold: {', '.join(models)}.")
  lines = []
  for i, metric in enumerate(attack_metrics):
    pairs = [p for p in paired_differences(rows, name, baseline, metric)
             if i == 0 or p["kind"] == "attack"]
    if pairs:
      what = "clean PSNR-Y (dB), CLEVER and " if i == 0 else ""
      lines += ([""] if lines else []) + [
          f"{name} − {baseline}, image by image: {what}{_METRIC_TEXT[metric]}; "
          "mean ± standard error (k/n: higher on k of the n common images).", ""]
      lines += markdown_lines([(name, baseline, pairs)])
  if not lines:
    raise ValueError(f"No image has a value for both {name} and {baseline} in "
                     f"{', '.join(report_dirs)}.")
  return "\n".join(lines) + "\n"
