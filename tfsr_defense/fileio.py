"""How the project writes files: strict JSON, atomically.

Every JSON file is strict (RFC 8259 has no NaN / Infinity): non-finite floats
become ``null``, numpy scalars Python numbers, tuples lists, dict keys
strings. Files are written atomically (a temporary file in the same
directory, then a rename), so a crash never leaves half a file. ``ProcessLock``: one
process at a time in a run or report directory.
"""

import fcntl
import json
import math
import os
import tempfile

import numpy as np

__all__ = ["strict", "json_text", "write_json", "atomic_write", "ProcessLock"]


def strict(value):
  """``value`` with every non-finite float replaced by None, recursively (JSON-ready)."""
  if isinstance(value, dict):
    return {str(k): strict(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [strict(v) for v in value]
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def json_text(value, **kwargs):
  """Strict JSON text of ``strict(value)`` (json.dumps keyword arguments pass through).

  Raises:
    TypeError: a value json cannot encode.
  """
  return json.dumps(strict(value), allow_nan=False, **kwargs)


def atomic_write(path, text):
  """Write ``text`` to ``path`` through a temporary file and a rename."""
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".tmp")
  with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
    f.write(text)
  os.replace(tmp, path)


def write_json(path, value):
  """Write ``value`` as indented strict JSON with sorted keys (atomically)."""
  atomic_write(path, json_text(value, indent=2, sort_keys=True) + "\n")


class ProcessLock:
  """``<path>.lock``: held by one process at a time while it trains / evaluates at ``path``.

  An advisory ``fcntl.flock`` on the file, which the kernel releases when its
  process ends however it ends, so a killed run leaves no stale lock; the file
  holds the owner's pid for messages and is removed on release. ``with
  ProcessLock(p) as locked``: ``bool(locked)`` says whether this process holds
  it; ``locked.owner`` is the pid that holds it otherwise (0 if unknown). Two
  suites (or two processes of one suite, one per core) thus never train one run
  or fill one report at the same time. POSIX only (``fcntl``).
  """

  def __init__(self, path):
    self.path = os.path.normpath(path) + ".lock"
    self.owner = None
    self.held = False
    self._fd = None

  def __enter__(self):
    os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
    while True:
      fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        self.owner = _read_pid(fd)
        os.close(fd)
        return self
      try:  # the holder before us may have removed the file we opened: lock the current one
        same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    self._fd, self.held, self.owner = fd, True, os.getpid()
    return self

  def __bool__(self):
    return self.held

  def __exit__(self, *exc):
    if self.held:
      try:
        os.remove(self.path)  # while still locked: a waiting opener sees the inode change
      except FileNotFoundError:
        pass
      os.close(self._fd)
      self._fd, self.held = None, False
    return False


def _read_pid(fd):
  try:
    return int(os.pread(fd, 32, 0).decode().strip() or 0)
  except (OSError, ValueError):
    return 0
