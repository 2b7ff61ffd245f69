"""Copies of training runs kept with the results, so that runs travel with them.

``runs/`` (checkpoints, logs, exports) is not committed. The experiment runner
copies into ``<output_dir>/<suite>/runs/<variant>/`` what another machine needs
to go on without it (``copy_run_files``: a finished run's effective flags,
config.json, result.json and final weights where small; ``copy_checkpoint``: an
unfinished run's newest checkpoint, with its Adam moments, under ``ckpt/``). A
machine that has the results but not the run directory restores the run from
such a copy (``restore_run``) instead of training it again: the final weights,
or the checkpoint it resumes from (the trainer replays the same batches, so the
resumed run ends with the uninterrupted run's weights).

A copy belongs to a run when its config.json has the same network settings
(``run_key``: every TrainConfig field but paths and logging intervals).
"""

import dataclasses
import json
import os
import shutil

from tfsr_defense import fileio, trainer
from tfsr_defense.models import registry

__all__ = ["trained", "latest_step", "run_key", "committed_run", "newer_copy", "restore_run",
           "copy_run_files", "copy_checkpoint", "MAX_WEIGHTS_BYTES"]

CKPT_DIR = "ckpt"
# Final weights are copied only where small (EDSR-baseline, CARN, SRResNet: < 8 MB);
# RCAN's and MSRN's are not: their runs are reproduced by the command.
MAX_WEIGHTS_BYTES = 8 * 2 ** 20
# TrainConfig fields (and config.json's extra key) that do not change the network.
_NOT_THE_NETWORK = ("run_dir", "data_dir", "checkpoint_every", "eval_every", "log_every",
                    "export", "regularized")


def trained(config):
  """True when ``config.run_dir`` holds the final weights of exactly ``config.steps`` steps.

  Raises:
    ValueError: an unreadable result.json.
  """
  path = os.path.join(config.run_dir, "result.json")
  if not os.path.isfile(path) or not os.path.isfile(os.path.join(config.run_dir,
                                                                 "model.weights.h5")):
    return False
  with open(path, encoding="utf-8") as f:
    return json.load(f).get("step") == config.steps


def latest_step(run_dir):
  """The step of the newest checkpoint index (``ckpt/ckpt-<N>.index``) under ``run_dir``; 0."""
  ckpt = os.path.join(run_dir, CKPT_DIR)
  if not os.path.isdir(ckpt):
    return 0
  steps = [int(f.split("-")[1].split(".")[0]) for f in os.listdir(ckpt)
           if f.startswith("ckpt-") and f.endswith(".index")]
  return max(steps) if steps else 0


def run_key(record):
  """The settings of a run's config.json record (or ``asdict(TrainConfig)``) that decide its
  network, JSON-normalised; a key older records lack takes TrainConfig's default. lambda is
  resolved (``registry.resolve_entropy_weight``): ``entropy_weight`` None (the paper's value
  for the network, as the networks suite asks for it) and that value are the same network.

  Raises:
    ValueError: an unknown network or an invalid lambda in the record.
  """
  key = {f.name: record.get(f.name, f.default) for f in dataclasses.fields(trainer.TrainConfig)
         if f.name not in _NOT_THE_NETWORK}
  key["entropy_weight"] = registry.resolve_entropy_weight(key["model"], key["entropy_weight"])
  return json.loads(fileio.json_text(key))


def committed_run(config, output_dir):
  """A copy of ``config``'s training run kept in the suites' results under ``output_dir``.

  Returns:
    (directory, step, final): the copy holding the final weights of exactly
    ``config.steps`` steps (final True) if there is one, else the copy with the
    newest checkpoint (final False); None when no copy under
    ``<output_dir>/*/runs/*/`` has the same network settings (``run_key``).
    Unreadable copies are passed over.
  """
  key = run_key(dataclasses.asdict(config))
  best = None
  for suite_name in sorted(os.listdir(output_dir)) if os.path.isdir(output_dir) else ():
    runs = os.path.join(output_dir, suite_name, "runs")
    for name in sorted(os.listdir(runs)) if os.path.isdir(runs) else ():
      copy = os.path.join(runs, name)
      try:
        with open(os.path.join(copy, "config.json"), encoding="utf-8") as f:
          saved = json.load(f)
        if not isinstance(saved, dict) or run_key(saved) != key:
          continue
        if trained(dataclasses.replace(config, run_dir=copy)):
          return copy, config.steps, True
      except (OSError, ValueError):
        continue
      step = latest_step(copy)
      if 0 < step < config.steps and (best is None or step > best[1]):
        best = (copy, step, False)
  return best


def newer_copy(config, output_dir):
  """``committed_run``'s answer when the copy holds more of the run than ``config.run_dir``
  (the final weights the directory lacks, or a newer checkpoint), else None."""
  if trained(config):
    return None
  found = committed_run(config, output_dir)
  if found is None or (not found[2] and found[1] <= latest_step(config.run_dir)):
    return None
  return found


def restore_run(config, output_dir, log=print):
  """Restore ``config.run_dir`` from a copy in the results (``committed_run``) when that holds
  more of the run than the directory: the final weights, or a newer checkpoint to resume.

  Returns:
    the copy's directory, or None when nothing was restored.
  """
  found = newer_copy(config, output_dir)
  if found is None:
    return None
  copy, step, final = found
  os.makedirs(config.run_dir, exist_ok=True)
  if final:
    for name in ("model.weights.h5", "result.json", "flags.txt"):
      if os.path.isfile(os.path.join(copy, name)):
        _copy_file(os.path.join(copy, name), os.path.join(config.run_dir, name))
    log(f"  restored the final weights of {config.run_dir} from {copy}")
  else:
    os.makedirs(os.path.join(config.run_dir, CKPT_DIR), exist_ok=True)
    for name in _checkpoint_files(copy, step):
      _copy_file(os.path.join(copy, CKPT_DIR, name),
                 os.path.join(config.run_dir, CKPT_DIR, name))
    log(f"  restored the checkpoint of step {step} of {config.run_dir} from {copy}: resuming")
  _write_config_record(copy, config.run_dir)
  return copy


def copy_run_files(config, target, flags_text):
  """Copy a run's effective flags (``flags_text``, written as flags.txt), config.json,
  result.json and final weights (below ``MAX_WEIGHTS_BYTES``) into ``target``; a checkpoint
  copied there before (``copy_checkpoint``) is deleted."""
  os.makedirs(target, exist_ok=True)
  shutil.rmtree(os.path.join(target, CKPT_DIR), ignore_errors=True)
  fileio.atomic_write(os.path.join(target, "flags.txt"), flags_text)
  names = ["config.json", "result.json"]
  weights = os.path.join(config.run_dir, "model.weights.h5")
  if os.path.isfile(weights) and os.path.getsize(weights) < MAX_WEIGHTS_BYTES:
    names.append("model.weights.h5")
  for name in names:
    if os.path.isfile(os.path.join(config.run_dir, name)):
      _copy_file(os.path.join(config.run_dir, name), os.path.join(target, name))


def copy_checkpoint(config, target, flags_text, output_dir):
  """Copy the newest checkpoint of the unfinished run ``config`` into ``target/ckpt/`` (with
  its config.json and ``flags_text`` as flags.txt), unless the results under ``output_dir``
  already hold as much of the run (``committed_run``). The copy replaces older copies of the
  run's checkpoints there and in other suites' copies. A run being written meanwhile is safe:
  a checkpoint is copied data first, index last, and the trainer keeps its last three.

  Returns:
    the step copied, or 0 (finished run, no checkpoint, or nothing newer to copy).
  """
  step = latest_step(config.run_dir)
  if trained(config) or not step:
    return 0
  found = committed_run(config, output_dir)
  if found and (found[2] or found[1] >= step):
    return 0
  if found and found[0] != target:  # an older copy kept by another suite
    shutil.rmtree(os.path.join(found[0], CKPT_DIR), ignore_errors=True)
  ckpt = os.path.join(target, CKPT_DIR)
  os.makedirs(ckpt, exist_ok=True)
  for name in _checkpoint_files(config.run_dir, step):
    _copy_file(os.path.join(config.run_dir, CKPT_DIR, name), os.path.join(ckpt, name))
  for name in os.listdir(ckpt):  # older copies
    if name.startswith("ckpt-") and not name.startswith(f"ckpt-{step}."):
      os.remove(os.path.join(ckpt, name))
  _write_config_record(config.run_dir, target)
  fileio.atomic_write(os.path.join(target, "flags.txt"), flags_text)
  return step


def _copy_file(src, dst):
  """Copy ``src`` to ``dst`` through a temporary file (never a half-written ``dst``)."""
  shutil.copyfile(src, dst + ".tmp")
  os.replace(dst + ".tmp", dst)


def _checkpoint_files(run_dir, step):
  """The files of checkpoint ``ckpt-<step>`` under ``run_dir/ckpt`` (index last)."""
  ckpt = os.path.join(run_dir, CKPT_DIR)
  data_files = sorted(f for f in os.listdir(ckpt) if f.startswith(f"ckpt-{step}.data-"))
  return data_files + [f"ckpt-{step}.index"]


def _write_config_record(source_dir, run_dir):
  """``source_dir``'s config.json into ``run_dir``, its run_dir field made ``run_dir``."""
  with open(os.path.join(source_dir, "config.json"), encoding="utf-8") as f:
    saved = json.load(f)
  saved["run_dir"] = run_dir
  fileio.write_json(os.path.join(run_dir, "config.json"), saved)
