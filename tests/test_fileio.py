"""fileio: strict JSON, atomic writes, the per-directory process lock."""

import json
import math
import os

import numpy as np

from tfsr_defense import fileio


def test_json_text_is_strict():
  text = fileio.json_text({"a": math.nan, "b": np.float32(1.5), "c": (1, 2), 3: math.inf})
  assert json.loads(text) == {"a": None, "b": 1.5, "c": [1, 2], "3": None}
  assert "NaN" not in text and "Infinity" not in text


def test_atomic_write_replaces_whole_file(tmp_path):
  path = str(tmp_path / "x.json")
  fileio.write_json(path, {"k": 1})
  fileio.write_json(path, {"k": 2})
  with open(path, encoding="utf-8") as f:
    assert json.load(f) == {"k": 2}
  assert os.listdir(tmp_path) == ["x.json"]  # no temporary file left behind


def test_process_lock_excludes_a_second_holder_and_is_released(tmp_path):
  run_dir = str(tmp_path / "run")
  with fileio.ProcessLock(run_dir) as first:
    assert first and first.owner == os.getpid()
    with open(run_dir + ".lock", encoding="utf-8") as f:
      assert f.read() == str(os.getpid())
    # Another live process holds it: a second taker (here: this process again) is refused.
    with fileio.ProcessLock(run_dir) as second:
      assert not second and second.owner == os.getpid()
    assert os.path.exists(run_dir + ".lock")  # the refused taker removes nothing
  assert not os.path.exists(run_dir + ".lock")


def test_process_lock_held_by_another_process_until_it_dies(tmp_path, lock_holder):
  run_dir = str(tmp_path / "run")
  holder = lock_holder(run_dir)
  with fileio.ProcessLock(run_dir) as lock:
    assert not lock and lock.owner == holder.pid
  holder.kill()  # no clean release: the lock must still not outlive its process
  holder.wait()
  with fileio.ProcessLock(run_dir) as lock:
    assert lock and lock.owner == os.getpid()
  assert not os.path.exists(run_dir + ".lock")


def test_process_lock_file_of_a_dead_owner_is_taken_over(tmp_path):
  run_dir = str(tmp_path / "run")
  with open(run_dir + ".lock", "w", encoding="utf-8") as f:
    f.write("999999999")  # left by an older version of the lock, or by hand
  with fileio.ProcessLock(run_dir) as lock:
    assert lock and lock.owner == os.getpid()
  assert not os.path.exists(run_dir + ".lock")
