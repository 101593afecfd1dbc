"""Streams: epochs of shuffled records with per-example seeds, resumable.

Epoch e of a process is its shard of the split, shuffled (buffer
`config.data.shuffle_buffer`) with a seed derived from (seed, e), and example i of the
epoch gets the augmentation seed fold_in(seed, process, e, i). A resumed stream
(`start_step`) starts at epoch and offset computed from the step and skips the examples
before it as raw records, before any decoding.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import tensorflow as tf

from simclr_jax.choices import PROCESS_SHARDINGS
from simclr_jax.data.sources import Source, shard_bounds


_FOREVER = 2 ** 62  # epochs of an endless stream


@dataclasses.dataclass(frozen=True)
class _Process:
  index: int
  count: int


def process_info(process_index, process_count) -> _Process:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=import-outside-toplevel
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
  return _Process(int(process_index), int(process_count))


def local_batch(global_batch: int, process: _Process, field: str) -> int:
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


def dataset_options(config, deterministic: bool) -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = deterministic
  options.experimental_optimization.map_parallelization = True
  # No experimental_slack: it stalled an idle iterator (see the spec's pitfalls).
  threads = config.data.get("num_threads", 0)
  if threads:
    options.threading.private_threadpool_size = threads
  return options


def parallel_calls(config) -> int:
  n = config.data.num_parallel_calls
  return tf.data.AUTOTUNE if n is None or n < 0 else int(n)


def _sharding(config) -> str:
  mode = config.data.get("process_sharding", "split")
  if mode not in PROCESS_SHARDINGS:
    raise ValueError(f"config.data.process_sharding = {mode!r} is not allowed: expected "
                     f"one of {list(PROCESS_SHARDINGS)}")
  return mode


def source_stream(source: Source, split: str, config, *, process: _Process,
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
