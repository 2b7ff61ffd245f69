"""Figures of an evaluation report (matplotlib, Agg backend), after Choi et al., ACCV 2020.

* ``plot_sr_psnr_vs_eps``: mean SR-PSNR against eps, one line per model (Fig. 2).
* ``plot_lr_vs_sr_psnr``: per-image LR-PSNR against SR-PSNR (Fig. 5a, b).
* ``plot_clever_vs_sr_psnr``: per-image CLEVER against SR-PSNR (Fig. 5c).
* ``plot_example``: LR / attacked LR / perturbation / S(x) / S(x~) / HR side by side (Fig. 3).
* ``plot_features``: mean feature map and feature histogram, clean vs attacked (Fig. 4).
* ``make_plots(report_dir)``: all of them from the files ``evaluation.evaluate`` writes.
* ``plot_suite``, ``plot_paired``: a study's variants (``suite_report``); ``plot_tradeoff``:
  robustness gained against clean PSNR lost, one point per network (``overview``).

SR-PSNR: S(x) vs S(x~), Y channel, shave = scale, peak 255 (dB); LR-PSNR:
x vs x~, RGB, no shave, peak 1 (dB); eps in units of 1/255.
"""

import glob
import json
import os

import matplotlib
import matplotlib.ticker

from tfsr_defense import reports

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=wrong-import-position
import numpy as np  # noqa: E402  pylint: disable=wrong-import-position

__all__ = ["plot_sr_psnr_vs_eps", "plot_lr_vs_sr_psnr", "plot_clever_vs_sr_psnr",
           "plot_example", "plot_features", "plot_suite", "plot_paired", "plot_tradeoff",
           "make_plots", "save_figure", "eps_axis", "PLOTS_DIR"]

PLOTS_DIR = "plots"
_SR_LABEL = "SR-PSNR (dB): S(x) vs S(x~), Y, shave = scale"
_LR_LABEL = "LR-PSNR (dB): x vs x~, RGB, no shave"
_HR_LABEL = "PSNR-Y (dB): S(x~) vs HR, Y, shave = scale"


def save_figure(fig, path, dpi=110):
  """Lay out ``fig``, write it to ``path`` (PNG; folders made) and close it; returns path."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=dpi)
  plt.close(fig)
  return path


def eps_axis(ax, eps_255, label="eps (/255)"):
  """A log2 eps axis labelled in plain numbers of 1/255 (1, 2, 4, ...) at the eps present."""
  ax.set_xscale("log", base=2)
  ticks = sorted(e for e in eps_255 if e)
  if ticks:
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks])
  ax.set_xlabel(label)


def plot_sr_psnr_vs_eps(summary, path, dataset, attack):
  """Mean SR-PSNR vs eps, one line per model (paper Fig. 2).

  Args:
    summary: aggregated rows (``reports.summarize``).
    path: output .png.
    dataset, attack: which rows (attack: ``reports.attack_label``, e.g. 'fda (relu)').

  Returns:
    path, or None if there is nothing to plot.
  """
  rows = [s for s in summary if s["kind"] == "attack" and s["dataset"] == dataset
          and reports.attack_label(s) == attack and s.get("sr_psnr") is not None]
  if not rows:
    return None
  fig, ax = plt.subplots(figsize=(5, 3.6))
  for model in sorted({r["model"] for r in rows}):
    pts = sorted((r["eps_255"], r["sr_psnr"]) for r in rows if r["model"] == model)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=model)
  eps_axis(ax, {r["eps_255"] for r in rows})
  ax.set_ylabel(_SR_LABEL, fontsize=8)
  ax.set_title(f"{attack} on {dataset}")
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  return save_figure(fig, path)


def plot_lr_vs_sr_psnr(rows, path, dataset, attack):
  """Per-image LR-PSNR (x) vs SR-PSNR (y), colour = model, all eps (paper Fig. 5a, b)."""
  rows = [r for r in rows if r["kind"] == "attack" and r["dataset"] == dataset
          and reports.attack_label(r) == attack and r.get("lr_psnr") is not None
          and r.get("sr_psnr") is not None]
  if not rows:
    return None
  fig, ax = plt.subplots(figsize=(5, 4))
  for model in sorted({r["model"] for r in rows}):
    mine = [r for r in rows if r["model"] == model]
    ax.scatter([r["lr_psnr"] for r in mine], [r["sr_psnr"] for r in mine], s=14, alpha=0.7,
               label=model)
  lo = min(min(r["lr_psnr"] for r in rows), min(r["sr_psnr"] for r in rows))
  hi = max(max(r["lr_psnr"] for r in rows), max(r["sr_psnr"] for r in rows))
  ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")  # SR as damaged as LR
  ax.set_xlabel(_LR_LABEL, fontsize=8)
  ax.set_ylabel(_SR_LABEL, fontsize=8)
  ax.set_title(f"{attack} on {dataset}")
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  return save_figure(fig, path)


def plot_clever_vs_sr_psnr(rows, path, dataset, attack, eps_255):
  """Per-image CLEVER (x) vs SR-PSNR at one eps (y), colour = model (paper Fig. 5c)."""
  score = {(r["model"], r["image"]): r["clever"] for r in rows
           if r["kind"] == "clever" and r["dataset"] == dataset and r.get("clever") is not None}
  pts = {}
  for r in rows:
    if (r["kind"] == "attack" and r["dataset"] == dataset and reports.attack_label(r) == attack
        and r.get("eps_255") == eps_255 and r.get("sr_psnr") is not None
        and (r["model"], r["image"]) in score):
      pts.setdefault(r["model"], []).append((score[(r["model"], r["image"])], r["sr_psnr"]))
  if not pts:
    return None
  fig, ax = plt.subplots(figsize=(5, 4))
  for model, p in sorted(pts.items()):
    ax.scatter([q[0] for q in p], [q[1] for q in p], s=14, alpha=0.7, label=model)
  ax.set_xscale("log")
  ax.set_xlabel("CLEVER: max_j ||grad ||S(x+D_j) - S(x)||_2||_1")
  ax.set_ylabel(_SR_LABEL, fontsize=8)
  ax.set_title(f"{attack} {eps_255:g}/255 on {dataset}")
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  return save_figure(fig, path)


def plot_suite(summary, variants, path, title=None, against_hr=False):
  """A study's figure (paper Figs. 5-9): SR-PSNR vs eps per variant; CLEVER vs clean PSNR.

  Args:
    summary: aggregated rows (``reports.summarize``) of the suite's report.
    variants: the variant (model) names, in the suite's order.
    path: output .png.
    title: figure title.
    against_hr: add a second row: per attack, the attacked output's mean
      PSNR-Y against HR (dB, Y, shave = scale, peak 255) vs eps, each
      variant's clean PSNR-Y on that set dashed (for random pre-processing
      defenses, whose SR-PSNR compares two independent draws).

  The attack panels use BSD100 when it was attacked, else Set5; the last panel
  places every variant by its clean PSNR-Y (BSD100 if measured, else Set5) and
  its mean CLEVER on Set5 (higher = more vulnerable).

  Returns:
    path, or None when the summary holds none of the variants.
  """
  mine = [s for s in summary if s["model"] in variants]
  if not mine:
    return None
  attacked = [s for s in mine if s["kind"] == "attack" and s.get("sr_psnr") is not None]
  datasets = {s["dataset"] for s in attacked}
  dataset = "bsd100" if "bsd100" in datasets else (sorted(datasets) or ["set5"])[0]
  labels = sorted({reports.attack_label(s) for s in attacked if s["dataset"] == dataset})
  rows = 2 if against_hr else 1
  fig, axes = plt.subplots(rows, len(labels) + 1, figsize=(4.6 * (len(labels) + 1), 3.8 * rows),
                           squeeze=False)

  def curves(ax, label, metric):
    for i, name in enumerate(variants):
      pts = sorted((s["eps_255"], s[metric]) for s in attacked if s["model"] == name
                   and s["dataset"] == dataset and reports.attack_label(s) == label
                   and s.get(metric) is not None)
      if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name, color=f"C{i}")
    eps_axis(ax, {s["eps_255"] for s in attacked
                  if s["dataset"] == dataset and reports.attack_label(s) == label})
    ax.grid(True, alpha=0.3)
    if not against_hr:  # else one legend for all panels, in the free bottom-right corner
      ax.legend(fontsize=7)

  for ax, label in zip(axes[0], labels):
    curves(ax, label, "sr_psnr")
    ax.set_ylabel(_SR_LABEL, fontsize=7)
    ax.set_title(f"{label} on {dataset}", fontsize=9)
  if against_hr:
    for ax, label in zip(axes[1], labels):
      curves(ax, label, "adv_psnr_y")
      for i, name in enumerate(variants):
        clean = _clean_psnr(mine, name, dataset)
        if clean is not None:
          ax.axhline(clean, color=f"C{i}", linestyle="--", linewidth=0.8)
      ax.set_ylabel(_HR_LABEL, fontsize=7)
      ax.set_title(f"{label} on {dataset}: attacked output vs HR (dashed: clean)", fontsize=9)
    axes[1][-1].axis("off")
    handles, names = axes[0][0].get_legend_handles_labels()
    if handles:
      axes[1][-1].legend(handles, names, loc="center", fontsize=8)
  clean_sets = {s["dataset"] for s in mine if s["kind"] == "clean"}
  clean_set = "bsd100" if "bsd100" in clean_sets else "set5"
  ax = axes[0][-1]
  points = []
  for i, name in enumerate(variants):
    clean = _clean_psnr(mine, name, clean_set)
    score = [s["clever"] for s in mine if s["model"] == name and s["kind"] == "clever"
             and s["dataset"] == "set5" and s.get("clever") is not None]
    if clean is not None and score:
      ax.scatter([clean], score[:1], s=30, color=f"C{i}", label=name)
      points.append((clean, score[0]))
  if points:  # at least 0.5 dB and 10 % of CLEVER wide: near-equal variants look near
    _min_span(ax.set_xlim, [p[0] for p in points], 0.5)
    _min_span(ax.set_ylim, [p[1] for p in points], 0.1 * max(abs(p[1]) for p in points))
    ax.legend(fontsize=7)
  ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(5))
  ax.set_xlabel(f"clean PSNR-Y on {clean_set} (dB)")
  ax.set_ylabel("CLEVER on Set5 (higher = more vulnerable)", fontsize=8)
  ax.ticklabel_format(useOffset=False)
  ax.grid(True, alpha=0.3)
  if title:
    fig.suptitle(title, fontsize=10)
  return save_figure(fig, path)


def plot_paired(pairs, variants, path, title=None):
  """Each variant against its baseline image by image (``comparison.paired_differences``).

  Args:
    pairs: ``[(name, baseline, paired differences), ...]``
      (``suite_report.paired_comparison``).
    variants: all report names in the suite's order (colours as ``plot_suite``).
    path: output .png.
    title: figure title.

  One panel per attack: the mean SR-PSNR difference (dB, variant − baseline)
  against eps with ± one standard error, zero dashed (above = more robust
  than the baseline); on BSD100 when it was attacked, else Set5. A last
  panel: the clean PSNR-Y difference (dB) on BSD100 (else Set5) per variant,
  ± one standard error.

  Returns:
    path, or None when no pair has an attack or clean difference.
  """
  found = [p for _, _, ps in pairs for p in ps]
  attacked = {p["dataset"] for p in found if p["kind"] == "attack"}
  dataset = "bsd100" if "bsd100" in attacked else (sorted(attacked) or ["set5"])[0]
  labels = sorted({p["attack"] for p in found if p["kind"] == "attack"
                   and p["dataset"] == dataset})
  cleaned = {p["dataset"] for p in found if p["kind"] == "clean"}
  clean_set = "bsd100" if "bsd100" in cleaned else "set5"
  if not labels and not cleaned:
    return None
  fig, axes = plt.subplots(1, len(labels) + 1, figsize=(4.6 * (len(labels) + 1), 3.8),
                           squeeze=False)
  color = {name: f"C{i}" for i, name in enumerate(variants)}
  for ax, label in zip(axes[0], labels):
    for name, baseline, ps in pairs:
      pts = sorted((p["eps_255"], p["mean"], p["se"] or 0.0) for p in ps
                   if p["kind"] == "attack" and p["dataset"] == dataset and p["attack"] == label)
      if pts:
        ax.errorbar([q[0] for q in pts], [q[1] for q in pts], yerr=[q[2] for q in pts],
                    marker="o", capsize=3, color=color.get(name), label=f"{name} − {baseline}")
    ax.axhline(0.0, color="k", linestyle="--", linewidth=0.8)
    eps_axis(ax, {p["eps_255"] for _, _, ps in pairs for p in ps
                  if p["kind"] == "attack" and p["dataset"] == dataset and p["attack"] == label})
    ax.set_ylabel("SR-PSNR difference (dB), variant − baseline", fontsize=7)
    ax.set_title(f"{label} on {dataset}, image by image", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
  ax = axes[0][-1]
  bars = [(name, p) for name, _, ps in pairs for p in ps
          if p["kind"] == "clean" and p["dataset"] == clean_set]
  for i, (name, p) in enumerate(bars):
    ax.bar(i, p["mean"], yerr=p["se"] or 0.0, capsize=3, color=color.get(name))
  ax.set_xticks(range(len(bars)))
  ax.set_xticklabels([name for name, _ in bars], rotation=30, ha="right", fontsize=7)
  ax.axhline(0.0, color="k", linewidth=0.8)
  ax.set_ylabel(f"clean PSNR-Y difference on {clean_set} (dB)", fontsize=8)
  ax.grid(True, axis="y", alpha=0.3)
  if title:
    fig.suptitle(title, fontsize=10)
  return save_figure(fig, path)


def plot_tradeoff(diffs, attacks, clean, path, dataset="bsd100", eps_255=4.0):
  """Robustness gained against clean quality lost, one point per network
  (``overview.network_differences``).

  Args:
    diffs: dicts with 'run', 'baseline' and paired differences (mean, se) under
      the headings ``attacks`` and ``clean`` (None where missing).
    attacks: headings of the attack differences, a panel each.
    clean: heading of the clean PSNR-Y difference.
    path: output .png.
    dataset, eps_255: for the labels.

  x: clean PSNR-Y difference (dB), y: SR-PSNR difference at eps (dB), ± one
  standard error on both; the plain networks at the origin (dashed axes).
  One colour per baseline (architecture). Returns path.
  """
  fig, axes = plt.subplots(1, len(attacks), figsize=(5.6 * len(attacks), 4.4), squeeze=False)
  bases = sorted({d["baseline"] for d in diffs})
  color = {b: f"C{i}" for i, b in enumerate(bases)}
  for ax, attack in zip(axes[0], attacks):
    for d in diffs:
      x, y = d.get(clean), d.get(attack)
      if x is None or y is None:
        continue
      ax.errorbar(x["mean"], y["mean"], xerr=x["se"] or 0.0, yerr=y["se"] or 0.0, marker="o",
                  capsize=2, color=color[d["baseline"]])
      ax.annotate(d["run"], (x["mean"], y["mean"]), fontsize=6, xytext=(3, 3),
                  textcoords="offset points")
    ax.axhline(0.0, color="k", linestyle="--", linewidth=0.8)
    ax.axvline(0.0, color="k", linestyle="--", linewidth=0.8)
    ax.plot([0.0], [0.0], "kx", label="the plain network (baseline)")
    for b in bases:
      ax.plot([], [], "o", color=color[b], label=f"against {b}")
    ax.legend(fontsize=7, loc="best")
    ax.set_xlabel(f"clean PSNR-Y difference on {dataset} (dB)", fontsize=8)
    ax.set_ylabel(f"{attack} SR-PSNR difference at {eps_255:g}/255 (dB)", fontsize=8)
    ax.set_title(f"{attack}, {dataset}: robustness gained vs clean PSNR lost", fontsize=9)
    ax.grid(True, alpha=0.3)
  return save_figure(fig, path)


def _clean_psnr(summary, model, dataset):
  """``model``'s mean clean PSNR-Y (dB) on ``dataset`` in ``summary``, or None."""
  return next((s["psnr_y"] for s in summary if s["model"] == model and s["kind"] == "clean"
               and s["dataset"] == dataset and s.get("psnr_y") is not None), None)


def _min_span(set_lim, values, span):
  """Axis limits around ``values``, padded by 10 %, at least ``span`` wide."""
  lo, hi = min(values), max(values)
  pad = max(0.1 * (hi - lo), (span - (hi - lo)) / 2, 1e-9)
  set_lim(lo - pad, hi + pad)


def _show(ax, img, title):
  ax.imshow(np.clip(img, 0.0, 1.0) if img.dtype != np.uint8 else img)
  ax.set_title(title, fontsize=8)
  ax.axis("off")


def plot_example(example, path, title=None):
  """Clean / attacked LR and SR side by side (paper Fig. 3).

  Args:
    example: path of an ``examples/*.npz`` (or its loaded dict): lr, lr_adv,
      sr, sr_adv float [0,1], hr uint8, eps_255, attack.
  """
  ex = dict(np.load(example)) if isinstance(example, str) else example
  eps = float(ex["eps_255"])
  pert = ex["lr_adv"] - ex["lr"]
  fig, axes = plt.subplots(1, 6, figsize=(15, 3))
  _show(axes[0], ex["lr"], "LR x")
  _show(axes[1], ex["lr_adv"], f"attacked LR x~ ({eps:g}/255)")
  _show(axes[2], 0.5 + pert / (2 * max(eps / 255.0, 1e-12)), "x~ - x (scaled to +-eps)")
  _show(axes[3], ex["sr"], "S(x)")
  _show(axes[4], ex["sr_adv"], "S(x~)")
  _show(axes[5], ex["hr"], "HR")
  if title:
    fig.suptitle(title, fontsize=9)
  return save_figure(fig, path)


def plot_features(example, path, title=None):
  """Mean feature map (over channels) and histogram of features, clean vs attacked (paper Fig. 4).

  Returns:
    path, or None when the example has no features.
  """
  ex = dict(np.load(example)) if isinstance(example, str) else example
  if "phi_mean" not in ex:
    return None
  fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), constrained_layout=True)
  vmin = float(min(ex["phi_mean"].min(), ex["phi_adv_mean"].min()))
  vmax = float(max(ex["phi_mean"].max(), ex["phi_adv_mean"].max()))
  for ax, key, name in ((axes[0], "phi_mean", "clean"), (axes[1], "phi_adv_mean", "attacked")):
    im = ax.imshow(ex[key], cmap="viridis", vmin=vmin, vmax=vmax)
    ax.set_title(f"mean feature map, {name}", fontsize=8)
    ax.axis("off")
  fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.02)
  edges = ex["hist_edges"]
  centers = 0.5 * (edges[1:] + edges[:-1])
  width = edges[1] - edges[0]
  axes[2].bar(centers, ex["hist_clean"], width=width, alpha=0.6, label="clean")
  axes[2].bar(centers, ex["hist_adv"], width=width, alpha=0.6, label="attacked")
  axes[2].set_yscale("log")
  axes[2].set_xlabel("feature value")
  axes[2].set_ylabel("count")
  axes[2].legend(fontsize=8)
  if title:
    fig.suptitle(title, fontsize=9)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def _pick_eps(values, preferred=8.0):
  """The eps closest to ``preferred`` (/255) among ``values``."""
  return min(values, key=lambda v: (abs(np.log2(v / preferred)) if v > 0 else 1e9, v))


def make_plots(report_dir, example_eps_255=None):
  """All figures of an evaluation report into ``report_dir/plots``.

  Args:
    report_dir: directory written by ``evaluation.evaluate``.
    example_eps_255: eps (/255) of the example figures; default the one
      closest to 8/255 among the examples (the CLEVER scatter likewise).

  Returns:
    list of the .png paths written.
  """
  rows = reports.read_rows(report_dir)
  summary_path = os.path.join(report_dir, reports.SUMMARY_FILE)
  if os.path.isfile(summary_path):
    with open(summary_path, encoding="utf-8") as f:
      summary = json.load(f)["summary"]
  else:
    summary = reports.summarize(rows)
  out_dir = os.path.join(report_dir, PLOTS_DIR)
  written = []
  combos = sorted({(r["dataset"], reports.attack_label(r)) for r in rows
                   if r["kind"] == "attack"})
  for dataset, attack in combos:
    stem = f"{dataset}__{reports.safe_name(attack)}"
    written.append(plot_sr_psnr_vs_eps(
        summary, os.path.join(out_dir, f"sr_psnr_vs_eps__{stem}.png"), dataset, attack))
    written.append(plot_lr_vs_sr_psnr(
        rows, os.path.join(out_dir, f"lr_vs_sr_psnr__{stem}.png"), dataset, attack))
    eps_values = sorted({r["eps_255"] for r in rows if r["kind"] == "attack"
                         and r["dataset"] == dataset and reports.attack_label(r) == attack})
    if eps_values:
      e = _pick_eps(eps_values) if example_eps_255 is None else example_eps_255
      written.append(plot_clever_vs_sr_psnr(
          rows, os.path.join(out_dir, f"clever_vs_sr_psnr__{stem}__{e:g}.png"),
          dataset, attack, e))
  examples = sorted(glob.glob(os.path.join(report_dir, reports.EXAMPLES_DIR, "*.npz")))
  groups = {}
  for p in examples:
    stem, eps_part = os.path.basename(p)[:-4].rsplit("__", 1)
    groups.setdefault(stem, []).append((float(eps_part), p))
  for stem, items in sorted(groups.items()):
    e = _pick_eps([i[0] for i in items]) if example_eps_255 is None else example_eps_255
    match = [p for v, p in items if v == e]
    if not match:
      continue
    title = f"{stem.replace('__', ' / ')} at {e:g}/255"
    written.append(plot_example(match[0], os.path.join(out_dir, f"example__{stem}__{e:g}.png"),
                                title))
    written.append(plot_features(match[0], os.path.join(out_dir, f"features__{stem}__{e:g}.png"),
                                 title))
  return [p for p in written if p]
