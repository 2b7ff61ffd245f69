"""Shared fixtures. Tests run on the CPU, seeded, with small inputs."""

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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
