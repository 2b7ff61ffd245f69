"""The paper's studies (Choi et al., ACCV 2020, sec. 5.1-5.6) as suites: train, evaluate, tabulate.

    python -m tfsr_defense.experiment --suite=lambda --dry_run     # the plan and its estimated time
    python -m tfsr_defense.experiment --suite=lambda               # train + evaluate (resumable)
    python -m tfsr_defense.experiment --suite=all --dry_run        # what is left of every study

A suite is a list of variants of one shared recipe (``flags/experiments/edsr_x4_study.cfg``:
EDSR-baseline x4, T91 + BSD200, LR patch 32, batch 16, 4000 steps). A variant
changes only what its study varies (``SUITES``):

| suite | paper | variants |
|---|---|---|
| networks | sec. 5.1, Fig. 2 | each network plain and with the regularizer |
| ablation | sec. 5.2, Fig. 5 | none / probability estimation (PE) / noise / PE + noise |
| lambda | sec. 5.3, Fig. 6 | lambda = 0, 0.1, 1, 10 |
| target_layer | sec. 5.4, Fig. 7 | regularizer on the first conv, lambda = 0.1, 1, 10 |
| delta | sec. 5.5, Fig. 8 | delta = 0.01, 0.1, 1, 10 at lambda = 1 |
| adversarial | sec. 5.6, Fig. 9 | ER, Adv (I-FGSM alpha 8/255, T 1), ER + Adv |
| preprocessing | sec. 5.6 | plain and ER networks behind none / JPEG 75 / random resize |

Training runs live in ``runs/experiments/<run>/``, named by what they change
(``edsr_lambda0.1``...): a variant shared by several suites (the lambda = 1
network is in six) is trained once. Each run resumes from its checkpoints.
Every variant is then evaluated into ``results/experiments/<suite>/`` (the
report store of ``evaluation``: clean PSNR-Y / SSIM-Y on the clean datasets;
FDA (official: all ReLU maps) and I-FGSM at every eps on the attack datasets;
CLEVER on Set5 for the undefended variants) and the suite's table ``suite.md`` and figure
``suite.png`` (SR-PSNR against eps per variant, CLEVER against clean PSNR) are
written from it. A network evaluated in one suite is not evaluated again in
another with the same recipe and settings: its cells are copied
(``share_evaluation``). Re-running a suite skips finished training and finished
evaluation cells. The suite directory records its recipe; a re-run with
another recipe (or budget) is refused, so one suite never mixes recipes.
"""

import dataclasses
import json
import os
import shutil
import sys
import time

from absl import flags

from tfsr_defense import (cli, comparison, data, defenses, evaluation, fileio, models, reports,
                          trainer)

__all__ = ["Variant", "Suite", "SUITES", "known_suites", "get_suite", "load_recipe",
           "variant_config", "run_name", "select_variants", "exclude_variants", "plan",
           "remaining_gradients", "remaining_work", "run_suite", "expected_cells",
           "rewrite_suite_report", "share_evaluation", "suite_table", "paper_comparison",
           "paired_comparison", "write_suite_report", "PAPER_NUMBERS", "DEFAULT_RECIPE"]

DEFAULT_RECIPE = os.path.join("flags", "experiments", "edsr_x4_study.cfg")
SUITE_FILE = "suite.json"
TABLE_FILE = "suite.md"
FIGURE_FILE = "suite.png"
PAIRED_FIGURE_FILE = "suite_paired.png"


@dataclasses.dataclass(frozen=True)
class Variant:
  """One variant of a suite.

  Attributes:
    name: its label in the suite's reports (e.g. 'lambda=0.1').
    train: TrainConfig fields it changes from the recipe.
    defense: input pre-processing in front of the trained network at
      evaluation ('none', or a ``defenses.parse_defense`` spec, e.g. 'jpeg:75').
    baseline: the name of the suite's variant it is compared with image by
      image in ``suite.md`` (``comparison.paired_differences``); '' for none.
  """
  name: str
  train: tuple = ()   # ((field, value), ...): hashable, ordered
  defense: str = "none"
  baseline: str = ""

  @property
  def overrides(self):
    return dict(self.train)


@dataclasses.dataclass(frozen=True)
class Suite:
  """A study of the paper: its variants of the shared recipe."""
  name: str
  paper: str
  variants: tuple

  @property
  def has_defenses(self):
    """Whether a variant evaluates its network behind a pre-processing defense."""
    return any(v.defense != "none" for v in self.variants)


def _v(name, defense="none", baseline="", **train):
  return Variant(name, tuple(sorted(train.items())), defense, baseline)


_PLAIN = dict(entropy_weight=0.0)
_ER = dict(entropy_weight=1.0)

# Baselines (``Variant.baseline``): the plain network where the suite has one; in the delta
# study the paper's delta = 1, in the target-layer study the paper's default position.
SUITES = {s.name: s for s in (
    Suite("ablation", "sec. 5.2, Fig. 5", (
        _v("none", **_PLAIN),
        _v("PE", baseline="none", entropy_weight=1.0, noise=False),
        _v("noise", baseline="none", entropy_weight=1.0, estimate_entropy=False),
        _v("PE+noise", baseline="none", **_ER))),
    Suite("lambda", "sec. 5.3, Fig. 6", tuple(
        _v(f"lambda={lam:g}", baseline="lambda=0" if lam else "", entropy_weight=lam)
        for lam in (0.0, 0.1, 1.0, 10.0))),
    Suite("target_layer", "sec. 5.4, Fig. 7", tuple(
        _v(f"first conv, lambda={lam:g}", baseline="pre-upsampler, lambda=1",
           entropy_weight=lam, entropy_layer="first")
        for lam in (0.1, 1.0, 10.0)) + (_v("pre-upsampler, lambda=1", **_ER),)),
    Suite("delta", "sec. 5.5, Fig. 8", tuple(
        _v(f"delta={d:g}", baseline="delta=1" if d != 1.0 else "", entropy_weight=1.0, delta=d)
        for d in (0.01, 0.1, 1.0, 10.0))),
    Suite("adversarial", "sec. 5.6, Fig. 9", (
        _v("plain", **_PLAIN),
        _v("ER", baseline="plain", **_ER),
        _v("Adv", baseline="plain", entropy_weight=0.0, adversarial="ifgsm"),
        _v("ER+Adv", baseline="plain", entropy_weight=1.0, adversarial="ifgsm"))),
    Suite("preprocessing", "sec. 2.3 and 5.6", tuple(
        _v(f"{net} + {label}", defense=defense,
           baseline="" if (net, defense) == ("plain", "none") else "plain + none", **train)
        for net, train in (("plain", _PLAIN), ("ER", _ER))
        for label, defense in (("none", "none"), ("JPEG 75", "jpeg:75"),
                               ("resize 0.9-1.1", "resize:0.9-1.1")))),
    Suite("networks", "sec. 5.1, Fig. 2", tuple(
        _v(f"{net} {kind}", baseline="" if kind == "plain" else f"{net} plain", model=net,
           **train)
        for net in ("edsr", "carn", "carn_m", "srresnet", "msrn", "rcan")
        for kind, train in (("plain", _PLAIN), ("ER", dict(entropy_weight=None))))),
)}


def known_suites():
  return sorted(SUITES)


def get_suite(name):
  """The Suite ``name``; ValueError listing the known suites otherwise."""
  try:
    return SUITES[name]
  except KeyError:
    raise ValueError(f"Unknown suite '{name}'. Known suites: {', '.join(known_suites())}.") \
        from None


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


def run_name(recipe, variant):
  """Run directory name of a variant: the network and what it changes from the recipe.

  E.g. 'edsr_lambda0', 'edsr_lambda1_delta0.01', 'edsr_lambda1_first', 'carn_lambda1'.
  Two variants with the same training configuration get the same name.
  """
  config = variant_config(recipe, variant, runs_root="")
  parts = [config.model, f"lambda{config.lam:g}"]
  if config.lam > 0:
    if config.delta != 1.0:
      parts.append(f"delta{config.delta:g}")
    if not config.noise:
      parts.append("nonoise")
    if not config.estimate_entropy:
      parts.append("noPE")
    if config.entropy_layer != "pre_upsampler":
      parts.append(config.entropy_layer)
  if config.adversarial != "none":
    parts.append(f"adv-{config.adversarial}{config.adv_eps * 255:g}x{config.adv_steps}")
  return "_".join(parts)


def variant_config(recipe, variant, runs_root=os.path.join("runs", "experiments")):
  """The TrainConfig of a variant: the recipe with the variant's changes and its run directory."""
  changes = dict(variant.overrides)
  config = dataclasses.replace(recipe, **changes)
  if "model" in changes and "entropy_weight" not in changes:
    config = dataclasses.replace(config, entropy_weight=None)
  if not runs_root:
    return config
  return dataclasses.replace(config, run_dir=os.path.join(runs_root, run_name(recipe, variant)))


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


def _trained(config):
  """True when the run directory holds the final weights of exactly ``config.steps`` steps."""
  path = os.path.join(config.run_dir, "result.json")
  if not os.path.isfile(path) or not os.path.isfile(os.path.join(config.run_dir,
                                                                 "model.weights.h5")):
    return False
  with open(path, encoding="utf-8") as f:
    return json.load(f).get("step") == config.steps


def select_variants(suite, names):
  """``suite`` with only the variants named in ``names`` (in the suite's order).

  Raises:
    ValueError: a name that is not a variant of the suite, or no name at all.
  """
  known = [v.name for v in suite.variants]
  unknown = [n for n in names if n not in known]
  if unknown or not names:
    raise ValueError(f"Unknown variant(s) {unknown} of suite '{suite.name}': use some of "
                     f"{known}.")
  return dataclasses.replace(suite, variants=tuple(v for v in suite.variants if v.name in names))


def exclude_variants(suites, names):
  """``suites`` without the variants named in ``names`` (a suite left empty is dropped).

  Raises:
    ValueError: a name that is a variant of none of the suites.
  """
  known = {v.name for suite in suites for v in suite.variants}
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ValueError(f"Unknown variant(s) {unknown}: not in suite(s) "
                     f"{', '.join(s.name for s in suites)}.")
  out = []
  for suite in suites:
    kept = tuple(v for v in suite.variants if v.name not in names)
    if kept:
      out.append(dataclasses.replace(suite, variants=kept))
  return out


def plan(suite, recipe, runs_root=os.path.join("runs", "experiments")):
  """[(variant, TrainConfig, status)] with status 'trained', 'resumable at step N' or 'new'."""
  out = []
  for variant in suite.variants:
    config = variant_config(recipe, variant, runs_root)
    if _trained(config):
      status = "trained"
    else:
      latest = _latest_step(config.run_dir)
      status = f"resumable at step {latest}" if latest else "new"
    out.append((variant, config, status))
  return out


def _latest_step(run_dir):
  ckpt = os.path.join(run_dir, "ckpt")
  if not os.path.isdir(ckpt):
    return 0
  steps = [int(f.split("-")[1].split(".")[0]) for f in os.listdir(ckpt)
           if f.startswith("ckpt-") and f.endswith(".index")]
  return max(steps) if steps else 0


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
              max_images=None, plots=True, log=print):
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
  selected = suite if variants is None else select_variants(suite, variants)
  # Every input is checked before anything is written or trained.
  scale = recipe.scale
  sets = {}
  for name in dict.fromkeys(tuple(clean_datasets) + tuple(attack_datasets)):
    sets[name] = data.load_pairs(name, scale, data_dir=recipe.data_dir, max_images=max_images)
  _check_suite_dir(suite_dir, suite, recipe, eval_settings)
  skipped, busy = [], []
  for index, (variant, config, status) in enumerate(plan(selected, recipe, runs_root), 1):
    log(f"[{suite.name} {index}/{len(selected.variants)}] {variant.name}: {config.run_dir} "
        f"({status})")
    if status != "trained":
      if not train:
        skipped.append(variant.name)
        continue
      with _Lock(config.run_dir) as locked:
        if not locked:
          log(f"  {config.run_dir} is being trained by process {locked.owner}: skipped for now")
          busy.append(variant.name)
          continue
        if not _trained(config):  # another process may have finished it meanwhile
          trainer.train(config, log=log, flags_text=flags_text(config))
    report_dir = variant_report_dir(suite_dir, variant)
    with _Lock(report_dir) as locked:
      if not locked:
        log(f"  {report_dir} is being evaluated by process {locked.owner}: skipped for now")
        busy.append(variant.name)
        continue
      _copy_run_files(config, os.path.join(suite_dir, "runs", reports.safe_name(variant.name)))
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
                          adversarial_dir=os.path.join(config.run_dir, "adversarial"))
      # CLEVER scores the SR network: behind a defense it is the bare network's (non-adaptive)
      # or undefined (JPEG is not differentiable), and EOT would multiply its cost by k.
      if clever and "set5" in sets and variant.defense == "none":
        evaluation.evaluate(nets, {"set5": sets["set5"]}, report_dir, attacks=(), clever=True,
                            clever_samples=clever_samples, clever_batch=clever_batch,
                            precision=precision, plots=plots, progress=True)
  expected = expected_cells(suite, eval_settings, {k: len(v) for k, v in sets.items()})
  table = write_suite_report(suite, suite_dir, recipe, expected=expected)
  return dict(suite_dir=suite_dir, table=table, skipped_variants=skipped, busy_variants=busy)


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
  return write_suite_report(suite, suite_dir, recipe,
                            expected=expected_cells(suite, settings, sizes))


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
  ours = variant_report_dir(os.path.join(output_dir, suite.name), variant)
  target = run_name(recipe, variant)
  record = _sharing_record(dict(recipe=_recipe_record(recipe), evaluation=eval_settings))
  have = {r.get("cell") for r in reports.read_rows(ours)}
  copied = 0
  for other, saved, their_variants in _suite_records(output_dir):
    if _sharing_record(saved) != record:
      continue
    for theirs in their_variants:
      if theirs.defense != "none" or run_name(recipe, theirs) != target or (
          other == suite.name and theirs.name == variant.name):
        continue
      source = variant_report_dir(os.path.join(output_dir, other), theirs)
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
      out.append((other, saved, [Variant(v["name"], tuple(tuple(t) for t in v["train"]),
                                         v["defense"]) for v in saved.get("variants", ())]))
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


def variant_report_dir(suite_dir, variant):
  """The evaluation report directory of one variant inside its suite's directory."""
  return os.path.join(suite_dir, "variants", reports.safe_name(variant.name))


class _Lock:
  """``<path>.lock`` held by this process while it trains / evaluates there (O_EXCL file).

  A lock whose process is gone is taken over. ``with _Lock(p) as locked``:
  ``bool(locked)`` says whether this process holds it; ``locked.owner`` is
  the pid that holds it otherwise. Two suites (or two processes of one suite,
  one per core) thus never train one run or fill one report at the same time.
  """

  def __init__(self, path):
    self.path = os.path.normpath(path) + ".lock"
    self.owner = None
    self.held = False

  def __enter__(self):
    os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
    for _ in range(2):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
      except FileExistsError:
        try:
          with open(self.path, encoding="utf-8") as f:
            self.owner = int(f.read().strip() or 0)
        except (OSError, ValueError):
          self.owner = 0
        if self.owner and _alive(self.owner):
          return self
        try:
          os.remove(self.path)  # a stale lock: its process is gone
        except FileNotFoundError:
          pass
        continue
      with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(str(os.getpid()))
      self.held, self.owner = True, os.getpid()
      return self
    return self

  def __bool__(self):
    return self.held

  def __exit__(self, *exc):
    if self.held:
      try:
        os.remove(self.path)
      except FileNotFoundError:
        pass
    return False


def _alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


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


def _copy_run_files(config, target):
  """The run's effective flags, config, validation result and (small) final weights."""
  os.makedirs(target, exist_ok=True)
  fileio.atomic_write(os.path.join(target, "flags.txt"), flags_text(config))
  names = ["config.json", "result.json"]
  # Weights only where small (EDSR-baseline, CARN: < 8 MB); the rest: rerun the command.
  weights = os.path.join(config.run_dir, "model.weights.h5")
  if os.path.isfile(weights) and os.path.getsize(weights) < 8 * 2 ** 20:
    names.append("model.weights.h5")
  for name in names:
    src = os.path.join(config.run_dir, name)
    if os.path.isfile(src):
      with open(src, "rb") as f:
        payload = f.read()
      with open(os.path.join(target, name), "wb") as f:
        f.write(payload)


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
  """Markdown lines of ``suite_table`` rows: clean PSNR columns first, then by name, set, eps."""
  columns = sorted({k for r in table for k in r if k != "variant"},
                   key=lambda k: (k.split("/")[0] != "psnr_y", k.split("/")[0],
                                  k.split("/")[1] if "/" in k else "",
                                  float(k.split("/")[2]) if k.count("/") == 2 else 0.0))
  lines = ["| variant | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
  for r in table:
    lines.append(f"| {r['variant']} | " + " | ".join(
        "–" if r.get(c) is None else f"{r[c]:.2f}" for c in columns) + " |")
  return lines


# The numbers the paper states for EDSR x4 on BSD100 (Choi et al., ACCV 2020: its lambda
# study (sec. 5.3), its delta study (sec. 5.5) and EDSR's FDA at eps = 4/255), by training run name
# (``run_name``): the plain network is lambda = 0, the defended one lambda = 1, delta = 1.
PAPER_NUMBERS = {
    "edsr_lambda0": {"psnr_y/bsd100": 27.54, "fda (relu)/bsd100/4": 31.65},
    "edsr_lambda0.1": {"psnr_y/bsd100": 27.53},
    "edsr_lambda1": {"psnr_y/bsd100": 27.28, "fda (relu)/bsd100/4": 41.03},
    "edsr_lambda10": {"psnr_y/bsd100": 26.41},
    "edsr_lambda1_delta0.01": {"psnr_y/bsd100": 26.89},
    "edsr_lambda1_delta0.1": {"psnr_y/bsd100": 27.13},
    "edsr_lambda1_delta10": {"psnr_y/bsd100": 27.34},
}
_QUANTITIES = {"psnr_y/bsd100": "clean PSNR-Y, BSD100 (dB)",
               "fda (relu)/bsd100/4": "FDA 4/255 SR-PSNR, BSD100 (dB)"}


def paper_comparison(suite, recipe, table):
  """Rows (variant, quantity, paper, ours) for the variants the paper states a number for.

  Only undefended variants whose training run is one of ``PAPER_NUMBERS``
  (EDSR x4 at the paper's lambda / delta); ``ours`` is None until evaluated.
  """
  ours = {r["variant"]: r for r in table}
  rows = []
  for variant in suite.variants:
    if variant.defense != "none":
      continue
    for key, paper in PAPER_NUMBERS.get(run_name(recipe, variant), {}).items():
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
  only). Behind a defense the non-adaptive view costs nothing (it reuses the
  bare network's cached attacks) and the adaptive one through random resizing
  ``eot_samples`` times as much.

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
        rows = reports.read_rows(variant_report_dir(os.path.join(output_dir, other), theirs),
                                 repair=False)
        runs.setdefault(run_name(recipe, theirs), []).append((rows, theirs.name))
  out = {}
  for variant in suite.variants:
    own = reports.read_rows(variant_report_dir(os.path.join(output_dir, suite.name), variant),
                            repair=False)
    if variant.defense == "none":
      sources = [(own, variant.name)] + runs.get(run_name(recipe, variant), [])
      views = {variant.name: 1.0}
    else:
      sources = [(own, None)]
      random = isinstance(defenses.parse_defense(variant.defense), defenses.RandomResizePad)
      views = {f"{variant.name} [{t}]": 0.0 if t == "non-adaptive" else
               (float(eot_samples) if random else 1.0) for t in defenses.THREAT_MODELS}
    grads = 0.0
    for view, factor in views.items():
      for attack in attacks:
        done = max(count(rows, name or view, "attack", attack) for rows, name in sources)
        grads += factor * per_image.get(attack, steps) * max(images * len(eps) - done, 0)
    if clever and variant.defense == "none":
      done = max(count(rows, name, "clever") for rows, name in sources)
      grads += clever_samples * max(set5 - done, 0)
    out[variant.name] = grads
  return out


def remaining_work(suites, recipe, *, runs_root, **evaluation_settings):
  """What is left of several suites, a network shared by suites counted once.

  Training: the steps to go of every distinct run directory. Evaluation:
  ``remaining_gradients`` per variant, once per training run for the
  undefended variants (the suites share their cells, ``share_evaluation``)
  and once per suite variant behind a defense.

  Returns:
    dict(variants=[(suite name, variant, TrainConfig, status, gradients)],
    runs: run directories with training left, steps: their steps,
    evaluations: networks / defended variants with gradients left,
    gradients: their sum).
  """
  variants, steps, grads = [], {}, {}
  for suite in suites:
    left = remaining_gradients(suite, recipe, runs_root=runs_root, **evaluation_settings)
    for variant, config, status in plan(suite, recipe, runs_root):
      variants.append((suite.name, variant, config, status, left[variant.name]))
      if status != "trained":
        steps[config.run_dir] = config.steps - _latest_step(config.run_dir)
      key = (run_name(recipe, variant) if variant.defense == "none"
             else (suite.name, variant.name))
      grads[key] = max(grads.get(key, 0.0), left[variant.name])
  return dict(variants=variants, runs=len(steps), steps=sum(steps.values()),
              evaluations=sum(1 for g in grads.values() if g > 0),
              gradients=sum(grads.values()))


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


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

FLAGS = flags.FlagValues()
ALL_SUITES = "all"
flags.DEFINE_enum("suite", None, known_suites() + [ALL_SUITES], "The study to run ('all': "
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
flags.DEFINE_bool("dry_run", False, "Print the plan and its estimated time; change nothing.",
                  flag_values=FLAGS)
flags.DEFINE_bool("report_only", False, "Write the suite's suite.md / suite.png again from "
                  "its reports so far (settings from its suite.json); train and evaluate "
                  "nothing.", flag_values=FLAGS)
flags.mark_flag_as_required("suite", flag_values=FLAGS)


def _dry_run(suites, recipe, recipe_path, runs_root, settings):
  """Print each suite's plan and, for several, the total with shared networks counted once."""
  work = remaining_work(suites, recipe, runs_root=runs_root, **settings)
  for suite in suites:
    print(f"Suite '{suite.name}' ({suite.paper}), recipe {recipe_path} "
          f"({recipe.steps} steps per variant):")
    for name, variant, config, status, grads in work["variants"]:
      if name == suite.name:
        print(f"  {variant.name:28s} {config.run_dir:45s} {status}; "
              f"~{grads:,.0f} input gradients of evaluation left")
  step_time, grad_time = measure_step_and_gradient(recipe)
  hours = (work["steps"] * step_time + work["gradients"] * grad_time) / 3600
  what = (f"{work['runs']} training runs, {work['steps']} steps x {step_time:.2f} s + "
          f"{work['evaluations']} evaluations, ~{work['gradients']:,.0f} input gradients x "
          f"{grad_time:.3f} s = {hours:.1f} h")
  if len(suites) == 1:
    print(f"Estimated on this machine: {what} (one process; what is left: finished and shared "
          "cells are not counted; gradients measured on a 120x80 LR image).")
  else:
    print(f"All {len(suites)} suites, each network trained and evaluated once: {what} in one "
          f"process, ~{hours / 2:.1f} h in two (steps and gradients of the recipe's network, "
          "measured here on a 120x80 LR image).")


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
    if not (FLAGS.dry_run or FLAGS.report_only) or FLAGS.variant:
      raise ValueError("--suite=all goes with --dry_run or --report_only (and --exclude_variant, "
                       "not --variant); run the suites one by one.")
    suites = [get_suite(name) for name in known_suites()]
  else:
    suites = [get_suite(FLAGS.suite)]
    if FLAGS.variant:
      suites = [select_variants(suites[0], FLAGS.variant)]
  if FLAGS.exclude_variant:
    suites = exclude_variants(suites, FLAGS.exclude_variant)
    if not suites:
      raise ValueError("--exclude_variant leaves no variant to run.")
  if FLAGS.report_only:
    for suite in suites:
      if FLAGS.suite == ALL_SUITES and not os.path.isfile(
          os.path.join(FLAGS.output_dir, suite.name, SUITE_FILE)):
        print(f"Suite '{suite.name}': not run yet under {FLAGS.output_dir}; skipped.")
        continue
      rewrite_suite_report(get_suite(suite.name), recipe, FLAGS.output_dir)
      print(f"Suite report: {os.path.join(FLAGS.output_dir, suite.name, TABLE_FILE)}")
    return
  if FLAGS.dry_run:
    _dry_run(suites, recipe, FLAGS.recipe, FLAGS.runs_root, dict(
        output_dir=FLAGS.output_dir, attack_datasets=FLAGS.attack_datasets,
        attack_images=FLAGS.attack_images, attacks=FLAGS.attacks, eps=eps,
        steps=FLAGS.attack_steps, clever=FLAGS.clever, clever_samples=FLAGS.clever_samples,
        eot_samples=FLAGS.eot_samples, max_images=FLAGS.max_images))
    return
  suite = get_suite(FLAGS.suite)  # the whole suite: its report covers every variant
  selected = ([v.name for v in suites[0].variants]
              if FLAGS.variant or FLAGS.exclude_variant else None)
  result = run_suite(
      suite, recipe, output_dir=FLAGS.output_dir, runs_root=FLAGS.runs_root,
      clean_datasets=FLAGS.clean_datasets, attack_datasets=FLAGS.attack_datasets,
      attack_images=FLAGS.attack_images, attacks=FLAGS.attacks, eps=eps,
      steps=FLAGS.attack_steps, clever=FLAGS.clever, clever_samples=FLAGS.clever_samples,
      precision=FLAGS.precision, eot_samples=FLAGS.eot_samples,
      variants=selected,
      train=FLAGS.train, max_images=FLAGS.max_images)
  print(f"Suite report: {os.path.join(result['suite_dir'], TABLE_FILE)}")
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
