"""Keeps library noise out of the console; `--verbose` lets it through.

TensorFlow's C++ start-up messages (oneDNN, "log messages before absl::InitializeLog()")
are written to file descriptor 2 while it is imported, before any log level applies;
Orbax's and tfds's INFO records and tfds's progress bars follow later.
"""

import contextlib
import logging
import os
import sys

# C++ INFO logs of TensorFlow/XLA and libtpu after start-up (a user's setting wins).
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "1", "TPU_MIN_LOG_LEVEL": "1",
             "TPU_STDERR_LOG_LEVEL": "1"}


def quiet_native_logs() -> None:
  """Before JAX or TensorFlow start: their C++ logs (and libtpu's) at WARNING and above."""
  for key, value in QUIET_ENV.items():
    os.environ.setdefault(key, value)


@contextlib.contextmanager
def native_stderr_silenced(enabled: bool = True):
  """Sends what C++ code writes to stderr inside the block to /dev/null."""
  if not enabled:
    yield
    return
  sys.stderr.flush()
  saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  try:
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


class QuietLibraries(logging.Filter):
  """Keeps Orbax's and tfds's INFO chatter out of the console (warnings still show)."""
  NOISY = (f"{os.sep}orbax{os.sep}", f"{os.sep}tensorflow_datasets{os.sep}")

  def filter(self, record):
    return record.levelno >= logging.WARNING or not any(
        part in record.pathname for part in self.NOISY)


def quiet_libraries(absl_handler) -> None:
  """Filters Orbax/tfds INFO records out of `absl_handler`; no tfds progress bars."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  absl_handler.addFilter(QuietLibraries())
  tfds.disable_progress_bar()
