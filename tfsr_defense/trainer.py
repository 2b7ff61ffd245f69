"""Training of SR networks with the entropy regularizer (L = L_r + lambda L_e, paper eq. 2).

``train(TrainConfig(...))`` is what ``python -m tfsr_defense.train`` runs. A run
directory holds:

    config.json        the effective configuration
    ckpt/              resumable checkpoints (model, optimizer, step)
    logs/{train,eval}  TensorBoard scalars: loss, L_r, L_e (bits), PSNR, lr
    model.weights.h5   final weights (Keras)
    export/1/          SavedModel for TF Serving (see serving.py)
    result.json        final validation PSNR/SSIM (Y, shave = scale)

Re-running the same configuration on the same directory resumes at the last
checkpoint's step.
"""

import dataclasses
import json
import math
import os
import sys
import time

import numpy as np
import tensorflow as tf
import tqdm

from tfsr_defense import data, gan, losses, metrics, models, precision, serving

__all__ = ["TrainConfig", "CheckpointError", "train", "validate", "build_for_inference"]

# Settings that change the network's variables: a checkpoint made with other
# values cannot be resumed.
_ARCHITECTURE_KEYS = ("model", "scale", "regularized", "model_options")


class CheckpointError(RuntimeError):
  """A checkpoint or run directory cannot be resumed (corrupt or incompatible)."""


@dataclasses.dataclass
class TrainConfig:
  """Everything a training run needs (the CLI flags mirror these fields).

  Pixel units: images are float32 [0,1] at the API; L_r is measured in the
  network's native range (models.get_spec(model).pixel_range).
  """
  model: str = "edsr"
  scale: int = 4
  entropy_weight: float = None   # lambda; None = the paper's value for the model, 0 = plain
  delta: float = 1.0
  noise: bool = True
  estimate_entropy: bool = True
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
    models.get_spec(self.model)
    checks = [
        (self.scale in (2, 3, 4), f"scale must be 2, 3 or 4, got {self.scale}"),
        (self.entropy_weight is None or self.entropy_weight >= 0,
         f"entropy_weight (lambda) must be >= 0, got {self.entropy_weight}"),
        (self.delta > 0, f"delta must be > 0, got {self.delta}"),
        (self.patch_size >= 1, f"patch_size must be >= 1, got {self.patch_size}"),
        (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
        (self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
        (self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}"),
        (self.clip_norm >= 0, f"clip_norm must be >= 0, got {self.clip_norm}"),
        (not self.lr_boundaries or len(self.lr_values or []) == len(self.lr_boundaries) + 1,
         "lr_values needs exactly one more entry than lr_boundaries"),
        (self.checkpoint_every >= 1, f"checkpoint_every must be >= 1, got {self.checkpoint_every}"),
    ]
    for ok, message in checks:
      if not ok:
        raise ValueError(message)
    precision.resolve_precision(self.precision)
    if self.strategy not in precision.STRATEGIES:
      raise ValueError(f"Unknown strategy '{self.strategy}': use one of {precision.STRATEGIES}.")

  @property
  def lam(self):
    spec = models.get_spec(self.model)
    return spec.entropy_weight if self.entropy_weight is None else float(self.entropy_weight)


def build_for_inference(config):
  """The network of ``config`` under the float32 policy (for validation/export)."""
  with precision.policy_scope("float32"):
    return _build(config)


def _build(config):
  return models.build_model(config.model, config.scale, entropy_weight=config.lam,
                            delta=config.delta, noise=config.noise,
                            estimate_entropy=config.estimate_entropy,
                            **(config.model_options or {}))


def validate(model, pairs, scale, progress=False):
  """Mean PSNR-Y / SSIM-Y (dB / unitless, shave = scale, peak 255) of ``model`` on pairs.

  Args:
    model: Keras SR model, float32 [0,1] in/out.
    pairs: list of data.ImagePair.

  Returns:
    dict(psnr_y, ssim_y, per_image=[{name, psnr_y, ssim_y}]).
  """
  predict = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
  rows = []
  for pair in tqdm.tqdm(pairs, desc="validate", disable=not progress, file=sys.stdout):
    sr = tf.clip_by_value(predict(data.to_float(pair.lr)[None]), 0.0, 1.0)
    hr = data.to_float(pair.hr)[None]
    rows.append(dict(name=pair.name,
                     psnr_y=float(metrics.psnr(sr, hr, "y", shave=scale)[0]),
                     ssim_y=float(metrics.ssim(sr, hr, "y", shave=scale)[0])))
  return dict(psnr_y=float(np.mean([r["psnr_y"] for r in rows])),
              ssim_y=float(np.mean([r["ssim_y"] for r in rows])), per_image=rows)


def _learning_rate_schedule(config):
  """Piecewise-constant if lr_boundaries is set, else lr x factor^floor(step / decay_steps)."""
  if config.lr_boundaries:
    return tf.keras.optimizers.schedules.PiecewiseConstantDecay(
        [int(b) for b in config.lr_boundaries], [float(v) for v in config.lr_values])
  return tf.keras.optimizers.schedules.ExponentialDecay(
      config.learning_rate, config.lr_decay_steps, config.lr_decay_factor, staircase=True)


def _load_train_pairs(config):
  """In-memory LR/HR pairs of the training sets (None for DIV2K, streamed by tfds)."""
  if config.train_data == data.DIV2K:
    return None
  pairs = []
  for name in config.train_data.split(","):
    pairs += data.load_pairs(name.strip(), config.scale, config.data_dir, config.max_train_images)
  return pairs


def _train_dataset(config, pairs, global_batch, seed):
  if pairs is None:
    return data.div2k_train_dataset(config.scale, config.patch_size, global_batch)
  tf.random.set_seed(seed)
  return data.train_dataset(pairs, config.patch_size, config.scale, global_batch, seed=seed)


def _check_run_dir(config):
  """Refuse to resume a run directory made for another network."""
  path = os.path.join(config.run_dir, "config.json")
  current = dict(dataclasses.asdict(config), regularized=config.lam > 0)
  if os.path.isfile(path):
    try:
      with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    except (OSError, ValueError) as e:
      raise CheckpointError(f"Corrupt {path}: {e}. Use another --run_dir.") from e
    diff = {k: (saved.get(k), current[k]) for k in _ARCHITECTURE_KEYS if saved.get(k) != current[k]}
    if diff and tf.train.latest_checkpoint(os.path.join(config.run_dir, "ckpt")):
      raise CheckpointError(
          f"Run directory {config.run_dir} holds a checkpoint of another network "
          f"(saved vs requested: {diff}). Use another --run_dir or the same settings.")
  os.makedirs(config.run_dir, exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(current, f, indent=2, sort_keys=True)


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


def _restore(checkpoint, manager):
  path = manager.latest_checkpoint
  if not path:
    return False
  try:
    status = checkpoint.restore(path)
    status.assert_existing_objects_matched()
  except Exception as e:  # pylint: disable=broad-except  (the reader raises many kinds)
    raise CheckpointError(
        f"Cannot resume from checkpoint {path}: {type(e).__name__}: {str(e)[:500]}. "
        "It is corrupt or was made by another network; move it away or use another --run_dir."
    ) from e
  return True


def train(config, strategy=None, log=print):
  """Train (or resume) a run; returns the result dict (also in run_dir/result.json).

  Args:
    config: TrainConfig.
    strategy: a tf.distribute strategy (default: from config.strategy).
    log: function for progress lines.

  Returns:
    dict(step, psnr_y, ssim_y, eval_data, export_dir, seconds_per_step, precision).

  SRGAN (``gan.is_gan_model``) trains adversarially (tfsr_defense/gan.py):
  generator = the registry's network, initialised from ``init_from`` (a
  phase-one SRResNet run), plus a discriminator and the VGG54 content loss.

  Raises:
    ValueError: bad configuration or data; FileNotFoundError: missing data;
    CheckpointError: the run directory cannot be resumed;
    gan.VGGWeightsError: SRGAN without available VGG19 weights.
  """
  config.validate()
  spec = models.get_spec(config.model)
  policy = precision.resolve_precision(config.precision)
  strategy = strategy or precision.make_strategy(config.strategy)
  replicas = strategy.num_replicas_in_sync
  global_batch = config.batch_size
  if global_batch % replicas:
    raise ValueError(f"batch_size {global_batch} is not a multiple of the {replicas} replicas.")
  lam = config.lam
  tf.random.set_seed(config.seed)

  eval_pairs = (data.load_pairs(config.eval_data, config.scale, config.data_dir,
                                config.eval_max_images) if config.eval_data else [])
  train_pairs = _load_train_pairs(config)
  _check_run_dir(config)
  regularizer = (f"lambda={lam} delta={config.delta} noise={config.noise} "
                 f"estimate_entropy={config.estimate_entropy}" if lam > 0 else
                 "plain (no regularizer)")
  log(f"model={config.model} x{config.scale} {regularizer} precision={policy} "
      f"replicas={replicas} batch={global_batch} patch={config.patch_size} run_dir={config.run_dir}")

  with precision.policy_scope(policy), strategy.scope():
    model = _build(config)
    schedule = _learning_rate_schedule(config)
    optimizer = tf.keras.optimizers.Adam(
        schedule, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
        global_clipnorm=config.clip_norm or None)
    loss_scaling = policy == "mixed_float16"
    if loss_scaling:
      optimizer = tf.keras.mixed_precision.LossScaleOptimizer(optimizer)
    gan_parts = {}
    if gan.is_gan_model(config.model):  # SRGAN phase two: + discriminator, VGG54, its optimizer
      d_optimizer = tf.keras.optimizers.Adam(schedule, beta_1=0.9, beta_2=0.999, epsilon=1e-8)
      if loss_scaling:
        d_optimizer = tf.keras.mixed_precision.LossScaleOptimizer(d_optimizer)
      gan_parts = dict(discriminator=gan.build_discriminator(), d_optimizer=d_optimizer)
      vgg = gan.build_vgg54(config.vgg_weights)
  # A plain (not mirrored) counter: read on the host every step.
  step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
  checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step, **gan_parts)

  manager = tf.train.CheckpointManager(checkpoint, os.path.join(config.run_dir, "ckpt"),
                                       max_to_keep=3)
  if _restore(checkpoint, manager):
    log(f"Resumed from {manager.latest_checkpoint} at step {int(step)}.")
  elif config.init_from and gan_parts:
    log(f"Generator initialised from {gan.load_generator_weights(model, config.init_from)}.")
  elif config.init_from:
    _load_initial_weights(model, config)
    log(f"Initialised from {config.init_from}.")
  elif gan_parts:
    log("Warning: SRGAN without --init_from starts from a random generator; the recipe "
        "pre-trains SRResNet first (flags/srgan_x4.cfg).")
  # Seeded with the step: a resumed run draws new patches instead of replaying.
  dataset = _train_dataset(config, train_pairs, global_batch, seed=config.seed + int(step))
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
  dist_dataset = strategy.experimental_distribute_dataset(dataset.with_options(options))

  def step_fn(lr, hr):
    with tf.GradientTape() as tape:
      sr = model(lr, training=True)
      per_example = losses.reconstruction_loss(sr, hr, spec.loss, spec.pixel_range)
      l_r = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
      reg = tf.add_n(model.losses) if model.losses else tf.constant(0.0)
      reg = tf.nn.scale_regularization_loss(tf.cast(reg, tf.float32))
      loss = l_r + reg
      scaled = optimizer.get_scaled_loss(loss) if loss_scaling else loss
    grads = tape.gradient(scaled, model.trainable_variables)
    if loss_scaling:
      grads = optimizer.get_unscaled_gradients(grads)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    psnr = tf.reduce_sum(metrics.psnr(tf.clip_by_value(sr, 0.0, 1.0), hr, "rgb")) / global_batch
    bits = reg / lam if lam > 0 else tf.constant(0.0)
    return dict(loss=loss, l_r=l_r, l_e_bits=bits, psnr_rgb=psnr)

  if gan_parts:  # the GAN update replaces L_r + lambda L_e
    train_step = gan.make_gan_train_step(
        model, gan_parts["discriminator"], vgg, optimizer, gan_parts["d_optimizer"],
        global_batch_size=global_batch, strategy=strategy)
  else:
    @tf.function
    def train_step(lr, hr):
      out = strategy.run(step_fn, args=(lr, hr))
      return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
              for k, v in out.items()}

  writers = {k: tf.summary.create_file_writer(os.path.join(config.run_dir, "logs", k))
             for k in ("train", "eval")}
  start = int(step)
  iterator = iter(dist_dataset)
  timer = time.time()
  timed_steps = 0
  bar = tqdm.tqdm(total=config.steps, initial=start, desc=f"train {config.model}",
                  unit="step", file=sys.stdout, dynamic_ncols=True,
                  mininterval=1.0 if sys.stdout.isatty() else 30.0)
  try:
    while int(step) < config.steps:
      out = train_step(*next(iterator))
      step.assign_add(1)
      bar.update(1)
      s = int(step)
      if s == start + 1:  # skip the tracing step in the step/s figure
        timer, timed_steps = time.time(), 0
      else:
        timed_steps += 1
      if s % config.log_every == 0 or s == config.steps:
        values = {k: float(v) for k, v in out.items()}
        bar.set_postfix(loss=f"{values['loss']:.3f}", L_e=f"{values['l_e_bits']:.3f}",
                        psnr=f"{values['psnr_rgb']:.2f}", refresh=False)
        with writers["train"].as_default(step=s):
          for k, v in values.items():
            tf.summary.scalar(k, v)
          tf.summary.scalar("learning_rate", float(schedule(s)))
      if s % config.checkpoint_every == 0:
        manager.save(checkpoint_number=s)
      if config.eval_every and s % config.eval_every == 0 and s < config.steps and eval_pairs:
        result = validate(model, eval_pairs, config.scale)
        bar.write(f"step {s}: {config.eval_data} PSNR-Y {result['psnr_y']:.2f} dB "
                  f"SSIM-Y {result['ssim_y']:.4f}")
        with writers["eval"].as_default(step=s):
          tf.summary.scalar("psnr_y", result["psnr_y"])
          tf.summary.scalar("ssim_y", result["ssim_y"])
  except KeyboardInterrupt:
    manager.save(checkpoint_number=int(step))
    bar.close()
    log(f"Interrupted: checkpoint saved at step {int(step)} in {config.run_dir}; "
        "re-run the same command to resume.")
    raise
  bar.close()
  if manager.latest_checkpoint is None or int(manager.latest_checkpoint.rsplit("-", 1)[1]) != int(step):
    manager.save(checkpoint_number=int(step))
  seconds_per_step = (time.time() - timer) / timed_steps if timed_steps else float("nan")

  # Validation and export on a float32 copy (bf16 activations would cost PSNR).
  final = build_for_inference(config)
  final.set_weights(model.get_weights())
  final.save_weights(os.path.join(config.run_dir, "model.weights.h5"))
  result = dict(step=int(step), precision=policy, seconds_per_step=seconds_per_step,
                eval_data=config.eval_data)
  if eval_pairs:
    scores = validate(final, eval_pairs, config.scale, progress=True)
    result.update(scores)
    with writers["eval"].as_default(step=int(step)):
      tf.summary.scalar("psnr_y", scores["psnr_y"])
      tf.summary.scalar("ssim_y", scores["ssim_y"])
    log(f"{config.eval_data} x{config.scale}: PSNR-Y {scores['psnr_y']:.2f} dB, "
        f"SSIM-Y {scores['ssim_y']:.4f} (Y of MATLAB rgb2ycbcr, shave {config.scale}, peak 255)")
  if config.export:
    export_dir = os.path.join(config.run_dir, "export", "1")
    serving.export_saved_model(final, export_dir, metadata=dict(
        model=config.model, scale=config.scale, entropy_weight=lam, delta=config.delta,
        noise=config.noise, estimate_entropy=config.estimate_entropy, step=int(step)))
    result["export_dir"] = export_dir
    log(f"SavedModel exported to {export_dir}")
  for w in writers.values():
    w.flush()
  with open(os.path.join(config.run_dir, "result.json"), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v)
  return result
