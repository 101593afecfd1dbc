r"""simclr_jax entry point: `python main.py --config=configs/<name>.py --workdir=DIR`.

Override any config field with `--config.<field>=<value>`, e.g.
`--config.batch_size=1024 --config.model.dtype=bfloat16`. `config.mode` picks the job.
Multi-process runs (TPU pods, multi-node GPU) call `jax.distributed.initialize`; on
anything that JAX does not detect by itself pass --coordinator_address,
--num_processes and --process_id.
"""

import json
import os

from simclr_jax import platform

platform.configure_xla_flags()  # before JAX starts its backend

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from simclr_jax import config_lib
from simclr_jax import console
from simclr_jax import user_errors

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
flags.DEFINE_bool("verbose", False, "Show library logs, the config and tracebacks of a "
                  "user's mistakes (otherwise one line, exit status 2).")
flags.DEFINE_bool("dry_run", False, "Print the resolved config and the run plan, then exit "
                  "without training.")
flags.DEFINE_alias("print_config", "dry_run")
flags.mark_flags_as_required(["config", "workdir"])



def load_modes():
  """{config.mode: job(config, workdir)}, {mode: early check(config, workdir)}.

  Imported once the flags are parsed, so that a mistyped flag fails at once rather than
  after TensorFlow's import (seconds), whose C++ start-up messages go to /dev/null.
  """
  # pylint: disable=import-outside-toplevel
  with console.native_stderr_silenced(not FLAGS.verbose):
    from simclr_jax import export
    from simclr_jax import finetune
    from simclr_jax import knn_eval
    from simclr_jax import linear_eval
    from simclr_jax import resume_check
    from simclr_jax import train
  jobs = {"pretrain": train.pretrain, "linear_eval": linear_eval.linear_eval,
          "finetune": finetune.finetune, "knn": knn_eval.knn_eval, "export": export.export}
  # Checks of (config, workdir): a resumed run's model, the export's target.
  checks = {"pretrain": resume_check.check_pretrain_resume, "export": export.target_dir}
  return jobs, checks


def initialize_distributed() -> None:
  """Joins a multi-process job when flags or the environment describe one."""
  import jax  # pylint: disable=import-outside-toplevel
  if FLAGS.coordinator_address or (FLAGS.num_processes or 1) > 1:
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes,
                               process_id=FLAGS.process_id,
                               initialization_timeout=FLAGS.initialization_timeout)
  elif any(k in os.environ for k in ("TPU_WORKER_HOSTNAMES", "SLURM_JOB_ID",
                                     "OMPI_COMM_WORLD_SIZE")):
    jax.distributed.initialize()  # auto-detected cluster


def log_setup(config, workdir: str) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  stage = config if config.mode == "pretrain" else config[config.mode]  # its group
  batch = stage.get("batch_size", config.eval_batch_size)  # knn, export: evaluation's
  logging.info("JAX %s: process %d of %d; %d local / %d global devices: %s", jax.__version__,
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), jax.devices())
  logging.info("%s: global batch %d, per device %d; config in %s", config.mode, batch,
               batch // jax.device_count(),
               os.path.join(workdir, f"config_{config.mode}.json"))
  if FLAGS.verbose:
    logging.info("Config:\n%s", config)


def save_config(config, workdir: str) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, f"config_{config.mode}.json"), "w") as f:
      json.dump(json.loads(config.to_json_best_effort()), f, indent=2)


def validate_for_devices(config) -> None:
  """The config's checks that need the device count and the encoder (config_lib),
  before TensorFlow is imported."""
  import jax  # pylint: disable=import-outside-toplevel
  from simclr_jax import models  # pylint: disable=import-outside-toplevel
  min_size = (models.min_image_size(config.model.cifar_stem) if config.mode == "pretrain"
              else 1)  # the evaluation modes' encoder comes from a checkpoint
  config_lib.validate(config, num_devices=jax.device_count(),
                      process_count=jax.process_count(), min_image_size=min_size)


def print_plan(config, workdir: str) -> None:
  """--dry_run: the resolved config and what the run would do (digits: built first)."""
  # pylint: disable=import-outside-toplevel
  from simclr_jax import pretrained
  from simclr_jax import run_plan
  from simclr_jax import train
  print(config)
  if config.mode == "pretrain":
    plan = run_plan.pretrain_plan(train.build_run(config, workdir))
  else:
    plan = {"mode": config.mode, "pretrained encoder from": pretrained.init_from(config, workdir)}
  print(run_plan.format_plan(plan, f"Run plan ({config.mode})"))


def main(argv):
  if len(argv) > 1:
    user_errors.exit_with(config_lib.ConfigError(f"unexpected arguments {argv[1:]}: "
                                                 "expected only --flags"))
  try:
    config = FLAGS.config
    user_errors.check_workdir(FLAGS.workdir)
    config_lib.validate(config)  # before JAX: every check but the device counts
    if not FLAGS.verbose:
      console.quiet_native_logs()
    initialize_distributed()
    validate_for_devices(config)
    jobs, mode_checks = load_modes()
    if not FLAGS.verbose:
      console.quiet_libraries(logging.get_absl_handler())
    platform.hide_accelerators_from_tensorflow()
    if config.mode != "export":  # export reads only the checkpoint
      user_errors.check_dataset(config.dataset)
    if config.mode in mode_checks:
      mode_checks[config.mode](config, FLAGS.workdir)
    if FLAGS.dry_run:
      print_plan(config, FLAGS.workdir)
      return
    log_setup(config, FLAGS.workdir)
    save_config(config, FLAGS.workdir)
    jobs[config.mode](config, FLAGS.workdir)
  except config_lib.ConfigError as e:
    if FLAGS.verbose:
      raise
    user_errors.exit_with(e)


if __name__ == "__main__":
  app.run(main, flags_parser=user_errors.parse_flags)
