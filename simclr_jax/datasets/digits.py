"""`digits`: the offline default dataset, a tfds builder over scikit-learn's digits.

The 1,797 real 8x8 handwritten digits (0-16 grey levels) that ship inside
scikit-learn (`sklearn.datasets.load_digits`, the UCI optical-recognition test set),
scaled to 0-255, upsampled bicubically to 32x32 and stored as RGB PNGs, so that the
pipeline, augmentations and models built for CIFAR run on them unchanged. A fixed
train/test split stratified by class: 20% of each class (rounded) is `test`,
chosen by a fixed-seed NumPy permutation that does not depend on the run's seed.
Nothing is downloaded; the builder writes a normal tfds data dir on first use.
"""

from __future__ import annotations

import contextlib
import fcntl
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

IMAGE_SIZE = 32
NUM_CLASSES = 10
TEST_FRACTION = 0.2
SPLIT_SEED = 0  # fixed: the split must not change with the run's seed


def stratified_split(labels: np.ndarray, test_fraction: float = TEST_FRACTION,
                     seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
  """(train indices, test indices): round(test_fraction x n_c) of each class c in test."""
  rng = np.random.default_rng(seed)
  train, test = [], []
  for c in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == c))
    k = int(round(test_fraction * len(members)))
    test.append(members[:k])
    train.append(members[k:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def upsample(images: np.ndarray) -> np.ndarray:
  """[N, 8, 8] grey levels 0-16 -> [N, 32, 32, 3] uint8 (bicubic, clipped)."""
  x = tf.constant(images[..., None] * (255.0 / 16.0), tf.float32)
  x = tf.image.resize(x, [IMAGE_SIZE, IMAGE_SIZE], method="bicubic", antialias=False)
  x = tf.cast(tf.round(tf.clip_by_value(x, 0.0, 255.0)), tf.uint8).numpy()
  return np.repeat(x, 3, axis=-1)


class Digits(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """scikit-learn's 8x8 handwritten digits as 32x32 RGB, train/test stratified."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "32x32 RGB, 80/20 stratified split with a fixed seed."}

  # Nothing is downloaded, so there are no URL checksums to look up; tfds's lookup would
  # import `importlib_resources`, which tensorflow-datasets 4.9 needs but may not install.
  @tfds.core.utils.classproperty
  @classmethod
  def url_infos(cls):
    return None

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }),
        supervised_keys=("image", "label"),
        homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download: the data ships with scikit-learn
    from sklearn import datasets as sk_datasets  # pylint: disable=import-outside-toplevel
    digits = sk_datasets.load_digits()
    images = upsample(digits.images)
    labels = digits.target.astype(np.int64)
    train, test = stratified_split(labels)
    return {"train": self._generate_examples(images, labels, train),
            "test": self._generate_examples(images, labels, test)}

  def _generate_examples(self, images, labels, indices):
    for i in indices:
      yield int(i), {"image": images[i], "label": int(labels[i])}


@contextlib.contextmanager
def _lock(path: str):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def prepared_builder(data_dir: str) -> Digits:
  """The builder, its data written under `data_dir` first if needed (process-safe)."""
  builder = Digits(data_dir=data_dir)
  if not builder.is_prepared():
    # Several processes of one job may start together: one builds, the others wait.
    with _lock(os.path.join(data_dir, ".digits.lock")):
      builder = Digits(data_dir=data_dir)
      if not builder.is_prepared():
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            compute_stats=tfds.download.ComputeStatsMode.SKIP, try_download_gcs=False))
      builder = Digits(data_dir=data_dir)
  return builder
