"""Figures of a classifier-defense report directory (``classifier_evaluation``).

    plots/accuracy_vs_eps.png   top-1 vs eps per defense and threat model, one panel per attack
    plots/examples_*.png        clean / attacked / purified grids of the example images
"""

import os

import matplotlib

from tfsr_defense import classifier_attacks, classifier_reports, plots, reports

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=wrong-import-position
import numpy as np  # noqa: E402  pylint: disable=wrong-import-position

__all__ = ["PLOTS_DIR", "make_plots", "plot_accuracy_vs_eps", "plot_example_grid"]

PLOTS_DIR = plots.PLOTS_DIR


def plot_accuracy_vs_eps(summary, path):
  """Top-1 vs eps, one panel per L-inf attack: undefended, and each defense per threat model.

  Solid: defended attacked (gray-box), dashed: the same under the adaptive
  attack, black: no defense (attacked); dotted horizontal lines: clean and
  defended-clean top-1.

  Returns:
    path, or None if there is nothing to plot.
  """
  rows = [s for s in summary if s["kind"] == "attack" and s["eps_255"] is not None]
  if not rows:
    return None
  attacks = [a for a in classifier_attacks.ATTACKS if any(r["attack"] == a for r in rows)]
  defenses = sorted({r["defense"] for r in rows if r["defense"] != "none"})
  colors = {d: f"C{i}" for i, d in enumerate(defenses)}
  fig, axes = plt.subplots(1, len(attacks), figsize=(4.2 * len(attacks), 3.6), squeeze=False)
  for ax, attack in zip(axes[0], attacks):
    sel = [r for r in rows if r["attack"] == attack]
    ticks = sorted({r["eps_255"] for r in sel})
    gray = [r for r in sel if r["threat_model"] == "graybox"]
    base = {}
    for r in gray:
      base.setdefault(r["eps_255"], []).append(r["acc_attacked"])
    if base:
      ax.plot(ticks, [np.mean(base[e]) if e in base else np.nan for e in ticks], color="k",
              marker="o", label="no defense")
    clean = [r["acc_clean"] for r in gray if r["acc_clean"] is not None]
    if clean:
      ax.axhline(np.mean(clean), color="k", ls=":", lw=1, label="clean")
    for d in defenses:
      for threat, ls in (("graybox", "-"), ("adaptive", "--")):
        pts = sorted((r["eps_255"], r["acc_defended_attacked"]) for r in sel
                     if r["defense"] == d and r["threat_model"] == threat)
        if pts:
          ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colors[d], ls=ls, marker="o",
                  label=f"{d} ({'gray-box' if threat == 'graybox' else 'adaptive'})")
      dc = [r["acc_defended_clean"] for r in sel if r["defense"] == d]
      if dc:
        ax.axhline(np.mean(dc), color=colors[d], ls=":", lw=1)
    plots.eps_axis(ax, ticks, label="eps (/255, L-inf)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("top-1 accuracy")
    ax.set_title(attack)
    ax.grid(True, alpha=0.3)
  axes[0][0].legend(fontsize=7, loc="best")
  return plots.save_figure(fig, path)


def _label(names, k):
  if k is None:
    return "?"
  k = int(k)
  return f"{k}:{names[k]}" if names is not None and 0 <= k < len(names) else str(k)


def plot_example_grid(examples, path, class_names=None, title=None):
  """Clean / purified clean / attacked / purified attacked images, one row per
  (defense, threat model), from the example .npz files of one image and attack
  (the 'none' rows are left out when there are others).

  Args:
    examples: list of dicts loaded from the example .npz files.
    path: output .png.
    class_names: optional list of class names for the titles.

  Returns:
    path, or None if ``examples`` is empty.
  """
  if any(str(e["defense"]) != "none" for e in examples):
    examples = [e for e in examples if str(e["defense"]) != "none"]
  if not examples:
    return None
  threats = classifier_attacks.THREAT_MODELS
  examples = sorted(examples, key=lambda e: (str(e["defense"]) != "none", str(e["defense"]),
                                             threats.index(str(e["threat_model"]))))
  cols = ("x", "purified_clean", "x_adv", "purified_adv")
  heads = ("clean", "purified clean", "attacked", "purified attacked")
  preds = ("pred_clean", "pred_defended_clean", "pred_attacked", "pred_defended_attacked")
  fig, axes = plt.subplots(len(examples), 4, figsize=(10, 2.7 * len(examples)), squeeze=False)
  label = int(examples[0]["label"])
  for row, ex in zip(axes, examples):
    for j, ax in enumerate(row):
      ax.imshow(ex[cols[j]])
      ax.set_xticks([])
      ax.set_yticks([])
      p = int(ex[preds[j]])
      mark = "ok" if p == label else "wrong"
      ax.set_title(f"{heads[j]}: {_label(class_names, p)} ({mark})", fontsize=7)
    threat = "gray-box" if str(ex["threat_model"]) == "graybox" else "adaptive"
    row[0].set_ylabel(f"{ex['defense']}\n{threat}", fontsize=8)
  fig.suptitle(title or f"true class {_label(class_names, label)}", fontsize=9)
  return plots.save_figure(fig, path, dpi=100)


def make_plots(report_dir, class_names=None):
  """All figures of a report directory; returns the list of files written."""
  summary = classifier_reports.summarize(reports.read_rows(report_dir))
  out = []
  p = plot_accuracy_vs_eps(summary, os.path.join(report_dir, PLOTS_DIR, "accuracy_vs_eps.png"))
  if p:
    out.append(p)
  folder = os.path.join(report_dir, reports.EXAMPLES_DIR)
  if os.path.isdir(folder):
    groups = {}
    for f in sorted(os.listdir(folder)):
      parts = f[:-4].split("__") if f.endswith(".npz") and ".tmp" not in f else []
      if len(parts) == 5:
        image, _, _, attack, eps = parts
        groups.setdefault((image, attack, eps), []).append(os.path.join(folder, f))
    for (image, attack, eps), files in sorted(groups.items()):
      examples = []
      for f in files:
        with np.load(f) as z:
          examples.append({k: z[k] for k in z.files})
      title = f"{image}: {attack}" + ("" if eps == "-" else f" eps {eps}/255") + \
          f", true class {_label(class_names, int(examples[0]['label']))}"
      p = plot_example_grid(examples, os.path.join(
          report_dir, PLOTS_DIR, f"examples_{image}_{attack}_{eps}.png"), class_names, title)
      if p:
        out.append(p)
  return out
