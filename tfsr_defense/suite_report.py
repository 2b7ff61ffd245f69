"""The report of a suite (``studies.Suite``): one table, paired differences, figures.

From the report stores (``reports``) of a suite's variants in
``<suite_dir>/variants/<variant>/``: the merged rows and summary, ``suite.md``
(one row per variant: clean PSNR-Y per set, SR-PSNR per attack and eps, CLEVER;
each variant against its baseline image by image, ``comparison``; the paper's
numbers beside ours, ``studies.PAPER_NUMBERS``), ``suite.png`` and
``suite_paired.png`` (``plots``).
"""

import os

from tfsr_defense import comparison, defenses, fileio, reports, studies

__all__ = ["TABLE_FILE", "FIGURE_FILE", "PAIRED_FIGURE_FILE", "variant_report_dir",
           "expected_cells", "suite_table", "paper_comparison", "paired_comparison",
           "write_suite_report"]

TABLE_FILE = "suite.md"
FIGURE_FILE = "suite.png"
PAIRED_FIGURE_FILE = "suite_paired.png"


def variant_report_dir(suite_dir, variant):
  """The evaluation report directory of one variant inside its suite's directory."""
  return os.path.join(suite_dir, "variants", reports.safe_name(variant.name))


def expected_cells(suite, eval_settings, sizes):
  """The report rows (cells) a finished evaluation of each variant holds.

  Args:
    suite: Suite.
    eval_settings: the evaluation settings ``run_suite`` records in ``suite.json``.
    sizes: images per dataset ({name: count}, after ``max_images``).

  Returns:
    dict variant name -> cells: per view (the variant, or its non-adaptive and
    adaptive views behind a defense) one clean cell per image of the clean
    datasets and one attack cell per attacked image, eps and attack; plus one
    CLEVER cell per Set5 image for an undefended variant when CLEVER is on.
  """
  attacked = sum(sizes[d] if d == "set5" else min(sizes[d], eval_settings["attack_images"])
                 for d in eval_settings["attack_datasets"])
  per_view = (sum(sizes[d] for d in eval_settings["clean_datasets"])
              + attacked * len(eval_settings["eps_255"]) * len(eval_settings["attacks"]))
  out = {}
  for variant in suite.variants:
    views = 1 if variant.defense == "none" else len(defenses.THREAT_MODELS)
    clever = sizes.get("set5", 0) if eval_settings["clever"] and variant.defense == "none" else 0
    out[variant.name] = views * per_view + clever
  return out


def _report_names(suite, summary):
  """The suite's report model names in variant order ('<variant> [<threat model>]' after it)."""
  present = {s["model"] for s in summary}
  names = []
  for variant in suite.variants:
    names += sorted(n for n in present if n == variant.name or n.startswith(variant.name + " ["))
  return names


def suite_table(suite, summary, metric="sr_psnr", clean=True):
  """One row per variant (and threat model): clean PSNR-Y per dataset and CLEVER on Set5
  (``clean``), and per attack and eps the mean of ``metric`` ('sr_psnr': SR-PSNR, dB;
  'adv_psnr_y': the attacked output's PSNR-Y against HR, dB)."""
  rows = []
  for name in _report_names(suite, summary):
    row = dict(variant=name)
    for s in summary:
      if s["model"] != name:
        continue
      if s["kind"] == "clean" and clean:
        row[f"psnr_y/{s['dataset']}"] = s["psnr_y"]
      elif s["kind"] == "clever" and s["dataset"] == "set5" and clean:
        row["clever/set5"] = s["clever"]
      elif s["kind"] == "attack":
        row[f"{reports.attack_label(s)}/{s['dataset']}/{s['eps_255']:g}"] = s[metric]
    rows.append(row)
  return rows


def _markdown_table(table):
  """Markdown lines of ``suite_table`` rows: clean PSNR columns first, then by name, set, eps.

  Without any evaluated cell (no columns), one line saying so instead of an empty table."""
  columns = sorted({k for r in table for k in r if k != "variant"},
                   key=lambda k: (k.split("/")[0] != "psnr_y", k.split("/")[0],
                                  k.split("/")[1] if "/" in k else "",
                                  float(k.split("/")[2]) if k.count("/") == 2 else 0.0))
  if not columns:
    return [NO_CELLS_LINE]
  lines = ["| variant | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
  for r in table:
    lines.append(f"| {r['variant']} | " + " | ".join(
        "–" if r.get(c) is None else f"{r[c]:.2f}" for c in columns) + " |")
  return lines


NO_CELLS_LINE = "No variant of this suite has an evaluated cell yet."

_QUANTITIES = {"psnr_y/bsd100": "clean PSNR-Y, BSD100 (dB)",
               "fda (relu)/bsd100/4": "FDA 4/255 SR-PSNR, BSD100 (dB)"}


def paper_comparison(suite, recipe, table):
  """Rows (variant, quantity, paper, ours) for the variants the paper states a number for.

  Only undefended variants whose training run is one of ``studies.PAPER_NUMBERS``
  (EDSR x4 at the paper's lambda / delta); ``ours`` is None until evaluated.
  """
  ours = {r["variant"]: r for r in table}
  rows = []
  for variant in suite.variants:
    if variant.defense != "none":
      continue
    for key, paper in studies.PAPER_NUMBERS.get(studies.run_name(recipe, variant), {}).items():
      rows.append(dict(variant=variant.name, quantity=_QUANTITIES[key], paper=paper,
                       ours=ours.get(variant.name, {}).get(key)))
  return rows


def paired_comparison(suite, rows, attack_metric="sr_psnr"):
  """``[(report name, baseline report name, comparison.paired_differences), ...]``.

  For every variant with a ``baseline`` and every report name of it (each
  threat model behind a defense), in variant order; pairs without a common
  image are left out.
  """
  names = sorted({r["model"] for r in rows})
  pairs = []
  for variant in suite.variants:
    if not variant.baseline:
      continue
    for name in names:
      if name == variant.name or name.startswith(variant.name + " ["):
        diffs = comparison.paired_differences(rows, name, variant.baseline, attack_metric)
        if diffs:
          pairs.append((name, variant.baseline, diffs))
  return pairs


def write_suite_report(suite, suite_dir, recipe=None, expected=None):
  """Merge the variants' report stores into the suite's; write ``suite.md`` and ``suite.png``.

  The suite directory then holds the merged ``rows.jsonl`` / ``rows.csv``,
  ``summary.*`` (``reports.write_reports``), the one-table ``suite.md`` (with
  ``recipe``, also the paper's numbers beside ours: ``paper_comparison``),
  the paired differences against each variant's baseline (table and
  ``suite_paired.png``, ``plots.plot_paired``) and the figure ``suite.png``
  (suites with a pre-processing variant: also the attacked outputs' PSNR-Y
  against HR, as a second table and a second row of panels); each variant's
  own report (and figures, with
  ``plots``) stays in ``variants/<variant>/``. With ``expected``
  (``expected_cells``) ``suite.md`` lists the variants whose evaluation is
  not finished, with their cells so far: their means are over those cells.
  """
  rows, progress = [], []
  for variant in suite.variants:
    own = reports.read_rows(variant_report_dir(suite_dir, variant))
    rows += own
    done = len({r.get("cell") for r in own})
    if expected is not None and done < expected[variant.name]:
      progress.append(f"{variant.name} ({done} of {expected[variant.name]} cells)"
                      if done else f"{variant.name} (not evaluated yet)")
  os.makedirs(suite_dir, exist_ok=True)
  fileio.atomic_write(os.path.join(suite_dir, reports.ROWS_FILE),
                      "".join(fileio.json_text(r) + "\n" for r in rows))
  summary = reports.write_reports(suite_dir)
  table = suite_table(suite, summary)
  lines = [f"# Suite '{suite.name}' (Choi et al., ACCV 2020, {suite.paper})", "",
           "psnr_y/<set>: clean PSNR-Y (dB; S(x) vs HR, Y, shave = scale, peak 255). "
           "<attack>/<set>/<eps>: mean SR-PSNR (dB; S(x) vs S(x~), Y, shave = scale, peak 255) "
           "at eps/255. clever/set5: mean CLEVER (paper eq. 15). Settings and per-image rows: "
           f"{reports.MARKDOWN_FILE}, {reports.ROWS_CSV}.", ""] + _markdown_table(table)
  if progress:
    lines += ["", "Evaluation in progress; a listed variant's means are over its cells so far: "
              + ", ".join(progress) + "."]
  if suite.has_defenses:
    lines += ["", "The attacked output against HR: <attack>/<set>/<eps>: mean PSNR-Y (dB; S(x~) "
              "vs HR, Y, shave = scale, peak 255); compare with psnr_y/<set> above. Behind a "
              "random defense SR-PSNR compares two independent draws and stays finite even "
              "unattacked; this has no such floor.", ""]
    lines += _markdown_table(suite_table(suite, summary, metric="adv_psnr_y", clean=False))
  pairs = paired_comparison(suite, rows)
  if pairs:
    lines += ["", "Paired differences, variant − baseline, image by image over the images both "
              "have: mean ± standard error (k/n: the variant's value is the higher on k of the "
              "n images). Clean PSNR-Y (dB) and SR-PSNR (dB): higher is better / more robust; "
              "CLEVER: lower is more robust.", ""] + comparison.markdown_lines(pairs)
  extra = [("adv_psnr_y", "The same for the attacked outputs' PSNR-Y against HR (dB):")] \
      if suite.has_defenses else []
  extra.append(("lr_psnr", "The same for the attacked inputs' LR-PSNR (dB; x vs x~, RGB, no "
                "shave, peak 1): higher = the attack, within the same eps, moved x less (its "
                "steps cancel or find no gradient; a sign of gradient masking when SR-PSNR "
                "rises with it):"))
  for metric, text in extra:
    more = [(n, b, [p for p in ps if p["kind"] == "attack"])
            for n, b, ps in paired_comparison(suite, rows, attack_metric=metric)]
    if any(ps for _, _, ps in more):
      lines += ["", text, ""] + comparison.markdown_lines(more)
  comparison_rows = paper_comparison(suite, recipe, table) if recipe is not None else []
  if comparison_rows:
    lines += ["", "The paper's numbers beside ours (paper: EDSR x4 with its full DIV2K recipe, "
              "all of BSD100; ours: this suite's CPU recipe, FDA on the attacked BSD100 "
              "images):", "", "| variant | quantity | paper | ours | ours − paper |",
              "|---|---|---|---|---|"]
    for r in comparison_rows:
      diff = "–" if r["ours"] is None else f"{r['ours'] - r['paper']:+.2f}"
      ours = "–" if r["ours"] is None else f"{r['ours']:.2f}"
      lines.append(f"| {r['variant']} | {r['quantity']} | {r['paper']:.2f} | {ours} | {diff} |")
  fileio.atomic_write(os.path.join(suite_dir, TABLE_FILE), "\n".join(lines) + "\n")
  from tfsr_defense import plots  # pylint: disable=g-import-not-at-top
  plots.plot_suite(summary, _report_names(suite, summary), os.path.join(suite_dir, FIGURE_FILE),
                   title=f"{suite.name} ({suite.paper})", against_hr=suite.has_defenses)
  if pairs:
    plots.plot_paired(pairs, _report_names(suite, summary),
                      os.path.join(suite_dir, PAIRED_FIGURE_FILE),
                      title=f"{suite.name} ({suite.paper}): each variant against its baseline")
  return table
