"""The report of a classifier-defense evaluation (``classifier_evaluation``).

From ``<report_dir>/rows.jsonl`` (one row per cell, ``ROW_FIELDS``): top-1 accuracies
per (classifier, dataset, defense, threat model, attack, eps) (``summarize``,
``SUMMARY_FIELDS``) and the files

    rows.csv                    one row per cell
    summary.json  summary.csv   top-1 accuracies per (defense, threat model, attack, eps)
    summary.md                  tables (``markdown``)
"""

import os

import numpy as np

from tfsr_defense import classifier_attacks, fileio, reports

__all__ = ["ROW_FIELDS", "SUMMARY_FIELDS", "ACCURACY_FIELDS", "CONVENTIONS", "summarize",
           "markdown", "write_reports"]

ROW_FIELDS = ("classifier", "dataset", "image", "label", "kind", "defense", "threat_model",
              "attack", "eps", "eps_255", "seed", "pred_clean", "correct_clean",
              "pred_defended_clean", "correct_defended_clean", "pred_attacked",
              "correct_attacked", "pred_defended_attacked", "correct_defended_attacked",
              "linf_255", "l2", "seconds", "defense_config", "attack_config", "input",
              "classifier_id", "cell")
ACCURACY_FIELDS = ("acc_clean", "acc_defended_clean", "acc_attacked", "acc_defended_attacked")
SUMMARY_FIELDS = ("classifier", "dataset", "kind", "defense", "threat_model", "attack", "eps_255",
                  "images") + ACCURACY_FIELDS + ("linf_255", "l2", "seconds", "defense_config",
                                                 "attack_config")

CONVENTIONS = (
    "Top-1 accuracy (fraction of images whose arg-max logit is the true class). clean: the "
    "classifier on the clean image; defended clean: on the purified clean image; attacked: on "
    "the adversarial image without defense; defended attacked: on the purified adversarial "
    "image. graybox: adversarial image made against the bare classifier (the paper's setting); "
    "adaptive: made against classifier(purifier(.)) with BPDA (identity gradient) through "
    "wavelet denoising and JPEG and true gradients through SR and resizing (Athalye et al. "
    "2018); for 'none' both are the same attack (listed under graybox). eps: L-inf radius in "
    "units of 1/255 of the [0,1] range at the classifier's input size; DeepFool and C&W-L2 are "
    "unbounded minimal attacks (eps '-'). L-inf (/255) and L2 ([0,1] units) of x_adv - x are "
    "means over images.")


def summarize(rows):
  """Top-1 accuracies and mean norms per (classifier, dataset, kind, defense, threat model,
  attack, eps, defense / attack configuration).

  Returns:
    list of dicts with SUMMARY_FIELDS; accuracies in [0, 1] (None when the
    group has no such value), ``images`` the number of rows averaged.
  """
  groups = {}
  for r in rows:
    k = (r.get("classifier"), r.get("dataset"), r.get("kind"), r.get("defense"),
         r.get("threat_model") or "", r.get("attack") or "", r.get("eps_255"),
         r.get("defense_config") or "", r.get("attack_config") or "")
    groups.setdefault(k, []).append(r)
  attack_order = {a: i for i, a in enumerate(classifier_attacks.ATTACKS)}
  kind_order = {"clean": 0, "attack": 1}

  def order(k):
    return (k[0] or "", k[1] or "", kind_order.get(k[2], 9), k[4], k[3] or "",
            attack_order.get(k[5], 99), -1 if k[6] is None else k[6], k[7], k[8])

  out = []
  for k in sorted(groups, key=order):
    members = groups[k]
    s = dict(classifier=k[0], dataset=k[1], kind=k[2], defense=k[3], threat_model=k[4] or None,
             attack=k[5] or None, eps_255=k[6], images=len(members), defense_config=k[7] or None,
             attack_config=k[8] or None)
    for field, src in zip(ACCURACY_FIELDS, ("correct_clean", "correct_defended_clean",
                                             "correct_attacked", "correct_defended_attacked")):
      vals = [m[src] for m in members if m.get(src) is not None]
      s[field] = float(np.mean(vals)) if vals else None
    for field in ("linf_255", "l2", "seconds"):
      vals = [m[field] for m in members if isinstance(m.get(field), (int, float))]
      s[field] = float(np.mean(vals)) if vals else None
    out.append(s)
  return out


def _fmt(v, digits=3):
  return "–" if v is None else f"{v:.{digits}f}"


def _eps_text(e):
  return "–" if e is None else f"{e:g}"


def markdown(summary, settings=None):
  """Markdown tables of a summary (``summarize``)."""
  lines = ["# SR purification as a classifier defense (Mustafa et al., IEEE TIP 2019)", "",
           CONVENTIONS]
  if settings:
    lines += ["", "Settings: " + "; ".join(f"{k}={v}" for k, v in sorted(settings.items())
                                           if k != "defenses")]
    for name, config in sorted((settings.get("defenses") or {}).items()):
      lines.append(f"- defense `{name}`: {config}")
  clean = [s for s in summary if s["kind"] == "clean"]
  if clean:
    lines += ["", "## Clean images", "",
              "| classifier | dataset | defense | images | top-1 clean | top-1 defended clean |",
              "|---|---|---|---|---|---|"]
    for s in clean:
      lines.append(f"| {s['classifier']} | {s['dataset']} | {s['defense']} | {s['images']} | "
                   f"{_fmt(s['acc_clean'])} | {_fmt(s['acc_defended_clean'])} |")
  attacked = [s for s in summary if s["kind"] == "attack"]
  for threat in classifier_attacks.THREAT_MODELS:
    group = [s for s in attacked if s["threat_model"] == threat]
    if not group:
      continue
    title = ("gray-box: attack on the bare classifier, then purified" if threat == "graybox"
             else "adaptive white-box: attack on classifier(purifier(.)), BPDA")
    lines += ["", f"## Attacks, {title}", "",
              "| defense | attack | eps (/255) | images | clean | attacked | defended clean | "
              "defended attacked | L-inf (/255) | L2 | attack settings |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in group:
      lines.append(f"| {s['defense']} | {s['attack']} | {_eps_text(s['eps_255'])} | "
                   f"{s['images']} | {_fmt(s['acc_clean'])} | {_fmt(s['acc_attacked'])} | "
                   f"{_fmt(s['acc_defended_clean'])} | {_fmt(s['acc_defended_attacked'])} | "
                   f"{_fmt(s['linf_255'], 2)} | {_fmt(s['l2'], 3)} | {s['attack_config']} |")
  eps_values = sorted({s["eps_255"] for s in attacked if s["eps_255"] is not None})
  if attacked:
    lines += ["", "## Defended-attacked top-1 by eps (/255); '–' columns: DeepFool / C&W", "",
              "| threat model | defense | attack | " + " | ".join(f"{e:g}" for e in eps_values)
              + " | – |", "|---|---|---|" + "---|" * (len(eps_values) + 1)]
    table = {}
    for s in attacked:
      table.setdefault((s["threat_model"], s["defense"], s["attack"]), {})[s["eps_255"]] = \
          s["acc_defended_attacked"]
    for k in sorted(table, key=lambda k: (classifier_attacks.THREAT_MODELS.index(k[0]), k[1],
                                          classifier_attacks.ATTACKS.index(k[2]))):
      by_eps = table[k]
      lines.append(f"| {k[0]} | {k[1]} | {k[2]} | "
                   + " | ".join(_fmt(by_eps.get(e)) for e in eps_values + [None]) + " |")
  return "\n".join(lines) + "\n"


def write_reports(report_dir, settings=None):
  """Rewrite rows.csv, summary.json, summary.csv and summary.md from rows.jsonl.

  Returns:
    the summary (list of dicts).
  """
  rows = reports.read_rows(report_dir)
  summary = summarize(rows)
  fileio.atomic_write(os.path.join(report_dir, reports.ROWS_CSV),
                      reports.csv_text(rows, ROW_FIELDS))
  fileio.atomic_write(os.path.join(report_dir, reports.SUMMARY_CSV),
                      reports.csv_text(summary, SUMMARY_FIELDS))
  fileio.atomic_write(os.path.join(report_dir, reports.SUMMARY_FILE), fileio.json_text(
      dict(conventions=CONVENTIONS, settings=settings or {}, summary=summary), indent=2))
  fileio.atomic_write(os.path.join(report_dir, reports.MARKDOWN_FILE),
                      markdown(summary, settings))
  return summary
