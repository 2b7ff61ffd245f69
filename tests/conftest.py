"""Shared fixtures. Tests run on the CPU, seeded, with small inputs."""

import os
import subprocess
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TF's Eigen kernels, whichever module imports tensorflow first: the bfloat16 tests need them
# on a CPU without AVX512 (precision.bf16_kernels_run). `import tfsr_defense` would
# otherwise turn oneDNN on; tests/test_package.py checks that default in fresh interpreters.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def data_dir():
  """The benchmark data directory ($TFSR_DATA_DIR, else ../shared/data beside the repo).

  Fails (does not skip) when it is missing: CI must run the data tests.
  """
  path = os.environ.get("TFSR_DATA_DIR") or os.path.join(os.path.dirname(REPO), "shared", "data")
  if not os.path.isdir(os.path.join(path, "Set5")):
    pytest.fail(f"Benchmark data not found at {path}: set TFSR_DATA_DIR to ../shared/data.")
  return path


@pytest.fixture
def lock_holder():
  """``hold(path)``: another process takes ``fileio.ProcessLock(path)`` and keeps it until
  killed; returns its Popen (once it holds the lock). Killed at the end of the test."""
  holders = []

  def hold(path):
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from tfsr_defense import fileio\n"
         f"with fileio.ProcessLock({path!r}) as lock:\n"
         "  print(bool(lock), flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    holders.append(proc)
    assert proc.stdout.readline().strip() == "True"
    return proc

  yield hold
  for proc in holders:
    proc.kill()
    proc.wait()


_EXIT_STATUS = {}


def pytest_sessionfinish(session, exitstatus):
  del session
  _EXIT_STATUS["status"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
  """End the process right after pytest is done, skipping Python's teardown.

  TensorFlow 2.14 deletes compiled functions that are still alive at
  interpreter shutdown after its own module globals are gone, and prints one
  'Exception ignored in AtomicFunction.__del__ ... TypeError' block per
  function after pytest's summary (the XLA-compiled density of the entropy
  layer has several). Nothing is left to do at this point: the report is
  printed and the exit status is pytest's.
  """
  del config
  if "status" in _EXIT_STATUS:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_EXIT_STATUS["status"])  # pylint: disable=protected-access
