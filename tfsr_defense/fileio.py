"""How the project writes files: strict JSON, atomically.

Every JSON file is strict (RFC 8259 has no NaN / Infinity): non-finite floats
become ``null``, numpy scalars Python numbers, tuples lists, dict keys
strings. Files are written atomically (a temporary file in the same
directory, then a rename), so a crash never leaves half a file. ``ProcessLock``: one
process at a time in a run or report directory.
"""

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
  """``<path>.lock`` held by this process while it trains / evaluates there (O_EXCL file).

  A lock whose process is gone is taken over. ``with ProcessLock(p) as locked``:
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
        if self.owner and _process_alive(self.owner):
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


def _process_alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True
