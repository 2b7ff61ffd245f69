"""Training of SR networks with the entropy regularizer (L = L_r + lambda L_e, paper eq. 2).

``train(TrainConfig(...))`` is what ``python -m tfsr_defense.train`` runs. A run
directory holds:

    flags.txt          the effective flags (CLI runs), re-usable with --flagfile
    config.json        the effective configuration (strict JSON)
    ckpt/              resumable checkpoints (model, optimizer, step)
    logs/{train,eval}  TensorBoard scalars: loss, L_r, L_e (bits), PSNR, lr
    model.weights.h5   final weights (Keras)
    export/1/          SavedModel for TF Serving (see serving.py)
    result.json        final validation PSNR/SSIM (Y, shave = scale), strict JSON

Re-running the same configuration on the same directory resumes at the last
checkpoint's step, on the batches the uninterrupted run would have drawn
(in-memory datasets). What ``train`` guarantees:

* nothing in the run directory is written before every check passed (the
  configuration, the data, the checkpoint or ``init_from`` weights);
* a directory holding checkpoint files is resumed from the newest complete
  one (even when the ``ckpt/checkpoint`` state file is garbled), never
  restarted from scratch;
* a change on resume of a setting that defines the run (``RUN_KEYS``:
  network, lambda, delta, noise, estimate_entropy, entropy_layer, adversarial
  training) is refused, naming the old and the new value;
* a non-finite loss stops the run at that step with ``NonFiniteLossError``
  (the last checkpoint, saved from finite weights, stays; nothing exported);
* SIGTERM is treated like Ctrl-C: a checkpoint is saved, then
  KeyboardInterrupt propagates.

The steps of ``train`` are named functions below, in the order they run:
``_prepare``, ``_build_state``, ``_restore_or_initialise``,
``_write_run_metadata``, ``_distributed_dataset``, ``make_train_step``,
``_train_loop``, ``_finish``.
"""

import contextlib
import dataclasses
import json
import math
import os
import re
import signal
import sys
import threading
import time
from typing import Any, Optional

import numpy as np
import tensorflow as tf
import tqdm

from tfsr_defense import (adversarial_training, data, gan, losses, metrics, precision, serving,
                          fileio)
from tfsr_defense.layers import entropy
from tfsr_defense.models import registry

__all__ = ["TrainConfig", "CheckpointError", "NonFiniteLossError", "RUN_KEYS", "train",
           "validation_scores", "build_for_inference", "load_run_model", "make_train_step",
           "latest_checkpoint", "export_metadata"]

# Settings that change the network's variables: a checkpoint made with other
# values cannot be resumed.
_ARCHITECTURE_KEYS = ("model", "scale", "regularized", "model_options")
# Settings that define a run (with the architecture): refused if changed on resume.
RUN_KEYS = ("entropy_weight", "delta", "noise", "estimate_entropy", "entropy_layer",
            "adversarial", "adv_eps", "adv_steps", "adv_mix", "adv_objective")


class CheckpointError(RuntimeError):
  """A checkpoint or run directory cannot be resumed (corrupt or incompatible)."""


class NonFiniteLossError(RuntimeError):
  """Training produced a non-finite loss or non-finite weights (the run is stopped)."""


@dataclasses.dataclass
class TrainConfig:
  """Everything a training run needs (the CLI flags mirror these fields).

  Pixel units: images are float32 [0,1] at the API; L_r is measured in the
  network's native range (models.get_spec(model).pixel_range). ``adv_eps`` is
  in [0,1] units here (the CLI flag ``--adv_eps`` takes /255 units, like
  evaluate's ``--eps``).
  """
  model: str = "edsr"
  scale: int = 4
  entropy_weight: float = None   # lambda; None = the paper's value for the model, 0 = plain
  delta: float = 1.0
  noise: bool = True
  estimate_entropy: bool = True
  entropy_layer: str = registry.DEFAULT_ENTROPY_LAYER  # or 'first' (paper sec. 5.4)
  adversarial: str = "none"      # 'ifgsm': adversarial training (paper sec. 5.6)
  adv_eps: float = 8.0 / 255.0   # alpha, [0,1] units
  adv_steps: int = 1             # T
  adv_mix: bool = False          # train on clean + attacked (2x batch) instead of attacked
  adv_objective: str = "loss"    # or 'sr_distance' (adversarial_training.py)
  train_data: str = "embedded"   # comma-separated names/folders, or 'div2k'
  eval_data: str = "embedded_val"
  data_dir: str = None
  max_train_images: int = None
  eval_max_images: int = None
  patch_size: int = 32           # the paper: 48 (flags/edsr_x4.cfg); 32 keeps the default run short
  batch_size: int = 16
  steps: int = 300
  learning_rate: float = 1e-4
  lr_decay_steps: int = 200000
  lr_decay_factor: float = 0.5
  lr_boundaries: list = None     # piecewise-constant schedule instead: steps where lr changes,
  lr_values: list = None         # ... and the len(lr_boundaries) + 1 learning rates
  clip_norm: float = 0.0
  precision: str = "auto"
  strategy: str = "auto"
  run_dir: str = "runs/edsr_x4"
  checkpoint_every: int = 100
  eval_every: int = 0            # 0: validate only at the end
  log_every: int = 10
  seed: int = 0
  export: bool = True
  init_from: str = None          # run directory or .weights.h5 to start from (not resumed runs)
  vgg_weights: str = "imagenet"  # SRGAN content loss: VGG19 no-top .h5 path or 'imagenet'
  model_options: dict = None     # extra builder kwargs, e.g. dict(n_resblocks=2) (library only)

  def validate(self):
    """Raise ValueError naming the first bad value."""
    registry.get_spec(self.model)
    registry.check_scale(self.scale)
    entropy.check_settings(self.lam, self.delta)
    registry.check_entropy_layer(self.entropy_layer)

    def finite(v):
      return isinstance(v, (int, float)) and math.isfinite(v)

    checks = [
        (self.patch_size >= 1, f"patch_size must be >= 1, got {self.patch_size}"),
        (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
        (self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
        (finite(self.learning_rate) and self.learning_rate > 0,
         f"learning_rate must be > 0 and finite, got {self.learning_rate}"),
        (finite(self.lr_decay_factor) and self.lr_decay_factor > 0,
         f"lr_decay_factor must be > 0 and finite, got {self.lr_decay_factor}"),
        (self.lr_decay_steps >= 1, f"lr_decay_steps must be >= 1, got {self.lr_decay_steps}"),
        (finite(self.clip_norm) and self.clip_norm >= 0,
         f"clip_norm must be >= 0 and finite, got {self.clip_norm}"),
        (not self.lr_boundaries or len(self.lr_values or []) == len(self.lr_boundaries) + 1,
         "lr_values needs exactly one more entry than lr_boundaries"),
        (all(finite(v) and v > 0 for v in (self.lr_values or [])) if self.lr_boundaries else True,
         f"lr_values must be > 0 and finite, got {self.lr_values}"),
        (self.checkpoint_every >= 1, f"checkpoint_every must be >= 1, got {self.checkpoint_every}"),
        (self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}"),
    ]
    for ok, message in checks:
      if not ok:
        raise ValueError(message)
    adversarial_training.check_settings(self.adversarial, self.adv_eps, self.adv_steps,
                                        self.adv_objective)
    if self.adversarial != "none" and gan.is_gan_model(self.model):
      raise ValueError(f"adversarial training is not implemented for the GAN model "
                       f"'{self.model}': train srresnet adversarially instead.")
    precision.resolve_precision(self.precision)
    if self.strategy not in precision.STRATEGIES:
      raise ValueError(f"Unknown strategy '{self.strategy}': use one of {precision.STRATEGIES}.")

  @property
  def lam(self):
    """lambda of this run (``registry.resolve_entropy_weight``)."""
    return registry.resolve_entropy_weight(self.model, self.entropy_weight)


# ---------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------

def export_metadata(config, **extra):
  """The SavedModel metadata of a run (serving.export_saved_model), strict-JSON-able dict."""
  return fileio.strict(dict(
      model=config.model, scale=config.scale, entropy_weight=config.lam, delta=config.delta,
      noise=config.noise, estimate_entropy=config.estimate_entropy,
      entropy_layer=config.entropy_layer, adversarial=config.adversarial,
      adv_eps=config.adv_eps if config.adversarial != "none" else None,
      adv_steps=config.adv_steps if config.adversarial != "none" else None, **extra))


# ---------------------------------------------------------------------------
# Models, validation
# ---------------------------------------------------------------------------

def build_for_inference(config):
  """The network of ``config`` under the float32 policy (for validation/export)."""
  with precision.policy_scope("float32"):
    return _build(config)


def load_run_model(run_dir, log=None):
  """The float32 network of a training run directory, with its trained weights.

  The weights: ``model.weights.h5`` of a finished run, else the newest
  checkpoint in ``ckpt/`` (an interrupted run; ``latest_checkpoint``).

  Args:
    run_dir: training run directory (holds config.json).
    log: fn(str) for warnings (e.g. a garbled checkpoint state file), or None.

  Returns:
    (TrainConfig, tf.keras.Model float32 [0,1] -> [0,1], weights source path,
    step of the checkpoint or None for final weights).

  Raises:
    FileNotFoundError: run_dir lacks config.json, or has neither final
      weights nor a checkpoint.
    CheckpointError: corrupt config.json; weights that do not fit the
      configured network, or are not finite.
  """
  config_path = os.path.join(run_dir, "config.json")
  weights_path = os.path.join(run_dir, "model.weights.h5")
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"{config_path} not found: is {run_dir} a finished training run "
                            "(or one with checkpoints)?")
  try:
    with open(config_path, encoding="utf-8") as f:
      saved = json.load(f)
  except ValueError as e:
    raise CheckpointError(f"Corrupt {config_path}: {e}") from e
  fields = set(TrainConfig.__dataclass_fields__)
  config = TrainConfig(**{k: v for k, v in saved.items() if k in fields})
  model = build_for_inference(config)
  step = None
  if os.path.isfile(weights_path):
    source = weights_path
    try:
      model.load_weights(weights_path)
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"Cannot load {weights_path} into {config.model}: {e}") from e
  else:
    source = latest_checkpoint(os.path.join(run_dir, "ckpt"), log=log)
    if source is None:
      raise FileNotFoundError(f"{weights_path} not found and no checkpoint in "
                              f"{os.path.join(run_dir, 'ckpt')}: is {run_dir} a finished "
                              "training run (or one with checkpoints)?")
    counter = tf.Variable(0, dtype=tf.int64)
    try:
      tf.train.Checkpoint(model=model, step=counter).restore(source).expect_partial() \
          .assert_existing_objects_matched()
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"Cannot restore {source} into {config.model}: "
                            f"{type(e).__name__}: {str(e)[:500]}") from e
    step = int(counter)
  if not all(bool(tf.reduce_all(tf.math.is_finite(w))) for w in model.weights):
    raise CheckpointError(f"{source} holds non-finite weights.")
  return config, model, source, step


def _build(config):
  return registry.build_model(config.model, config.scale, entropy_weight=config.lam,
                              delta=config.delta, noise=config.noise,
                              estimate_entropy=config.estimate_entropy,
                              entropy_layer=config.entropy_layer,
                              **(config.model_options or {}))


def validation_scores(model, pairs, scale, progress=False):
  """Mean PSNR-Y / SSIM-Y (dB / unitless, shave = scale, peak 255) of ``model`` on pairs.

  Args:
    model: Keras SR model, float32 [0,1] in/out.
    pairs: list of data.ImagePair.
    scale: SR scale (the border shaved).
    progress: show a progress bar.

  Returns:
    dict(psnr_y, ssim_y, per_image=[{name, psnr_y, ssim_y}]); per image
    ``metrics.sr_quality``.
  """
  predict = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
  rows = []
  for pair in tqdm.tqdm(pairs, desc="validate", disable=not progress, file=sys.stdout):
    psnr_y, ssim_y = metrics.sr_quality(predict(data.to_float(pair.lr)[None]),
                                        data.to_float(pair.hr)[None], scale)
    rows.append(dict(name=pair.name, psnr_y=float(psnr_y[0]), ssim_y=float(ssim_y[0])))
  return dict(psnr_y=float(np.mean([r["psnr_y"] for r in rows])),
              ssim_y=float(np.mean([r["ssim_y"] for r in rows])), per_image=rows)


def _learning_rate_schedule(config):
  """Piecewise-constant if lr_boundaries is set, else lr x factor^floor(step / decay_steps)."""
  if config.lr_boundaries:
    return tf.keras.optimizers.schedules.PiecewiseConstantDecay(
        [int(b) for b in config.lr_boundaries], [float(v) for v in config.lr_values])
  return tf.keras.optimizers.schedules.ExponentialDecay(
      config.learning_rate, config.lr_decay_steps, config.lr_decay_factor, staircase=True)


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------

_CKPT_INDEX = re.compile(r"^ckpt-(\d+)\.index$")


def latest_checkpoint(ckpt_dir, log=None):
  """The newest complete checkpoint under ``ckpt_dir``, read from the files.

  The ``checkpoint`` state file is only a hint: when it is garbled, missing or
  points at an older checkpoint than the files hold, the newest
  ``ckpt-<N>.index`` wins (with a line to ``log``).

  Args:
    ckpt_dir: the run's ``ckpt/`` directory (may not exist).
    log: fn(str) for the warning, or None.

  Returns:
    checkpoint path prefix (``.../ckpt-<N>``) or None if the directory holds
    no checkpoint files at all.

  Raises:
    CheckpointError: the directory holds checkpoint files (``ckpt-*``) but no
      complete checkpoint (no ``.index`` file).
  """
  if not os.path.isdir(ckpt_dir):
    return None
  names = os.listdir(ckpt_dir)
  numbers = sorted(int(m.group(1)) for m in map(_CKPT_INDEX.match, names) if m)
  if not numbers:
    if any(n.startswith("ckpt-") for n in names):
      raise CheckpointError(
          f"{ckpt_dir} holds checkpoint files but no complete checkpoint (no ckpt-N.index): "
          "move them away or use another --run_dir.")
    return None
  newest = os.path.join(ckpt_dir, f"ckpt-{numbers[-1]}")
  try:
    hinted = tf.train.latest_checkpoint(ckpt_dir)
  except (tf.errors.OpError, ValueError):  # garbled state file
    hinted = None
  if log and (hinted is None or os.path.basename(hinted) != os.path.basename(newest)):
    log(f"Warning: {os.path.join(ckpt_dir, 'checkpoint')} names "
        f"{hinted and os.path.basename(hinted)}; resuming from the newest checkpoint "
        f"file {os.path.basename(newest)}.")
  return newest


def _restore(checkpoint, path):
  try:
    status = checkpoint.restore(path)
    status.assert_existing_objects_matched()
  except Exception as e:  # pylint: disable=broad-except  (the reader raises many kinds)
    raise CheckpointError(
        f"Cannot resume from checkpoint {path}: {type(e).__name__}: {str(e)[:500]}. "
        "It is corrupt or was made by another network; move it away or use another --run_dir."
    ) from e


def _weights_finite(variables):
  return bool(tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in variables]))


# ---------------------------------------------------------------------------
# The steps of train()
# ---------------------------------------------------------------------------

def _run_record(config):
  """What config.json holds: the fields, whether the net is regularized, the effective lambda."""
  return dict(dataclasses.asdict(config), regularized=config.lam > 0)


def _saved_value(saved, key):
  """A RUN_KEYS value of a saved config.json (older runs lack the newer keys: defaults)."""
  if key == "entropy_weight":
    return registry.resolve_entropy_weight(saved.get("model"), saved.get("entropy_weight"))
  return saved.get(key, getattr(TrainConfig, key))


def _check_resumable(config):
  """Refuse a run directory whose checkpoints were made by another run (writes nothing).

  Raises:
    CheckpointError: corrupt config.json; another network (``_ARCHITECTURE_KEYS``);
      a changed ``RUN_KEYS`` setting (names old and new values).
  """
  path = os.path.join(config.run_dir, "config.json")
  if not os.path.isfile(path) or latest_checkpoint(os.path.join(config.run_dir, "ckpt")) is None:
    return
  try:
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(f"Corrupt {path}: {e}. Use another --run_dir.") from e
  current = _run_record(config)
  diff = {k: (saved.get(k), current[k]) for k in _ARCHITECTURE_KEYS if saved.get(k) != current[k]}
  if diff:
    raise CheckpointError(
        f"Run directory {config.run_dir} holds a checkpoint of another network "
        f"(saved vs requested: {diff}). Use another --run_dir or the same settings.")
  now = dict(current, entropy_weight=config.lam)
  keys = RUN_KEYS
  if config.lam == 0 and _saved_value(saved, "entropy_weight") == 0:  # no regularizer to differ
    keys = [k for k in RUN_KEYS if k.startswith("adv")]
  changed = [f"{k}: {_saved_value(saved, k)!r} -> {now[k]!r}" for k in keys
             if _saved_value(saved, k) != now[k]]
  if changed:
    raise CheckpointError(
        f"Run directory {config.run_dir} holds checkpoints of a run with other settings "
        f"({'; '.join(changed)}); they define the run and cannot change on resume. Re-run "
        "with the saved values, or start a new run (another --run_dir, --init_from=<this run>).")


def _prepare(config, strategy):
  """Checks and data, before anything is built or written.

  Returns:
    (policy, strategy, eval_pairs, train_pairs).
  """
  config.validate()
  policy = precision.resolve_precision(config.precision)
  strategy = strategy or precision.make_strategy(config.strategy)
  replicas = strategy.num_replicas_in_sync
  if config.batch_size % replicas:
    raise ValueError(f"batch_size {config.batch_size} is not a multiple of the {replicas} "
                     "replicas.")
  eval_pairs = (data.load_pairs(config.eval_data, config.scale, config.data_dir,
                                config.eval_max_images) if config.eval_data else [])
  train_pairs = None  # DIV2K: streamed by tfds
  if config.train_data != data.DIV2K:
    train_pairs = []
    for name in config.train_data.split(","):
      train_pairs += data.load_pairs(name.strip(), config.scale, config.data_dir,
                                     config.max_train_images)
  _check_resumable(config)
  return policy, strategy, eval_pairs, train_pairs


@dataclasses.dataclass
class _State:
  """What a run trains and checkpoints."""
  model: Any
  optimizer: Any
  schedule: Any
  step: Any
  checkpoint: Any
  discriminator: Any = None
  d_optimizer: Any = None
  vgg: Any = None
  manager: Optional[Any] = None

  @property
  def variables(self):
    extra = self.discriminator.variables if self.discriminator is not None else []
    return self.model.variables + extra


def _build_state(config, policy, strategy):
  """Network, optimizer(s), step counter and checkpoint object (nothing restored yet)."""
  def adam(schedule, clip=None):
    optimizer = tf.keras.optimizers.Adam(schedule, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                                         global_clipnorm=clip)
    if policy == "mixed_float16":
      optimizer = tf.keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer

  with precision.policy_scope(policy), strategy.scope():
    model = _build(config)
    schedule = _learning_rate_schedule(config)
    state = _State(model=model, optimizer=adam(schedule, config.clip_norm or None),
                   schedule=schedule, step=None, checkpoint=None)
    if gan.is_gan_model(config.model):  # SRGAN phase two: + discriminator, VGG54, its optimizer
      state.discriminator = gan.build_discriminator()
      state.d_optimizer = adam(schedule)
      state.vgg = gan.build_vgg54(config.vgg_weights)
  # A plain (not mirrored) counter: read on the host every step.
  state.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
  parts = {}
  if state.discriminator is not None:
    parts = dict(discriminator=state.discriminator, d_optimizer=state.d_optimizer)
  state.checkpoint = tf.train.Checkpoint(model=model, optimizer=state.optimizer, step=state.step,
                                         **parts)
  return state


def _restore_or_initialise(config, state, log):
  """Resume from the newest checkpoint, else initialise (init_from / SRGAN phase one)."""
  ckpt_dir = os.path.join(config.run_dir, "ckpt")
  path = latest_checkpoint(ckpt_dir, log=log)
  if path:
    _restore(state.checkpoint, path)
    log(f"Resumed from {path} at step {int(state.step)}.")
  elif config.init_from and state.discriminator is not None:
    log(f"Generator initialised from {gan.load_generator_weights(state.model, config.init_from)}.")
  elif config.init_from:
    _load_initial_weights(state.model, config)
    log(f"Initialised from {config.init_from}.")
  elif state.discriminator is not None:
    log("Warning: SRGAN without --init_from starts from a random generator; the recipe "
        "pre-trains SRResNet first (flags/srgan_x4.cfg).")
  return path


def _load_initial_weights(model, config):
  """Copy weights from config.init_from (run directory or .weights.h5) into model.

  Loaded into a plain float32 copy first: Keras cannot load a weights file
  straight into a tf.distribute model holding sync-on-read metric variables.
  """
  path = config.init_from
  if os.path.isdir(path):
    path = os.path.join(path, "model.weights.h5")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--init_from: no weights file {path} (give a finished run "
                            "directory or a .weights.h5 file).")
  source = build_for_inference(config)
  try:
    source.load_weights(path)
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f"Cannot initialise {model.name} from {path}: {e}") from e
  model.set_weights(source.get_weights())


def _write_run_metadata(config, state, resumed_from, flags_text):
  """config.json (+ flags.txt) and the checkpoint manager, after every check passed."""
  os.makedirs(config.run_dir, exist_ok=True)
  fileio.write_json(os.path.join(config.run_dir, "config.json"), _run_record(config))
  if flags_text is not None:
    with open(os.path.join(config.run_dir, "flags.txt"), "w", encoding="utf-8") as f:
      f.write(flags_text)
  ckpt_dir = os.path.join(config.run_dir, "ckpt")
  if resumed_from:  # repair a garbled / stale state file so the manager sees the checkpoints
    numbers = sorted(int(m.group(1)) for m in map(_CKPT_INDEX.match, os.listdir(ckpt_dir)) if m)
    tf.compat.v1.train.update_checkpoint_state(
        ckpt_dir, os.path.abspath(resumed_from),
        all_model_checkpoint_paths=[os.path.abspath(os.path.join(ckpt_dir, f"ckpt-{n}"))
                                    for n in numbers])
  state.manager = tf.train.CheckpointManager(state.checkpoint, ckpt_dir, max_to_keep=3)


def _distributed_dataset(config, pairs, strategy, start_step):
  """The training batches from step ``start_step`` on, split over the replicas.

  In-memory data: patch k of the run is a function of (seed, k), so a resumed
  run sees the batches the uninterrupted run would have seen. DIV2K (tfds)
  shuffles from a buffer and does not replay.
  """
  if pairs is None:
    dataset = data.div2k_train_dataset(config.scale, config.patch_size, config.batch_size,
                                       data_dir=config.data_dir)
  else:
    tf.random.set_seed(config.seed)
    dataset = data.train_dataset(pairs, config.patch_size, config.scale, config.batch_size,
                                 seed=config.seed, skip_batches=start_step)
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
  return strategy.experimental_distribute_dataset(dataset.with_options(options))


def make_train_step(config, model, optimizer, strategy=None):
  """The trainer's update L = L_r + lambda L_e (eq. 2) as a tf.function over replicas.

  With ``config.adversarial == 'ifgsm'`` the LR batch is first replaced by
  (``adv_mix``: concatenated with) its attacked version
  (``adversarial_training.adversarial_batch``), against the same HR.

  Args:
    config: TrainConfig (model, batch_size, adversarial settings).
    model: the network, built in ``strategy.scope()``.
    optimizer: its Keras optimizer (LossScaleOptimizer under mixed_float16).
    strategy: tf.distribute strategy (default: the current one).

  Returns:
    tf.function (lr, hr) -> dict of float32 scalars, global means over the
    batch: loss (L), l_r (L_r, native units), l_e_bits (L_e of eq. 1 in
    bits per element, from the regularizer by value; 0 for a plain network),
    reg (all of the model's added losses, lambda L_e included), psnr_rgb
    (dB, peak 1, SR clipped to [0,1]). lr: float32 (B, h, w, 3) in [0,1];
    hr: (B, sh, sw, 3).
  """
  spec = registry.get_spec(config.model)
  attack = config.adversarial != "none"
  examples = config.batch_size * (2 if attack and config.adv_mix else 1)

  def step_fn(lr, hr):
    if attack:
      lr, hr = adversarial_training.adversarial_batch(
          model, lr, hr, eps=config.adv_eps, steps=config.adv_steps,
          objective=config.adv_objective, mix=config.adv_mix, loss=spec.loss,
          pixel_range=spec.pixel_range)
    with tf.GradientTape() as tape:
      sr = model(lr, training=True)
      per_example = losses.reconstruction_loss(sr, hr, spec.loss, spec.pixel_range)
      l_r = tf.nn.compute_average_loss(per_example, global_batch_size=examples)
      reg, bits = losses.regularization_terms(model)
      loss = l_r + reg
      scaled = precision.scale_loss(optimizer, loss)
    grads = precision.unscale_gradients(optimizer,
                                        tape.gradient(scaled, model.trainable_variables))
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    psnr = tf.reduce_sum(metrics.psnr(tf.clip_by_value(sr, 0.0, 1.0), hr, "rgb")) / examples
    return dict(loss=loss, l_r=l_r, l_e_bits=bits, reg=reg, psnr_rgb=psnr)

  return precision.distributed_step(step_fn, strategy)


@contextlib.contextmanager
def _sigterm_as_interrupt():
  """Inside: SIGTERM (schedulers, ``timeout``) raises KeyboardInterrupt like Ctrl-C."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return

  def handler(signum, frame):
    del frame
    raise KeyboardInterrupt(f"signal {signum}")

  previous = signal.signal(signal.SIGTERM, handler)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)


def _save(state, number):
  """Checkpoint ``number`` if every variable is finite; NonFiniteLossError otherwise."""
  if not _weights_finite(state.variables):
    raise NonFiniteLossError(
        f"Step {number}: the weights are not finite; stopped without saving. The last good "
        f"checkpoint is {state.manager.latest_checkpoint or 'none'}; nothing exported. "
        "Lower --learning_rate (or set --clip_norm).")
  state.manager.save(checkpoint_number=number)


def _train_loop(config, state, train_step, dataset, eval_pairs, log):
  """Steps until config.steps: logs, checkpoints, periodic validation, non-finite stop.

  Returns:
    seconds per step (the first, tracing, step excluded; NaN if too few).
  """
  writers = {k: tf.summary.create_file_writer(os.path.join(config.run_dir, "logs", k))
             for k in ("train", "eval")}
  step = state.step
  start = int(step)
  iterator = iter(dataset)
  timer, timed_steps = time.time(), 0
  bar = tqdm.tqdm(total=config.steps, initial=start, desc=f"train {config.model}",
                  unit="step", file=sys.stdout, dynamic_ncols=True,
                  mininterval=1.0 if sys.stdout.isatty() else 30.0)
  try:
    with _sigterm_as_interrupt():
      while int(step) < config.steps:
        out = train_step(*next(iterator))
        s = int(step) + 1
        values = {k: float(v) for k, v in out.items()}
        if not all(math.isfinite(v) for v in values.values()):
          terms = ", ".join(f"{k}={v:.6g}" for k, v in values.items())
          raise NonFiniteLossError(
              f"Step {s}: non-finite loss ({terms}); stopped without saving. The last good "
              f"checkpoint is {state.manager.latest_checkpoint or 'none'}; nothing exported. "
              "Lower --learning_rate (or set --clip_norm), or check --entropy_weight, "
              "--delta and the data.")
        step.assign(s)
        bar.update(1)
        if s == start + 1:  # skip the tracing step in the step/s figure
          timer, timed_steps = time.time(), 0
        else:
          timed_steps += 1
        if s % config.log_every == 0 or s == config.steps:
          _log_train(writers["train"], state, s, values)
          bar.set_postfix(loss=f"{values['loss']:.3f}", L_e=f"{values['l_e_bits']:.3f}",
                          psnr=f"{values['psnr_rgb']:.2f}", refresh=False)
        if s % config.checkpoint_every == 0:
          _save(state, s)
        if config.eval_every and s % config.eval_every == 0 and s < config.steps and eval_pairs:
          result = validation_scores(state.model, eval_pairs, config.scale)
          bar.write(f"step {s}: {config.eval_data} PSNR-Y {result['psnr_y']:.2f} dB "
                    f"SSIM-Y {result['ssim_y']:.4f}")
          _log_eval(writers["eval"], s, result)
  except KeyboardInterrupt:
    bar.close()
    if _weights_finite(state.variables):
      state.manager.save(checkpoint_number=int(step))
      log(f"Interrupted: checkpoint saved at step {int(step)} in {config.run_dir}; "
          "re-run the same command to resume.")
    else:
      log(f"Interrupted at step {int(step)} with non-finite weights: nothing saved; the last "
          f"good checkpoint is {state.manager.latest_checkpoint or 'none'}.")
    raise
  finally:
    bar.close()
    for w in writers.values():
      w.flush()
  latest = state.manager.latest_checkpoint
  if latest is None or int(latest.rsplit("-", 1)[1]) != int(step):
    _save(state, int(step))
  return (time.time() - timer) / timed_steps if timed_steps else float("nan")


def _log_train(writer, state, s, values):
  """TensorBoard: the step's values, the learning rate, the model's metrics (then reset)."""
  with writer.as_default(step=s):
    for k, v in values.items():
      tf.summary.scalar(k, v)
    tf.summary.scalar("learning_rate", float(state.schedule(s)))
    # e.g. the regularizer's entropy_bits: mean L_e since the last log.
    for metric in state.model.metrics:
      tf.summary.scalar(f"mean_{metric.name}", float(metric.result()))
      metric.reset_state()


def _log_eval(writer, s, scores):
  with writer.as_default(step=s):
    tf.summary.scalar("psnr_y", scores["psnr_y"])
    tf.summary.scalar("ssim_y", scores["ssim_y"])
  writer.flush()


def _finish(config, state, policy, eval_pairs, seconds_per_step, log):
  """Final weights, validation and export on a float32 copy; result.json."""
  # bf16 activations would cost PSNR: validate and export in float32.
  final = build_for_inference(config)
  final.set_weights(state.model.get_weights())
  final.save_weights(os.path.join(config.run_dir, "model.weights.h5"))
  step = int(state.step)
  result = dict(step=step, precision=policy, seconds_per_step=seconds_per_step,
                eval_data=config.eval_data)
  if eval_pairs:
    scores = validation_scores(final, eval_pairs, config.scale, progress=True)
    result.update(scores)
    writer = tf.summary.create_file_writer(os.path.join(config.run_dir, "logs", "eval"))
    _log_eval(writer, step, scores)
    log(f"{config.eval_data} x{config.scale}: PSNR-Y {scores['psnr_y']:.2f} dB, "
        f"SSIM-Y {scores['ssim_y']:.4f} (Y of MATLAB rgb2ycbcr, shave {config.scale}, peak 255)")
  if config.export:
    export_dir = os.path.join(config.run_dir, "export", "1")
    serving.export_saved_model(final, export_dir, metadata=export_metadata(config, step=step))
    result["export_dir"] = export_dir
    log(f"SavedModel exported to {export_dir}")
  fileio.write_json(os.path.join(config.run_dir, "result.json"), result)
  return fileio.strict(result)


def train(config, strategy=None, log=print, flags_text=None):
  """Train (or resume) a run; returns the result dict (also in run_dir/result.json).

  Args:
    config: TrainConfig.
    strategy: a tf.distribute strategy (default: from config.strategy).
    log: function for progress lines.
    flags_text: the CLI's effective flags, written to run_dir/flags.txt with
      config.json once every check passed (None: no flags.txt).

  Returns:
    dict(step, psnr_y, ssim_y, per_image, eval_data, export_dir,
    seconds_per_step, precision); non-finite numbers are None.

  SRGAN (``gan.is_gan_model``) trains adversarially (tfsr_defense/gan.py):
  generator = the registry's network, initialised from ``init_from`` (a
  phase-one SRResNet run), plus a discriminator and the VGG54 content loss.

  Raises:
    ValueError: bad configuration or data; FileNotFoundError: missing data;
    CheckpointError: the run directory cannot be resumed;
    NonFiniteLossError: the loss or the weights became non-finite;
    gan.VGGWeightsError: SRGAN without available VGG19 weights;
    KeyboardInterrupt: Ctrl-C or SIGTERM (after saving a checkpoint).
  """
  policy, strategy, eval_pairs, train_pairs = _prepare(config, strategy)
  # Python, NumPy and TF seeds: Keras' unseeded initializers draw from Python's
  # RNG, so this makes a run's initial weights (and its whole run) repeatable.
  tf.keras.utils.set_random_seed(config.seed)
  regularizer = (f"lambda={config.lam} delta={config.delta} noise={config.noise} "
                 f"estimate_entropy={config.estimate_entropy} layer={config.entropy_layer}"
                 if config.lam > 0 else "plain (no regularizer)")
  adversarial = ("" if config.adversarial == "none" else
                 f" adversarial={config.adversarial}(eps={config.adv_eps * 255:g}/255, "
                 f"T={config.adv_steps}, {config.adv_objective}"
                 f"{', mix' if config.adv_mix else ''})")
  log(f"model={config.model} x{config.scale} {regularizer}{adversarial} precision={policy} "
      f"replicas={strategy.num_replicas_in_sync} batch={config.batch_size} "
      f"patch={config.patch_size} run_dir={config.run_dir}")
  state = _build_state(config, policy, strategy)
  resumed_from = _restore_or_initialise(config, state, log)
  _write_run_metadata(config, state, resumed_from, flags_text)
  dataset = _distributed_dataset(config, train_pairs, strategy, start_step=int(state.step))
  if state.discriminator is not None:  # the GAN update replaces L_r + lambda L_e
    train_step = gan.make_gan_train_step(
        state.model, state.discriminator, state.vgg, state.optimizer, state.d_optimizer,
        global_batch_size=config.batch_size, strategy=strategy)
  else:
    train_step = make_train_step(config, state.model, state.optimizer, strategy)
  seconds_per_step = _train_loop(config, state, train_step, dataset, eval_pairs, log)
  return _finish(config, state, policy, eval_pairs, seconds_per_step, log)
