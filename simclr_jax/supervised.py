"""Supervised training of a classifier on a pretrained encoder (linear eval, fine-tuning).

Training is data-parallel in the pmap style of the pretraining step: every device runs
the per-device step on its share of the global batch (parallel.data_parallel),
gradients are averaged with `pmean` (parallel.mean_update), BN statistics are global.
The steps run in the training loop of every mode (loop.py).
"""

import contextlib
from typing import Any, Callable, Iterator

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging

from simclr_jax import checkpointing
from simclr_jax import loop
from simclr_jax import metric_log
from simclr_jax import parallel
from simclr_jax import small_data
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
    k = min(small_data.TOP5, logits.shape[-1])
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


def train_then_evaluate(mode: str, config: ConfigDict, workdir: str, step_fn: Callable,
                        state: SupervisedState, frozen: Any,
                        batches: Callable[[int], Iterator[dict]],
                        evaluate: Callable[[SupervisedState], dict], *, total_steps: int,
                        steps_per_epoch: int, mesh: jax.sharding.Mesh,
                        extras: dict) -> dict | None:
  """A supervised mode's run: resume, train, evaluate, log; None if stopped by SIGTERM.

  Resumes from <workdir>/<mode>_checkpoints (state is the fresh initial state), trains
  in the loop (loop.py) with `config.<mode>`'s batch size and evaluation cadence
  (`eval_every_steps`), and logs `evaluate(final state)` plus `extras` at the last
  step. `batches(start_step)` opens the training stream; `step_fn(state, *frozen,
  batch)` is the sharded step (frozen None: no frozen argument).
  """
  group = config[mode]
  frozen_args = () if frozen is None else (frozen,)
  ckpt, state = restore_supervised(workdir, config, mode, state)
  with contextlib.closing(ckpt), contextlib.closing(metric_log.MetricLog(workdir)) as log:
    cadence = loop.Cadence(total_steps, steps_per_epoch, group.batch_size,
                           config.log_every_steps, config.checkpoint_every_steps)
    periodic = loop.Evaluation(f"{mode} evaluation", group.eval_every_steps, evaluate,
                               at_last=False)
    state, done, _ = loop.train(
        lambda s, batch: step_fn(s, *frozen_args, batch), state, batches(int(state.step)),
        cadence, mesh=mesh, log=log, ckpt=ckpt, meta=checkpointing.config_meta(config),
        evaluations=[periodic], checked=("train_loss",), prefix=mode + "_", what=mode)
    ckpt.wait()
    if not done:
      return None
    results = {**evaluate(state), **extras}
    log.write(total_steps, results)
  return results
