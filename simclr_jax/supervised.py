"""Supervised training of a classifier on a pretrained encoder (linear eval, fine-tuning).

Training is data-parallel in the pmap style of the pretraining step: every device runs
the per-device step on its share of the global batch (parallel.data_parallel),
gradients are averaged with `pmean` (parallel.mean_update), BN statistics are global.
"""

import contextlib
import time
from typing import Any, Callable, Iterator

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from simclr_jax import checkpointing
from simclr_jax import metric_log
from simclr_jax import parallel
from simclr_jax.models.heads import dense_kernel_init
from simclr_jax.parallel import AXIS, REPLICATED, SPLIT

Batch = dict[str, jax.Array]
ConfigDict = ml_collections.ConfigDict


class SupervisedState(flax.struct.PyTreeNode):
  """Trainable parameters, BN statistics (fine-tuning) and optimiser state."""
  step: jax.Array  # int32 scalar
  params: Any
  batch_stats: Any
  opt_state: Any


def cross_entropy_and_top1(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  return loss, jnp.mean(jnp.argmax(logits, -1) == labels)


def head_init(zero: bool):
  return nn.initializers.zeros if zero else dense_kernel_init


def make_eval_step(logits_fn: Callable, mesh: jax.sharding.Mesh) -> Callable:
  """`(variables, global masked batch) -> {"top1", "top5", "count"}` summed over devices.

  `logits_fn(variables, images) -> [b, num_classes]` runs per device; top-5 is capped
  at the class count.
  """
  def step(variables, batch):
    logits = logits_fn(variables, batch["image"])
    k = min(5, logits.shape[-1])
    hits = jax.lax.top_k(logits, k)[1] == batch["label"][:, None]
    mask = batch["mask"].astype(jnp.float32)
    counts = {"top1": jnp.sum(hits[:, 0] * mask), "top5": jnp.sum(hits.any(-1) * mask),
              "count": jnp.sum(mask)}
    return jax.lax.psum(counts, AXIS)

  return parallel.data_parallel(step, mesh, in_specs=(REPLICATED, SPLIT),
                                out_specs=REPLICATED)


def evaluate_classifier(eval_step: Callable, variables: Any, batches: Iterator[dict],
                        mesh: jax.sharding.Mesh) -> dict[str, float]:
  """Top-1/top-5 accuracy over every real example of `batches` (local shares)."""
  totals = {"top1": 0.0, "top5": 0.0, "count": 0.0}
  for batch in batches:
    counts = jax.device_get(eval_step(variables, parallel.shard_batch(batch, mesh)))
    totals = {k: totals[k] + float(counts[k]) for k in totals}
  if totals["count"] == 0:
    raise ValueError("the eval split has no examples")
  return {"top1": totals["top1"] / totals["count"], "top5": totals["top5"] / totals["count"]}


def shard_supervised_step(step: Callable, mesh: jax.sharding.Mesh, num_inputs: int) -> Callable:
  """The step over `mesh`: the state and `num_inputs - 2` frozen args replicated, the
  batch (last argument) split along AXIS; the state is donated."""
  return parallel.data_parallel(step, mesh,
                                in_specs=(REPLICATED,) * (num_inputs - 1) + (SPLIT,),
                                out_specs=(REPLICATED, REPLICATED), donate_argnums=0)


def restore_supervised(workdir: str, config: ConfigDict, mode: str,
                       state: SupervisedState) -> tuple[checkpointing.Checkpointer,
                                                        SupervisedState]:
  """The mode's checkpointer (<workdir>/<mode>_checkpoints) and its latest state, if any."""
  ckpt = checkpointing.Checkpointer(workdir, keep=config.keep_checkpoints,
                                    name=f"{mode}_checkpoints")
  if ckpt.latest_step() is not None:
    state, _ = ckpt.restore(checkpointing.abstract_like(state))
    logging.info("Resumed %s from step %d (%s)", mode, int(state.step), ckpt.directory)
  return ckpt, state


def train_supervised(step_fn: Callable, state: SupervisedState, frozen: Any,
                     batches: Iterator[dict], *, total_steps: int, mesh: jax.sharding.Mesh,
                     log: metric_log.MetricLog, prefix: str, log_every: int,
                     steps_per_epoch: int, ckpt: checkpointing.Checkpointer | None = None,
                     checkpoint_every: int = 0, meta: dict | None = None,
                     on_eval: Callable | None = None,
                     eval_every: int = 0) -> tuple[SupervisedState, bool]:
  """Steps from state.step to `total_steps`; logs `<prefix>train_*` means every
  `log_every` steps. With `ckpt`: checkpoints every `checkpoint_every` steps, at the
  end and on SIGTERM. Returns (state, whether the last step was reached).
  """
  window = []
  frozen_args = () if frozen is None else (frozen,)
  start = int(state.step)
  t0 = time.time()
  with checkpointing.PreemptionFlag() as preempted:
    for step in range(start + 1, total_steps + 1):
      state, metrics = step_fn(state, *frozen_args, parallel.shard_batch(next(batches), mesh))
      window.append(metrics)
      last = step == total_steps
      if step % log_every == 0 or last:
        summary, window = metric_log.mean_metrics(window), []
        if not np.isfinite(summary["train_loss"]):
          raise FloatingPointError(f"non-finite {prefix}train_loss at step {step}")
        summary = {prefix + k: v for k, v in summary.items()}
        summary[prefix + "epoch"] = step / steps_per_epoch
        summary[prefix + "seconds_per_step"] = (time.time() - t0) / (step - start)
        log.write(step, summary)  # also logged to the console by clu
      if on_eval is not None and eval_every > 0 and step % eval_every == 0 and not last:
        log.write(step, on_eval(state))
      if ckpt is None:
        continue
      stop = ckpt.save_if_due(step, state, meta, every=checkpoint_every, last=last,
                              preempted=preempted)
      if stop and not last:
        logging.warning("Preempted: saved %sstep %d; the same command resumes.", prefix,
                        step)
        return state, False
  return state, int(state.step) == total_steps


def train_then_evaluate(mode: str, config: ConfigDict, workdir: str, step_fn: Callable,
                        state: SupervisedState, frozen: Any,
                        batches: Callable[[int], Iterator[dict]],
                        evaluate: Callable[[SupervisedState], dict], *, total_steps: int,
                        steps_per_epoch: int, mesh: jax.sharding.Mesh,
                        extras: dict) -> dict | None:
  """A supervised mode's run: resume, train, evaluate, log; None if stopped by SIGTERM.

  Resumes from <workdir>/<mode>_checkpoints (state is the fresh initial state),
  checkpoints and evaluates as config says, and logs `evaluate(final state)` plus
  `extras` at the last step. `batches(start_step)` opens the training stream.
  """
  ckpt, state = restore_supervised(workdir, config, mode, state)
  with contextlib.closing(ckpt), contextlib.closing(metric_log.MetricLog(workdir)) as log:
    state, done = train_supervised(
        step_fn, state, frozen, batches(int(state.step)), total_steps=total_steps,
        mesh=mesh, log=log, prefix=mode + "_", log_every=config.log_every_steps,
        steps_per_epoch=steps_per_epoch, ckpt=ckpt,
        checkpoint_every=config.checkpoint_every_steps,
        meta=checkpointing.config_meta(config), on_eval=evaluate,
        eval_every=config.eval_every_steps)
    ckpt.wait()
    if not done:
      return None
    results = {**evaluate(state), **extras}
    log.write(total_steps, results)
  return results
