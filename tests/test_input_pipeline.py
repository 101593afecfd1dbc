"""Tests of simclr_jax.input_pipeline and the offline `digits` dataset.

Real builds of `digits` into a temporary data dir, tfds.testing.mock_data for cifar10,
imagenet2012 and mnist, and small image folders written by the tests.
"""

import hashlib
import logging
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from configs import base
from simclr_jax import data as ip
from simclr_jax.data import streams
from simclr_jax.datasets import digits


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tfds"))
  digits.prepared_builder(path)
  return path


def _config(**data):
  c = base.get_config()
  c.dataset = "digits"
  c.batch_size = 16
  c.eval_batch_size = 64
  c.data.shuffle_buffer = 300
  c.data.deterministic = True
  c.data.update(data)
  return c


def _hashes(images):
  return [hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest() for x in images]


def _take(ds, n):
  it = ds.as_numpy_iterator()
  return [next(it) for _ in range(n)]


# ------------------------------------------------------------------------------------
# The digits dataset


def test_digits_dataset_is_the_real_sklearn_digits_stratified(data_dir):
  from sklearn.datasets import load_digits
  builder = digits.prepared_builder(data_dir)  # second call: reuses the build
  info = builder.info
  assert info.splits["train"].num_examples + info.splits["test"].num_examples == 1797
  assert info.features["label"].num_classes == 10
  assert info.features["image"].shape == (32, 32, 3)
  split = {}
  for name in ("train", "test"):
    ex = list(builder.as_dataset(split=name).as_numpy_iterator())
    split[name] = (np.stack([e["image"] for e in ex]), np.array([e["label"] for e in ex]))
  sk = load_digits()
  # Every example is one of scikit-learn's images (upsampled), each used exactly once.
  expected = digits.upsample(sk.images)
  assert sorted(_hashes(np.concatenate([split["train"][0], split["test"][0]]))) == \
      sorted(_hashes(expected))
  assert (expected[..., 0] == expected[..., 1]).all()  # gray digits as RGB
  # 20% of each class in test (rounded).
  for c in range(10):
    n_c = (sk.target == c).sum()
    assert (split["test"][1] == c).sum() == round(0.2 * n_c)
    assert (split["train"][1] == c).sum() == n_c - round(0.2 * n_c)


def test_dataset_info_and_default_data_dir(data_dir):
  c = _config()
  info = ip.dataset_info(c, data_dir=data_dir)
  assert info == ip.DatasetInfo(1438, 359, 10, (32, 32, 3))
  assert ip.default_data_dir(c, "/w") == "/w/tfds"
  c.dataset = "cifar10"
  assert ip.default_data_dir(c, "/w") is None
  c.data_dir = "/data"
  assert ip.default_data_dir(c, "/w") == "/data"


# ------------------------------------------------------------------------------------
# Pretraining stream


def test_pretrain_batches(data_dir):
  batch = _take(ip.create_pretrain_dataset(_config(), data_dir=data_dir, process_index=0,
                                           process_count=1), 2)[1]
  assert set(batch) == {"image1", "image2", "label"}
  for key in ("image1", "image2"):
    assert batch[key].shape == (16, 32, 32, 3) and batch[key].dtype == np.float32
    assert batch[key].min() >= 0.0 and batch[key].max() <= 1.0
  assert batch["label"].dtype == np.int32 and batch["label"].shape == (16,)
  assert ((batch["label"] >= 0) & (batch["label"] < 10)).all()
  assert all(np.abs(batch["image1"][i] - batch["image2"][i]).max() > 0.05 for i in range(16))


def test_deterministic_resume_is_exact_across_epochs(data_dir):
  c = _config()
  # 1438 examples / 16 = 89.9 batches per epoch: steps 88-93 straddle the epoch end.
  full = _take(ip.create_pretrain_dataset(c, data_dir=data_dir, process_index=0,
                                          process_count=1), 94)
  resumed = _take(ip.create_pretrain_dataset(c, data_dir=data_dir, start_step=88,
                                             process_index=0, process_count=1), 6)
  for a, b in zip(full[88:], resumed):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  # Same seed, same stream; another seed, another stream.
  again = _take(ip.create_pretrain_dataset(c, data_dir=data_dir, process_index=0,
                                           process_count=1), 1)[0]
  np.testing.assert_array_equal(again["image1"], full[0]["image1"])
  c.seed = 1
  other = _take(ip.create_pretrain_dataset(c, data_dir=data_dir, process_index=0,
                                           process_count=1), 1)[0]
  assert not np.array_equal(other["image1"], full[0]["image1"])


def _jpeg_source(n=40):
  rng = np.random.default_rng(3)
  images = [tf.io.encode_jpeg(rng.integers(0, 256, [40 + i % 7, 48, 3]).astype(np.uint8),
                              quality=90).numpy() for i in range(n)]
  return ip.ArraySource(np.array(images, dtype=object), np.arange(n) % 4, 4, name="jpegs")


def test_jpeg_stream_is_deterministic_and_resumes_exactly():
  """Encoded images (per-example crop ops): the same views for the same seed."""
  c = _config(shuffle_buffer=40)
  c.batch_size, c.data.image_size, c.augment.color_strength = 8, 24, 1.0
  c.train_split = "train"
  source = _jpeg_source()
  batches = lambda start=0, n=7: _take(ip.pretrain_batches(  # noqa: E731
      source, c, start_step=start, process_index=0, process_count=1), n)
  full = batches()  # 40 / 8 = 5 batches per epoch: steps 4-6 straddle the epoch end
  for a, b in zip(full[4:], batches(start=4, n=3)):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  first = full[0]
  assert first["image1"].shape == (8, 24, 24, 3)
  assert first["image1"].min() >= 0.0 and first["image1"].max() <= 1.0
  assert all(np.abs(first["image1"][i] - first["image2"][i]).max() > 0.05 for i in range(8))
  c.seed = 1
  assert not np.array_equal(batches(n=1)[0]["image1"], first["image1"])


def test_example_seeds_are_fold_ins_of_the_epoch_seed():
  # The stream carries (key, index) pairs; stacked they must be the documented
  # fold_in(seed of (seed, shard, epoch), index), in every epoch and after a skip.
  n = 5
  source = ip.ArraySource(np.zeros([n, 4, 4, 3], np.uint8), np.arange(n), n)
  records = source.records("train", (0, 1), shuffle_files=False, seed=0)
  for start in (0, 3):
    stream = streams._example_stream(records, n, seed=7, shard=2, shuffle_buffer=n, start=start,
                                prepare=None, cache=False)
    seeds = [ip.example_seeds(s).numpy() for _, _, s in stream.take(2 * n).as_numpy_iterator()]
    for k, got in enumerate(seeds, start=start):
      epoch, index = divmod(k, n)
      expected = tf.random.experimental.stateless_fold_in(streams._seed_pair(7, 2, epoch),
                                                          tf.constant(index, tf.int64))
      np.testing.assert_array_equal(got, expected.numpy())


def test_epochs_visit_every_example_once_and_reshuffle(data_dir):
  c = _config()
  ds = ip.create_supervised_dataset(c, data_dir=data_dir, augment=False, process_index=0,
                                    process_count=1)
  batches = _take(ds, 2 * 89)
  first = _hashes(np.concatenate([b["image"] for b in batches[:89]]))
  second = _hashes(np.concatenate([b["image"] for b in batches[89:]]))
  assert len(set(first)) == len(first) == 1424  # 89 x 16 of 1438 distinct examples
  assert first[:50] != second[:50]  # another order each epoch


def test_non_deterministic_streams_differ(data_dir):
  c = _config(deterministic=False)
  a, b = [_take(ip.create_supervised_dataset(c, data_dir=data_dir, augment=False,
                                             process_index=0, process_count=1), 1)[0]
          for _ in range(2)]
  assert not np.array_equal(a["image"], b["image"])


def test_split_sharding_gives_processes_disjoint_shards(data_dir):
  c = _config()
  seen = []
  for p in range(2):
    ds = ip.create_supervised_dataset(c, data_dir=data_dir, augment=False, process_index=p,
                                      process_count=2)
    seen.append(set(_hashes(np.concatenate([b["image"] for b in _take(ds, 89)]))))
    assert len(seen[-1]) == 89 * 8  # b = 16 / 2, all distinct
  assert not seen[0] & seen[1]
  with pytest.raises(ValueError, match="not divisible by the process count 3"):
    ip.create_pretrain_dataset(c, data_dir=data_dir, process_index=0, process_count=3)


def test_batch_sharding_reproduces_the_single_process_global_batches(data_dir):
  c = _config(process_sharding="batch")
  single = _take(ip.create_pretrain_dataset(c, data_dir=data_dir, start_step=3,
                                            process_index=0, process_count=1), 2)
  parts = [_take(ip.create_pretrain_dataset(c, data_dir=data_dir, start_step=3,
                                            process_index=p, process_count=2), 2)
           for p in range(2)]
  for step in range(2):
    for key in single[step]:
      np.testing.assert_array_equal(
          np.concatenate([parts[0][step][key], parts[1][step][key]]), single[step][key])
  c.data.process_sharding = "rows"
  with pytest.raises(ValueError, match="process_sharding = 'rows'"):
    ip.create_pretrain_dataset(c, data_dir=data_dir, process_index=0, process_count=1)


# ------------------------------------------------------------------------------------
# Eval and supervised streams


@pytest.mark.parametrize("processes", [1, 3])
def test_eval_yields_every_example_exactly_once(data_dir, processes):
  c = _config()
  c.eval_batch_size = 48
  reference = list(digits.prepared_builder(data_dir).as_dataset(split="test")
                   .as_numpy_iterator())
  images, labels, counts = [], [], []
  for p in range(processes):
    batches = list(ip.create_eval_dataset(c, data_dir=data_dir, process_index=p,
                                          process_count=processes).as_numpy_iterator())
    counts.append(len(batches))
    for b in batches:
      assert b["image"].shape == (48 // processes, 32, 32, 3) and b["mask"].dtype == bool
      images.append(b["image"][b["mask"]])
      labels.append(b["label"][b["mask"]])
      assert (b["image"][~b["mask"]] == 0).all()
  assert len(set(counts)) == 1  # every process steps through the same number of batches
  images = np.concatenate(images)
  assert len(images) == 359
  expected = np.stack([e["image"] for e in reference]).astype(np.float32) / 255.0
  assert sorted(_hashes(images)) == sorted(_hashes(expected))
  np.testing.assert_array_equal(np.sort(np.concatenate(labels)),
                                np.sort([e["label"] for e in reference]))


def test_label_fraction_is_class_balanced_and_seeded(data_dir):
  c = _config()
  labels = np.array([e["label"] for e in digits.prepared_builder(data_dir)
                     .as_dataset(split="train").as_numpy_iterator()])
  expected = {k: max(1, round(0.1 * (labels == k).sum())) for k in range(10)}
  n = ip.label_fraction_size(c, data_dir=data_dir, label_fraction=0.1)
  assert n == sum(expected.values())
  c.batch_size = n  # one batch = one epoch of the subset
  ds = ip.create_supervised_dataset(c, data_dir=data_dir, augment=False, label_fraction=0.1,
                                    process_index=0, process_count=1)
  epoch = _take(ds, 1)[0]
  assert len(set(_hashes(epoch["image"]))) == n
  assert {k: int((epoch["label"] == k).sum()) for k in range(10)} == expected
  c.seed = 5
  other = _take(ip.create_supervised_dataset(c, data_dir=data_dir, augment=False,
                                             label_fraction=0.1, process_index=0,
                                             process_count=1), 1)[0]
  assert set(_hashes(other["image"])) != set(_hashes(epoch["image"]))


def test_supervised_augmented_views(data_dir):
  c = _config()
  batch = _take(ip.create_supervised_dataset(c, data_dir=data_dir, process_index=0,
                                             process_count=1), 1)[0]
  assert batch["image"].shape == (16, 32, 32, 3) and batch["image"].dtype == np.float32
  # Crop and flip only: gray digits stay gray (no colour jitter).
  np.testing.assert_allclose(batch["image"][..., 0], batch["image"][..., 2], atol=1e-6)


# ------------------------------------------------------------------------------------
# tfds datasets (mocked: nothing can be downloaded here)


def test_mock_cifar10_and_imagenet(tmp_path):
  with tfds.testing.mock_data(num_examples=12):
    c = _config()
    c.dataset, c.batch_size, c.eval_batch_size = "cifar10", 4, 8
    info = ip.dataset_info(c, data_dir=str(tmp_path))
    assert info.num_classes == 10 and info.image_shape == (32, 32, 3)
    assert info.num_train_examples == 12
    b = _take(ip.create_pretrain_dataset(c, data_dir=str(tmp_path), process_index=0,
                                         process_count=1), 1)[0]
    assert b["image1"].shape == (4, 32, 32, 3)
    c.dataset, c.data.image_size = "imagenet2012", 40
    c.augment.blur, c.augment.blur_on = True, "data"
    info = ip.dataset_info(c, data_dir=str(tmp_path))
    assert info.num_classes == 1000 and info.image_shape is None
    b = _take(ip.create_pretrain_dataset(c, data_dir=str(tmp_path), process_index=0,
                                         process_count=1), 2)[1]
    assert b["image1"].shape == (4, 40, 40, 3) and b["image2"].max() <= 1.0
    ev = list(ip.create_eval_dataset(c, data_dir=str(tmp_path), process_index=0,
                                     process_count=1).as_numpy_iterator())
    assert sum(e["mask"].sum() for e in ev) == 12 and ev[0]["image"].shape == (8, 40, 40, 3)


def test_mock_grayscale_dataset_is_converted_to_rgb(tmp_path):
  with tfds.testing.mock_data(num_examples=8):
    c = _config()
    c.dataset, c.batch_size, c.data.image_size = "mnist", 4, 28
    assert ip.dataset_info(c, data_dir=str(tmp_path)).image_shape == (28, 28, 3)
    b = _take(ip.create_eval_dataset(c, data_dir=str(tmp_path), process_index=0,
                                     process_count=1, batch_size=4), 1)[0]
    assert b["image"].shape == (4, 28, 28, 3)
    np.testing.assert_array_equal(b["image"][..., 0], b["image"][..., 1])


class _Rgba(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 4)),
            "label": tfds.features.ClassLabel(num_classes=2)}),
        supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    return {}

  def _generate_examples(self):
    yield from ()


def test_bad_datasets_and_splits_are_named(data_dir, tmp_path):
  c = _config()
  c.dataset = "no_such_dataset_xyz"
  with pytest.raises(ValueError, match="unknown dataset 'no_such_dataset_xyz'"):
    ip.dataset_info(c, data_dir=data_dir)
  c = _config()
  c.train_split = "validation"
  with pytest.raises(ValueError, match="unknown split 'validation'.*'test', 'train'"):
    ip.dataset_info(c, data_dir=data_dir)
  with pytest.raises(ValueError, match="4-channel images"):
    ip.TfdsSource(_Rgba(data_dir=str(tmp_path)), "rgba")


# ------------------------------------------------------------------------------------
# Image folders


def _write_folder(root, layout):
  rng = np.random.default_rng(0)
  for path, (h, w) in layout.items():
    os.makedirs(os.path.dirname(os.path.join(root, path)), exist_ok=True)
    image = rng.integers(0, 256, [h, w, 3]).astype(np.uint8)
    data = (tf.io.encode_jpeg(image) if path.endswith(".jpg")
            else tf.io.encode_png(image)).numpy()
    with open(os.path.join(root, path), "wb") as f:
      f.write(data)


def test_folder_dataset_skips_and_counts_undecodable_files(tmp_path, caplog):
  root = str(tmp_path / "imgs")
  layout = {f"{cls}/{i}.{'jpg' if i % 2 else 'png'}": (40 + 3 * i, 50 - 2 * i)
            for cls in ("cat", "dog") for i in range(5)}
  _write_folder(root, layout)
  with open(os.path.join(root, "cat", "broken.jpg"), "wb") as f:
    f.write(b"this is not an image")
  with open(os.path.join(root, "dog", "notes.txt"), "w") as f:
    f.write("hello")
  c = _config()
  c.dataset, c.batch_size, c.eval_batch_size = f"folder:{root}", 4, 4
  c.data.image_size = 36
  with caplog.at_level(logging.WARNING):
    info = ip.dataset_info(c, data_dir=None)
  assert "skipped 2 file(s)" in caplog.text and "broken.jpg" in caplog.text
  # Seeded split: 10% of each class held out as test.
  assert (info.num_train_examples, info.num_eval_examples, info.num_classes) == (8, 2, 2)
  assert info.image_shape is None
  b = _take(ip.create_pretrain_dataset(c, data_dir=None, process_index=0,
                                       process_count=1), 3)[2]
  assert b["image1"].shape == (4, 36, 36, 3) and set(b["label"]) <= {0, 1}
  ev = list(ip.create_eval_dataset(c, data_dir=None, process_index=0,
                                   process_count=1).as_numpy_iterator())
  assert sum(e["mask"].sum() for e in ev) == 2
  # Crop disabled: the whole image resized, whatever its size.
  c.augment.crop, c.data.image_size = False, 64
  b = _take(ip.create_pretrain_dataset(c, data_dir=None, process_index=0, process_count=1), 1)[0]
  assert b["image1"].shape == (4, 64, 64, 3)


def test_folder_with_train_and_test_subfolders(tmp_path):
  root = str(tmp_path / "split")
  _write_folder(root, {"train/a/0.png": (20, 20), "train/a/1.png": (20, 20),
                       "train/b/0.png": (20, 20), "test/b/0.jpg": (24, 20)})
  c = _config()
  c.dataset = f"folder:{root}"
  info = ip.dataset_info(c, data_dir=None)
  assert (info.num_train_examples, info.num_eval_examples, info.num_classes) == (3, 1, 2)
  b = _take(ip.create_eval_dataset(c, data_dir=None, process_index=0, process_count=1,
                                   batch_size=2), 1)[0]
  assert list(b["mask"]) == [True, False] and b["label"][0] == 1


def test_bad_folders_are_named(tmp_path):
  c = _config()
  c.dataset = f"folder:{tmp_path}/missing"
  with pytest.raises(ValueError, match="does not exist"):
    ip.dataset_info(c, data_dir=None)
  os.makedirs(tmp_path / "empty" / "cls")
  with open(tmp_path / "empty" / "cls" / "a.txt", "w") as f:
    f.write("x")
  c.dataset = f"folder:{tmp_path}/empty"
  with pytest.raises(ValueError, match="contains no images"):
    ip.dataset_info(c, data_dir=None)
