"""Which image files of a user's folder do not decode, found once before training.

Every file is decoded once, in parallel (JPEGs at 1/8 scale: the whole entropy-coded
stream is still read, so truncated or damaged data fails). libjpeg's messages about
damaged files go to the process's stderr, which is silenced during the scan: the
caller reports the result once.
"""

import contextlib
import os
import sys

import numpy as np
import tensorflow as tf

_JPEG = b"\xff\xd8\xff"


@contextlib.contextmanager
def _quiet_stderr():
  """Sends file descriptor 2 (C++ logging, libjpeg) to /dev/null for the block."""
  sys.stderr.flush()
  saved = os.dup(2)
  try:
    with open(os.devnull, "wb") as null:
      os.dup2(null.fileno(), 2)
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)


def _decodes(index, path):
  data = tf.io.read_file(path)
  image = tf.cond(tf.strings.substr(data, 0, 3) == _JPEG,
                  lambda: tf.io.decode_jpeg(data, channels=3, ratio=8),
                  lambda: tf.io.decode_image(data, channels=3, expand_animations=False))
  return index, tf.shape(image)[0]  # the shape keeps the decode in the graph


def undecodable(paths: list[str]) -> list[str]:
  """The paths (in order) whose file fails to read or decode as an image."""
  if not paths:
    return []
  ds = tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), paths))
  ds = ds.map(_decodes, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
  ds = ds.ignore_errors().batch(1024)
  decoded = np.zeros(len(paths), bool)
  with _quiet_stderr():
    for indices, _ in ds.as_numpy_iterator():
      decoded[indices] = True
  return [p for p, ok in zip(paths, decoded) if not ok]
