"""Runs main.py's main() inside tfds.testing.mock_data (no dataset on disk needed).

Usage: main_with_mock_data.py NUM_EXAMPLES -- <main.py flags>
"""

import sys

from simclr_jax import platform
platform.configure_xla_flags()
import tensorflow_datasets as tfds
from absl import app

import main

if __name__ == "__main__":
  num_examples = int(sys.argv[1])
  flags_start = sys.argv.index("--") + 1
  argv = [sys.argv[0], *sys.argv[flags_start:]]
  with tfds.testing.mock_data(num_examples=num_examples):
    app.run(main.main, argv=argv)
