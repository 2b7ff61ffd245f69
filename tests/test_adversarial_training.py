"""Adversarial training (paper sec. 5.6): the attack step, the trainer's step, resume, bf16."""

import glob

import numpy as np
import pytest
import tensorflow as tf

from tfsr_defense import adversarial_training, data, losses, trainer
from tfsr_defense.models import registry

TINY = dict(n_resblocks=1, n_feats=8)
EPS = 8.0 / 255.0


def _model(entropy_weight=1.0, noise=False):
  tf.keras.utils.set_random_seed(0)
  return registry.build_model("edsr", 2, entropy_weight=entropy_weight, noise=noise, **TINY)


def _patches(n=4, patch=8, seed=0):
  pairs = data.load_pairs("embedded", 2)
  lr, hr = next(iter(data.train_dataset(pairs, patch, 2, n, seed=seed)))
  return lr, hr


@pytest.mark.parametrize("objective, steps", [("loss", 1), ("loss", 3), ("sr_distance", 1),
                                              ("sr_distance", 2)])
def test_attacked_batch_in_eps_ball_and_range(objective, steps):
  model = _model()
  lr, hr = _patches()
  lr = tf.concat([lr[:2], tf.zeros_like(lr[2:3]), tf.ones_like(lr[3:])], 0)  # range borders
  x_adv = adversarial_training.ifgsm_batch(model, lr, hr, eps=EPS, steps=steps,
                                           objective=objective)
  diff = (x_adv - lr).numpy()
  assert x_adv.shape == lr.shape and x_adv.dtype == tf.float32
  assert np.abs(diff).max() <= EPS + 1e-6
  assert x_adv.numpy().min() >= 0.0 and x_adv.numpy().max() <= 1.0
  assert np.mean(np.abs(diff[:2]) > EPS / 2) > 0.5  # it moved, most pixels by ~eps
  if objective == "loss" and steps == 1:
    # One signed step from x~ = x: every pixel whose gradient is non-zero moves by eps.
    moved = np.abs(diff[:2])
    assert np.mean(np.isclose(moved, EPS, atol=1e-6) | (moved == 0)) > 0.99


def test_loss_objective_increases_the_loss():
  model = _model()
  lr, hr = _patches()
  spec = registry.get_spec("edsr")

  def l_r(x):
    return float(tf.reduce_mean(losses.reconstruction_loss(model(x), hr, spec.loss,
                                                           spec.pixel_range)))

  x_adv = adversarial_training.ifgsm_batch(model, lr, hr, eps=EPS)
  noise = tf.clip_by_value(lr + EPS * tf.sign(tf.random.normal(lr.shape, seed=1)), 0, 1)
  assert l_r(x_adv) > l_r(noise) > l_r(lr) - 1.0  # the attack beats a random sign of the same eps


def test_mix_concatenates_clean_and_attacked():
  model = _model()
  lr, hr = _patches()
  x, y = adversarial_training.adversarial_batch(model, lr, hr, eps=EPS, mix=True)
  assert x.shape[0] == 2 * lr.shape[0] and y.shape[0] == 2 * hr.shape[0]
  np.testing.assert_array_equal(x[:4].numpy(), lr.numpy())
  np.testing.assert_array_equal(y[4:].numpy(), hr.numpy())
  assert np.abs((x[4:] - lr).numpy()).max() <= EPS + 1e-6


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="pgd"), "Unknown adversarial"), (dict(objective="psnr"), "adv_objective"),
    (dict(eps=0.0), "adv_eps"), (dict(eps=float("nan")), "adv_eps"), (dict(eps=8.0), "adv_eps"),
    (dict(steps=0), "adv_steps")])
def test_bad_settings(kwargs, message):
  settings = dict(method="ifgsm", eps=EPS, steps=1, objective="loss")
  settings.update(kwargs)
  with pytest.raises(ValueError, match=message):
    adversarial_training.check_settings(**settings)
  config = dict(adversarial=settings["method"], adv_eps=settings["eps"],
                adv_steps=settings["steps"], adv_objective=settings["objective"])
  with pytest.raises(ValueError, match=message):
    trainer.TrainConfig(**config).validate()


def test_gan_refuses_adversarial_training():
  with pytest.raises(ValueError, match="srgan"):
    trainer.TrainConfig(model="srgan", adversarial="ifgsm").validate()


def _config(run_dir, **kwargs):
  values = dict(model="edsr", scale=2, train_data="embedded", eval_data="", patch_size=8,
                batch_size=4, steps=2, checkpoint_every=1, log_every=1, precision="float32",
                run_dir=str(run_dir), export=False, model_options=TINY, noise=False,
                adversarial="ifgsm")
  values.update(kwargs)
  return trainer.TrainConfig(**values)


@pytest.mark.parametrize("entropy_weight", [1.0, 0.0])  # ER + Adv, and Adv alone
def test_adversarial_step_differs_from_clean_step(entropy_weight):
  lr, hr = _patches()
  outs = {}
  for mode in ("none", "ifgsm"):
    model = _model(entropy_weight)
    config = _config("", adversarial=mode, entropy_weight=entropy_weight)
    step = trainer.make_train_step(config, model, tf.keras.optimizers.Adam(1e-4))
    outs[mode] = {k: float(v) for k, v in step(lr, hr).items()}
  assert outs["ifgsm"]["l_r"] > outs["none"]["l_r"]  # trained on the attacked batch
  if entropy_weight:
    assert outs["ifgsm"]["l_e_bits"] != outs["none"]["l_e_bits"]
  else:
    assert outs["ifgsm"]["l_e_bits"] == 0.0
  mixed = _config("", adv_mix=True, entropy_weight=entropy_weight)
  out = trainer.make_train_step(mixed, _model(entropy_weight), tf.keras.optimizers.Adam(1e-4))(
      lr, hr)
  # Clean + attacked, averaged over 2B: the mean of the two losses.
  np.testing.assert_allclose(float(out["l_r"]), (outs["none"]["l_r"] + outs["ifgsm"]["l_r"]) / 2,
                             rtol=1e-4)


def test_a_few_adversarial_steps_lower_the_adversarial_loss():
  lr, hr = _patches(n=8, patch=12, seed=5)
  model = _model()
  spec = registry.get_spec("edsr")
  config = _config("", batch_size=8)
  step = trainer.make_train_step(config, model, tf.keras.optimizers.Adam(1e-3))

  def adversarial_l_r():
    x_adv = adversarial_training.ifgsm_batch(model, lr, hr, eps=EPS)
    return float(tf.reduce_mean(losses.reconstruction_loss(model(x_adv), hr, spec.loss,
                                                           spec.pixel_range)))

  before = adversarial_l_r()
  for _ in range(15):
    step(lr, hr)
  assert adversarial_l_r() < 0.8 * before


def _logged(run_dir):
  values = {}
  for path in glob.glob(str(run_dir) + "/logs/train/events*"):
    for event in tf.compat.v1.train.summary_iterator(path):
      for v in event.summary.value:
        values[(event.step, v.tag)] = float(tf.make_ndarray(v.tensor))
  return values


def test_resume_reproduces_the_step(tmp_path):
  """1 step + resume 1 step logs what 2 uninterrupted steps log (same batches, same attack)."""
  quiet = lambda *_: None  # noqa: E731
  trainer.train(_config(tmp_path / "straight", steps=2), log=quiet)
  trainer.train(_config(tmp_path / "resumed", steps=1), log=quiet)
  lines = []
  trainer.train(_config(tmp_path / "resumed", steps=2), log=lines.append)
  assert any("Resumed from" in l and "at step 1" in l for l in lines)
  straight, resumed = _logged(tmp_path / "straight"), _logged(tmp_path / "resumed")
  for tag in ("loss", "l_r", "l_e_bits", "psnr_rgb"):
    np.testing.assert_allclose(resumed[(2, tag)], straight[(2, tag)], rtol=1e-5, err_msg=tag)
  # The adversarial settings define the run: another eps on resume is refused.
  with pytest.raises(trainer.CheckpointError, match=r"adv_eps: 0.031\d* -> 0.0156"):
    trainer.train(_config(tmp_path / "resumed", steps=3, adv_eps=4 / 255), log=quiet)


def test_adversarial_training_under_bfloat16(tmp_path):
  result = trainer.train(_config(tmp_path / "bf16", precision="mixed_bfloat16", steps=1,
                                 adv_steps=2, adv_objective="sr_distance"), log=lambda *_: None)
  assert result["step"] == 1
  values = _logged(tmp_path / "bf16")
  assert all(np.isfinite(values[(1, k)]) for k in ("loss", "l_r", "l_e_bits"))
  assert values[(1, "l_e_bits")] > 0
