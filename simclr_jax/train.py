"""Pretraining mode: the loop around the SimCLR step, with checkpoints and metrics.

`pretrain(config, workdir)` resumes from the newest checkpoint in `workdir` that
restores (train state, step = data position, RNG), so re-running an interrupted
command continues exactly where it stopped. A step's checkpoint is written before its
evaluations, and a failing evaluation (online probe, kNN monitor, final probes) is
logged without stopping the run.
"""

import dataclasses
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from simclr_jax import checkpointing
from simclr_jax import data
from simclr_jax import knn
from simclr_jax import metric_log
from simclr_jax import models
from simclr_jax import parallel
from simclr_jax import probe
from simclr_jax import progress as progress_lib
from simclr_jax import small_data
from simclr_jax import steps as steps_lib
from simclr_jax import train_step as ts
from simclr_jax.models import fusion_barrier
from simclr_jax.parallel import AXIS
from simclr_jax.train_step import TrainState, make_train_step


class NonFiniteError(FloatingPointError):
  """The loss or gradient became NaN/inf."""


@dataclasses.dataclass
class Run:
  """What a pretraining run is built from (everything derived from config + data)."""
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


def make_eval_step(model, mesh) -> Callable:
  """Online-probe top-1/top-5 counts over a masked global eval batch (top-5 capped at
  the class count)."""
  def step(state: TrainState, batch):
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    logits = model.apply(variables, batch["image"], train=False)["logits"]
    k = min(small_data.TOP5, logits.shape[-1])
    top5 = jax.lax.top_k(logits, k)[1] == batch["label"][:, None]
    mask = batch["mask"].astype(jnp.float32)
    counts = {"top1": jnp.sum((top5[:, 0]) * mask), "top5": jnp.sum(top5.any(-1) * mask),
              "count": jnp.sum(mask)}
    return jax.lax.psum(counts, AXIS)
  return parallel.data_parallel(step, mesh, in_specs=(parallel.REPLICATED, parallel.SPLIT),
                                out_specs=parallel.REPLICATED)


def evaluate_probe(run: Run, eval_step, state: TrainState) -> dict[str, float]:
  ds = data.create_eval_dataset(run.config, data_dir=run.data_dir)
  totals = {"top1": 0.0, "top5": 0.0, "count": 0.0}
  for batch in ds.as_numpy_iterator():
    counts = jax.device_get(eval_step(state, parallel.shard_batch(batch, run.mesh)))
    totals = {k: totals[k] + float(counts[k]) for k in totals}
  n = max(totals["count"], 1.0)
  results = {"eval_probe_top1": totals["top1"] / n, "eval_probe_top5": totals["top5"] / n}
  if not run.plan.top5:
    del results["eval_probe_top5"]
  return results


def check_finite(step: int, metrics: dict, ckpt: checkpointing.Checkpointer) -> None:
  """Raises NonFiniteError naming the step and the checkpoint a rerun resumes from."""
  for name in ("loss", "grad_norm", "param_norm"):
    if not np.isfinite(metrics[name]):
      latest = ckpt.latest_step()
      on_disk = (f"no checkpoint was written to {ckpt.directory}; rerunning starts from "
                 "step 0" if latest is None else
                 f"the latest checkpoint is step {latest} in {ckpt.directory}; rerunning "
                 "resumes from it")
      raise NonFiniteError(f"non-finite {name} = {metrics[name]} at step {step}: "
                           f"{on_disk}")


def evaluate_safely(what: str, step: int, evaluate: Callable[[], dict],
                    log: metric_log.MetricLog) -> None:
  """Logs `evaluate()` at `step`; a failure is reported and the run goes on."""
  try:
    log.write(step, evaluate())
  except Exception as e:  # an evaluation never stops pretraining
    logging.error("%s at step %d failed (%s); pretraining goes on and its checkpoints are "
                  "kept (--verbosity=1 shows the traceback)", what, step,
                  checkpointing.describe(e))
    logging.debug("%s failed", what, exc_info=True)


def train_loop(run: Run, state: TrainState, ckpt: checkpointing.Checkpointer,
               log: metric_log.MetricLog) -> TrainState:
  """Steps from state.step to run.total_steps; checkpoints, logs, evaluates."""
  config = run.config
  start = int(state.step)
  step_fn = ts.shard_train_step(make_train_step(run.model, run.tx, run.schedule, config),
                                run.mesh)
  eval_step = (make_eval_step(run.model, run.mesh)
               if config.model.online_probe and run.plan.eval_split else None)
  knn_every = config.knn_every_steps if run.plan.eval_split else 0
  batches = data.create_pretrain_dataset(
      config, data_dir=run.data_dir, start_step=start).as_numpy_iterator()
  meta = checkpointing.config_meta(config)
  progress, window = progress_lib.Progress(config.batch_size, start, run.total_steps), []
  logging.info("step %d/%d: compiling the train step", start + 1, run.total_steps)
  with checkpointing.PreemptionFlag() as preempted:
    for step in range(start + 1, run.total_steps + 1):
      state, metrics = step_fn(state, parallel.shard_batch(next(batches), run.mesh))
      if step == start + 1:
        jax.block_until_ready(metrics)
        progress.first_step_done(step)
      window.append(metrics)
      last = step == run.total_steps
      if step % config.log_every_steps == 0 or last:
        summary = metric_log.mean_metrics(window)
        window = []
        check_finite(step, summary, ckpt)
        summary.update(progress.rates(step), epoch=step / run.steps_per_epoch)
        log.write(step, summary, console=False)
        if log.enabled:
          logging.info("%s", progress.line(step, summary))
      if ckpt.save_if_due(  # never checkpoint a broken state
          step, state, meta, every=config.checkpoint_every_steps, last=last,
          preempted=preempted,
          before_save=lambda: check_finite(step, metric_log.mean_metrics([metrics]), ckpt)):
        logging.warning("Stopped by a signal: saved step %d, exiting; the same command "
                        "resumes.", step)
        break
      # Evaluations come after the step's checkpoint is written: a failing one loses no
      # training (and none builds its tf.data pipeline while Orbax still writes).
      eval_due = eval_step is not None and (step % config.eval_every_steps == 0 or last)
      knn_due = knn_every > 0 and (step % knn_every == 0 or last)
      if eval_due or knn_due:
        ckpt.wait()
      if eval_due:
        evaluate_safely("Online-probe evaluation", step,
                        lambda: evaluate_probe(run, eval_step, state), log)
      # kNN monitor (knn.py), off unless config.knn_every_steps > 0.
      if knn_due:
        evaluate_safely("kNN monitor", step, lambda: knn.evaluate_knn(
            run.model, {"params": state.params, "batch_stats": state.batch_stats}, run.config,
            data_dir=run.data_dir, mesh=run.mesh, num_classes=run.info.num_classes), log)
  return state


def pretrain(config: ml_collections.ConfigDict, workdir: str) -> tuple[TrainState, bool]:
  """Runs (or resumes) SimCLR pretraining.

  Returns the last replicated state and whether the run reached its final step (False
  when it stopped early on a preemption signal, after saving).
  """
  start = time.time()
  run = build_run(config, workdir)
  small_data.report(run.plan)
  logging.info("Pretraining %d steps (%d per epoch), global batch %d over %d devices",
               run.total_steps, run.steps_per_epoch, config.batch_size, jax.device_count())
  ckpt = checkpointing.Checkpointer(workdir, keep=config.keep_checkpoints)
  log = metric_log.MetricLog(workdir)
  try:
    state = init_or_restore(run, ckpt)
    state = train_loop(run, state, ckpt, log)
    ckpt.wait()
    if log.enabled:
      losses = [r["loss"] for r in metric_log.read_jsonl(log.path) if "loss" in r]
      logging.info("%s", progress_lib.summary_line(
          int(state.step), run.total_steps, time.time() - start,
          losses[-1] if losses else None,
          f"{ckpt.directory}/{int(state.step)}"))  # the loop saves its last step
  finally:
    ckpt.close()
    log.close()
  return state, int(state.step) == run.total_steps


def finished(config, workdir: str) -> str | None:
  """What a re-run of a finished run would redo: nothing; says so (else None)."""
  info = data.dataset_info(
      config, data_dir=data.default_data_dir(config, workdir))
  _, total = steps_lib.run_length(config, info.num_train_examples)
  ckpt = checkpointing.Checkpointer(workdir, keep=config.keep_checkpoints)
  try:
    latest = ckpt.latest_step()
  finally:
    ckpt.close()
  path = os.path.join(workdir, "metrics.jsonl")
  probed = not config.probe.final or (os.path.exists(path) and any(
      "linear_probe_top1" in r for r in metric_log.read_jsonl(path)))
  if latest != total or not probed:
    return None
  return (f"Already finished: step {total}/{total}, checkpoint {ckpt.directory}/{total}, "
          f"metrics in {path}; nothing to do (a new --workdir or a larger "
          "config.num_train_steps trains further)")


def final_probes(config, workdir: str, state: TrainState) -> dict[str, float]:
  """Linear probes of the pretrained encoder and of a randomly initialised one (the
  few-shot one only where every class has probe.shots training images)."""
  run = build_run(config, workdir)
  if not run.plan.probes:
    return {}
  def batches(split):
    return lambda: data.create_eval_dataset(
        config, data_dir=run.data_dir, split=split).as_numpy_iterator()
  kwargs = dict(train_batches=batches(config.train_split),
                test_batches=batches(config.eval_split),
                shots=config.probe.shots if run.plan.few_shot else 0,
                draws=config.probe.draws)
  results = {}
  trained = {"params": state.params, "batch_stats": state.batch_stats}
  random_init = ts.create_train_state(jax.random.PRNGKey(config.seed + 1), run.model, run.tx,
                                      config.data.image_size)
  encoders = [("", trained)]
  if config.probe.random_init_baseline:
    encoders.append(("random_init_", {"params": random_init.params,
                                      "batch_stats": random_init.batch_stats}))
  for prefix, variables in encoders:
    acc = probe.probe_encoder(run.model, variables, **kwargs)
    results[f"{prefix}linear_probe_top1"] = acc["top1"]
    if "few_shot_top1" in acc:
      results[f"{prefix}linear_probe_{config.probe.shots}shot_top1"] = acc["few_shot_top1"]
  return results


def pretrain_and_probe(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """The `pretrain` mode: pretraining, then (config.probe.final) the linear probes."""
  done = finished(config, workdir)
  if done:
    logging.info("%s", done)
    return {}
  start = time.time()
  state, completed = pretrain(config, workdir)
  if not (completed and config.probe.final):
    return {}
  try:
    results = final_probes(config, workdir, state)
  except Exception as e:  # the pretraining is complete and saved: report, don't crash
    logging.error("The final linear probes failed (%s); the pretraining is complete and "
                  "its checkpoint kept (--verbosity=1 shows the traceback)",
                  checkpointing.describe(e))
    logging.debug("final probes failed", exc_info=True)
    return {}
  if not results:
    return {}
  results["wall_minutes"] = (time.time() - start) / 60
  log = metric_log.MetricLog(workdir)
  log.write(int(state.step), results)
  log.close()
  print(metric_log.format_table(results, title="Linear probes on frozen h (test split)"))
  return results
