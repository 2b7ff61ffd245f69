"""How the project writes files: strict JSON, atomically.

Every JSON file is strict (RFC 8259 has no NaN / Infinity): non-finite floats
become ``null``, numpy scalars Python numbers, tuples lists, dict keys
strings. Files are written atomically (a temporary file in the same
directory, then a rename), so a crash never leaves half a file.
"""

import json
import math
import os
import tempfile

import numpy as np

__all__ = ["strict", "json_text", "write_json", "atomic_write"]


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
