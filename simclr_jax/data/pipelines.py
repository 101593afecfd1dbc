"""The public tf.data pipelines: SimCLR pretraining views, supervised training, evaluation.

Images are decoded once per example (JPEGs only inside the union of the views' crop
windows) and augmented in batches (`simclr_jax.augment`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from simclr_jax import augment as aug
from simclr_jax.data.sources import FolderSource, Source, get_source, shard_bounds
from simclr_jax.data.streams import (dataset_options, example_seeds, local_batch, parallel_calls,
                                     process_info, source_stream)


def _augmented_batches(stream: tf.data.Dataset, source: Source,
                       specs: tuple[aug.ViewSpec, ...], batch: int, config,
                       deterministic: bool) -> tf.data.Dataset:
  """Batches {"views": V x [b, S, S, 3], "label": [b]} of a (data, label, seed) stream.

  View v is drawn from specs[v]. Fixed-size sources arrive decoded (uint8 [H, W, 3])
  and are augmented as batches; others arrive encoded and are decoded (crop windows
  only) per example.
  """
  par = parallel_calls(config)
  if source.image_shape is not None:
    # No per-example map at all: each costs more than augmenting a CIFAR image.
    def per_batch_fixed(images, labels, seeds):
      views = aug.augment_fixed_views(images, example_seeds(seeds), specs)
      return {"views": tuple(views), "label": labels}

    ds = stream.batch(batch, drop_remainder=True)
    ds = ds.map(per_batch_fixed, num_parallel_calls=par, deterministic=deterministic)
    return ds.with_options(dataset_options(config, deterministic))

  skip_bad = isinstance(source, FolderSource)  # a user's files: skip what won't decode
  operators = any(s.operators for s in specs)

  def per_example(encoded, label, seed):
    seed = example_seeds(seed)
    u = aug.view_uniforms(seed, len(specs), specs[0], crop_attempts=False)
    views = tuple(aug.decode_views(encoded, seed, u, specs))
    # The seed travels on only for the operators' random numbers.
    return (views, label, u, seed) if operators else (views, label, u)

  def per_batch(views, labels, u, seeds=None):
    # One program per view (the same compiled one when the specs are equal): no
    # stacking or splitting copies.
    out = [aug.finish_views(views[v], u[:, v], spec, scale=1.0 / 255.0)
           for v, spec in enumerate(specs)]
    if operators:
      out = aug.apply_view_operators(out, seeds, specs)
    return {"views": tuple(out), "label": labels}

  ds = stream.map(per_example, num_parallel_calls=par, deterministic=deterministic)
  if skip_bad:
    ds = ds.ignore_errors(log_warning=True)
  ds = ds.batch(batch, drop_remainder=True)
  ds = ds.map(per_batch, num_parallel_calls=par, deterministic=deterministic)
  return ds.with_options(dataset_options(config, deterministic))


def create_pretrain_dataset(config, *, data_dir: str | None, start_step: int = 0,
                            process_index: int | None = None,
                            process_count: int | None = None) -> tf.data.Dataset:
  """Endless batches of SimCLR pairs for this process.

  Yields {"image1", "image2": float32 [b, S, S, 3] in [0, 1], "label": int32 [b]},
  b = config.batch_size / process_count. With config.augment.blur and blur_on ==
  "data" the views are blurred here; with "device" the train step blurs them.
  image2 follows config.augment with config.augment.view2's overrides.
  `start_step`: the number of batches already consumed (resume); with
  config.data.deterministic the stream continues exactly where it was.
  """
  return pretrain_batches(get_source(config, data_dir), config, start_step=start_step,
                          process_index=process_index, process_count=process_count)


def pretrain_batches(source: Source, config, *, start_step: int = 0,
                     process_index: int | None = None,
                     process_count: int | None = None) -> tf.data.Dataset:
  """`create_pretrain_dataset` for a given source (config.train_split of it)."""
  process = process_info(process_index, process_count)
  batch = local_batch(config.batch_size, process, "batch_size")
  specs = aug.ViewSpec.pretrain_views(config)
  stream, deterministic = source_stream(
      source, config.train_split, config, process=process, local_batch=batch,
      global_batch=config.batch_size, start_step=start_step, prepare=source.prepare)
  ds = _augmented_batches(stream, source, specs, batch, config, deterministic)
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
  process = process_info(process_index, process_count)
  batch = local_batch(config.batch_size, process, "batch_size")
  source = get_source(config, data_dir)
  split = split or config.train_split
  selected = None
  if label_fraction < 1.0:
    selected = _selected_indices(source, split, label_fraction, int(config.seed))
  stream, deterministic = source_stream(
      source, split, config, process=process, local_batch=batch,
      global_batch=config.batch_size, start_step=start_step, prepare=source.prepare,
      selected=selected)
  if augment:
    specs = (aug.ViewSpec.crop_flip(config),)
    ds = _augmented_batches(stream, source, specs, batch, config, deterministic)
    ds = ds.map(lambda ex: {"image": ex["views"][0], "label": ex["label"]})
  else:
    size, crop = int(config.data.image_size), _eval_crop(config)
    ds = stream.map(
        lambda data, label, _: {"image": aug.eval_view(data, size, crop=crop),
                                "label": label},
        num_parallel_calls=parallel_calls(config), deterministic=deterministic)
    ds = ds.batch(batch, drop_remainder=True).with_options(dataset_options(config, deterministic))
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
  process = process_info(process_index, process_count)
  if batch_size is None:
    batch_size = local_batch(config.eval_batch_size, process, "eval_batch_size")
  source = get_source(config, data_dir)
  split = split or config.eval_split
  total = source.num_examples(split)
  shard = (process.index, process.count)
  largest = shard_bounds(total, (0, process.count))
  num_batches = -(-(largest[1] - largest[0]) // batch_size)
  size, crop = int(config.data.image_size), _eval_crop(config)
  records = source.records(split, shard, shuffle_files=False, seed=0)
  if source.prepare is not None:
    records = records.map(source.prepare, num_parallel_calls=parallel_calls(config))

  def preprocess(encoded, label):
    return {"image": aug.eval_view(encoded, size, crop=crop), "label": label,
            "mask": tf.constant(True)}

  ds = records.map(preprocess, num_parallel_calls=parallel_calls(config))
  if isinstance(source, FolderSource):
    ds = ds.ignore_errors(log_warning=True)
  pad = {"image": tf.zeros([size, size, 3]), "label": tf.constant(0, tf.int32),
         "mask": tf.constant(False)}
  padding = tf.data.Dataset.from_tensors(pad).repeat()
  ds = ds.concatenate(padding).take(num_batches * batch_size)
  ds = ds.batch(batch_size, drop_remainder=True)
  return ds.with_options(dataset_options(config, True)).prefetch(int(config.data.prefetch))
