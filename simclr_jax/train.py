"""Pretraining mode: the SimCLR step in the training loop (loop.py), with the
evaluations of `config.evals` (evaluators/).

`pretrain(config, workdir)` resumes from the newest checkpoint in `workdir` that
restores (train state, step = data position, RNG), so re-running an interrupted
command continues exactly where it stopped; re-running a finished one does nothing.
"""

import dataclasses
import os
import time
from typing import Any, Callable

import jax
import ml_collections
from absl import logging

from simclr_jax import checkpointing
from simclr_jax import data
from simclr_jax import evaluators
from simclr_jax import loop
from simclr_jax import metric_log
from simclr_jax import models
from simclr_jax import parallel
from simclr_jax import progress as progress_lib
from simclr_jax import small_data
from simclr_jax import steps as steps_lib
from simclr_jax import train_step as ts
from simclr_jax.models import fusion_barrier
from simclr_jax.parallel import AXIS
from simclr_jax.train_step import TrainState, make_train_step


@dataclasses.dataclass
class Run:
  """What a pretraining run is built from (everything derived from config + data); the
  context its evaluators get."""
  config: ml_collections.ConfigDict
  workdir: str
  data_dir: str | None
  info: Any  # data.DatasetInfo
  mesh: jax.sharding.Mesh
  model: Any
  tx: Any
  schedule: Callable
  steps_per_epoch: int
  total_steps: int
  plan: small_data.Plan  # the evaluations the dataset allows


def build_run(config, workdir: str) -> Run:
  data_dir = data.default_data_dir(config, workdir)
  info = data.dataset_info(config, data_dir=data_dir)
  plan = small_data.plan(config, data.get_source(config, data_dir))
  steps_per_epoch, total_steps = steps_lib.run_length(config, info.num_train_examples)
  model = models.create_model(
      config.model, num_classes=info.num_classes if config.model.online_probe else 0,
      axis_name=AXIS if config.model.global_bn else None,
      fusion_barrier=fusion_barrier.applies())
  tx, schedule = ts.create_optimizer(config, info.num_train_examples, total_steps)
  return Run(config, workdir, data_dir, info, parallel.make_mesh(), model, tx, schedule,
             steps_per_epoch, total_steps, plan)


def init_or_restore(run: Run, ckpt: checkpointing.Checkpointer) -> TrainState:
  """A fresh replicated state, or that of the newest checkpoint that restores."""
  rng = jax.random.PRNGKey(run.config.seed)
  state = ts.create_train_state(rng, run.model, run.tx, run.config.data.image_size)
  state = parallel.replicate(state, run.mesh)
  restored = ckpt.restore_newest_readable(checkpointing.abstract_like(state))
  if restored is not None:
    state, _ = restored
    logging.info("Resumed from step %d (%s)", int(state.step), ckpt.directory)
  return state


def evaluations(run: Run) -> list[loop.Evaluation]:
  """The enabled entries of config.evals as the loop's evaluations."""
  return [loop.Evaluation(f"evals.{name}", entry.every_steps,
                          evaluators.create(entry, run).run)
          for name, entry in evaluators.enabled(run.config.evals)]


def finished(run: Run, ckpt: checkpointing.Checkpointer,
             evals: list[loop.Evaluation]) -> str | None:
  """What a re-run of a finished run would redo: nothing; says so (else None)."""
  total, latest = run.total_steps, ckpt.latest_step()
  path = os.path.join(run.workdir, "metrics.jsonl")
  evaluated = not any(e.due(total, last=True) for e in evals) or (
      os.path.exists(path) and loop.last_step_done(metric_log.read_jsonl(path), total))
  if latest != total or not evaluated:
    return None
  return (f"Already finished: step {total}/{total}, checkpoint {ckpt.directory}/{total}, "
          f"metrics in {path}; nothing to do (a new --workdir or a larger "
          "config.num_train_steps trains further)")


def make_step_fn(run: Run) -> Callable:
  """The sharded train step (loss.chunks > 1: the gradient cache, train_step.make_grad_fn)."""
  return ts.shard_train_step(make_train_step(run.model, run.tx, run.schedule, run.config),
                             run.mesh)


def pretrain(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """The `pretrain` mode: runs (or resumes) SimCLR pretraining with its evaluations
  (config.evals); returns the last step's evaluation metrics ({} if it stopped early
  on a preemption signal, after saving, or had finished before)."""
  start = time.time()
  run = build_run(config, workdir)
  ckpt = checkpointing.Checkpointer(workdir, keep=config.keep_checkpoints)
  log = None
  try:
    evals = evaluations(run)
    done = finished(run, ckpt, evals)
    if done:
      logging.info("%s", done)
      return {}
    small_data.report(run.plan)
    logging.info("Pretraining %d steps (%d per epoch), global batch %d over %d devices",
                 run.total_steps, run.steps_per_epoch, config.batch_size,
                 jax.device_count())
    log = metric_log.MetricLog(workdir)
    state = init_or_restore(run, ckpt)
    batches = data.create_pretrain_dataset(config, data_dir=run.data_dir,
                                           start_step=int(state.step)).as_numpy_iterator()
    cadence = loop.Cadence(run.total_steps, run.steps_per_epoch, config.batch_size,
                           config.log_every_steps, config.checkpoint_every_steps)
    state, completed, results = loop.train(
        make_step_fn(run), state, batches, cadence, mesh=run.mesh, log=log, ckpt=ckpt,
        meta=checkpointing.config_meta(config), evaluations=evals,
        checked=("loss", "grad_norm", "param_norm"))
    ckpt.wait()
    if log.enabled:
      losses = [r["loss"] for r in metric_log.read_jsonl(log.path) if "loss" in r]
      logging.info("%s", progress_lib.summary_line(
          int(state.step), run.total_steps, time.time() - start,
          losses[-1] if losses else None,
          f"{ckpt.directory}/{int(state.step)}"))  # the loop saves its last step
  finally:
    ckpt.close()
    if log is not None:
      log.close()
  if not completed:
    return {}
  if results:
    print(metric_log.format_table(results, title=f"Evaluations at step {run.total_steps} "
                                                 f"({config.eval_split} split)"))
  return results
