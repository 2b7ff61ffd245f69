"""Copies of training runs kept with the results (tfsr_defense.run_copies), by hand; the runner's
use of them (a fresh machine resumes / restores) is tested in test_experiment.py."""

import dataclasses
import json
import os

from tfsr_defense import run_copies, trainer


def _record(config, **changes):
  return dict(dataclasses.asdict(dataclasses.replace(config, **changes)), regularized=True)


def test_run_key_ignores_paths_and_logging_not_the_network():
  config = trainer.TrainConfig(model="edsr", entropy_weight=1.0, steps=4000)
  key = run_copies.run_key(dataclasses.asdict(config))
  assert run_copies.run_key(_record(config, run_dir="elsewhere", data_dir="/data", log_every=1,
                                    eval_every=7, checkpoint_every=3, export=False)) == key
  for change in (dict(entropy_weight=0.1), dict(steps=2000), dict(delta=0.1), dict(seed=1),
                 dict(lr_boundaries=[1, 2]), dict(adversarial="ifgsm")):
    assert run_copies.run_key(_record(config, **change)) != key, change
  # An older record without a newer field: that field's default.
  old = _record(config)
  del old["max_train_images"]
  assert run_copies.run_key(old) == key
  # lambda None is the paper's value for the network (EDSR: 1, SRResNet: 0.1): the networks
  # suite's "edsr ER" is the lambda = 1 EDSR the other suites trained.
  assert run_copies.run_key(_record(config, entropy_weight=None)) == key
  srresnet = trainer.TrainConfig(model="srresnet", entropy_weight=0.1, steps=4000)
  assert (run_copies.run_key(_record(srresnet, entropy_weight=None))
          == run_copies.run_key(dataclasses.asdict(srresnet)))
  assert run_copies.run_key(_record(srresnet, entropy_weight=None)) != run_copies.run_key(
      _record(srresnet, entropy_weight=1.0))


def test_latest_step_and_copies(tmp_path):
  run = tmp_path / "run"
  assert run_copies.latest_step(str(run)) == 0
  ckpt = run / "ckpt"
  ckpt.mkdir(parents=True)
  for name in ("ckpt-200.index", "ckpt-200.data-00000-of-00001", "ckpt-1000.index",
               "ckpt-1000.data-00000-of-00001", "ckpt-300.data-00000-of-00001", "checkpoint"):
    (ckpt / name).write_bytes(b"x")
  assert run_copies.latest_step(str(run)) == 1000  # by number, an index only
  config = trainer.TrainConfig(run_dir=str(run), steps=4000)
  (run / "config.json").write_text(json.dumps(_record(config)))
  target = tmp_path / "results" / "suite" / "runs" / "v"
  assert run_copies.copy_checkpoint(config, str(target), "--steps=4000\n",
                                    str(tmp_path / "results")) == 1000
  assert sorted(os.listdir(target / "ckpt")) == ["ckpt-1000.data-00000-of-00001",
                                                 "ckpt-1000.index"]
  assert json.loads((target / "config.json").read_text())["run_dir"] == str(target)
  assert run_copies.committed_run(config, str(tmp_path / "results")) == (str(target), 1000,
                                                                         False)
  # Nothing newer: nothing copied.
  assert run_copies.copy_checkpoint(config, str(target), "", str(tmp_path / "results")) == 0
  # The finished run: flags, config, result, small weights; the copied checkpoint goes.
  (run / "result.json").write_text(json.dumps({"step": 4000}))
  (run / "model.weights.h5").write_bytes(b"w" * 100)
  run_copies.copy_run_files(config, str(target), "--steps=4000\n")
  assert sorted(os.listdir(target)) == ["config.json", "flags.txt", "model.weights.h5",
                                        "result.json"]
  assert run_copies.committed_run(config, str(tmp_path / "results")) == (str(target), 4000, True)
  assert run_copies.committed_run(dataclasses.replace(config, entropy_weight=0.1),
                                  str(tmp_path / "results")) is None
  # Weights over the limit are not copied (the run is reproduced by its command).
  big = tmp_path / "results" / "suite" / "runs" / "big"
  (run / "model.weights.h5").write_bytes(b"w" * (run_copies.MAX_WEIGHTS_BYTES + 1))
  run_copies.copy_run_files(config, str(big), "")
  assert not (big / "model.weights.h5").exists() and (big / "result.json").exists()
