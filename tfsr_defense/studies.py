"""The paper's studies (Choi et al., ACCV 2020, sec. 5.1-5.6) as data: suites of variants.

A suite is a list of variants of one shared training recipe (a ``trainer.TrainConfig``,
``flags/experiments/edsr_x4_study.cfg``); a variant changes only what its study varies:

| suite | paper | variants |
|---|---|---|
| networks | sec. 5.1, Fig. 2 | each network plain and with the regularizer |
| ablation | sec. 5.2, Fig. 5 | none / probability estimation (PE) / noise / PE + noise |
| lambda | sec. 5.3, Fig. 6 | lambda = 0, 0.1, 1, 10 |
| target_layer | sec. 5.4, Fig. 7 | regularizer on the first conv, lambda = 0.1, 1, 10 |
| delta | sec. 5.5, Fig. 8 | delta = 0.01, 0.1, 1, 10 at lambda = 1 |
| adversarial | sec. 5.6, Fig. 9 | ER, Adv (I-FGSM alpha 8/255, T 1), ER + Adv |
| preprocessing | sec. 5.6 | plain and ER networks behind none / JPEG 75 / random resize |

``variant_config`` gives a variant's training configuration and ``run_name`` its run
directory's name (two variants that train the same network share it). Running the suites
is ``tfsr_defense.experiment``'s job, their report ``tfsr_defense.suite_report``'s.
"""

import dataclasses
import os

__all__ = ["Variant", "Suite", "SUITES", "known_suites", "get_suite", "select_variants",
           "exclude_variants", "variant_config", "run_name", "PAPER_NUMBERS"]


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
