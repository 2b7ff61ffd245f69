"""Runs the paper's studies (``studies``: Choi et al., ACCV 2020, sec. 5.1-5.6): train, evaluate.

    python -m tfsr_defense.experiment --suite=lambda --dry_run     # the plan and its estimated time
    python -m tfsr_defense.experiment --suite=lambda               # train + evaluate (resumable)
    python -m tfsr_defense.experiment --suite=all --dry_run        # what is left of every study

Every variant of a suite is the shared recipe (``flags/experiments/edsr_x4_study.cfg``:
EDSR-baseline x4, T91 + BSD200, LR patch 32, batch 16, 4000 steps) with only what its study
varies changed (``studies.SUITES``). Training runs live in ``runs/experiments/<run>/``, named
by what they change (``edsr_lambda0.1``...): a variant shared by several suites (the lambda =
1 network is in six) is trained once. Each run resumes from its checkpoints. Every variant
is then evaluated into ``results/experiments/<suite>/`` (the report store of
``evaluation``: clean PSNR-Y / SSIM-Y on the clean datasets; FDA (official: all ReLU maps)
and I-FGSM at every eps on the attack datasets; CLEVER on Set5 for the undefended
variants) and the suite's report (``suite_report``: ``suite.md``, ``suite.png``) is
written from it. A network evaluated in one suite is not evaluated again in another with
the same recipe and settings: its cells are copied (``share_evaluation``). Re-running a
suite skips finished training and finished evaluation cells. The suite directory records
its recipe; a re-run with another recipe (or budget) is refused, so one suite never mixes
recipes. Two processes (one per core) share a suite's work through ``fileio.ProcessLock``.
Another machine with the results but not ``runs/`` restores a run from the suites'
results instead of training it again: the final weights the runner copies there, or the
checkpoint ``--save_progress`` copied there from an unfinished run (``run_copies``).
``--report_only`` rewrites the reports and the overview of every network the suites
trained against its plain counterpart (``studies_overview``, ``overview``).
"""

import dataclasses
import json
import os
import shutil
import sys
import time

from absl import flags

from tfsr_defense import (cli, data, defenses, evaluation, fileio, models, overview, reports,
                          run_copies, studies, suite_report, trainer)
from tfsr_defense.precision import check_bf16_kernels

__all__ = ["load_recipe", "plan", "remaining_gradients", "remaining_work", "estimate_seconds",
           "network_rates",
           "run_suite", "save_progress", "rewrite_suite_report", "share_evaluation",
           "studies_overview", "DEFAULT_RECIPE"]

DEFAULT_RECIPE = os.path.join("flags", "experiments", "edsr_x4_study.cfg")
SUITE_FILE = "suite.json"
ADVERSARIAL_DIR = "adversarial"  # in a run directory: its cached attacked images


def load_recipe(path=DEFAULT_RECIPE, steps=None, data_dir=None):
  """The shared TrainConfig of a recipe flag file (through ``train``'s flags).

  Args:
    path: absl flag file (nested --flagfile paths resolve from the working directory).
    steps: per-variant budget; None keeps the file's. The learning-rate
      boundaries are rescaled by steps / file steps.
    data_dir: data directory for the dataset names.

  Raises:
    FileNotFoundError: no such file; ValueError: a bad flag or value in it.
  """
  from tfsr_defense import train  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Recipe flag file not found: {path}")
  train.FLAGS.unparse_flags()
  try:
    train.FLAGS(["experiment", f"--flagfile={path}"])
    config = train.config_from_flags()
  except flags.Error as e:
    raise ValueError(f"Recipe {path}: {e}") from e
  finally:
    train.FLAGS.unparse_flags()
  if steps is not None and int(steps) != config.steps:
    factor = int(steps) / config.steps
    boundaries = None
    if config.lr_boundaries:
      boundaries = sorted({max(1, min(int(steps) - 1, round(b * factor)))
                           for b in config.lr_boundaries})
      if len(boundaries) != len(config.lr_boundaries):
        raise ValueError(f"--steps={steps} is too small to keep the recipe's "
                         f"{len(config.lr_boundaries)} learning-rate boundaries apart.")
    config = dataclasses.replace(config, steps=int(steps), lr_boundaries=boundaries,
                                 eval_every=min(config.eval_every, int(steps)))
  if data_dir:
    config = dataclasses.replace(config, data_dir=data_dir)
  config.validate()
  return config


def _recipe_record(recipe):
  record = dataclasses.asdict(recipe)
  for key in ("run_dir", "data_dir", "checkpoint_every", "eval_every", "log_every", "export"):
    record.pop(key, None)
  return record


def _read_suite_record(path):
  """The JSON record of ``path`` (a suite's ``suite.json``); ValueError naming it if damaged."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except ValueError as e:
    raise ValueError(f"{path} is not valid JSON ({e}); it is the suite's record, written by "
                     "the runner: restore it or run the suite again.") from None


def _check_suite_dir(suite_dir, suite, recipe, eval_settings):
  """Refuse a suite directory made with another recipe or evaluation budget; record this one."""
  path = os.path.join(suite_dir, SUITE_FILE)
  record = dict(suite=suite.name, recipe=_recipe_record(recipe), evaluation=eval_settings)
  if os.path.isfile(path):
    saved = _read_suite_record(path)
    diff = {k: (saved.get("recipe", {}).get(k), v) for k, v in record["recipe"].items()
            if saved.get("recipe", {}).get(k) != v}
    diff.update({f"evaluation.{k}": (saved.get("evaluation", {}).get(k), v)
                 for k, v in eval_settings.items() if saved.get("evaluation", {}).get(k) != v})
    if diff:
      raise ValueError(
          f"Suite directory {suite_dir} was made with another recipe or evaluation budget "
          f"(saved vs now: {diff}). A suite never mixes recipes: use another --output_dir or "
          "the same settings.")
  os.makedirs(suite_dir, exist_ok=True)
  fileio.atomic_write(path, fileio.json_text(
      dict(record, variants=[dataclasses.asdict(v) for v in suite.variants]), indent=2))


def plan(suite, recipe, runs_root=os.path.join("runs", "experiments"), output_dir=None):
  """[(variant, TrainConfig, status)] with status 'trained', 'resumable at step N' or 'new',
  followed by ' (kept in <copy>)' when that much of the run is in the results under
  ``output_dir`` rather than in its run directory (``run_copies.committed_run``; None: not
  looked for)."""
  out = []
  for variant in suite.variants:
    config = studies.variant_config(recipe, variant, runs_root)
    done, copy = _progress(config, output_dir)
    status = ("trained" if done == config.steps else
              f"resumable at step {done}" if done else "new")
    out.append((variant, config, status + (f" (kept in {copy})" if copy else "")))
  return out


def _progress(config, output_dir=None):
  """(training steps done, None or the results' copy holding them): the run directory's, or a
  copy's in the results under ``output_dir`` (``run_copies.committed_run``) when that holds
  more."""
  if run_copies.trained(config):
    return config.steps, None
  found = run_copies.newer_copy(config, output_dir) if output_dir else None
  if found:
    return found[1], found[0]
  return run_copies.latest_step(config.run_dir), None


def save_progress(suite, recipe, output_dir=os.path.join("results", "experiments"),
                  runs_root=os.path.join("runs", "experiments"), log=print):
  """Copy the newest checkpoint of every unfinished training run of ``suite`` into the suite's
  results (``<output_dir>/<suite>/runs/<variant>/ckpt/``, ``run_copies.copy_checkpoint``), so
  that a machine that has the results but not ``runs/`` resumes the run there
  (``run_copies.restore_run``). The copy is deleted once the run's final weights are copied.

  Returns:
    [(variant name, step)] of the checkpoints copied.
  """
  saved = []
  for variant, config, _ in plan(suite, recipe, runs_root):
    target = os.path.join(output_dir, suite.name, "runs", reports.safe_name(variant.name))
    step = run_copies.copy_checkpoint(config, target, flags_text(config), output_dir)
    if step:
      log(f"{suite.name}/{variant.name}: checkpoint of step {step} of {config.steps} copied to "
          f"{os.path.join(target, run_copies.CKPT_DIR)}")
      saved.append((variant.name, step))
  return saved


def _variant_models(config, variant, eot_samples):
  """{report name: SRModel} of a trained variant: the float32 network, or (pre-processing
  variants) the network behind its defense under both threat models (the adaptive attack
  on a random defense averages ``eot_samples`` draws per gradient)."""
  _, model, _, _ = trainer.load_run_model(config.run_dir)
  return defenses.defended_sr_models(model, variant.defense, name=variant.name,
                                     scale=config.scale, eot_samples=eot_samples)


def run_suite(suite, recipe, *, output_dir=os.path.join("results", "experiments"),
              runs_root=os.path.join("runs", "experiments"), clean_datasets=("set5", "set14",
                                                                             "bsd100"),
              attack_datasets=("set5", "bsd100"), attack_images=20, attacks=("fda", "ifgsm"),
              eps=evaluation.DEFAULT_EPS, steps=50, clever=True, clever_samples=1024,
              clever_batch=16, precision="float32", eot_samples=2, variants=None, train=True,
              evaluate=True, max_images=None, plots=True, log=print):
  """Train every variant of ``suite`` (resumable) and evaluate it into ``<output_dir>/<suite>``.

  Args:
    suite: Suite.
    recipe: the shared TrainConfig (``load_recipe``).
    output_dir, runs_root: where the suite's reports and the training runs go.
    clean_datasets: datasets for clean PSNR-Y / SSIM-Y (all images).
    attack_datasets: datasets attacked; Set5 whole, the others' first
      ``attack_images`` images (the same images for every variant).
    attacks, eps, steps: as ``evaluation.evaluate`` (FDA: official settings).
    clever: CLEVER (N_s = clever_samples) on Set5, for the undefended variants
      (a defended one's would be its bare network's, or undefined through JPEG).
    precision: attack / CLEVER gradient precision.
    eot_samples: k >= 1 random draws averaged per gradient by the adaptive
      attack on a random pre-processing defense (EOT); recorded in
      ``suite.json`` of the suites that have a pre-processing variant. 2: on
      the plain network, k = 1, 2 and 8 gave mean SR-PSNRs within 0.4 dB,
      less than the spread between two seeds of k = 1 (up to 1.1 dB), at
      k times the cost (``results/benchmarks/eot_samples_avx512bf16.txt``).
    variants: None (all), or the names of the variants to train and evaluate
      now (e.g. the networks that fit the budget); the suite's report still
      covers every variant evaluated so far.
    train: False evaluates only the variants already trained.
    evaluate: False trains the missing variants and evaluates nothing (e.g.
      the trainings first, each within one working day; the evaluation, which
      resumes cell by cell, after).
    max_images: use only the first N images of every dataset (smoke runs).
    plots: also draw each variant's report figures (``plots.make_plots``);
      the suite figure is always drawn.
    log: progress lines.

  Returns:
    dict(suite_dir, table (list of dicts, see ``suite_table``), skipped_variants
    (not trained, train=False), busy_variants (locked by another process: run
    the suite again when it is done)).

  Raises:
    ValueError: a suite directory made with another recipe / budget;
      ``precision`` 'mixed_bfloat16' where this process cannot run it
      (``precision.check_bf16_kernels``), before any training;
    FileNotFoundError / ValueError: missing data; trainer errors.
  """
  suite_dir = os.path.join(output_dir, suite.name)
  eval_settings = dict(clean_datasets=list(clean_datasets), attack_datasets=list(attack_datasets),
                       attack_images=int(attack_images), attacks=list(attacks),
                       eps_255=[round(e * 255, 6) for e in eps], steps=int(steps),
                       clever=bool(clever), clever_samples=int(clever_samples),
                       precision=precision, max_images=max_images)
  if not isinstance(eot_samples, int) or isinstance(eot_samples, bool) or eot_samples < 1:
    raise ValueError(f"eot_samples must be an integer >= 1, got {eot_samples!r}.")
  if suite.has_defenses:
    eval_settings["eot_samples"] = eot_samples
  if evaluate and precision == "mixed_bfloat16":
    check_bf16_kernels()  # not after hours of training, at the first attack cell
  selected = suite if variants is None else studies.select_variants(suite, variants)
  # Every input is checked before anything is written or trained.
  scale = recipe.scale
  sets = {}
  for name in dict.fromkeys(tuple(clean_datasets) + tuple(attack_datasets)):
    sets[name] = data.load_pairs(name, scale, data_dir=recipe.data_dir, max_images=max_images)
  _check_suite_dir(suite_dir, suite, recipe, eval_settings)
  skipped, busy = [], []
  for index, (variant, config, status) in enumerate(plan(selected, recipe, runs_root,
                                                          output_dir), 1):
    log(f"[{suite.name} {index}/{len(selected.variants)}] {variant.name}: {config.run_dir} "
        f"({status})")
    if not status.startswith("trained"):
      if not train:
        skipped.append(variant.name)
        continue
    if not run_copies.trained(config):
      with fileio.ProcessLock(config.run_dir) as locked:
        if not locked:
          log(f"  {config.run_dir} is being trained by process {locked.owner}: skipped for now")
          busy.append(variant.name)
          continue
        if not run_copies.trained(config):  # another process may have finished it meanwhile
          run_copies.restore_run(config, output_dir, log=log)  # from another machine's results
        if not run_copies.trained(config):
          trainer.train(config, log=log, flags_text=flags_text(config))
    report_dir = suite_report.variant_report_dir(suite_dir, variant)
    with fileio.ProcessLock(report_dir) as locked:
      if not locked:  # (its run files are copied by that process)
        if evaluate:
          log(f"  {report_dir} is being evaluated by process {locked.owner}: skipped for now")
          busy.append(variant.name)
        continue
      run_copies.copy_run_files(config, os.path.join(suite_dir, "runs",
                                                     reports.safe_name(variant.name)),
                                flags_text(config))
      if not evaluate:
        continue
      nets = _variant_models(config, variant, eot_samples)
      shared = share_evaluation(output_dir, suite, variant, recipe, eval_settings,
                                nets[variant.name].fingerprint) \
          if variant.defense == "none" else 0
      if shared:
        log(f"  {shared} cells taken from other suites' reports of the same network")
      evaluation.evaluate(nets, {k: sets[k] for k in clean_datasets}, report_dir,
                          attacks=(), plots=False, progress=True)
      attacked = {k: (sets[k] if k == "set5" else sets[k][:attack_images])
                  for k in attack_datasets}
      # The attacked images are cached in the run: the network's non-adaptive views behind
      # the pre-processing defenses (other variants, other suites) reuse them.
      evaluation.evaluate(nets, attacked, report_dir, attacks=attacks, eps=eps, steps=steps,
                          precision=precision, plots=False, progress=True,
                          adversarial_dir=os.path.join(config.run_dir, ADVERSARIAL_DIR))
      # CLEVER scores the SR network: behind a defense it is the bare network's (non-adaptive)
      # or undefined (JPEG is not differentiable), and EOT would multiply its cost by k.
      if clever and "set5" in sets and variant.defense == "none":
        evaluation.evaluate(nets, {"set5": sets["set5"]}, report_dir, attacks=(), clever=True,
                            clever_samples=clever_samples, clever_batch=clever_batch,
                            precision=precision, plots=plots, progress=True)
  expected = suite_report.expected_cells(suite, eval_settings, {k: len(v) for k, v in sets.items()})
  table = suite_report.write_suite_report(suite, suite_dir, recipe, expected=expected)
  return dict(suite_dir=suite_dir, table=table, skipped_variants=skipped, busy_variants=busy)


def rewrite_suite_report(suite, recipe, output_dir=os.path.join("results", "experiments")):
  """Write ``suite.md`` / ``suite.png`` again from the variants' reports so far; run nothing.

  For a suite in progress (or after changing the report's format): the
  evaluation settings come from the suite's ``suite.json``, the variants still
  being evaluated are listed with their cells so far (``expected_cells``).

  Returns:
    the suite table (``suite_table``).

  Raises:
    FileNotFoundError: no ``suite.json`` under ``<output_dir>/<suite>`` (the
      suite never ran there), or a dataset of its settings is missing.
    ValueError: ``suite.json`` is not valid JSON, holds no evaluation
      settings, or records another suite.
  """
  suite_dir = os.path.join(output_dir, suite.name)
  path = os.path.join(suite_dir, SUITE_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No suite report to rewrite: {path} does not exist (run "
                            f"--suite={suite.name} with this --output_dir first).")
  saved = _read_suite_record(path)
  if not isinstance(saved, dict) or not isinstance(saved.get("evaluation"), dict):
    raise ValueError(f"{path} holds no evaluation settings ('evaluation'); restore it or run "
                     "the suite again.")
  if saved.get("suite") != suite.name:
    raise ValueError(f"{path} records suite {saved.get('suite')!r}, not {suite.name!r}.")
  settings = saved["evaluation"]
  names = dict.fromkeys(settings["clean_datasets"] + settings["attack_datasets"])
  sizes = {name: len(data.load_pairs(name, recipe.scale, data_dir=recipe.data_dir,
                                     max_images=settings.get("max_images")))
           for name in names}
  expected = suite_report.expected_cells(suite, settings, sizes)
  return suite_report.write_suite_report(suite, suite_dir, recipe, expected=expected)


def studies_overview(output_dir, recipe, dataset="bsd100", eps_255=4.0):
  """Write the overview of every network the suites under ``output_dir`` trained with
  ``recipe`` (``overview.write_overview``: ``overview.md`` / ``overview.png``).

  Each undefended variant's network (its run name) is one entry, with the
  suites/variants it stands for and the rows of the variant report that has
  the most cells (suites share a network's cells); its baseline is the run of
  the same model at lambda = 0. Suites made with another recipe are left out.

  Returns:
    the ``overview.network_differences`` list (empty: nothing written).
  """
  ours = _sharing_record(dict(recipe=_recipe_record(recipe)))["recipe"]
  networks = {}
  for other, saved, variants in _suite_records(output_dir):
    if saved.get("recipe") != ours:
      continue
    for variant in variants:
      if variant.defense != "none":
        continue
      run = studies.run_name(recipe, variant)
      model = studies.variant_config(recipe, variant, runs_root="").model
      plain = studies.Variant("plain", (("model", model), ("entropy_weight", 0.0)))
      rows = reports.read_rows(suite_report.variant_report_dir(
          os.path.join(output_dir, other), variant), repair=False)
      entry = networks.setdefault(run, dict(baseline=studies.run_name(recipe, plain),
                                            variants=[], rows=[]))
      entry["variants"].append(f"{other}/{variant.name}")
      if len({r.get("cell") for r in rows}) > len({r.get("cell") for r in entry["rows"]}):
        entry["rows"] = rows
  return overview.write_overview(output_dir, networks, dataset=dataset, eps_255=eps_255)


def share_evaluation(output_dir, suite, variant, recipe, eval_settings, fingerprint):
  """Copy into ``variant``'s report the finished cells of the same network from other suites.

  The lambda = 1 network is a variant of six suites and the plain one of five;
  each suite reports it under its own name (``lambda=1``, ``PE+noise``...).
  Their cells are equal when the suite directories under ``output_dir`` record
  the same recipe and evaluation settings and the rows the same model
  fingerprint, so they are evaluated once and copied (renamed, with a
  ``shared_from`` field '<suite>/<variant>'), together with their example files.
  Only undefended variants share (``defense`` 'none').

  Returns:
    the number of rows copied (0 when nothing new was found).
  """
  ours = suite_report.variant_report_dir(os.path.join(output_dir, suite.name), variant)
  target = studies.run_name(recipe, variant)
  record = _sharing_record(dict(recipe=_recipe_record(recipe), evaluation=eval_settings))
  have = {r.get("cell") for r in reports.read_rows(ours)}
  copied = 0
  for other, saved, their_variants in _suite_records(output_dir):
    if _sharing_record(saved) != record:
      continue
    for theirs in their_variants:
      if theirs.defense != "none" or studies.run_name(recipe, theirs) != target or (
          other == suite.name and theirs.name == variant.name):
        continue
      source = suite_report.variant_report_dir(os.path.join(output_dir, other), theirs)
      old_key = f"|{theirs.name}|{fingerprint}|"
      for row in reports.read_rows(source, repair=False):
        if row.get("model") != theirs.name or row.get("model_id") != fingerprint or \
            old_key not in row.get("cell", ""):
          continue
        cell = row["cell"].replace(old_key, f"|{variant.name}|{fingerprint}|", 1)
        if cell in have:
          continue
        os.makedirs(ours, exist_ok=True)
        _copy_example(source, ours, theirs.name, variant.name, row)
        reports.append_row(ours, dict(row, model=variant.name, cell=cell,
                                      shared_from=row.get("shared_from",
                                                          f"{other}/{theirs.name}")))
        have.add(cell)
        copied += 1
  return copied


def _suite_records(output_dir):
  """[(suite directory name, its suite.json record, its Variants)] of the suites under
  ``output_dir``, by name."""
  out = []
  for other in sorted(os.listdir(output_dir)) if os.path.isdir(output_dir) else ():
    path = os.path.join(output_dir, other, SUITE_FILE)
    if os.path.isfile(path):
      saved = _read_suite_record(path)
      variants = [studies.Variant(v["name"], tuple(tuple(t) for t in v["train"]), v["defense"])
                  for v in saved.get("variants", ())]
      out.append((other, saved, variants))
  return out


def _sharing_record(record):
  """What of a ``suite.json`` record decides an undefended network's cells, as JSON has it
  (the EOT draws only change the defended variants')."""
  evaluation = {k: v for k, v in (record.get("evaluation") or {}).items() if k != "eot_samples"}
  return json.loads(fileio.json_text(dict(recipe=record.get("recipe"), evaluation=evaluation)))


def _copy_example(source, target, old_name, new_name, row):
  """The example .npz of an attack row, if the source report saved one, under the new name."""
  if row.get("kind") != "attack":
    return
  label = reports.attack_label(row)
  src = reports.example_path(source, old_name, row["dataset"], row["image"], label,
                             row["eps_255"])
  dst = reports.example_path(target, new_name, row["dataset"], row["image"], label,
                             row["eps_255"])
  if os.path.isfile(src) and not os.path.isfile(dst):
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copyfile(src, dst + ".tmp")
    os.replace(dst + ".tmp", dst)


def flags_text(config):
  """The TrainConfig as ``python -m tfsr_defense.train`` flags (one per line, for --flagfile)."""
  from tfsr_defense import train  # pylint: disable=g-import-not-at-top
  lines = []
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    if field.name not in train.FLAGS or value is None:
      continue
    if isinstance(value, (list, tuple)):
      value = ",".join(str(v) for v in value)
    elif field.name == "adv_eps":  # the flag takes /255 units
      value = f"{value * 255:g}"
    lines.append(f"--{field.name}={value}\n")
  return "".join(lines)


def _clever_samples_done(report_dir, clever_samples):
  """Gradients already kept by the unfinished CLEVER cells of ``report_dir`` (their partial
  files, ``evaluation.clever_partial_path``) made with ``clever_samples``; 0 for an unreadable
  file (the evaluation starts that cell over)."""
  partial = os.path.join(report_dir, evaluation.PARTIAL_DIR)
  names = sorted(os.listdir(partial)) if os.path.isdir(partial) else []
  done = 0
  for name in names:
    if not (name.startswith("clever__") and name.endswith(".json")):
      continue
    try:
      with open(os.path.join(partial, name), encoding="utf-8") as f:
        state = json.load(f)
      if state["settings"]["num_samples"] == clever_samples:
        done += min(len(state["grad_norms"]), clever_samples)
    except (OSError, ValueError, KeyError, TypeError):
      continue
  return done


def remaining_gradients(suite, recipe, *, output_dir, runs_root,
                        attack_datasets=("set5", "bsd100"), attack_images=20,
                        attacks=("fda", "ifgsm"), eps=evaluation.DEFAULT_EPS, steps=50,
                        clever=True, clever_samples=1024, eot_samples=2, fda_steps=10,
                        max_images=None):
  """Input gradients the evaluation of each variant still needs (an estimate for planning).

  Counts the attack and CLEVER cells missing from the variant's report, taking
  as done the cells of the same training run in another suite's report under
  ``output_dir`` made with the same recipe (``share_evaluation`` copies them;
  the weights and evaluation settings are not compared here). An I-FGSM cell
  costs ``steps`` gradients, an FDA cell about 1.5 x ``fda_steps`` (its many
  feature maps), CLEVER ``clever_samples`` per Set5 image (undefended variants
  only) less the gradients an interrupted CLEVER cell of the variant's report
  has kept. Behind a defense the non-adaptive view reuses the bare network's
  attacked images, cached in its run as they are computed: it costs nothing,
  but for the bare network's cells finished before without the cache at hand
  (another suite's on another machine: ``_cached_attacks``), which are
  attacked again once per network; the adaptive view through random resizing
  costs ``eot_samples`` times as much.

  Returns:
    dict variant name -> gradients (float), in the suite's order.
  """
  def count(rows, model, kind, attack=None):
    return sum(1 for r in rows if r.get("model") == model and r.get("kind") == kind
               and (attack is None or r.get("attack") == attack))

  per_image = {"ifgsm": steps, "fda": 1.5 * fda_steps}
  images = 0
  for name in attack_datasets:
    n = 5 if name == "set5" else attack_images
    images += n if max_images is None else min(n, max_images)
  set5 = 5 if max_images is None else min(5, max_images)
  ours = _sharing_record(dict(recipe=_recipe_record(recipe)))["recipe"]
  runs = {}  # run name -> [(rows, report name)]: undefended variants of same-recipe suites
  for other, saved, their_variants in _suite_records(output_dir):
    if saved.get("recipe") != ours:
      continue
    for theirs in their_variants:
      if theirs.defense == "none":
        their_dir = suite_report.variant_report_dir(os.path.join(output_dir, other), theirs)
        rows = reports.read_rows(their_dir, repair=False)
        runs.setdefault(studies.run_name(recipe, theirs), []).append((rows, theirs.name))
  out = {}
  paid = set()  # networks whose missing non-adaptive attacks are counted already
  for variant in suite.variants:
    own_dir = suite_report.variant_report_dir(os.path.join(output_dir, suite.name), variant)
    own = reports.read_rows(own_dir, repair=False)
    if variant.defense == "none":
      sources = [(own, variant.name)] + runs.get(studies.run_name(recipe, variant), [])
      views = {variant.name: 1.0}
    else:
      sources = [(own, None)]
      random = isinstance(defenses.parse_defense(variant.defense), defenses.RandomResizePad)
      views = {f"{variant.name} [{t}]": 0.0 if t == "non-adaptive" else
               (float(eot_samples) if random else 1.0) for t in defenses.THREAT_MODELS}
    grads = 0.0
    for view, factor in views.items():
      missing = {attack: max(images * len(eps) - max(count(rows, name or view, "attack", attack)
                                                      for rows, name in sources), 0)
                 for attack in attacks}
      if view.endswith("[non-adaptive]"):
        # The bare network's attacks are cached as its own cells are computed; those it has
        # already (another suite's, another machine's) are attacked again, once per network,
        # unless the run's cache holds them.
        run_dir = studies.variant_config(recipe, variant, runs_root).run_dir
        bare = runs.get(studies.run_name(recipe, variant), [])
        again = {attack: min(missing[attack], max((count(rows, name, "attack", attack)
                                                   for rows, name in bare), default=0))
                 for attack in attacks}
        missing = {attack: 0 for attack in attacks}
        if any(again.values()) and run_dir not in paid and \
            _cached_attacks(run_dir) < images * len(eps) * len(attacks):
          missing, factor = again, 1.0
          paid.add(run_dir)
      for attack in attacks:
        grads += factor * per_image.get(attack, steps) * missing[attack]
    if clever and variant.defense == "none":
      done = max(count(rows, name, "clever") for rows, name in sources)
      if set5 > done:
        grads += max(clever_samples * (set5 - done)
                     - _clever_samples_done(own_dir, clever_samples), 0)
    out[variant.name] = grads
  return out


def _cached_attacks(run_dir):
  """The most attacked images the run's cache (``ADVERSARIAL_DIR``, ``evaluation``'s
  ``adversarial_dir``) holds for one network (attack fingerprint); 0 without a cache."""
  root = os.path.join(run_dir, ADVERSARIAL_DIR)
  if not os.path.isdir(root):
    return 0
  return max((sum(1 for f in os.listdir(os.path.join(root, d)) if f.endswith(".npy"))
              for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))), default=0)


def remaining_work(suites, recipe, *, runs_root, **evaluation_settings):
  """What is left of several suites, a network shared by suites counted once.

  Training: the steps to go of every distinct run directory, a step of
  adversarial training with T attack steps counted as 1 + T steps (each
  attack step is another forward and backward pass over the batch; measured
  here: 2.0 against 1.3 s per step with T = 1, so about an upper bound).
  Evaluation:
  ``remaining_gradients`` per variant, once per training run for the
  undefended variants (the suites share their cells, ``share_evaluation``)
  and once per suite variant behind a defense.

  Returns:
    dict(variants=[(suite name, variant, TrainConfig, status, gradients)],
    runs: run directories with training left, steps: their steps (weighted as above),
    evaluations: networks / defended variants with gradients left,
    gradients: their sum,
    by_model: {model name: (steps, gradients)}, the same split by network).
  """
  variants, steps, grads, models_of = [], {}, {}, {}
  for suite in suites:
    left = remaining_gradients(suite, recipe, runs_root=runs_root, **evaluation_settings)
    output_dir = evaluation_settings.get("output_dir")
    for variant, config, status in plan(suite, recipe, runs_root, output_dir):
      variants.append((suite.name, variant, config, status, left[variant.name]))
      done, _ = _progress(config, output_dir)
      if done < config.steps:
        cost = 1 + config.adv_steps if config.adversarial != "none" else 1
        steps[config.run_dir] = (config.steps - done) * cost
        models_of[config.run_dir] = config.model
      key = (studies.run_name(recipe, variant) if variant.defense == "none"
             else (suite.name, variant.name))
      grads[key] = max(grads.get(key, 0.0), left[variant.name])
      models_of[key] = config.model
  by_model = {}
  for table, slot in ((steps, 0), (grads, 1)):
    for key, amount in table.items():
      if amount > 0:
        totals = by_model.setdefault(models_of[key], [0, 0.0])
        totals[slot] += amount
  return dict(variants=variants, runs=len(steps), steps=sum(steps.values()),
              evaluations=sum(1 for g in grads.values() if g > 0),
              gradients=sum(grads.values()),
              by_model={m: tuple(t) for m, t in by_model.items()})


def estimate_seconds(suite, recipe, *, runs_root, seconds_per_step=None, seconds_per_grad=None,
                     **evaluation_settings):
  """Rough time of what is left of a suite (one process).

  Returns:
    (seconds, training steps left, input gradients left) of ``remaining_work``
    for this one suite: steps x ``seconds_per_step`` + gradients x
    ``seconds_per_grad``; ``evaluation_settings`` are ``remaining_gradients``'s
    keyword arguments.
  """
  work = remaining_work([suite], recipe, runs_root=runs_root, **evaluation_settings)
  steps, grads = work["steps"], work["gradients"]
  return steps * (seconds_per_step or 0.0) + grads * (seconds_per_grad or 0.0), steps, grads


def measure_step_and_gradient(recipe):
  """(s per training step of the recipe's network, s per input gradient on a 120x80 LR image)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tfsr_defense import attacks, precision  # pylint: disable=g-import-not-at-top
  with precision.policy_scope(precision.resolve_precision(recipe.precision)):
    model = models.build_model(recipe.model, recipe.scale, entropy_weight=recipe.lam,
                               delta=recipe.delta)
  x = tf.random.uniform([recipe.batch_size, recipe.patch_size, recipe.patch_size, 3])
  y = tf.random.uniform([recipe.batch_size, recipe.patch_size * recipe.scale,
                         recipe.patch_size * recipe.scale, 3])
  optimizer = tf.keras.optimizers.Adam(1e-4)

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(tf.abs(model(x, training=True) - y)) + tf.add_n(model.losses or [0.0])
    optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                  model.trainable_variables))
  step()
  start = time.perf_counter()
  step()
  step_time = time.perf_counter() - start
  engine = attacks.GradientEngine(trainer.build_for_inference(recipe))
  image = tf.random.uniform([1, 80, 120, 3])
  attacks.ifgsm.attack(engine, image, eps=1 / 255, steps=1)
  start = time.perf_counter()
  attacks.ifgsm.attack(engine, image, eps=1 / 255, steps=5)
  return step_time, (time.perf_counter() - start) / 5


def network_rates(networks, recipe, step_time=None, grad_time=None, measure=None):
  """Seconds per training step and per input gradient of each network, for ``--dry_run``.

  The recipe's network takes ``step_time`` / ``grad_time`` where given, else its rates
  are measured here (``measure``). Every other network is measured here, in the same
  process, beside the recipe's network; where a rate of the recipe's network was given,
  the other network's rate is the given one times the ratio measured here (a ratio of
  one process holds however busy the machine is; the given rates are usually those of
  the runs' logs on a loaded machine).

  Args:
    networks: model names (``models.registry``) to price.
    recipe: the suite recipe (TrainConfig): batch, patch, scale and precision of the step.
    step_time, grad_time: given seconds of the recipe's network, or None.
    measure: fn(TrainConfig) -> (s per step, s per 120x80 LR input gradient); None:
      ``measure_step_and_gradient`` (2-3 minutes per network with both cores busy).

  Returns:
    (rates, source): rates = {model name: (s per step, s per gradient)} for ``networks``
    and the recipe's network; source: how they were obtained, for the printout.
  """
  others = sorted(set(networks) - {recipe.model})
  given = step_time is not None and grad_time is not None
  if given and not others:
    return {recipe.model: (step_time, grad_time)}, "given"
  measure = measure or measure_step_and_gradient
  base = measure(recipe)
  own = (base[0] if step_time is None else step_time, base[1] if grad_time is None else grad_time)
  rates = {recipe.model: own}
  for name in others:
    rate = measure(dataclasses.replace(recipe, model=name, entropy_weight=None))
    rates[name] = (rate[0] * own[0] / base[0], rate[1] * own[1] / base[1])
  if step_time is None and grad_time is None:
    return rates, "measured here on a 120x80 LR image"
  return rates, (f"{recipe.model}'s given, the other networks' scaled by their ratio to "
                 f"{recipe.model} measured here on a 120x80 LR image")


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

FLAGS = flags.FlagValues()
ALL_SUITES = "all"
flags.DEFINE_enum("suite", None, studies.known_suites() + [ALL_SUITES], "The study to run ('all': "
                  "every suite, with --dry_run or --report_only only).", flag_values=FLAGS)
flags.DEFINE_string("recipe", DEFAULT_RECIPE, "Shared recipe flag file of the suite.",
                    flag_values=FLAGS)
flags.DEFINE_integer("steps", None, "Training steps per variant (default: the recipe's 4000); "
                     "the learning-rate boundaries scale with it.", flag_values=FLAGS)
flags.DEFINE_string("data_dir", None, f"Data directory (default ${data.DATA_DIR_ENV}).",
                    flag_values=FLAGS)
flags.DEFINE_string("output_dir", os.path.join("results", "experiments"),
                    "Reports go to <output_dir>/<suite>/.", flag_values=FLAGS)
flags.DEFINE_string("runs_root", os.path.join("runs", "experiments"),
                    "Training runs go to <runs_root>/<run name>/.", flag_values=FLAGS)
flags.DEFINE_list("clean_datasets", ["set5", "set14", "bsd100"],
                  "Datasets of the clean PSNR-Y / SSIM-Y (all images).", flag_values=FLAGS)
flags.DEFINE_list("attack_datasets", ["set5", "bsd100"],
                  "Datasets attacked (Set5 whole, others' first --attack_images).",
                  flag_values=FLAGS)
flags.DEFINE_integer("attack_images", 20, "Images attacked per dataset other than Set5.",
                     flag_values=FLAGS)
flags.DEFINE_list("attacks", ["fda", "ifgsm"], "Attacks (FDA with the official settings).",
                  flag_values=FLAGS)
flags.DEFINE_list("eps", ["1", "2", "4", "8", "16", "32"], "eps in units of 1/255.",
                  flag_values=FLAGS)
flags.DEFINE_integer("attack_steps", 50, "I-FGSM iterations (paper: 50).", flag_values=FLAGS)
flags.DEFINE_bool("clever", True, "CLEVER on Set5 (undefended variants).", flag_values=FLAGS)
flags.DEFINE_integer("clever_samples", 1024, "CLEVER N_s (paper: 1024).", flag_values=FLAGS)
flags.DEFINE_enum("precision", "float32", ("float32", "mixed_bfloat16"),
                  "Attack / CLEVER gradient precision.", flag_values=FLAGS)
flags.DEFINE_integer("eot_samples", 2, "Random draws averaged per gradient by the adaptive "
                     "attack on random resizing (EOT; pre-processing suite; see "
                     "results/benchmarks/eot_samples_avx512bf16.txt).", lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_multi_string("variant", None, "Train and evaluate only this variant of the suite "
                          "(repeat the flag for several; default: all).", flag_values=FLAGS)
flags.DEFINE_multi_string("exclude_variant", None, "Leave this variant out (repeatable; with "
                          "--suite=all, of whichever suite has it), e.g. the networks suite's "
                          "'rcan plain'.", flag_values=FLAGS)
flags.DEFINE_integer("max_images", None, "Only the first N images of every dataset (smoke runs).",
                     flag_values=FLAGS)
flags.DEFINE_bool("train", True, "Train missing variants (false: evaluate trained ones only).",
                  flag_values=FLAGS)
flags.DEFINE_bool("evaluate", True, "Evaluate the trained variants (false: train the missing "
                  "ones only).", flag_values=FLAGS)
flags.DEFINE_bool("dry_run", False, "Print the plan and its estimated time; change nothing.",
                  flag_values=FLAGS)
flags.DEFINE_float("seconds_per_step", None, "--dry_run: seconds per training step to estimate "
                   "with (default: time one step of the recipe's network here, now).",
                   lower_bound=0.0, flag_values=FLAGS)
flags.DEFINE_float("seconds_per_gradient", None, "--dry_run: seconds per input gradient of a "
                   "120x80 LR image (default: time one here, now); e.g. the rate of the runs' "
                   "logs when other processes load this machine.", lower_bound=0.0,
                   flag_values=FLAGS)
flags.DEFINE_bool("report_only", False, "Write the suite's suite.md / suite.png again from "
                  "its reports so far (settings from its suite.json), and the overview of "
                  "every suite's networks (overview.md / overview.png in --output_dir); train "
                  "and evaluate nothing.", flag_values=FLAGS)
flags.DEFINE_bool("save_progress", False, "Copy the newest checkpoint of every unfinished "
                  "training run of the suite(s) into <output_dir>/<suite>/runs/<variant>/ckpt/, "
                  "so that a machine with the results but not --runs_root resumes it (a re-run "
                  "restores runs from there); train and evaluate nothing.", flag_values=FLAGS)
flags.mark_flag_as_required("suite", flag_values=FLAGS)


def _dry_run(suites, recipe, recipe_path, runs_root, settings, step_time=None, grad_time=None):
  """Print each suite's plan and, for several, the total with shared networks counted once.

  ``step_time`` / ``grad_time``: seconds per training step / input gradient of the
  recipe's network; None measures them here. Each network is priced at its own rates
  (``network_rates``)."""
  work = remaining_work(suites, recipe, runs_root=runs_root, **settings)
  for suite in suites:
    print(f"Suite '{suite.name}' ({suite.paper}), recipe {recipe_path} "
          f"({recipe.steps} steps per variant):")
    for name, variant, config, status, grads in work["variants"]:
      if name == suite.name:
        print(f"  {variant.name:28s} {config.run_dir:45s} {status}; "
              f"~{grads:,.0f} input gradients of evaluation left")
  rates, source = (network_rates(work["by_model"], recipe, step_time, grad_time)
                   if work["by_model"] else ({}, "not needed: nothing is left"))
  lines, seconds = [], 0.0
  for name, (steps, grads) in sorted(work["by_model"].items()):
    cost = steps * rates[name][0] + grads * rates[name][1]
    seconds += cost
    lines.append(f"  {name}: {steps} steps x {rates[name][0]:.2f} s + {grads:,.0f} input "
                 f"gradients x {rates[name][1]:.3f} s = {cost / 3600:.1f} h")
  hours = seconds / 3600
  what = (f"{work['runs']} training runs ({work['steps']} steps) and {work['evaluations']} "
          f"evaluations (~{work['gradients']:,.0f} input gradients): {hours:.1f} h")
  if len(suites) == 1:
    print(f"Estimated: {what} in one process (what is left: finished and shared cells are "
          f"not counted; seconds per step and gradient {source}):")
  else:
    print(f"All {len(suites)} suites, each network trained and evaluated once: {what} in one "
          f"process, ~{hours / 2:.1f} h in two (an adversarial-training step counted as 1 + T "
          f"steps; seconds per step and gradient {source}):")
  for line in lines:
    print(line)


def main(argv):
  del argv
  recipe = load_recipe(FLAGS.recipe, FLAGS.steps, FLAGS.data_dir)
  eps = []
  for v in FLAGS.eps:
    try:
      eps.append(float(v) / 255.0)
    except ValueError:
      raise ValueError(f"--eps takes numbers in units of 1/255; got {v!r}.") from None
  if FLAGS.suite == ALL_SUITES:
    if not (FLAGS.dry_run or FLAGS.report_only or FLAGS.save_progress) or FLAGS.variant:
      raise ValueError("--suite=all goes with --dry_run, --report_only or --save_progress (and "
                       "--exclude_variant, not --variant); run the suites one by one.")
    suites = [studies.get_suite(name) for name in studies.known_suites()]
  else:
    suites = [studies.get_suite(FLAGS.suite)]
    if FLAGS.variant:
      suites = [studies.select_variants(suites[0], FLAGS.variant)]
  if FLAGS.exclude_variant:
    suites = studies.exclude_variants(suites, FLAGS.exclude_variant)
    if not suites:
      raise ValueError("--exclude_variant leaves no variant to run.")
  if FLAGS.save_progress:
    copied = [save_progress(suite, recipe, FLAGS.output_dir, FLAGS.runs_root) for suite in suites]
    if not any(copied):
      print(f"No unfinished training run under {FLAGS.runs_root} holds more than the results.")
    return
  if FLAGS.report_only:
    for suite in suites:
      if FLAGS.suite == ALL_SUITES and not os.path.isfile(
          os.path.join(FLAGS.output_dir, suite.name, SUITE_FILE)):
        print(f"Suite '{suite.name}': not run yet under {FLAGS.output_dir}; skipped.")
        continue
      rewrite_suite_report(studies.get_suite(suite.name), recipe, FLAGS.output_dir)
      print(f"Suite report: {os.path.join(FLAGS.output_dir, suite.name, suite_report.TABLE_FILE)}")
    if studies_overview(FLAGS.output_dir, recipe):
      print(f"Overview of the networks: {os.path.join(FLAGS.output_dir, overview.TABLE_FILE)}")
    return
  if FLAGS.dry_run:
    _dry_run(suites, recipe, FLAGS.recipe, FLAGS.runs_root, dict(
        output_dir=FLAGS.output_dir, attack_datasets=FLAGS.attack_datasets,
        attack_images=FLAGS.attack_images, attacks=FLAGS.attacks, eps=eps,
        steps=FLAGS.attack_steps, clever=FLAGS.clever, clever_samples=FLAGS.clever_samples,
        eot_samples=FLAGS.eot_samples, max_images=FLAGS.max_images),
             step_time=FLAGS.seconds_per_step, grad_time=FLAGS.seconds_per_gradient)
    return
  suite = studies.get_suite(FLAGS.suite)  # the whole suite: its report covers every variant
  selected = ([v.name for v in suites[0].variants]
              if FLAGS.variant or FLAGS.exclude_variant else None)
  result = run_suite(
      suite, recipe, output_dir=FLAGS.output_dir, runs_root=FLAGS.runs_root,
      clean_datasets=FLAGS.clean_datasets, attack_datasets=FLAGS.attack_datasets,
      attack_images=FLAGS.attack_images, attacks=FLAGS.attacks, eps=eps,
      steps=FLAGS.attack_steps, clever=FLAGS.clever, clever_samples=FLAGS.clever_samples,
      precision=FLAGS.precision, eot_samples=FLAGS.eot_samples,
      variants=selected,
      train=FLAGS.train, evaluate=FLAGS.evaluate, max_images=FLAGS.max_images)
  print(f"Suite report: {os.path.join(result['suite_dir'], suite_report.TABLE_FILE)}")
  if result["busy_variants"]:
    print(f"Busy in another process (run the suite again later): "
          f"{', '.join(result['busy_variants'])}", file=sys.stderr)
  if result["skipped_variants"]:
    print(f"Not trained yet (--train=false): {', '.join(result['skipped_variants'])}",
          file=sys.stderr)


def run(argv=None):
  """Console entry point ``tfsr-experiment``."""
  cli.run(main, FLAGS, prog="tfsr_defense.experiment", doc=__doc__, argv=argv,
          errors=(ValueError, FileNotFoundError, trainer.CheckpointError))


if __name__ == "__main__":
  run()
