"""SR purification as a classifier defense (Mustafa et al., IEEE TIP 2019): purifier, loaders,
attacks, evaluation loop, CLI."""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfsr_defense import classifier_attacks, classifier_evaluation, classifiers, models, trainer
from tfsr_defense import evaluate_classifier
from tfsr_defense.defenses import purifier

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LITE0 = os.path.join("classifiers", "efficientnet_lite0_imagenet.h5")


def _tiny_sr(seed=0):
  tf.keras.utils.set_random_seed(seed)
  return models.build_model("edsr", 2, entropy_weight=0, n_resblocks=1, n_feats=8)


def _photo(h=40, w=48, seed=0):
  """A smooth colour image in [0, 1] (float64) with some texture."""
  from skimage import data  # pylint: disable=g-import-not-at-top
  img = data.astronaut()[::4, ::4][seed * 7:seed * 7 + h, 20:20 + w] / 255.0
  return img.astype(np.float64)


# ---------------------------------------------------------------------------
# Purifier
# ---------------------------------------------------------------------------

def test_purifier_shape_range_dtype_contract():
  x = tf.constant(np.stack([_photo(), _photo(seed=1)]), tf.float32)
  p = purifier.SRPurifier(_tiny_sr())
  y = p(x)
  assert y.dtype == tf.float32 and y.shape == (2, 40, 48, 3)
  assert float(tf.reduce_min(y)) >= 0.0 and float(tf.reduce_max(y)) <= 1.0
  # output_size, and an SR callable whose output leaves [0, 1]: clipped.
  wild = lambda v: 3.0 * tf.image.resize(v, tf.shape(v)[1:3] * 2) - 1.0  # noqa: E731
  y2 = purifier.SRPurifier(wild, output_size=(24, 30))(x)
  assert y2.shape == (2, 24, 30, 3)
  assert float(tf.reduce_min(y2)) == 0.0 and float(tf.reduce_max(y2)) == 1.0
  # The stages: SR at twice the size, JPEG output on the 1/255 grid.
  st = p.stages(x)
  assert st["sr"].shape == (2, 80, 96, 3)
  q = st["jpeg"].numpy() * 255.0
  np.testing.assert_allclose(q, np.round(q), atol=1e-3)
  # Batched = one image at a time.
  np.testing.assert_allclose(p(x[1:]).numpy()[0], y.numpy()[1], atol=1e-5)
  with pytest.raises(ValueError, match="RGB"):
    p(tf.zeros([1, 8, 8, 1]))
  for bad in (dict(denoise_sigma=-0.1), dict(wavelet="nope"), dict(jpeg_quality=0),
              dict(sigma_convention="x"), dict(resize_method="x")):
    with pytest.raises(ValueError):
      purifier.SRPurifier(None, **bad)


def test_denoising_is_skimage_with_the_stated_parameters():
  from skimage import color  # pylint: disable=g-import-not-at-top
  from skimage.restoration import denoise_wavelet  # pylint: disable=g-import-not-at-top
  img = _photo()
  x = tf.constant(img[None], tf.float32)
  x64 = x.numpy()[0].astype(np.float64)
  denoise_only = dict(jpeg_quality=None, sr_model=None)
  # 'rgb': today's scikit-image call, sigma 0.04 in RGB units, Haar.
  got = purifier.SRPurifier(sigma_convention="rgb", **denoise_only)(x).numpy()[0]
  want = denoise_wavelet(x64, sigma=0.04, wavelet="db1", mode="soft", method="BayesShrink",
                         convert2ycbcr=True, channel_axis=-1, rescale_sigma=True)
  np.testing.assert_allclose(got, np.clip(want, 0, 1), atol=1e-5)
  # 'skimage0.14' (default): per-channel sigma 0.04 * (max - min) of the YCbCr channel.
  got14 = purifier.SRPurifier(**denoise_only)(x).numpy()[0]
  ycc = color.rgb2ycbcr(x64)
  sig = [0.04 * (ycc[..., c].max() - ycc[..., c].min()) for c in range(3)]
  want14 = denoise_wavelet(x64, sigma=sig, wavelet="db1", mode="soft", method="BayesShrink",
                           convert2ycbcr=True, channel_axis=-1, rescale_sigma=False)
  np.testing.assert_allclose(got14, np.clip(want14, 0, 1), atol=1e-5)
  # ...which is scikit-image 0.14's algorithm (the authors'): each YCbCr channel normalised
  # to [0, 1] and thresholded with sigma = 0.04, then clipped, de-normalised.
  out = ycc.copy()
  for c in range(3):
    lo, hi = out[..., c].min(), out[..., c].max()
    ch = denoise_wavelet((out[..., c] - lo) / (hi - lo), sigma=0.04, wavelet="db1",
                         mode="soft", method="BayesShrink", rescale_sigma=False)
    out[..., c] = np.clip(ch, 0, 1) * (hi - lo) + lo
  old = np.clip(color.ycbcr2rgb(out), 0, 1)
  assert np.abs(got14 - old).max() < 0.02 and np.abs(got14 - old).mean() < 2e-4
  # It denoises: the two conventions differ and both change the image.
  assert np.abs(got14 - img).mean() > 1e-3 and np.abs(got - got14).max() > 1e-3
  assert purifier.DEFAULT_WAVELET == "db1" and purifier.DEFAULT_SIGMA == 0.04


def test_bpda_gradient_is_identity_through_denoise_and_jpeg():
  x = tf.constant(_photo()[None], tf.float32)
  w = tf.random.stateless_normal(x.shape, seed=[1, 2])
  front = purifier.SRPurifier(None, denoise_sigma=0.04, jpeg_quality=90)
  with tf.GradientTape() as tape:
    tape.watch(x)
    loss = tf.reduce_sum(w * front(x))
  np.testing.assert_array_equal(tape.gradient(loss, x).numpy(), w.numpy())
  assert float(tf.reduce_max(tf.abs(front(x) - x))) > 1e-3  # the forward is not the identity
  # Full purifier (bicubic SR, bilinear+aa resize): the gradient is the true gradient of the
  # differentiable part, evaluated at the denoised + JPEG image (straight-through).
  p = purifier.SRPurifier(purifier.BicubicUpsampler(2), denoise_sigma=0.04, jpeg_quality=90)
  with tf.GradientTape() as tape:
    tape.watch(x)
    loss = tf.reduce_sum(w * p(x))
  g = tape.gradient(loss, x).numpy()
  z = tf.constant(front(x))

  def tail(v):
    return tf.reduce_sum(w * p.resample(p.super_resolve(v), (40, 48)))

  with tf.GradientTape() as tape:
    tape.watch(z)
    loss_z = tail(z)
  np.testing.assert_allclose(g, tape.gradient(loss_z, z).numpy(), atol=1e-5)
  # ...checked by central differences at a few pixels away from the clipping.
  rng = np.random.default_rng(0)
  zn = z.numpy().astype(np.float64)
  for _ in range(4):
    i, j, c = rng.integers(5, 35), rng.integers(5, 43), rng.integers(0, 3)
    e = np.zeros_like(zn)
    e[0, i, j, c] = 1e-2
    fd = (float(tail(tf.constant(zn + e, tf.float32))) -
          float(tail(tf.constant(zn - e, tf.float32)))) / 2e-2
    assert abs(fd - g[0, i, j, c]) < 2e-3 * max(1.0, abs(fd))
  # bpda=False: no gradient through the NumPy / JPEG stages.
  with tf.GradientTape() as tape:
    tape.watch(x)
    loss = tf.reduce_sum(purifier.SRPurifier(None, bpda=False)(x))
  assert float(tf.reduce_max(tf.abs(tape.gradient(loss, x)))) == 0.0


def test_purifier_saves_and_reloads_with_its_sr_weights(tmp_path):
  sr = _tiny_sr()
  sr.set_weights([v + 0.01 * np.random.default_rng(3).standard_normal(v.shape)
                  for v in sr.get_weights()])
  inp = tf.keras.Input((16, 16, 3))
  model = tf.keras.Model(inp, purifier.SRPurifier(sr, denoise_sigma=0.02, jpeg_quality=80)(inp))
  path = str(tmp_path / "purifier.keras")
  model.save(path)
  again = tf.keras.models.load_model(path)
  x = tf.constant(_photo(16, 16)[None], tf.float32)
  np.testing.assert_allclose(again(x).numpy(), model(x).numpy(), atol=1e-6)
  layer = [l for l in again.layers if isinstance(l, purifier.SRPurifier)][0]
  assert (layer.denoise_sigma, layer.jpeg_quality, layer.wavelet) == (0.02, 80, "db1")
  with pytest.raises(NotImplementedError, match="SavedModel"):
    purifier.SRPurifier(lambda v: v).get_config()


# ---------------------------------------------------------------------------
# Classifiers and data
# ---------------------------------------------------------------------------

def _tiny_classifier_file(tmp_path, size=32, classes=10, rescale=None):
  tf.keras.utils.set_random_seed(1)
  inp = tf.keras.Input((size, size, 3))
  h = inp if rescale is None else tf.keras.layers.Rescaling(*rescale)(inp)
  h = tf.keras.layers.Conv2D(6, 3, activation="relu")(h)
  h = tf.keras.layers.GlobalAveragePooling2D()(h)
  out = tf.keras.layers.Dense(classes)(h)
  path = str(tmp_path / "tiny.h5")
  tf.keras.Model(inp, out).save(path)
  return path


def _image_folder(tmp_path, n=4, labels=True, classes=10):
  folder = tmp_path / "imgs"
  (folder / "images").mkdir(parents=True)
  rng = np.random.default_rng(0)
  rows = []
  for i in range(n):
    img = (_photo(seed=i % 4) * 255).astype(np.uint8)
    Image.fromarray(img).save(folder / "images" / f"im{i}.png")
    rows.append(dict(ImageId=f"im{i}", TrueLabel=int(rng.integers(1, classes + 1)),
                     Author=f"author {i}"))
  if labels:
    with open(folder / "images.csv", "w", newline="", encoding="utf-8") as f:
      writer = csv.DictWriter(f, fieldnames=["ImageId", "TrueLabel", "Author"])
      writer.writeheader()
      writer.writerows(rows)
  return str(folder), rows


def test_classifier_wrapper_and_loader_checks(tmp_path):
  path = _tiny_classifier_file(tmp_path)
  clf = classifiers.load_classifier(path, input_size=32, value_range="0-255")
  x = tf.random.stateless_uniform([2, 50, 40, 3], seed=[0, 1])
  logits = clf(x)
  assert logits.shape == (2, 10) and logits.dtype == tf.float32
  # Range mapping and resizing as stated: 0-255 scaling, bilinear + antialias to 32 x 32.
  want = clf.model(tf.image.resize(x, (32, 32), "bilinear", antialias=True) * 255.0)
  np.testing.assert_allclose(logits.numpy(), want.numpy(), rtol=1e-4, atol=1e-4)
  # Behind a purifier: resized to the classifier's 32 x 32 first, purified there, classified.
  p = purifier.SRPurifier(purifier.BicubicUpsampler(2), jpeg_quality=None)
  defended = purifier.defended_classifier(clf, p)
  small = tf.image.resize(x, (32, 32), "bilinear", antialias=True)
  assert p(small).shape == (2, 32, 32, 3)
  np.testing.assert_allclose(defended(x).numpy(), clf(p(small)).numpy(), rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="32x32 inputs.*--input_size=32"):
    classifiers.load_classifier(path, input_size=224, value_range="0-1")
  with pytest.raises(ValueError, match="input size and value range"):
    classifiers.load_classifier(path)
  with pytest.raises(ValueError, match="not found.*keras.applications"):
    classifiers.load_classifier(str(tmp_path / "missing.h5"), 32, "0-1")
  # A leading Rescaling(1/128, -127/128) layer says 0..255: '0-1' is refused.
  norm = _tiny_classifier_file(tmp_path, rescale=(1 / 128, -127 / 128))
  with pytest.raises(ValueError, match="does not take pixel values in 0-1.*--value_range=0-255"):
    classifiers.load_classifier(norm, input_size=32, value_range="0-1")
  assert classifiers.load_classifier(norm, 32, "0-255").value_range == "0-255"


def test_keras_applications_offline_error_names_the_path_option(monkeypatch):
  def offline(**kwargs):
    del kwargs
    # What Keras' get_file raises without a network.
    raise Exception(  # pylint: disable=broad-exception-raised
        "URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3] Temporary "
        "failure in name resolution")
  monkeypatch.setattr(tf.keras.applications, "InceptionV3", offline)
  with pytest.raises(ValueError, match=r"offline.*--classifier=/path/to/inception_v3\.h5 "
                                       r"--input_size=299 --value_range=-1-1"):
    classifiers.load_classifier("inception_v3")
  with pytest.raises(ValueError, match="takes 299x299"):
    classifiers.load_classifier("inception_v3", input_size=224)


def test_labelled_image_loaders(tmp_path, data_dir):
  images = classifiers.load_labeled_images("nips2017dev", data_dir=data_dir, max_images=3)
  with open(os.path.join(data_dir, "NIPS2017dev", "images.csv"), encoding="utf-8") as f:
    first = list(csv.DictReader(f))[:3]
  assert [im.name for im in images] == [r["ImageId"] for r in first]
  assert [im.label for im in images] == [int(r["TrueLabel"]) - 1 for r in first]
  assert images[0].info["Author"] == first[0]["Author"] and "License" in images[0].info
  assert images[0].image.shape == (299, 299, 3) and images[0].image.dtype == np.uint8
  folder, _ = _image_folder(tmp_path, n=2, labels=False)
  with pytest.raises(ValueError, match="has no labels.*images.csv"):
    classifiers.load_labeled_images(folder)
  with open(os.path.join(folder, "images.csv"), "w", encoding="utf-8") as f:
    f.write("ImageId,Label\nim0,3\n")
  with pytest.raises(ValueError, match="lacks the column.*TrueLabel"):
    classifiers.load_labeled_images(folder)


def test_art_fgsm_by_hand_class_gradient_and_attack_arguments(tmp_path):
  clf = classifiers.load_classifier(_tiny_classifier_file(tmp_path), 32, "0-1")
  x = tf.random.stateless_uniform([2, 32, 32, 3], seed=[4, 5], minval=0.1, maxval=0.9)
  labels = np.array([1, 3])
  est = classifier_attacks.art_classifier(clf, (32, 32, 3), 10)
  x_adv = classifier_attacks.run_attack("fgsm", est, x, labels, eps=4 / 255)
  with tf.GradientTape() as tape:
    tape.watch(x)
    loss = tf.keras.losses.sparse_categorical_crossentropy(labels, clf(x), from_logits=True)
  want = np.clip(x.numpy() + 4 / 255 * np.sign(tape.gradient(loss, x).numpy()), 0, 1)
  np.testing.assert_allclose(x_adv, want, atol=1e-6)
  # The compiled class gradient DeepFool / C&W use: d logit[label_n] / d x_n.
  with tf.GradientTape() as tape:
    tape.watch(x)
    logits = clf(x)
    picked = logits[0, 2] + logits[1, 5]
  got = est.class_gradient(x.numpy(), label=[2, 5])
  assert got.shape == (2, 1, 32, 32, 3)
  np.testing.assert_allclose(got[:, 0], tape.gradient(picked, x).numpy(), rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match="not bounded by eps"):
    classifier_attacks.run_attack("deepfool", est, x, labels, eps=0.1)
  with pytest.raises(ValueError, match="needs eps"):
    classifier_attacks.run_attack("ifgsm", est, x, labels)
  with pytest.raises(ValueError, match="steps must be an integer >= 1"):
    classifier_attacks.AttackSettings(steps=0)


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------

def test_tiny_end_to_end_evaluation_reports_plots_and_resumes(tmp_path):
  folder, rows_csv = _image_folder(tmp_path, n=4)
  clf = classifiers.load_classifier(_tiny_classifier_file(tmp_path), 32, "0-1")
  images = classifiers.load_labeled_images(folder)
  assert [im.label for im in images] == [r["TrueLabel"] - 1 for r in rows_csv]
  defenses = classifier_evaluation.make_defenses(["none", "tiny"], {"tiny": _tiny_sr()})
  settings = classifier_attacks.AttackSettings(steps=2, deepfool_max_iter=2, cw_max_iter=2,
                                               cw_binary_search_steps=1)
  report = str(tmp_path / "report")
  kwargs = dict(attacks=["fgsm", "ifgsm", "mifgsm", "deepfool", "cw"], eps=[2 / 255, 8 / 255],
                attack_settings=settings, dataset="tiny", class_names=None)
  result = classifier_evaluation.evaluate_classifier(clf, images, report, defenses, **kwargs)
  # Per image: 2 clean cells; gray-box 8 (attack, eps) x 2 defenses; adaptive 8 x 1 ('tiny').
  assert result["computed"] == 4 * (2 + 16 + 8) and result["skipped"] == 0
  for name in ("rows.jsonl", "rows.csv", "summary.json", "summary.csv", "summary.md",
               "plots/accuracy_vs_eps.png"):
    assert os.path.getsize(os.path.join(report, name)) > 0, name
  assert any(f.startswith("examples_im0_ifgsm_8") for f in os.listdir(os.path.join(report,
                                                                                   "plots")))
  rows = [json.loads(line) for line in open(os.path.join(report, "rows.jsonl"),
                                            encoding="utf-8")]
  attack_rows = [r for r in rows if r["kind"] == "attack"]
  for r in attack_rows:
    if r["eps_255"] is not None:
      assert r["linf_255"] <= r["eps_255"] + 1e-3
    if r["defense"] == "none":
      assert r["pred_defended_attacked"] == r["pred_attacked"]
  # Gray-box: one adversarial image per (image, attack, eps), shared by the defenses.
  gray = {}
  for r in attack_rows:
    if r["threat_model"] == "graybox":
      gray.setdefault((r["image"], r["attack"], r["eps_255"]), set()).add(
          (r["pred_attacked"], round(r["l2"], 6)))
  assert len(gray) == 4 * 8 and all(len(v) == 1 for v in gray.values())
  # The summary's accuracies are the means of the rows.
  summary = json.load(open(os.path.join(report, "summary.json"), encoding="utf-8"))["summary"]
  s = [s for s in summary if s["defense"] == "tiny" and s["threat_model"] == "adaptive"
       and s["attack"] == "ifgsm" and s["eps_255"] == 8][0]
  group = [r for r in attack_rows if r["defense"] == "tiny" and r["threat_model"] == "adaptive"
           and r["attack"] == "ifgsm" and r["eps_255"] == 8]
  assert s["images"] == 4
  assert s["acc_defended_attacked"] == pytest.approx(
      np.mean([r["pred_defended_attacked"] == r["label"] for r in group]))
  assert s["acc_clean"] == pytest.approx(np.mean([r["pred_clean"] == r["label"] for r in group]))
  # Resume: nothing recomputed.
  again = classifier_evaluation.evaluate_classifier(clf, images, report, defenses, plots=False,
                                                    **kwargs)
  assert again["computed"] == 0 and again["skipped"] == result["computed"]
  # ... nor for the example files a results copy lacks (examples/ is not committed).
  shutil.rmtree(os.path.join(report, classifier_evaluation.EXAMPLES_DIR))
  again = classifier_evaluation.evaluate_classifier(clf, images, report, defenses, plots=False,
                                                    **kwargs)
  assert again["computed"] == 0 and again["skipped"] == result["computed"]
  with pytest.raises(ValueError, match="Unknown defense 'nope'.*none, jpeg, wavelet, tiny"):
    classifier_evaluation.make_defenses(["nope"], {"tiny": None})
  with pytest.raises(ValueError, match="Unknown attack 'pgd'.*fgsm"):
    classifier_evaluation.evaluate_classifier(clf, images, report, defenses, attacks=["pgd"])
  with pytest.raises(ValueError, match="Unknown threat model 'blackbox'"):
    classifier_evaluation.evaluate_classifier(clf, images, report, defenses,
                                              threat_models=["blackbox"])


def test_shared_classifier_on_nips2017dev(tmp_path, data_dir):
  clf = classifiers.load_classifier(os.path.join(data_dir, LITE0), 224, "0-255")
  images = classifiers.load_labeled_images("nips2017dev", data_dir=data_dir, max_images=8)
  result = classifier_evaluation.evaluate_classifier(
      clf, images, str(tmp_path / "r"), {"none": None}, attacks=["ifgsm"], eps=[8 / 255],
      threat_models=["graybox"], attack_settings=classifier_attacks.AttackSettings(steps=5),
      plots=False, num_examples=0)
  s = {x["kind"]: x for x in result["summary"]}
  assert s["clean"]["images"] == 8 and s["attack"]["images"] == 8
  assert s["clean"]["acc_clean"] >= 6 / 8
  assert s["attack"]["acc_attacked"] < s["clean"]["acc_clean"]


# ---------------------------------------------------------------------------
# CLI: bad input -> one line on stderr, exit status 2
# ---------------------------------------------------------------------------

def _cli(argv, capsys):
  evaluate_classifier.FLAGS.unparse_flags()
  with pytest.raises(SystemExit) as exit_info:
    evaluate_classifier.run(["tfsr_defense.evaluate_classifier"] + argv)
  err = capsys.readouterr().err.strip().splitlines()
  return exit_info.value.code, err


def test_cli_bad_input_one_line_errors(tmp_path, data_dir, capsys):
  lite0 = os.path.join(data_dir, LITE0)
  base = [f"--data_dir={data_dir}", "--max_images=4", f"--report_dir={tmp_path / 'r'}"]
  cases = [
      ([f"--classifier={lite0}", "--input_size=224", "--value_range=0-1"],
       "does not take pixel values in 0-1"),
      ([f"--classifier={lite0}", "--input_size=224", "--value_range=0-255",
        f"--data={_image_folder(tmp_path, 2, labels=False)[0]}"], "has no labels"),
      ([f"--classifier={lite0}", "--input_size=224", "--value_range=0-255", "--attacks=pgd"],
       "Unknown attack 'pgd'"),
      ([f"--classifier={lite0}", "--input_size=224", "--value_range=0-255",
        "--defenses=none,mustafa"], "Unknown defense 'mustafa'"),
      ([f"--classifier={lite0}", "--input_size=224", "--value_range=0-255",
        "--threat_models=whitebox"], "Unknown threat model 'whitebox'"),
  ]
  for argv, message in cases:
    code, err = _cli(base + argv, capsys)
    assert code == 2 and len(err) == 1, (argv, err)
    assert err[0].startswith("tfsr_defense.evaluate_classifier: error:") and message in err[0]
  # Through the real entry point: a classifier whose input size does not match --input_size.
  proc = subprocess.run(
      [sys.executable, "-m", "tfsr_defense.evaluate_classifier", f"--classifier={lite0}",
       "--input_size=299", "--value_range=0-255"] + base,
      cwd=REPO, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  # (TF's CUDA-build import may log its own lines before ours; ours is the one error line.)
  err = [line for line in proc.stderr.strip().splitlines() if "error:" in line]
  assert proc.returncode == 2 and len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr
  assert err[0] == proc.stderr.strip().splitlines()[-1]
  assert err[0].startswith("tfsr_defense.evaluate_classifier: error: Classifier")
  assert "takes 224x224 inputs" in err[0] and "--input_size=224" in err[0]


def test_cli_sr_model_from_a_run_directory_without_export():
  # The committed EDSR x2 weights (config.json + model.weights.h5, no SavedModel): the CLI's
  # --sr_models loads the run's Keras network, the same weights trainer.load_run_model gives.
  run = os.path.join(REPO, "results", "edsr_x2_cpu", "plain")
  sr = evaluate_classifier._load_sr("mustafa", run)
  _, net, _, _ = trainer.load_run_model(run)
  x = tf.constant(_photo(16, 20)[None], tf.float32)
  assert sr.name == "mustafa" and sr.scale == 2
  np.testing.assert_array_equal(sr(x).numpy(), net(x, training=False).numpy())
  assert (classifier_evaluation._sr_identity(sr)
          == classifier_evaluation._sr_identity(evaluate_classifier._load_sr("mustafa", run)))
  with pytest.raises(FileNotFoundError, match="No SavedModel at"):
    evaluate_classifier._load_sr("mustafa", os.path.join(REPO, "results"))
