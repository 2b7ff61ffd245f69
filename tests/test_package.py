"""Package import side effects: the oneDNN default (tfsr_defense/__init__.py) and what it
means for bfloat16 (precision.check_bf16_kernels)."""

import os
import subprocess
import sys

import pytest

from tfsr_defense import precision

_PROBE = ("import os; import tfsr_defense; "
          "print(os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset'))")
# What TF 2.14 logs (INFO, tensorflow/core/util/port.cc) when it reads the variable as on.
_TF_ONEDNN_ON = "oneDNN custom operations are on"


_BF16_PROBE = """
import tfsr_defense
from tfsr_defense import precision
print(precision.bf16_kernels_run())
try:
  with precision.policy_scope("mixed_bfloat16"):
    print("policy set")
except ValueError as e:
  print("ValueError:", e)
"""


def _import_in_fresh_python(env_value, code=_PROBE):
  """(last stdout line of ``code`` run after `import tfsr_defense`, TF's stderr) in a new
  interpreter with TF_ENABLE_ONEDNN_OPTS unset (None) or ``env_value``."""
  env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
  if env_value is not None:
    env["TF_ENABLE_ONEDNN_OPTS"] = env_value
  env["TF_CPP_MIN_LOG_LEVEL"] = "0"
  proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                        text=True, timeout=300, check=True)
  return proc.stdout.strip().splitlines(), proc.stderr


@pytest.mark.parametrize("preset, expected, tf_on", [
    (None, "1", True), ("0", "0", False), ("1", "1", True)])
def test_import_turns_on_onednn_unless_set(preset, expected, tf_on):
  lines, tf_log = _import_in_fresh_python(preset)
  assert lines[-1] == expected
  # TF saw the value: the package set it before importing tensorflow.
  assert (_TF_ONEDNN_ON in tf_log) == tf_on


def _cpu_has_avx512():
  with open("/proc/cpuinfo", encoding="utf-8") as f:
    return "avx512f" in f.read().split()


@pytest.mark.parametrize("preset", [None, "0"])
def test_bfloat16_runs_or_is_one_clear_error(preset):
  """oneDNN on (the package default) + a CPU without AVX512: TF 2.14 cannot run a
  bfloat16 convolution; a bfloat16 policy is then one ValueError naming the way out. TF's
  Eigen kernels (TF_ENABLE_ONEDNN_OPTS=0) run bfloat16 on any CPU."""
  (runs, outcome), _ = _import_in_fresh_python(preset, _BF16_PROBE)
  if preset == "0" or precision.cpu_has_bf16():
    assert runs == "True"
  elif not _cpu_has_avx512():  # AVX2 only, as CI's machines: oneDNN has no bf16 convolution
    assert runs == "False"
  if runs == "True":
    assert outcome == "policy set"
  else:
    assert outcome.startswith("ValueError: mixed_bfloat16 cannot run in this process")
    assert "TF_ENABLE_ONEDNN_OPTS=0" in outcome and "float32" in outcome


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo") or _cpu_has_avx512(),
                    reason="oneDNN runs bfloat16 on AVX512 CPUs: no error to check")
@pytest.mark.parametrize("tool", ["evaluate", "experiment"])
def test_clis_refuse_bfloat16_before_any_work(tool, data_dir, tmp_path):
  """evaluate / experiment under oneDNN on an AVX2 CPU: exit 2, one line, nothing written
  (the experiment runner would otherwise train its variants for hours first)."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = tmp_path / "out"
  args = {"evaluate": [f"--models={repo}/results/edsr_x4_cpu_long/plain", "--datasets=set5",
                       "--max_images=1", "--attacks=ifgsm", "--eps=4", "--steps=2",
                       f"--report_dir={out}"],
          "experiment": ["--suite=lambda", "--max_images=1",
                         f"--recipe={repo}/flags/experiments/edsr_x4_study.cfg",
                         f"--output_dir={out}", f"--runs_root={tmp_path / 'runs'}"]}[tool]
  env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="1", TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run(
      [sys.executable, "-m", f"tfsr_defense.{tool}", *args, f"--data_dir={data_dir}",
       "--precision=mixed_bfloat16"],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1].startswith(
      f"tfsr_defense.{tool}: error: mixed_bfloat16 cannot run in this process")
  assert sorted(p.name for p in tmp_path.iterdir()) == []
