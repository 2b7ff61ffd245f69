"""Data: MATLAB bicubic bit-exact on every benchmark LR file, loaders, pipelines."""

import os
import warnings

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfsr_defense import data


@pytest.mark.parametrize("dataset", ["Set5", "Set14", "BSD100"])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_matlab_bicubic_bit_exact(data_dir, dataset, scale):
  hr_dir = os.path.join(data_dir, dataset, "HR")
  names = sorted(os.listdir(hr_dir))
  assert len(names) in (5, 14, 100)
  for name in names:
    hr = data.load_image(os.path.join(hr_dir, name))
    expected = data.load_image(os.path.join(data_dir, dataset, "LR_bicubic", f"X{scale}", name))
    got = data.bicubic_downscale(hr, scale)
    assert got.shape == expected.shape, name
    np.testing.assert_array_equal(got, expected, err_msg=f"{dataset}/{name} x{scale}")


def test_cubic_kernel_values():
  x = tf.constant([0.0, 0.5, 1.0, 1.5, 2.0, 2.5], tf.float64)
  # Keys, a = -0.5: 1 at 0, 0.5625 at 0.5, 0 at 1, -0.0625 at 1.5, 0 beyond 2.
  np.testing.assert_allclose(data._cubic(x).numpy(), [1.0, 0.5625, 0.0, -0.0625, 0.0, 0.0])


def test_imresize_constant_image_and_float_path():
  img = np.full((13, 9, 3), 77, np.uint8)
  out = data.imresize(img, 1 / 3).numpy()
  assert out.shape == (5, 3, 3) and out.dtype == np.uint8 and (out == 77).all()
  f = data.imresize(np.full((8, 8, 1), 0.25), 2.0).numpy()
  assert f.shape == (16, 16, 1)
  np.testing.assert_allclose(f, 0.25)


def test_load_pairs_registered_and_folder(data_dir, tmp_path):
  pairs = data.load_pairs("set5", 4, data_dir)
  assert [p.name for p in pairs] == ["baby", "bird", "butterfly", "head", "woman"]
  for p in pairs:
    assert p.hr.shape == (p.lr.shape[0] * 4, p.lr.shape[1] * 4, 3)
  # A flat folder of HR images (LR made on the fly) with a grayscale image.
  gray = np.arange(30 * 21, dtype=np.uint8).reshape(30, 21)
  Image.fromarray(gray).save(tmp_path / "g.png")
  (folder_pair,) = data.load_pairs(str(tmp_path), 2)
  assert folder_pair.hr.shape == (30, 20, 3) and folder_pair.lr.shape == (15, 10, 3)
  np.testing.assert_array_equal(folder_pair.hr[..., 0], folder_pair.hr[..., 2])


def test_set14_bridge_grayscale_becomes_rgb(data_dir):
  pairs = {p.name: p for p in data.load_pairs("set14", 3, data_dir)}
  assert pairs["bridge"].lr.shape[-1] == 3 and pairs["bridge"].hr.shape[-1] == 3


def test_embedded_default_needs_no_data_dir(monkeypatch):
  monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
  pairs = data.load_pairs("embedded", 4)
  assert len(pairs) == 5 and all(p.hr.dtype == np.uint8 for p in pairs)
  assert [p.name for p in data.load_pairs("embedded_val", 4)] == ["coffee"]


def test_errors_name_the_problem(tmp_path, monkeypatch):
  monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
  with pytest.raises(FileNotFoundError, match="TFSR_DATA_DIR"):
    data.load_pairs("set5", 4)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    data.load_pairs("set5", 4, str(tmp_path / "nope"))
  with pytest.raises(ValueError, match="Unknown dataset 'nosuch'.*set5"):
    data.load_pairs("nosuch", 4)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match="No images"):
    data.load_pairs(str(empty), 4)
  (tmp_path / "bad").mkdir()
  (tmp_path / "bad" / "x.png").write_bytes(b"not a png")
  with pytest.raises(ValueError, match="Cannot read image .*x.png"):
    data.load_pairs(str(tmp_path / "bad"), 4)


def test_train_dataset_aligned_patches_and_skip_small():
  rng = np.random.default_rng(0)
  hr = rng.integers(0, 256, size=(64, 48, 3), dtype=np.uint8)
  big = data.ImagePair("big", data.bicubic_downscale(hr, 4), hr)
  small = data.ImagePair("small", np.zeros((4, 4, 3), np.uint8), np.zeros((16, 16, 3), np.uint8))
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    ds = data.train_dataset([big, small], patch_size=6, scale=4, batch_size=3, augment=False)
  assert any("Skipping small" in str(w.message) for w in caught)
  lr, hr_b = next(iter(ds))
  assert lr.shape == (3, 6, 6, 3) and hr_b.shape == (3, 24, 24, 3)
  assert lr.dtype == tf.float32 and float(tf.reduce_max(hr_b)) <= 1.0
  full_lr = big.lr.astype(np.float32) / 255
  full_hr = big.hr.astype(np.float32) / 255
  for i in range(3):  # every LR patch sits in the LR image where its HR patch sits / 4
    found = False
    for y in range(big.lr.shape[0] - 5):
      for x in range(big.lr.shape[1] - 5):
        if np.allclose(full_lr[y:y + 6, x:x + 6], lr[i].numpy(), atol=1e-6):
          found = np.allclose(full_hr[4 * y:4 * y + 24, 4 * x:4 * x + 24], hr_b[i].numpy(),
                              atol=1e-6)
    assert found


def test_augmentation_keeps_alignment():
  lr = tf.cast(tf.reshape(tf.range(4 * 4 * 3), [4, 4, 3]), tf.uint8)
  hr = tf.repeat(tf.repeat(lr, 2, axis=0), 2, axis=1)
  for seed in range(6):
    tf.random.set_seed(seed)
    lp, hp = data.random_patch(lr, hr, 4, 2, augment=True)
    np.testing.assert_array_equal(hp[::2, ::2].numpy(), lp.numpy())


def test_stateless_patches_align_and_repeat():
  lr = tf.cast(tf.reshape(tf.range(6 * 5 * 3), [6, 5, 3]), tf.uint8)
  hr = tf.repeat(tf.repeat(lr, 2, axis=0), 2, axis=1)
  outs = set()
  for k in range(8):
    seed = tf.constant([7, k], tf.int64)
    lp, hp = data.random_patch(lr, hr, 3, 2, augment=True, seed=seed)
    np.testing.assert_array_equal(hp[::2, ::2].numpy(), lp.numpy())
    np.testing.assert_array_equal(lp.numpy(), data.random_patch(lr, hr, 3, 2, seed=seed)[0])
    outs.add(lp.numpy().tobytes())
  assert len(outs) > 2  # the seed really moves the crop / flips


def test_train_dataset_same_seed_same_batches():
  """Parallel map threads must not change which patch an element gets."""
  rng = np.random.default_rng(0)
  pairs = []
  for i in range(3):
    lr = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    pairs.append(data.ImagePair(str(i), lr, np.repeat(np.repeat(lr, 2, 0), 2, 1)))

  def batches(seed):
    ds = data.train_dataset(pairs, 4, 2, 8, seed=seed)
    return [lr.numpy() for lr, _ in ds.take(6)]

  first, again, other = batches(5), batches(5), batches(6)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in zip(first, other))


def test_train_dataset_rejects_bad_patch():
  with pytest.raises(ValueError, match="patch_size"):
    data.train_dataset([], 0, 4, 1)
  tiny = data.ImagePair("t", np.zeros((3, 3, 3), np.uint8), np.zeros((12, 12, 3), np.uint8))
  with pytest.raises(ValueError, match="No training image"):
    data.train_dataset([tiny], 8, 4, 1)


def test_div2k_wiring_with_tfds_mock():
  tfds = pytest.importorskip("tensorflow_datasets")
  seen = []

  def as_dataset(builder, split, **unused_kwargs):
    seen.append((builder.name, builder.builder_config.name, split))
    hr = tf.random.uniform([40, 36, 3], 0, 255, dtype=tf.int32)
    hr = tf.cast(hr, tf.uint8)
    lr = data.imresize(hr, 1 / 4)
    return tf.data.Dataset.from_tensors({"hr": hr, "lr": lr}).repeat(3)

  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    ds = data.div2k_train_dataset(4, patch_size=8, batch_size=2, shuffle_buffer=2)
    lr, hr = next(iter(ds))
  assert seen == [("div2k", "bicubic_x4", "train")]
  assert lr.shape == (2, 8, 8, 3) and hr.shape == (2, 32, 32, 3)


def test_train_dataset_skip_batches_continues_the_sequence():
  """A resumed run (skip_batches = step) sees what the uninterrupted run saw from there on."""
  rng = np.random.default_rng(1)
  pairs = []
  for i in range(3):  # 3 images, batch 2: skips cross permutation (epoch) boundaries
    lr = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    pairs.append(data.ImagePair(str(i), lr, np.repeat(np.repeat(lr, 2, 0), 2, 1)))
  full = [(lr.numpy(), hr.numpy()) for lr, hr in data.train_dataset(pairs, 4, 2, 2, seed=3).take(7)]
  for skip in (1, 3, 4):
    tail = [(lr.numpy(), hr.numpy())
            for lr, hr in data.train_dataset(pairs, 4, 2, 2, seed=3, skip_batches=skip).take(3)]
    for (a_lr, a_hr), (b_lr, b_hr) in zip(full[skip:skip + 3], tail):
      np.testing.assert_array_equal(a_lr, b_lr)
      np.testing.assert_array_equal(a_hr, b_hr)
  with pytest.raises(ValueError, match="skip_batches"):
    data.train_dataset(pairs, 4, 2, 2, skip_batches=-1)


def test_div2k_gets_the_data_dir(monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")
  seen = {}

  def load(name, split, data_dir=None, shuffle_files=False):
    seen.update(name=name, data_dir=data_dir)
    raise RuntimeError("offline")

  monkeypatch.setattr(tfds, "load", load)
  with pytest.raises(RuntimeError, match="div2k/bicubic_x2"):
    data.div2k_train_dataset(2, 8, 2, data_dir="/some/tfds")
  assert seen == dict(name="div2k/bicubic_x2", data_dir="/some/tfds")


_GREY16 = np.array([[0, 257, 65535], [32896, 1000, 128]], np.uint16)  # 257 v -> v


def _grey8(values16):
  return np.floor(values16.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)


def _save(tmp_path, name, image):
  path = str(tmp_path / name)
  image.save(path)
  return path


def test_load_image_16_bit_grey_png(tmp_path):
  path = _save(tmp_path, "g16.png", Image.fromarray(_GREY16))
  with Image.open(path) as img:
    assert img.mode in ("I;16", "I")  # Pillow's 16-bit grey
  got = data.load_image(path)
  assert got.dtype == np.uint8 and got.shape == (2, 3, 3)
  expected = _grey8(_GREY16)
  assert expected.tolist() == [[0, 1, 255], [128, 4, 0]]  # by hand: round(v / 257)
  for c in range(3):
    np.testing.assert_array_equal(got[..., c], expected)


def test_load_image_16_bit_rgb_and_rgba_png(tmp_path):
  rng = np.random.default_rng(0)
  rgb16 = rng.integers(0, 65536, (4, 5, 3), dtype=np.uint16)
  path = str(tmp_path / "rgb16.png")
  tf.io.write_file(path, tf.io.encode_png(tf.constant(rgb16)))
  np.testing.assert_array_equal(data.load_image(path), _grey8(rgb16))
  rgba16 = np.concatenate([rgb16, np.full((4, 5, 1), 65535, np.uint16)], -1)
  tf.io.write_file(path, tf.io.encode_png(tf.constant(rgba16)))
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # opaque alpha: nothing dropped, no warning
    np.testing.assert_array_equal(data.load_image(path), _grey8(rgb16))
  rgba16[0, 0, 3] = 0
  tf.io.write_file(path, tf.io.encode_png(tf.constant(rgba16)))
  with pytest.warns(UserWarning, match="alpha"):
    np.testing.assert_array_equal(data.load_image(path), _grey8(rgb16))


def test_load_image_32_bit_int_mode(tmp_path):
  path = _save(tmp_path, "i32.tif", Image.fromarray(_GREY16.astype(np.int32), mode="I"))
  with Image.open(path) as img:
    assert img.mode == "I"
  np.testing.assert_array_equal(data.load_image(path)[..., 1], _grey8(_GREY16))
  bad = _save(tmp_path, "neg.tif", Image.fromarray(np.array([[-5, 70000]], np.int32), mode="I"))
  with pytest.raises(ValueError, match="neg.tif.*16-bit range"):
    data.load_image(bad)


def test_load_image_8_bit_modes(tmp_path):
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
  grey = rgb[..., 0]
  # 1 (bilevel): 0 / 255.
  bits = np.array([[0, 255, 255], [255, 0, 0]], np.uint8)
  path = _save(tmp_path, "b.png", Image.fromarray(bits).convert("1"))
  np.testing.assert_array_equal(data.load_image(path), np.repeat(bits[..., None], 3, -1))
  # L: grey replicated.
  path = _save(tmp_path, "l.png", Image.fromarray(grey, mode="L"))
  np.testing.assert_array_equal(data.load_image(path), np.repeat(grey[..., None], 3, -1))
  # RGB unchanged.
  path = _save(tmp_path, "rgb.png", Image.fromarray(rgb))
  np.testing.assert_array_equal(data.load_image(path), rgb)
  # P: the palette's colours.
  palette_img = Image.fromarray(rgb).quantize(colors=8)
  path = _save(tmp_path, "p.png", palette_img)
  np.testing.assert_array_equal(data.load_image(path), np.asarray(palette_img.convert("RGB")))
  # RGBA / LA: colour kept, alpha dropped with a warning if not opaque.
  alpha = np.full((4, 6), 255, np.uint8)
  path = _save(tmp_path, "rgba.png", Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA"))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    np.testing.assert_array_equal(data.load_image(path), rgb)
  alpha[1, 2] = 10
  path = _save(tmp_path, "rgba2.png", Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA"))
  with pytest.warns(UserWarning, match="rgba2.png.*alpha"):
    np.testing.assert_array_equal(data.load_image(path), rgb)
  path = _save(tmp_path, "la.png", Image.fromarray(np.dstack([grey, alpha]), mode="LA"))
  with pytest.warns(UserWarning, match="alpha"):
    np.testing.assert_array_equal(data.load_image(path), np.repeat(grey[..., None], 3, -1))
  # A palette image with a transparent entry: colours kept, warning.
  transparent = Image.fromarray(rgb).quantize(colors=8)
  transparent.info["transparency"] = transparent.getpixel((0, 0))
  path = _save(tmp_path, "pt.png", transparent)
  with pytest.warns(UserWarning, match="alpha"):
    got = data.load_image(path)
  np.testing.assert_array_equal(got, np.asarray(palette_img.convert("RGB")))


def test_load_image_float_mode_is_refused(tmp_path):
  path = _save(tmp_path, "f.tif", Image.fromarray(np.ones((2, 2), np.float32), mode="F"))
  with pytest.raises(ValueError, match="f.tif.*mode F"):
    data.load_image(path)
