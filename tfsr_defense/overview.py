"""Every network the studies trained, on one page: what its training bought in robustness and
cost in clean quality, each against the plain network of its architecture.

A network that several suites share (the lambda = 1 EDSR is a variant of six) is one row, the
suites and variants it stands for listed beside it. Per network N and its plain counterpart P
(lambda = 0, nothing else changed: ``edsr_lambda0`` for every EDSR variant, ``carn_lambda0``
for CARN's), image by image over the images both have (``comparison.paired_differences``):

* clean PSNR-Y on ``dataset`` (dB; S(x) vs HR, Y, shave = scale, peak 255): N − P, the cost;
* SR-PSNR (dB; S(x) vs S(x~), Y, shave = scale, peak 255) under FDA and I-FGSM at eps/255 on
  ``dataset``: N − P, the robustness gained (higher = more robust);
* CLEVER on Set5 (paper eq. 15): N − P (lower = more robust).

Undefended networks only: a pre-processing defense is a view of a network, not a network
(its suite's report compares it).
"""

import os

from tfsr_defense import comparison, fileio

__all__ = ["TABLE_FILE", "FIGURE_FILE", "COLUMNS", "network_differences", "write_overview"]

TABLE_FILE = "overview.md"
FIGURE_FILE = "overview.png"

# (kind, attack label or None, heading): the quantities of the table, in its order.
COLUMNS = (("clean", None, "clean PSNR-Y"), ("attack", "fda (relu)", "FDA"),
           ("attack", "ifgsm", "I-FGSM"), ("clever", None, "CLEVER set5"))


def network_differences(networks, dataset="bsd100", eps_255=4.0):
  """Paired differences of each network against its plain counterpart.

  Args:
    networks: dict run name -> dict(baseline=run name of its plain network,
      variants=['<suite>/<variant>', ...], rows=its evaluation rows, any
      ``model`` field).
    dataset: where clean PSNR-Y and the attacks are compared ('bsd100').
    eps_255: the attacks' eps in units of 1/255 (the paper's headline: 4).

  Returns:
    list of dicts sorted by baseline and run name, the plain networks left out:
    run, baseline, variants and per ``COLUMNS`` heading a paired difference
    (``comparison.paired_differences``' dict: mean, se, higher, n) or None
    where the two networks share no image. A network whose baseline is not
    among ``networks`` is left out.
  """
  out = []
  for run, info in sorted(networks.items(), key=lambda item: (item[1]["baseline"], item[0])):
    base = info["baseline"]
    if run == base or base not in networks:
      continue
    rows = [dict(r, model=run) for r in info["rows"]] + \
        [dict(r, model=base) for r in networks[base]["rows"]]
    pairs = comparison.paired_differences(rows, run, base)
    entry = dict(run=run, baseline=base, variants=list(info["variants"]))
    for kind, attack, heading in COLUMNS:
      where = "set5" if kind == "clever" else dataset
      entry[heading] = next(
          (p for p in pairs if p["kind"] == kind and p["dataset"] == where
           and p["attack"] == attack and (kind != "attack" or p["eps_255"] == eps_255)), None)
    out.append(entry)
  return out


def _cell(p, digits=2):
  return "–" if p is None else comparison._cell(p, digits)  # pylint: disable=protected-access


def write_overview(output_dir, networks, dataset="bsd100", eps_255=4.0):
  """Write ``<output_dir>/overview.md`` and ``overview.png`` (``network_differences``).

  The figure has a panel per attack: the SR-PSNR gained at eps (y, dB)
  against the clean PSNR-Y lost (x, dB) per network, ± one standard error
  on both axes, the plain networks at the origin: up is more robust, left
  is less accurate.

  Returns:
    the ``network_differences`` list (nothing is written when it is empty).
  """
  diffs = network_differences(networks, dataset, eps_255)
  if not diffs:
    return diffs
  headings = [h for _, _, h in COLUMNS]
  lines = ["# The studies' networks against their plain counterparts "
           "(Choi et al., ACCV 2020, sec. 5)", "",
           f"Each network trained by the suites against the plain network of its architecture "
           f"(lambda = 0, same recipe), image by image over the images both have: mean ± "
           f"standard error (k/n: higher on k of the n images). Clean PSNR-Y on {dataset} (dB; "
           f"S(x) vs HR, Y, shave = scale, peak 255): the cost. FDA / I-FGSM: SR-PSNR on "
           f"{dataset} at eps = {eps_255:g}/255 (dB; S(x) vs S(x~), Y, shave = scale, peak "
           f"255): higher = more robust. CLEVER on Set5 (paper eq. 15): lower = more robust. "
           f"The suites' own reports (suite.md) have every eps and set.", "",
           "| network | baseline | " + " | ".join(headings) + " | suite/variant |",
           "|---|---|" + "---|" * len(headings) + "---|"]
  for d in diffs:
    cells = [_cell(d[h], 1 if h.startswith("CLEVER") else 2) for h in headings]
    lines.append(f"| {d['run']} | {d['baseline']} | " + " | ".join(cells) + " | "
                 + ", ".join(d["variants"]) + " |")
  fileio.atomic_write(os.path.join(output_dir, TABLE_FILE), "\n".join(lines) + "\n")
  from tfsr_defense import plots  # pylint: disable=g-import-not-at-top
  plots.plot_tradeoff(diffs, [h for k, _, h in COLUMNS if k == "attack"], "clean PSNR-Y",
                      os.path.join(output_dir, FIGURE_FILE), dataset=dataset, eps_255=eps_255)
  return diffs
