"""Input pre-processing defenses (tfsr_defense.defenses): JPEG, random resize, DefendedSR."""

import io
import math
import os

import numpy as np
import pytest
import skimage.data
import tensorflow as tf
from PIL import Image

from tfsr_defense import attacks, defenses, models
from tfsr_defense.defenses import DefendedSR, JpegCompression, NoDefense, RandomResizePad


@pytest.fixture(scope="module")
def net():
  tf.keras.utils.set_random_seed(0)
  return models.build_model("edsr", 2, entropy_weight=0, n_resblocks=1, n_feats=8)


@pytest.fixture(scope="module")
def photos():
  """Two natural 13 x 9 LR crops in [0, 1] (odd sizes), multiples of 1/255."""
  a = skimage.data.astronaut()[::8, ::8][10:23, 20:29]
  b = skimage.data.chelsea()[::8, ::8][5:18, 10:19]
  return tf.constant(np.stack([a, b]).astype(np.float32) / 255.0)


def _pil_jpeg(image_u8, quality):
  buf = io.BytesIO()
  Image.fromarray(image_u8).save(buf, format="JPEG", quality=quality)
  return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _nearest_x2():
  """A pixelwise 'SR network': nearest-neighbour x2 upsampling."""
  inp = tf.keras.Input((None, None, 3))
  return tf.keras.Model(inp, tf.keras.layers.UpSampling2D(2, interpolation="nearest")(inp))


# ---------------------------------------------------------------------------
# Registry and bad inputs
# ---------------------------------------------------------------------------

def test_parse_defense_forms():
  assert defenses.known_defenses() == ["jpeg:<quality 1..100>", "none",
                                       "resize:<lo>-<hi>[:bilinear|nearest|bicubic]"]
  jpeg = defenses.parse_defense(" JPEG:75 ")
  assert isinstance(jpeg, JpegCompression) and jpeg.quality == 75 and jpeg.bpda
  resize = defenses.parse_defense("resize:0.9-1.1", seed=3)
  assert isinstance(resize, RandomResizePad)
  assert (resize.lo, resize.hi, resize.method, resize.seed) == (0.9, 1.1, "bilinear", 3)
  assert defenses.parse_defense("resize:.5-2:nearest").method == "nearest"
  assert isinstance(defenses.parse_defense("none"), NoDefense)
  for spec in ("none", "jpeg:90", "resize:0.9-1.1", "resize:1-1.25:bicubic"):
    assert defenses.parse_defense(spec).spec() == spec


@pytest.mark.parametrize("spec,message", [
    ("jpeg:0", "quality must be in 1..100"), ("jpeg:101", "quality must be in 1..100"),
    ("jpeg:-5", "quality must be in 1..100"), ("jpeg:7.5", "malformed"), ("jpeg", "malformed"),
    ("resize:1.1-0.9", "lo=1.1 > hi=0.9"), ("resize:0-1", "lo must be > 0"),
    ("resize:-0.5-1", "lo must be > 0"), ("resize:0.9", "malformed"),
    ("resize:0.9-1.1:lanczos", "method must be one of"), ("blur:3", "unknown defense 'blur'"),
    ("", "unknown defense"), (None, "not a string")])
def test_parse_defense_errors(spec, message):
  with pytest.raises(ValueError, match=message) as info:
    defenses.parse_defense(spec)
  assert "Known forms: jpeg:<quality 1..100>, none, resize:<lo>-<hi>" in str(info.value)


@pytest.mark.parametrize("make,message", [
    (lambda: JpegCompression(0), "1..100"), (lambda: JpegCompression(101), "1..100"),
    (lambda: JpegCompression(50.5), "integer"), (lambda: JpegCompression(True), "integer"),
    (lambda: JpegCompression("75"), "integer"),
    (lambda: RandomResizePad(1.1, 0.9), "lo=1.1 > hi=0.9"),
    (lambda: RandomResizePad(0.0, 1.0), "lo must be > 0"),
    (lambda: RandomResizePad(-1.0, 1.0), "lo must be > 0"),
    (lambda: RandomResizePad(math.nan, 1.0), "finite"),
    (lambda: RandomResizePad(1.0, math.inf), "finite"),
    (lambda: RandomResizePad("a", 1.0), "numbers"),
    (lambda: RandomResizePad(0.9, 1.1, method="area"), "method"),
    (lambda: RandomResizePad(0.9, 1.1, seed=1.5), "seed must be an integer"),
])
def test_constructor_errors(make, message):
  with pytest.raises(ValueError, match=message):
    make()


def test_wrapper_and_call_errors(net, photos):
  with pytest.raises(ValueError, match="sr_model must be a Keras model"):
    DefendedSR(lambda x: x, NoDefense())
  with pytest.raises(ValueError, match="unknown defense 'blur'"):
    DefendedSR(net, "blur:1")
  with pytest.raises(ValueError, match="defense must be an InputDefense"):
    DefendedSR(net, tf.keras.layers.Activation("linear"))
  for k in (0, 1.5, True):
    with pytest.raises(ValueError, match="eot_samples must be an integer >= 1"):
      DefendedSR(net, "none", eot_samples=k)
  with pytest.raises(ValueError, match=r"\(N, H, W, 1 or 3\)"):
    JpegCompression(75)(tf.zeros([1, 8, 8, 4]))
  with pytest.raises(ValueError, match=r"\(N, H, W, 1 or 3\)"):
    JpegCompression(75)(tf.zeros([8, 8, 3]))
  with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
    RandomResizePad()(tf.zeros([8, 8, 3]))
  layer = RandomResizePad(1.0, 1.0)
  _, geometry = layer.transform(photos)
  with pytest.raises(ValueError, match="not an integer multiple"):
    layer.restore(tf.zeros([2, 20, 9, 3]), geometry)  # 20 / 13 is not an integer


# ---------------------------------------------------------------------------
# JPEG
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("quality", [10, 75, 90, 100])
def test_jpeg_equals_pil_round_trip(photos, quality):
  out = JpegCompression(quality)(photos).numpy()
  assert out.shape == (2, 13, 9, 3) and out.dtype == np.float32
  u8 = np.round(photos.numpy() * 255).astype(np.uint8)
  for i in range(2):
    pil = _pil_jpeg(u8[i], quality).astype(np.float32) / 255.0
    assert np.abs(out[i] - pil).max() <= 1 / 255 + 1e-7
    direct = tf.io.decode_jpeg(tf.io.encode_jpeg(u8[i], quality=quality),
                               dct_method="INTEGER_ACCURATE").numpy() / 255.0
    np.testing.assert_allclose(out[i], direct, atol=1e-7)  # each image on its own
  assert np.abs(out - photos.numpy()).max() > 1 / 255  # it did compress


def test_jpeg_range_and_levels():
  x = tf.random.stateless_uniform([3, 13, 9, 3], seed=[1, 2], minval=-0.5, maxval=1.5)
  out = JpegCompression(50)(x).numpy()
  assert out.shape == (3, 13, 9, 3) and out.dtype == np.float32
  assert out.min() >= 0.0 and out.max() <= 1.0  # the input was clipped to [0, 1]
  np.testing.assert_allclose(out * 255, np.round(out * 255), atol=1e-4)
  gray = JpegCompression(50)(tf.fill([1, 5, 7, 1], 0.5)).numpy()
  assert gray.shape == (1, 5, 7, 1) and np.abs(gray - 128 / 255).max() <= 1 / 255 + 1e-7


def test_jpeg_bpda_gradient_is_identity(photos):
  weights = tf.random.stateless_normal(photos.shape, seed=[3, 4])
  for bpda, expected in ((True, weights), (False, tf.zeros_like(weights))):
    layer = JpegCompression(75, bpda=bpda)
    with tf.GradientTape(persistent=True) as tape:
      tape.watch(photos)
      through = tf.reduce_sum(weights * layer(photos))
      identity = tf.reduce_sum(weights * tf.identity(photos))  # the explicit BPDA gradient
    grad = tape.gradient(through, photos)
    np.testing.assert_array_equal(grad.numpy(), expected.numpy())
    if bpda:
      np.testing.assert_array_equal(grad.numpy(), tape.gradient(identity, photos).numpy())


# ---------------------------------------------------------------------------
# Random resize + padding
# ---------------------------------------------------------------------------

def test_resize_geometry_bounds():
  layer = RandomResizePad(0.8, 1.25, seed=0)
  g = layer.sample(4000, 20, 31).numpy()
  top, left, h, w = g[:, 0], g[:, 1], g[:, 2], g[:, 3]
  ph, pw = 25, 39  # floor(1.25 * 20 + 1/2), floor(1.25 * 31 + 1/2)
  assert (g[:, 4] == 20).all() and (g[:, 5] == 31).all()
  # h' = floor(r H + 1/2) for r in [0.8, 1.25): 16..25 and 25..39 (24.8 -> 25, 38.75 -> 39)
  assert h.min() == 16 and h.max() == 25 and w.min() == 25 and w.max() == 39
  assert (top >= 0).all() and (top <= ph - h).all() and (left >= 0).all() and (left <= pw - w).all()
  assert (top == ph - h).any() and (left == pw - w).any() and (top == 0).any()  # both extremes
  assert np.abs(h / 20 - w / 31).max() <= 0.5 / 20 + 0.5 / 31  # one factor for both axes
  assert np.unique(h).size == 10  # every size 16..25 occurs


def test_resize_transform_pads_with_zeros(photos):
  layer = RandomResizePad(1.0, 1.3, method="nearest", seed=5)
  padded, g = layer.transform(tf.tile(photos, [8, 1, 1, 1]))
  assert padded.shape == (16, 17, 12, 3) and padded.dtype == tf.float32  # 17 = floor(13 * 1.3 + .5)
  padded, g = padded.numpy(), g.numpy()
  same_size = 0
  for i, (top, left, h, w, _, _) in enumerate(g):
    mask = np.zeros(padded.shape[1:3], bool)
    mask[top:top + h, left:left + w] = True
    assert (padded[i][~mask] == 0).all()
    if (h, w) == (13, 9):  # r rounded to 1: the image itself at the offset
      np.testing.assert_array_equal(padded[i][top:top + h, left:left + w], photos[i % 2])
      same_size += 1
  assert same_size >= 1


def test_resize_restores_geometry_exactly(photos):
  """Pixelwise SR (nearest x2) + no resize: any padding offset is cropped out exactly."""
  sr = _nearest_x2()
  layer = RandomResizePad(1.0, 1.3, method="nearest", seed=0)
  defended = DefendedSR(sr, layer)
  checked = 0
  for seed in range(6):
    x = tf.tile(photos, [4, 1, 1, 1])
    padded, g = layer.transform(x, seed=[seed, 9])
    out = layer.restore(sr(padded), g).numpy()
    assert out.shape == (8, 26, 18, 3)
    for i in np.flatnonzero((g.numpy()[:, 2] == 13) & (g.numpy()[:, 3] == 9)):
      np.testing.assert_array_equal(out[i], sr(x[i:i + 1])[0])
      checked += int(g[i, 0] + g[i, 1] > 0)
  assert checked >= 3  # several non-zero offsets verified
  assert defended(photos).shape == (2, 26, 18, 3)


def test_resize_draws(net, photos):
  layer = RandomResizePad(0.9, 1.1, seed=7)
  defended = DefendedSR(net, layer)
  bare = net(photos).numpy()
  first, second = defended(photos).numpy(), defended(photos).numpy()
  assert first.shape == bare.shape == (2, 26, 18, 3) and first.dtype == np.float32
  assert int(layer.draws.numpy()) == 2
  assert np.abs(first - second).max() > 1e-3  # a new draw per call
  again = DefendedSR(net, RandomResizePad(0.9, 1.1, seed=7))
  np.testing.assert_array_equal(again(photos).numpy(), first)  # same seed reproduces
  np.testing.assert_array_equal(again(photos).numpy(), second)
  other = DefendedSR(net, RandomResizePad(0.9, 1.1, seed=8))(photos).numpy()
  assert np.abs(other - first).max() > 1e-3
  # an explicit seed reproduces a draw and does not advance the counter
  np.testing.assert_array_equal(layer.transform(photos, seed=[7, 0])[1],
                                RandomResizePad(0.9, 1.1, seed=7).sample(2, 13, 9))
  assert int(layer.draws.numpy()) == 2


@pytest.mark.parametrize("method", ["bilinear", "nearest", "bicubic"])
def test_resize_identity_equals_bare(net, photos, method):
  out = DefendedSR(net, RandomResizePad(1.0, 1.0, method=method))(photos)
  np.testing.assert_array_equal(out.numpy(), net(photos).numpy())


def test_none_equals_bare(net, photos):
  np.testing.assert_array_equal(DefendedSR(net, "none")(photos).numpy(), net(photos).numpy())


# ---------------------------------------------------------------------------
# EOT and the threat models
# ---------------------------------------------------------------------------

def test_eot_average(net, photos):
  k = 4
  defended = DefendedSR(net, RandomResizePad(0.8, 1.2, seed=11), eot_samples=k)
  target = defended.attack_target
  assert target is defended.attack_target and target is not defended  # cached view
  assert target.attack_target is target
  out = target(photos).numpy()
  # by hand: k draws (one tiled batch, the layer's first seed), restored, averaged
  reference = RandomResizePad(0.8, 1.2, seed=11)
  padded, g = reference.transform(tf.tile(photos, [k, 1, 1, 1]), seed=[11, 0])
  each = reference.restore(net(padded), g).numpy().reshape(k, 2, 26, 18, 3)
  np.testing.assert_allclose(out, each.mean(axis=0), atol=1e-6)
  assert np.abs(each[0] - each[1]).max() > 1e-3

  # averaging lowers the spread between calls (~1/k for independent draws)
  def spread(model):  # variance over 3 calls, 4 images with independent draws each
    x = tf.tile(photos, [2, 1, 1, 1])
    return float(np.mean(np.var([model(x).numpy() for _ in range(3)], axis=0)))
  one = DefendedSR(net, RandomResizePad(0.8, 1.2, seed=12))
  many = DefendedSR(net, RandomResizePad(0.8, 1.2, seed=12), eot_samples=8).attack_target
  assert spread(many) < 0.3 * spread(one)  # measured ~0.1


def test_attack_targets(net):
  jpeg = DefendedSR(net, "jpeg:75", eot_samples=4)
  assert jpeg.attack_target is jpeg and jpeg.bare is net  # deterministic: no averaging
  assert DefendedSR(net, "resize:0.9-1.1").attack_target.samples == 1
  assert DefendedSR(net, "resize:0.9-1.1", adaptive=False, eot_samples=4).attack_target is net


def test_ifgsm_through_defenses(net, photos):
  eps, ifgsm = 4 / 255, attacks.get_attack("ifgsm")
  non_adaptive = ifgsm(net, photos, eps=eps, steps=3, seed=0).numpy()
  x = photos.numpy()
  for spec in ("jpeg:75", "resize:0.9-1.1"):
    defended = DefendedSR(net, defenses.parse_defense(spec, seed=1), eot_samples=2)
    adaptive = ifgsm(defended.attack_target, photos, eps=eps, steps=3, seed=0).numpy()
    assert adaptive.shape == x.shape and adaptive.dtype == np.float32
    assert np.abs(adaptive - x).max() <= eps + 1e-6
    assert adaptive.min() >= 0.0 and adaptive.max() <= 1.0
    assert np.abs(adaptive - x).max() > 0.5 * eps  # it moved
    assert np.mean(adaptive != non_adaptive) > 0.2  # the gradients went through the defense
    assert defended(adaptive).shape == (2, 26, 18, 3)
  # without BPDA the JPEG layer masks the gradient: only the random start (eps / steps) moves
  masked = DefendedSR(net, JpegCompression(75, bpda=False))
  start_only = ifgsm(masked, photos, eps=eps, steps=3, seed=0).numpy()
  assert np.abs(start_only - x).max() <= eps / 3 + 1e-6


def test_features_through_defense(net, photos):
  bare = models.feature_model(net)
  identity = DefendedSR(net, RandomResizePad(1.0, 1.0))
  np.testing.assert_array_equal(identity.features(photos).numpy(), bare(photos).numpy())
  jpeg = DefendedSR(net, "jpeg:75")
  np.testing.assert_array_equal(jpeg.features(photos).numpy(),
                                bare(JpegCompression(75)(photos)).numpy())
  resized = DefendedSR(net, "resize:0.8-1.2").features(photos)
  assert resized.shape == (2, 13, 9, 8)  # back on the LR grid
  maps = jpeg.activations(photos)
  names = models.activation_layer_names(net)
  assert len(maps) == len(names) + 1 and all(m.shape[:3] == (2, 13, 9) for m in maps)


# ---------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------

def test_save_and_reload(net, photos, tmp_path):
  resize = RandomResizePad(0.8, 1.2, seed=5)
  inp = tf.keras.Input((None, None, 3))
  model = tf.keras.Model(inp, net(JpegCompression(60, bpda=False)(resize(inp))))
  expected = model(photos).numpy()
  resize.draws.assign(0)  # saved with the layer: a reloaded copy makes the same draws
  path = os.path.join(tmp_path, "m.keras")
  model.save(path)
  loaded = tf.keras.models.load_model(path)
  layers = {type(l).__name__: l for l in loaded.layers}
  assert layers["JpegCompression"].get_config()["quality"] == 60
  assert not layers["JpegCompression"].bpda and layers["RandomResizePad"].seed == 5
  np.testing.assert_array_equal(loaded(photos).numpy(), expected)

  tf.saved_model.save(model, os.path.join(tmp_path, "sm"))
  restored = tf.saved_model.load(os.path.join(tmp_path, "sm"))
  np.testing.assert_array_equal(restored(photos).numpy(), expected)

  defended = DefendedSR(net, "jpeg:40", adaptive=False, eot_samples=3)
  expected = defended(photos).numpy()
  path = os.path.join(tmp_path, "d.keras")
  defended.save(path)
  again = tf.keras.models.load_model(path)
  assert isinstance(again, DefendedSR) and not again.adaptive and again.eot_samples == 3
  assert again.bare is not net and again.defense.quality == 40
  np.testing.assert_array_equal(again(photos).numpy(), expected)
