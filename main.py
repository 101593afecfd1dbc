r"""simclr_jax entry point: `python main.py --config=configs/<name>.py --workdir=DIR`.

Override any config field with `--config.<field>=<value>`, e.g.
`--config.batch_size=1024 --config.model.dtype=bfloat16`. `config.mode` picks the job.
Multi-process runs (TPU pods, multi-node GPU) call `jax.distributed.initialize`; on
anything that JAX does not detect by itself pass --coordinator_address,
--num_processes and --process_id.
"""

import json
import logging as py_logging
import os

import simclr_jax  # noqa: F401  (sets XLA CPU flags before JAX starts its backend)

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from simclr_jax import config_lib
from simclr_jax import export
from simclr_jax import finetune
from simclr_jax import knn_eval
from simclr_jax import linear_eval
from simclr_jax import models
from simclr_jax import resume_check
from simclr_jax import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (get_config()).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and exports.")
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0 for multi-process JAX (when not auto-detected).")
flags.DEFINE_integer("num_processes", None, "Number of JAX processes (multi-process runs).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-process runs).")
flags.DEFINE_integer("initialization_timeout", 300,
                     "Seconds to wait for the other processes to join.")
flags.mark_flags_as_required(["config", "workdir"])

# config.mode -> the job; each takes (config, workdir).
MODES = {
    "pretrain": train.pretrain_and_probe,
    "linear_eval": linear_eval.linear_eval,
    "finetune": finetune.finetune,
    "knn": knn_eval.knn_eval,
    "export": export.export,
}
# config.mode -> a check of (config, workdir) that must pass before anything is written.
WORKDIR_CHECKS = {
    "pretrain": resume_check.check_pretrain_resume,
    "export": export.target_dir,
}


class QuietLibraries(py_logging.Filter):
  """Keeps Orbax's and tfds's INFO chatter out of the console (warnings still show)."""
  NOISY = (f"{os.sep}orbax{os.sep}", f"{os.sep}tensorflow_datasets{os.sep}")

  def filter(self, record):
    return record.levelno >= py_logging.WARNING or not any(
        part in record.pathname for part in self.NOISY)


def hide_accelerators_from_tensorflow() -> None:
  """tf.data must run on the host and never claim GPU/TPU memory."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  tf.config.set_visible_devices([], "TPU")


def initialize_distributed() -> None:
  """Joins a multi-process job when flags or the environment describe one."""
  if FLAGS.coordinator_address or (FLAGS.num_processes or 1) > 1:
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes,
                               process_id=FLAGS.process_id,
                               initialization_timeout=FLAGS.initialization_timeout)
  elif any(k in os.environ for k in ("TPU_WORKER_HOSTNAMES", "SLURM_JOB_ID",
                                     "OMPI_COMM_WORLD_SIZE")):
    jax.distributed.initialize()  # auto-detected cluster


def log_setup(config) -> None:
  per_device = config.batch_size // jax.device_count()
  logging.info("JAX %s: process %d of %d; %d local / %d global devices: %s", jax.__version__,
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), jax.devices())
  logging.info("Global batch %d, per device %d", config.batch_size, per_device)
  logging.info("Config:\n%s", config)


def save_config(config, workdir: str) -> None:
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, f"config_{config.mode}.json"), "w") as f:
      json.dump(json.loads(config.to_json_best_effort()), f, indent=2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(QuietLibraries())
  hide_accelerators_from_tensorflow()
  initialize_distributed()
  config = FLAGS.config
  if config.mode not in MODES:
    raise app.UsageError(f"config.mode = {config.mode!r} is not allowed: expected one of "
                         f"{sorted(MODES)}")
  config_lib.validate(config, num_devices=jax.device_count(),
                      process_count=jax.process_count(),
                      min_image_size=models.min_image_size(config.model.cifar_stem))
  if config.mode in WORKDIR_CHECKS:
    WORKDIR_CHECKS[config.mode](config, FLAGS.workdir)
  log_setup(config)
  save_config(config, FLAGS.workdir)
  MODES[config.mode](config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
