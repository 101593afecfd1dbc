"""Sources: a split of a dataset as (encoded image, label) records in a fixed order.

Any image-classification dataset of tensorflow-datasets by name (with its config,
e.g. "imagenet2012_subset/1pct"), the in-package offline "digits", and "folder:/path"
(a folder of class subfolders of images; see `FolderSource`).
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Callable, NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from simclr_jax import image_check

_JPEG, _PNG, _GIF, _BMP = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF8", b"BM"
IMAGE_MAGIC = (_JPEG, _PNG, _GIF, _BMP)  # what tf.io.decode_image reads
FOLDER_PREFIX = "folder:"
FOLDER_TEST_FRACTION = 0.1  # held out per class when a folder has no train/ and test/
FOLDER_SPLIT_SEED = 0  # fixed: the split of a folder must not depend on the run's seed


class DatasetInfo(NamedTuple):
  """What the training program needs to know about a dataset."""
  num_train_examples: int  # in config.train_split
  num_eval_examples: int  # in config.eval_split
  num_classes: int
  image_shape: tuple  # (H, W, 3) of the stored images; None for sizes that vary


class Source:
  """A labelled image dataset whose splits can be read as encoded-image records."""
  name: str
  num_classes: int
  image_shape: tuple | None  # (H, W, 3) when every image has that shape

  def num_examples(self, split: str) -> int:
    raise NotImplementedError

  def records(self, split: str, shard: tuple[int, int], *, shuffle_files: bool,
              seed: int) -> tf.data.Dataset:
    """Shard (index, count) of `split` as (encoded string, int32 label) records."""
    raise NotImplementedError

  def class_counts(self, split: str) -> np.ndarray | None:
    """Examples per class of `split` when known without reading it (else None)."""
    del split
    return None

  def decode(self, record: tf.Tensor, label: tf.Tensor):
    """A record of a fixed-size source as (uint8 [H, W, 3], label)."""
    image = tf.io.decode_image(record, channels=3, expand_animations=False)
    image.set_shape(self.image_shape)
    return image, label

  @property
  def prepare(self) -> Callable | None:
    """What turns records into images before caching: decoding, for fixed sizes."""
    return self.decode if self.image_shape is not None else None


def shard_bounds(num_examples: int, shard: tuple[int, int]) -> tuple[int, int]:
  """[start, end) of shard (index, count) of num_examples, as tfds.even_splits."""
  index, count = shard
  base, extra = divmod(num_examples, count)
  start = index * base + min(index, extra)
  return start, start + base + (1 if index < extra else 0)


class TfdsSource(Source):
  """A tensorflow-datasets builder; images are read encoded (tfds.decode.SkipDecoding)."""

  def __init__(self, builder: tfds.core.DatasetBuilder, name: str):
    self.builder = builder
    self.name = name
    features = builder.info.features
    keys = builder.info.supervised_keys or ("image", "label")
    self.image_key, self.label_key = keys[0], keys[1]
    if (self.image_key not in features or self.label_key not in features
        or not isinstance(features[self.image_key], tfds.features.Image)
        or not isinstance(features[self.label_key], tfds.features.ClassLabel)):
      raise ValueError(f"dataset {name!r} is not an image-classification dataset: "
                       f"expected an Image feature and a ClassLabel feature, found "
                       f"{features}")
    shape = tuple(features[self.image_key].shape)
    if shape[-1] not in (1, 3):
      raise ValueError(f"dataset {name!r} has {shape[-1]}-channel images {shape}: only "
                       "RGB (3) and grayscale (1, converted to RGB) are supported")
    self.image_shape = (shape[0], shape[1], 3) if None not in shape[:2] else None
    self.num_classes = int(features[self.label_key].num_classes)
    self._counts = {}

  def _check_split(self, split: str) -> None:
    splits = self.builder.info.splits
    if not splits:
      return  # metadata without split sizes (mocked or unprepared): reading will tell
    try:
      splits[split]
    except (KeyError, ValueError, AssertionError) as e:
      raise ValueError(f"unknown split {split!r} of dataset {self.name!r}; its splits are "
                       f"{sorted(splits)} (slicing like 'train[:90%]' also works)") from e

  def _read(self, split, *, shuffle_files: bool = False, seed: int = 0) -> tf.data.Dataset:
    self._check_split(split)
    read_config = tfds.ReadConfig(shuffle_seed=seed, shuffle_reshuffle_each_iteration=False,
                                  try_autocache=False)
    try:
      return self.builder.as_dataset(
          split=split, decoders={self.image_key: tfds.decode.SkipDecoding()},
          shuffle_files=shuffle_files, read_config=read_config)
    except AssertionError as e:  # tfds's way of saying the data is not there
      raise ValueError(f"dataset {self.name!r} is not prepared in data dir "
                       f"{self.builder.data_dir!r} (this machine cannot download it; "
                       f"build it with `tfds build {self.name}` or set config.data_dir): "
                       f"{e}") from e

  def num_examples(self, split: str) -> int:
    if split not in self._counts:
      self._check_split(split)
      splits = self.builder.info.splits
      count = splits[split].num_examples if splits else -1
      if count <= 0:
        count = int(self._read(split).cardinality())
      if count < 0:
        count = int(self._read(split).reduce(0, lambda n, _: n + 1))
      self._counts[split] = count
    return self._counts[split]

  def records(self, split, shard, *, shuffle_files, seed):
    sub = tfds.even_splits(split, n=shard[1])[shard[0]] if shard[1] > 1 else split
    ds = self._read(sub, shuffle_files=shuffle_files, seed=seed)
    image_key, label_key = self.image_key, self.label_key
    return ds.map(lambda ex: (ex[image_key], tf.cast(ex[label_key], tf.int32)))


class FolderSource(Source):
  """"folder:/root": a folder of class subfolders of images (JPEG, PNG, GIF, BMP).

  If root/train and root/test exist they are the splits (each of class subfolders);
  otherwise the class subfolders are directly under root and a fixed-seed split holds
  out FOLDER_TEST_FRACTION of each class (at least one image of a class with two or
  more) as "test", the rest being "train". Classes are the sorted subfolder names.
  Files that are not images (checked by their first bytes) or do not decode (each is
  decoded once, `image_check`) are skipped and counted in one warning.
  """

  def __init__(self, root: str):
    self.name = FOLDER_PREFIX + root
    self.root = root
    if not tf.io.gfile.isdir(root):
      raise ValueError(f"dataset folder {root!r} does not exist or is not a folder")
    self.image_shape = None
    split_dirs = {s: os.path.join(root, s) for s in ("train", "test")}
    if all(tf.io.gfile.isdir(d) for d in split_dirs.values()):
      classes = sorted(set(_subdirs(split_dirs["train"])) | set(_subdirs(split_dirs["test"])))
      self.splits = {s: self._list(d, classes) for s, d in split_dirs.items()}
    else:
      classes = _subdirs(root)
      files, labels = self._list(root, classes)
      self.splits = dict(zip(("train", "test"), _held_out_split(files, labels)))
    if not classes:
      raise ValueError(f"dataset folder {root!r} has no class subfolders (expected "
                       "root/<class>/<image> or root/{train,test}/<class>/<image>)")
    self.classes = classes
    self.num_classes = len(classes)

  def _list(self, folder: str, classes: list[str]) -> tuple[list[str], list[int]]:
    files, labels, bad = [], [], []
    for label, name in enumerate(classes):
      class_dir = os.path.join(folder, name)
      if not tf.io.gfile.isdir(class_dir):
        continue
      for dirpath, _, filenames in sorted(tf.io.gfile.walk(class_dir)):
        for f in sorted(filenames):
          if f.startswith("."):
            continue
          path = os.path.join(dirpath, f)
          if _looks_like_image(path):
            files.append(path)
            labels.append(label)
          else:
            bad.append(path)
    damaged = set(image_check.undecodable(files))
    if damaged:
      labels = [y for f, y in zip(files, labels) if f not in damaged]
      files = [f for f in files if f not in damaged]
      bad = sorted(bad + list(damaged))
    if bad:
      logging.warning("dataset folder %s: skipped %d file(s) that are not decodable "
                      "images (JPEG, PNG, GIF, BMP), e.g. %s", folder, len(bad), bad[:5])
    if not files:
      raise ValueError(f"dataset folder {folder!r} contains no images (JPEG, PNG, GIF, "
                       f"BMP) in its class subfolders {classes}")
    return files, labels

  def _split(self, split: str):
    if split not in self.splits:
      raise ValueError(f"unknown split {split!r} of dataset {self.name!r}; its splits "
                       f"are {sorted(self.splits)}")
    return self.splits[split]

  def num_examples(self, split):
    return len(self._split(split)[0])

  def class_counts(self, split):
    return np.bincount(self._split(split)[1], minlength=self.num_classes)

  def records(self, split, shard, *, shuffle_files, seed):
    del shuffle_files, seed  # the epoch shuffle covers a file list completely
    files, labels = self._split(split)
    start, end = shard_bounds(len(files), shard)
    ds = tf.data.Dataset.from_tensor_slices((files[start:end],
                                             np.asarray(labels[start:end], np.int32)))
    return ds.map(lambda f, y: (tf.io.read_file(f), y))


def _subdirs(folder: str) -> list[str]:
  return sorted(d.rstrip("/") for d in tf.io.gfile.listdir(folder)
                if not d.startswith(".") and tf.io.gfile.isdir(os.path.join(folder, d)))


def _looks_like_image(path: str) -> bool:
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      head = f.read(8)
  except (OSError, tf.errors.OpError):
    return False
  return any(head.startswith(m) for m in IMAGE_MAGIC)


def _held_out_split(files, labels):
  rng = np.random.default_rng(FOLDER_SPLIT_SEED)
  labels = np.asarray(labels)
  test = np.zeros(len(files), bool)
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    k = int(round(FOLDER_TEST_FRACTION * len(members)))
    if len(members) >= 2:
      k = min(max(k, 1), len(members) - 1)
    test[rng.permutation(members)[:k]] = True
  pick = lambda m: ([files[i] for i in np.flatnonzero(m)], labels[m].tolist())
  return pick(~test), pick(test)


class ArraySource(Source):
  """In-memory images (benchmarks, tests): uint8 [N, H, W, 3] or encoded strings.

  One split, "train".
  """

  def __init__(self, images, labels, num_classes: int, name: str = "arrays"):
    self.name = name
    self.images = images
    self.labels = np.asarray(labels, np.int32)
    self.num_classes = num_classes
    self.encoded = not isinstance(images, np.ndarray) or images.dtype.kind in "SOU"
    self.image_shape = None if self.encoded else tuple(images.shape[1:])

  def num_examples(self, split):
    if split != "train":
      raise ValueError(f"unknown split {split!r} of {self.name!r}; its splits are ['train']")
    return len(self.labels)

  def records(self, split, shard, *, shuffle_files, seed):
    start, end = shard_bounds(self.num_examples(split), shard)
    return tf.data.Dataset.from_tensor_slices((self.images[start:end],
                                               self.labels[start:end]))

  def decode(self, record, label):
    return (record, label) if not self.encoded else super().decode(record, label)


@functools.lru_cache(maxsize=8)
def _folder_source(root: str) -> FolderSource:
  return FolderSource(root)  # listing and checking a large folder takes a while: once


def default_data_dir(config, workdir: str) -> str | None:
  """config.data_dir, else <workdir>/tfds for "digits", else None (tfds's default)."""
  if config.data_dir:
    return config.data_dir
  if config.dataset == "digits":
    return os.path.join(workdir, "tfds")
  return None


def get_source(config, data_dir: str | None) -> Source:
  """The dataset named by config.dataset (a tfds name, "digits" or "folder:/path")."""
  name = config.dataset
  if name.startswith(FOLDER_PREFIX):
    return _folder_source(name[len(FOLDER_PREFIX):])
  if name == "digits":
    from simclr_jax import datasets  # pylint: disable=import-outside-toplevel
    if data_dir is None:
      raise ValueError("dataset 'digits' needs a data dir to build into (the training "
                       "program passes <workdir>/tfds; or set config.data_dir)")
    return TfdsSource(datasets.prepared_digits(data_dir), name)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except (tfds.core.registered.DatasetNotFoundError, ValueError) as e:
    raise ValueError(f"unknown dataset {name!r}: config.dataset must be a "
                     "tensorflow-datasets name (e.g. 'cifar10', 'imagenet2012', "
                     "'imagenet2012_subset/1pct'), 'digits' or 'folder:/path'") from e
  return TfdsSource(builder, name)


def dataset_info(config, *, data_dir: str | None) -> DatasetInfo:
  """Sizes of config.train_split and config.eval_split, class count, image shape."""
  source = get_source(config, data_dir)
  return DatasetInfo(num_train_examples=source.num_examples(config.train_split),
                     num_eval_examples=source.num_examples(config.eval_split),
                     num_classes=source.num_classes, image_shape=source.image_shape)
