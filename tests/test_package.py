"""Package import side effects: the oneDNN default (tfsr_defense/__init__.py)."""

import os
import subprocess
import sys

import pytest

_PROBE = ("import os; import tfsr_defense; "
          "print(os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset'))")
# What TF 2.14 logs (INFO, tensorflow/core/util/port.cc) when it reads the variable as on.
_TF_ONEDNN_ON = "oneDNN custom operations are on"


def _import_in_fresh_python(env_value):
  """(TF_ENABLE_ONEDNN_OPTS after `import tfsr_defense`, TF's stderr) in a new interpreter."""
  env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
  if env_value is not None:
    env["TF_ENABLE_ONEDNN_OPTS"] = env_value
  env["TF_CPP_MIN_LOG_LEVEL"] = "0"
  proc = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                        text=True, timeout=300, check=True)
  return proc.stdout.split()[-1], proc.stderr


@pytest.mark.parametrize("preset, expected, tf_on", [
    (None, "1", True), ("0", "0", False), ("1", "1", True)])
def test_import_turns_on_onednn_unless_set(preset, expected, tf_on):
  value, tf_log = _import_in_fresh_python(preset)
  assert value == expected
  # TF saw the value: the package set it before importing tensorflow.
  assert (_TF_ONEDNN_ON in tf_log) == tf_on
