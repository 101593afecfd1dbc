"""Pretraining mode: the loop around the SimCLR step, with checkpoints and metrics.

`pretrain(config, workdir)` resumes from the latest complete checkpoint in `workdir`
(train state, step = data position, RNG), so re-running an interrupted command
continues exactly where it stopped.
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
from jax.sharding import PartitionSpec as P

from simclr_jax import checkpointing
from simclr_jax import grad_cache
from simclr_jax import input_pipeline
from simclr_jax import knn
from simclr_jax import metric_log
from simclr_jax import models
from simclr_jax import probe
from simclr_jax import progress as progress_lib
from simclr_jax import train_step as ts
from simclr_jax.train_step import AXIS, TrainState, make_train_step  # noqa: F401 (API)


class NonFiniteError(FloatingPointError):
  """The loss or gradient became NaN/inf."""


@dataclasses.dataclass
class Run:
  """What a pretraining run is built from (everything derived from config + data)."""
  config: ml_collections.ConfigDict
  workdir: str
  data_dir: str | None
  info: Any  # input_pipeline.DatasetInfo
  mesh: jax.sharding.Mesh
  model: Any
  tx: Any
  schedule: Callable
  steps_per_epoch: int
  total_steps: int


def plan_steps(config, num_train_examples: int) -> tuple[int, int]:
  """(steps_per_epoch, total_steps); num_train_steps wins when > 0."""
  steps_per_epoch = num_train_examples // config.batch_size
  if steps_per_epoch < 1:
    raise ValueError(f"config.batch_size = {config.batch_size} exceeds the "
                     f"{num_train_examples} examples of split {config.train_split!r}")
  if config.num_train_steps > 0:
    return steps_per_epoch, int(config.num_train_steps)
  return steps_per_epoch, int(round(config.num_epochs * steps_per_epoch))


def build_run(config, workdir: str) -> Run:
  data_dir = input_pipeline.default_data_dir(config, workdir)
  info = input_pipeline.dataset_info(config, data_dir=data_dir)
  steps_per_epoch, total_steps = plan_steps(config, info.num_train_examples)
  model = models.create_model(
      config.model, num_classes=info.num_classes if config.model.online_probe else 0,
      axis_name=AXIS if config.model.global_bn else None)
  tx, schedule = ts.create_optimizer(config, steps_per_epoch, total_steps)
  return Run(config, workdir, data_dir, info, ts.make_mesh(), model, tx, schedule,
             steps_per_epoch, total_steps)


def init_or_restore(run: Run, ckpt: checkpointing.Checkpointer) -> TrainState:
  """A fresh replicated state, or the latest checkpoint's when there is one."""
  rng = jax.random.PRNGKey(run.config.seed)
  state = ts.create_train_state(rng, run.model, run.tx, run.config.data.image_size)
  state = ts.replicate(state, run.mesh)
  if ckpt.latest_step() is not None:
    state, meta = ckpt.restore(checkpointing.abstract_like(state))
    logging.info("Resumed from step %d (%s)", int(state.step), ckpt.directory)
  return state


def make_eval_step(model, mesh) -> Callable:
  """Online-probe top-1/top-5 counts over a masked global eval batch."""
  def step(state: TrainState, batch):
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    logits = model.apply(variables, batch["image"], train=False)["logits"]
    top5 = jax.lax.top_k(logits, 5)[1] == batch["label"][:, None]
    mask = batch["mask"].astype(jnp.float32)
    counts = {"top1": jnp.sum((top5[:, 0]) * mask), "top5": jnp.sum(top5.any(-1) * mask),
              "count": jnp.sum(mask)}
    return jax.lax.psum(counts, AXIS)
  return jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P(),
                               check_vma=False))


def evaluate_probe(run: Run, eval_step, state: TrainState) -> dict[str, float]:
  ds = input_pipeline.create_eval_dataset(run.config, data_dir=run.data_dir)
  totals = {"top1": 0.0, "top5": 0.0, "count": 0.0}
  for batch in ds.as_numpy_iterator():
    counts = jax.device_get(eval_step(state, ts.shard_batch(batch, run.mesh)))
    totals = {k: totals[k] + float(counts[k]) for k in totals}
  n = max(totals["count"], 1.0)
  return {"eval_probe_top1": totals["top1"] / n, "eval_probe_top5": totals["top5"] / n}


def check_finite(step: int, metrics: dict) -> None:
  for name in ("loss", "grad_norm", "param_norm"):
    if not np.isfinite(metrics[name]):
      raise NonFiniteError(f"non-finite {name} = {metrics[name]} at step {step}; the last "
                           "checkpoint was kept as the latest one")


def train_loop(run: Run, state: TrainState, ckpt: checkpointing.Checkpointer,
               log: metric_log.MetricLog) -> TrainState:
  """Steps from state.step to run.total_steps; checkpoints, logs, evaluates."""
  config = run.config
  start = int(state.step)
  # loss.chunks > 1: the gradient cache (exact NT-Xent, one chunk's activations at a time).
  grad_fn = (grad_cache.make_chunked_grad_fn(run.model, config) if config.loss.chunks > 1
             else None)
  step_fn = ts.shard_train_step(make_train_step(run.model, run.tx, run.schedule, config,
                                                grad_fn=grad_fn),
                                run.mesh)
  eval_step = make_eval_step(run.model, run.mesh) if config.model.online_probe else None
  batches = input_pipeline.create_pretrain_dataset(
      config, data_dir=run.data_dir, start_step=start).as_numpy_iterator()
  meta = checkpointing.config_meta(config)
  progress, window = progress_lib.Progress(config.batch_size, start, run.total_steps), []
  logging.info("step %d/%d: compiling the train step", start + 1, run.total_steps)
  with checkpointing.PreemptionFlag() as preempted:
    for step in range(start + 1, run.total_steps + 1):
      state, metrics = step_fn(state, ts.shard_batch(next(batches), run.mesh))
      if step == start + 1:
        jax.block_until_ready(metrics)
        progress.first_step_done(step)
      window.append(metrics)
      last = step == run.total_steps
      if step % config.log_every_steps == 0 or last:
        summary = metric_log.mean_metrics(window)
        window = []
        check_finite(step, summary)
        summary.update(progress.rates(step), epoch=step / run.steps_per_epoch)
        log.write(step, summary, console=False)
        if log.enabled:
          logging.info("%s", progress.line(step, summary))
      if eval_step is not None and (step % config.eval_every_steps == 0 or last):
        log.write(step, evaluate_probe(run, eval_step, state))
      # kNN monitor (knn.py), off unless config.knn_every_steps > 0.
      if config.knn_every_steps > 0 and (step % config.knn_every_steps == 0 or last):
        log.write(step, knn.monitor(run, state))
      if ckpt.save_if_due(  # never checkpoint a broken state
          step, state, meta, every=config.checkpoint_every_steps, last=last,
          preempted=preempted,
          before_save=lambda: check_finite(step, metric_log.mean_metrics([metrics]))):
        logging.warning("Preempted: saved step %d, exiting.", step)
        break
  return state


def pretrain(config: ml_collections.ConfigDict, workdir: str) -> tuple[TrainState, bool]:
  """Runs (or resumes) SimCLR pretraining.

  Returns the last replicated state and whether the run reached its final step (False
  when it stopped early on a preemption signal, after saving).
  """
  start = time.time()
  run = build_run(config, workdir)
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
  info = input_pipeline.dataset_info(
      config, data_dir=input_pipeline.default_data_dir(config, workdir))
  _, total = plan_steps(config, info.num_train_examples)
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
  """Linear probes of the pretrained encoder and of a randomly initialised one."""
  run = build_run(config, workdir)
  def batches(split):
    return lambda: input_pipeline.create_eval_dataset(
        config, data_dir=run.data_dir, split=split).as_numpy_iterator()
  kwargs = dict(train_batches=batches(config.train_split),
                test_batches=batches(config.eval_split),
                shots=config.probe.shots, draws=config.probe.draws)
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
  results = final_probes(config, workdir, state)
  results["wall_minutes"] = (time.time() - start) / 60
  log = metric_log.MetricLog(workdir)
  log.write(int(state.step), results)
  log.close()
  print(metric_log.format_table(results, title="Linear probes on frozen h (test split)"))
  return results
