"""The header every benchmark prints first: its command line and the machine it ran on."""

import os
import platform
import sys

import tensorflow as tf

from tfsr_defense import precision


def print_header(extra=""):
  """Print 'command: ...' and 'machine: ...' (CPU, cores this process may use, bf16, load, TF).

  Args:
    extra: appended to the machine line (e.g. another library's version).
  """
  print(f"command: {' '.join([sys.executable] + sys.argv)}")
  print(f"machine: {platform.node()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs (affinity {sorted(os.sched_getaffinity(0))}), "
        f"CPU bf16 (AMX/AVX512-BF16): {precision.cpu_has_bf16()}, "
        f"GPUs: {len(tf.config.list_physical_devices('GPU'))}, "
        f"load average {os.getloadavg()[0]:.2f}, TF {tf.__version__}, "
        f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')}"
        f"{', ' + extra if extra else ''}", flush=True)
