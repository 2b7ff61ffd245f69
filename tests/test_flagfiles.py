"""Every flags/*.cfg parses with tfsr_defense.train's flags into a valid TrainConfig.

Absl flag-file syntax: one ``--name=value`` per line, ``#`` comments, nested
``--flagfile=PATH`` resolved from the working directory (the repository root).
"""

import glob
import os

import pytest

from tfsr_defense import models
from tfsr_defense import train  # noqa: F401  (defines the flags)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAG_FILES = sorted(glob.glob(os.path.join(ROOT, "flags", "*.cfg")))
FLAGS = train.FLAGS
GAN_MODELS = ("srgan",)


def read_flag_file(path, seen=()):
  """[(name, value)] of a flag file with nested --flagfile expanded in place."""
  path = os.path.normpath(path)
  assert path not in seen, f"--flagfile cycle: {seen + (path,)}"
  assert os.path.isfile(path), f"missing flag file {path}"
  entries = []
  with open(path, encoding="utf-8") as f:
    for number, raw in enumerate(f, 1):
      line = raw.strip()
      if not line or line.startswith("#"):
        continue
      assert line.startswith("--") and "=" in line, f"{path}:{number}: not --name=value: {raw!r}"
      name, value = line[2:].split("=", 1)
      if name == "flagfile":
        entries += read_flag_file(os.path.join(ROOT, value), seen + (path,))
      else:
        entries.append((name, value))
  return entries


def parse(path):
  """(TrainConfig, {name: value}) of a flag file, through train.py's absl flags."""
  entries = read_flag_file(path)
  for name, _ in entries:
    assert name in FLAGS, f"{os.path.basename(path)}: train.py has no flag --{name}"
  args = [f"--{name}={value}" for name, value in entries]
  FLAGS.unparse_flags()
  try:
    FLAGS(["train"] + args)
    config = train.config_from_flags()
  finally:
    FLAGS.unparse_flags()
  return config, dict(entries)


def test_there_are_flag_files_for_every_network():
  names = {os.path.basename(p) for p in FLAG_FILES}
  for model in ("edsr", "srresnet", "srgan", "rcan", "msrn", "carn"):
    assert f"{model}_x4.cfg" in names and f"{model}_x4_cpu.cfg" in names, model


@pytest.mark.parametrize("path", FLAG_FILES, ids=os.path.basename)
def test_flag_file_is_valid(path):
  config, values = parse(path)
  config.validate()  # registered model, valid scale, lambda, delta, sizes, precision
  spec = models.get_spec(config.model)
  assert config.lam in (spec.entropy_weight, 0.0), "lambda: the paper's value, or 0 (plain)"
  assert config.run_dir.startswith("runs/")
  cpu = os.path.basename(path).endswith("_cpu.cfg") or "_cpu_" in os.path.basename(path)
  assert (config.train_data == "div2k") != cpu, "paper recipes use DIV2K, CPU ones T91 + BSD200"
  if config.model in ("srresnet", "srgan"):
    assert config.patch_size * config.scale == 96  # Ledig et al.'s 96x96 HR crops
  if config.model in GAN_MODELS:
    assert "init_from" in values, "SRGAN phase two starts from a phase-one run"


@pytest.mark.parametrize("path", [p for p in FLAG_FILES if "srgan" in os.path.basename(p)],
                         ids=os.path.basename)
def test_srgan_phase_one_is_a_recipe(path):
  """--init_from names the run_dir of an SRResNet recipe with the same scale, lambda > 0."""
  config, values = parse(path)
  phase_one = {}
  for other in FLAG_FILES:
    other_config, _ = parse(other)
    if other_config.run_dir == values["init_from"]:
      phase_one[other] = other_config
  assert len(phase_one) == 1, f"no (unique) flag file with run_dir={values['init_from']}"
  (first,) = phase_one.values()
  assert first.model == "srresnet" and first.scale == config.scale
  assert first.lam > 0 and config.lam > 0
