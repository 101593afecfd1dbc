"""tf.data input pipelines: SimCLR pretraining pairs, supervised training, evaluation.

Sources: any image-classification dataset of tensorflow-datasets by name (with its
config, e.g. "imagenet2012_subset/1pct"), the in-package offline "digits", and
"folder:/path" (a folder of class subfolders of images; see `FolderSource`).

Every stream is a sequence of epochs; epoch e of a process is its shard of the split,
shuffled (buffer `config.data.shuffle_buffer`) with a seed derived from (seed, e), and
example i of the epoch gets the augmentation seed fold_in(seed, process, e, i). A
resumed stream (`start_step`) starts at epoch and offset computed from the step and
skips the examples before it as raw records, before any decoding, and with
`config.data.deterministic` yields exactly the batches of an uninterrupted stream.

Images are decoded once per example (JPEGs only inside the union of the two views'
crop windows) and augmented in batches (`simclr_jax.augment`). TensorFlow is kept off
accelerators.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Callable, NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from simclr_jax import augment as aug
from simclr_jax import image_check


_JPEG, _PNG, _GIF, _BMP = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF8", b"BM"
IMAGE_MAGIC = (_JPEG, _PNG, _GIF, _BMP)  # what tf.io.decode_image reads
FOLDER_PREFIX = "folder:"
FOLDER_TEST_FRACTION = 0.1  # held out per class when a folder has no train/ and test/
FOLDER_SPLIT_SEED = 0  # fixed: the split of a folder must not depend on the run's seed
_FOREVER = 2 ** 62  # epochs of an endless stream
_PROCESS_SHARDINGS = ("split", "batch")


class DatasetInfo(NamedTuple):
  """What the training program needs to know about a dataset."""
  num_train_examples: int  # in config.train_split
  num_eval_examples: int  # in config.eval_split
  num_classes: int
  image_shape: tuple  # (H, W, 3) of the stored images; None for sizes that vary


# ----------------------------------------------------------------------------------
# Sources: a split as (encoded image, label) records in a fixed order
# ----------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------
# Streams: epochs of shuffled records with per-example seeds, resumable
# ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Process:
  index: int
  count: int


def _process(process_index, process_count) -> _Process:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=import-outside-toplevel
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
  return _Process(int(process_index), int(process_count))


def _local_batch(global_batch: int, process: _Process, field: str) -> int:
  if global_batch % process.count:
    raise ValueError(f"config.{field} = {global_batch} is not divisible by the process "
                     f"count {process.count}")
  return global_batch // process.count


def _run_seed(config) -> int:
  """The seed of a stream: config.seed, or a fresh one when not deterministic."""
  if config.data.deterministic:
    return int(config.seed)
  return int(np.random.SeedSequence().generate_state(1)[0] >> 1)


def _seed_pair(*values) -> tf.Tensor:
  seed = tf.constant([0x5EED, 0], tf.int64)
  for v in values:
    seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(v, tf.int64))
  return seed


def _epoch_shuffle_seed(seed: int, epoch: tf.Tensor, shard: int) -> tf.Tensor:
  s = _seed_pair(seed, shard, epoch, -1)
  return tf.math.floormod(tf.bitwise.bitwise_xor(s[0], s[1]), 2 ** 62)


def _example_stream(records: tf.data.Dataset, epoch_size: int, *, seed: int, shard: int,
                    shuffle_buffer: int, start: int, prepare: Callable | None,
                    cache: bool, keep: Callable | None = None) -> tf.data.Dataset:
  """Epochs of `records` from example number `start` (counted from epoch 0) on.

  Args:
    records: one epoch, (data, label) in a fixed order.
    epoch_size: its length.
    seed: the stream seed; shard: folded into every seed (the process's shard).
    shuffle_buffer: per-epoch shuffle buffer (<= 1: no shuffling).
    start: examples to skip from the beginning of epoch 0 (a resumed run).
    prepare: applied to records before `cache` (decoding small images), or None.
    cache: cache the (prepared) records in memory after the first epoch.
    keep: optional predicate on the stream position (epoch * epoch_size + i) applied
      after skipping; positions are those of the unfiltered stream.

  Returns:
    elements (data, label, (key, index)): raw records unless `prepare`d; the example's
    augmentation seed is the int64 pair (key, index) (`example_seeds`), equal to
    fold_in(seed of (seed, shard, epoch), index in the epoch).
  """
  if epoch_size <= 0:
    raise ValueError("cannot stream an empty split")
  base = records
  if prepare is not None and cache:
    base = base.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  if cache:
    base = base.cache()
  start_epoch, offset = divmod(int(start), epoch_size)

  def epoch(e):
    ds = base
    if shuffle_buffer > 1:
      ds = ds.shuffle(shuffle_buffer, seed=_epoch_shuffle_seed(seed, e, shard),
                      reshuffle_each_iteration=False)
    # fold_in(epoch_seed, i) is [draw(epoch_seed), i]: the draw is made once per epoch
    # and the pair is stacked only where it is used, after batching (`example_seeds`),
    # because a map with any op in it costs 30-50 us of CPU per element here.
    key = tf.random.experimental.stateless_fold_in(_seed_pair(seed, shard, e),
                                                   tf.constant(0, tf.int64))[0]
    return ds.enumerate().map(lambda i, rec: (e, i, rec[0], rec[1], key))

  ds = tf.data.Dataset.range(start_epoch, _FOREVER).flat_map(epoch)
  if offset:
    ds = ds.skip(offset)  # raw records: nothing decoded or augmented yet
  if keep is not None:
    ds = ds.filter(lambda e, i, *_: keep(e * epoch_size + i))
  ds = ds.map(lambda e, i, data, label, key: (data, label, (key, i)))
  if prepare is not None and not cache:
    ds = ds.map(lambda data, label, s: (prepare(data, label)[0], label, s),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds


def example_seeds(seed: tuple[tf.Tensor, tf.Tensor]) -> tf.Tensor:
  """The stateless seeds [..., 2] int64 of stream elements' (key, index) pairs."""
  return tf.stack(seed, axis=-1)


def _options(config, deterministic: bool) -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = deterministic
  options.experimental_optimization.map_parallelization = True
  # No experimental_slack: it stalled an idle iterator (see the spec's pitfalls).
  threads = config.data.get("num_threads", 0)
  if threads:
    options.threading.private_threadpool_size = threads
  return options


def _parallel(config) -> int:
  n = config.data.num_parallel_calls
  return tf.data.AUTOTUNE if n is None or n < 0 else int(n)


def _sharding(config) -> str:
  mode = config.data.get("process_sharding", "split")
  if mode not in _PROCESS_SHARDINGS:
    raise ValueError(f"config.data.process_sharding = {mode!r} is not allowed: expected "
                     f"one of {list(_PROCESS_SHARDINGS)}")
  return mode


def _source_stream(source: Source, split: str, config, *, process: _Process,
                   local_batch: int, global_batch: int, start_step: int,
                   prepare: Callable | None, selected: np.ndarray | None = None):
  """This process's example stream of `split` and whether its order is deterministic."""
  sharding = _sharding(config)
  deterministic = bool(config.data.deterministic) or sharding == "batch"
  seed = int(config.seed) if deterministic else _run_seed(config)
  cache = bool(config.data.cache)
  if sharding == "batch" or process.count == 1:
    shard = (0, 1)
  else:
    shard = (process.index, process.count)
  records = source.records(split, shard, shuffle_files=not deterministic, seed=seed)
  size = source.num_examples(split)
  if selected is not None:  # a subset of the split, by index in the split
    first, last = shard_bounds(size, shard)
    local = selected[(selected >= first) & (selected < last)] - first
    mask = np.zeros(last - first, bool)
    mask[local] = True
    table = tf.constant(mask)
    records = records.enumerate().filter(lambda i, rec: tf.gather(table, i)).map(
        lambda i, rec: rec)
    epoch_size = int(mask.sum())
  else:
    epoch_size = shard_bounds(size, shard)[1] - shard_bounds(size, shard)[0]
  common = dict(seed=seed, shuffle_buffer=int(config.data.shuffle_buffer),
                prepare=prepare, cache=cache)
  if shard[1] == 1 and process.count > 1:  # "batch": rows p*b:(p+1)*b of each global batch
    p, b, gb = process.index, local_batch, global_batch
    return _example_stream(records, epoch_size, shard=0, start=start_step * gb,
                           keep=lambda pos: (pos % gb) // b == p, **common), deterministic
  return _example_stream(records, epoch_size, shard=shard[0], start=start_step * local_batch,
                         **common), deterministic


# ----------------------------------------------------------------------------------
# Public pipelines
# ----------------------------------------------------------------------------------

def _augmented_batches(stream: tf.data.Dataset, source: Source, spec: aug.ViewSpec,
                       num_views: int, batch: int, config,
                       deterministic: bool) -> tf.data.Dataset:
  """Batches {"views": V x [b, S, S, 3], "label": [b]} of a (data, label, seed) stream.

  Fixed-size sources arrive decoded (uint8 [H, W, 3]) and are augmented as batches;
  others arrive encoded and are decoded (crop windows only) per example.
  """
  par = _parallel(config)
  size = spec.image_size
  if source.image_shape is not None:
    h, w, _ = source.image_shape
    if not spec.crop and (h < size or w < size):
      raise ValueError(f"dataset {source.name!r} has {h}x{w} images, smaller than the "
                       f"output size {size} px with crop augmentation disabled "
                       "(config.augment.crop = False takes a central crop)")
    # No per-example map at all: each costs more than augmenting a CIFAR image.
    def per_batch_fixed(images, labels, seeds):
      u = aug.view_uniforms(example_seeds(seeds), num_views, spec)
      return {"views": tuple(aug.augment_fixed_batch(images, u, spec)), "label": labels}

    ds = stream.batch(batch, drop_remainder=True)
    ds = ds.map(per_batch_fixed, num_parallel_calls=par, deterministic=deterministic)
    return ds.with_options(_options(config, deterministic))

  skip_bad = isinstance(source, FolderSource)  # a user's files: skip what won't decode

  def per_example(encoded, label, seed):
    seed = example_seeds(seed)
    u = aug.view_uniforms(seed, num_views, spec, crop_attempts=False)
    views, image_size = aug.decode_views(encoded, seed, u, spec)
    if spec.crop:
      return tuple(views), label, u
    return tuple(views), label, u, tf.reduce_min(image_size) < size

  def check(views, label, u, small):
    tf.debugging.assert_equal(
        small, False, message=f"dataset {source.name!r} has an image smaller than the "
        f"output size {size} px with crop augmentation disabled (config.augment.crop = "
        "False takes a central crop)")
    return views, label, u

  def per_batch(views, labels, u):
    # One program per view (the same compiled one): no stacking or splitting copies.
    return {"views": tuple(aug.finish_views(views[v], u[:, v], spec, scale=1.0 / 255.0)
                           for v in range(num_views)), "label": labels}

  ds = stream.map(per_example, num_parallel_calls=par, deterministic=deterministic)
  if skip_bad:
    ds = ds.ignore_errors(log_warning=True)
  if not spec.crop:
    # After the skipping of undecodable files, which would swallow this error too; a
    # stage of its own only when needed, as each costs 30-50 us of CPU per element.
    ds = ds.map(check)
  ds = ds.batch(batch, drop_remainder=True)
  ds = ds.map(per_batch, num_parallel_calls=par, deterministic=deterministic)
  return ds.with_options(_options(config, deterministic))


def create_pretrain_dataset(config, *, data_dir: str | None, start_step: int = 0,
                            process_index: int | None = None,
                            process_count: int | None = None) -> tf.data.Dataset:
  """Endless batches of SimCLR pairs for this process.

  Yields {"image1", "image2": float32 [b, S, S, 3] in [0, 1], "label": int32 [b]},
  b = config.batch_size / process_count. With config.augment.blur and blur_on ==
  "data" the views are blurred here; with "device" the train step blurs them.
  `start_step`: the number of batches already consumed (resume); with
  config.data.deterministic the stream continues exactly where it was.
  """
  return pretrain_batches(get_source(config, data_dir), config, start_step=start_step,
                          process_index=process_index, process_count=process_count)


def pretrain_batches(source: Source, config, *, start_step: int = 0,
                     process_index: int | None = None,
                     process_count: int | None = None) -> tf.data.Dataset:
  """`create_pretrain_dataset` for a given source (config.train_split of it)."""
  process = _process(process_index, process_count)
  batch = _local_batch(config.batch_size, process, "batch_size")
  spec = aug.ViewSpec.pretrain(config)
  stream, deterministic = _source_stream(
      source, config.train_split, config, process=process, local_batch=batch,
      global_batch=config.batch_size, start_step=start_step, prepare=source.prepare)
  ds = _augmented_batches(stream, source, spec, 2, batch, config, deterministic)
  ds = ds.map(lambda ex: {"image1": ex["views"][0], "image2": ex["views"][1],
                          "label": ex["label"]})
  return ds.prefetch(int(config.data.prefetch))


def _selected_indices(source: Source, split: str, label_fraction: float,
                      seed: int) -> np.ndarray:
  """Class-balanced subset: round(fraction x n_c) (>= 1) random examples of class c."""
  if not 0.0 < label_fraction <= 1.0:
    raise ValueError(f"label_fraction = {label_fraction} is not in (0, 1]")
  labels = np.fromiter(
      source.records(split, (0, 1), shuffle_files=False, seed=0)
      .map(lambda _, y: y).as_numpy_iterator(), dtype=np.int64)
  rng = np.random.default_rng(seed)
  chosen = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    k = max(1, int(round(label_fraction * len(members))))
    chosen.append(rng.choice(members, size=k, replace=False))
  return np.sort(np.concatenate(chosen))


def label_fraction_size(config, *, data_dir: str | None, label_fraction: float,
                        split: str | None = None) -> int:
  """Number of examples in the class-balanced `label_fraction` subset of the split."""
  source = get_source(config, data_dir)
  split = split or config.train_split
  if label_fraction >= 1.0:
    return source.num_examples(split)
  return len(_selected_indices(source, split, label_fraction, int(config.seed)))


def create_supervised_dataset(config, *, data_dir: str | None, split: str | None = None,
                              augment: bool = True, label_fraction: float = 1.0,
                              start_step: int = 0, process_index: int | None = None,
                              process_count: int | None = None) -> tf.data.Dataset:
  """Endless shuffled single views {"image": [b, S, S, 3], "label": [b]} for training.

  augment=True: random resized crop + flip only (the linear-eval / fine-tune
  protocol); False: the eval preprocessing. label_fraction < 1 keeps a class-balanced
  subset of the split chosen with config.seed (fine-tuning on a fraction of labels).
  """
  process = _process(process_index, process_count)
  batch = _local_batch(config.batch_size, process, "batch_size")
  source = get_source(config, data_dir)
  split = split or config.train_split
  selected = None
  if label_fraction < 1.0:
    selected = _selected_indices(source, split, label_fraction, int(config.seed))
  stream, deterministic = _source_stream(
      source, split, config, process=process, local_batch=batch,
      global_batch=config.batch_size, start_step=start_step, prepare=source.prepare,
      selected=selected)
  if augment:
    spec = aug.ViewSpec.crop_flip(config)
    ds = _augmented_batches(stream, source, spec, 1, batch, config, deterministic)
    ds = ds.map(lambda ex: {"image": ex["views"][0], "label": ex["label"]})
  else:
    size, crop = int(config.data.image_size), _eval_crop(config)
    ds = stream.map(
        lambda data, label, _: {"image": aug.eval_view(data, size, crop=crop),
                                "label": label},
        num_parallel_calls=_parallel(config), deterministic=deterministic)
    ds = ds.batch(batch, drop_remainder=True).with_options(_options(config, deterministic))
  return ds.prefetch(int(config.data.prefetch))


def _eval_crop(config) -> bool:
  """The official code centre-crops above 32 px and leaves CIFAR-size images as they are."""
  return int(config.data.image_size) > 32


def create_eval_dataset(config, *, data_dir: str | None, split: str | None = None,
                        batch_size: int | None = None, process_index: int | None = None,
                        process_count: int | None = None) -> tf.data.Dataset:
  """Every example of the split once: {"image", "label", "mask": bool [b]}.

  Each process reads its shard; all processes yield the same number of batches, the
  last ones padded with mask False (zero images, label 0). batch_size is per process
  (default config.eval_batch_size / process_count).
  """
  process = _process(process_index, process_count)
  if batch_size is None:
    batch_size = _local_batch(config.eval_batch_size, process, "eval_batch_size")
  source = get_source(config, data_dir)
  split = split or config.eval_split
  total = source.num_examples(split)
  shard = (process.index, process.count)
  largest = shard_bounds(total, (0, process.count))
  num_batches = -(-(largest[1] - largest[0]) // batch_size)
  size, crop = int(config.data.image_size), _eval_crop(config)
  records = source.records(split, shard, shuffle_files=False, seed=0)
  if source.prepare is not None:
    records = records.map(source.prepare, num_parallel_calls=_parallel(config))

  def preprocess(encoded, label):
    return {"image": aug.eval_view(encoded, size, crop=crop), "label": label,
            "mask": tf.constant(True)}

  ds = records.map(preprocess, num_parallel_calls=_parallel(config))
  if isinstance(source, FolderSource):
    ds = ds.ignore_errors(log_warning=True)
  pad = {"image": tf.zeros([size, size, 3]), "label": tf.constant(0, tf.int32),
         "mask": tf.constant(False)}
  padding = tf.data.Dataset.from_tensors(pad).repeat()
  ds = ds.concatenate(padding).take(num_batches * batch_size)
  ds = ds.batch(batch_size, drop_remainder=True)
  return ds.with_options(_options(config, True)).prefetch(int(config.data.prefetch))
