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
