"""`--dry_run`: what a pretraining run will do, computed without training or compiling."""

import math

import jax
import jax.numpy as jnp

from simclr_jax import evaluators
from simclr_jax import metric_log
from simclr_jax import optim


def parameter_count(model, image_size: int) -> int:
  """Trainable parameters of `model` (shapes only: nothing is computed)."""
  dummy = jax.ShapeDtypeStruct((2, image_size, image_size, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), dummy)
  return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(shapes["params"]))


def pretrain_plan(run) -> dict:
  """The plan of a `train.Run`: data, steps, learning rate, batch and model size."""
  config = run.config
  o = config.optim
  return {
      "dataset": config.dataset,
      "train examples": run.info.num_train_examples,
      "eval examples": run.info.num_eval_examples,
      "classes": run.info.num_classes,
      "steps per epoch": run.steps_per_epoch,
      "total steps": run.total_steps,
      "epochs": round(run.total_steps / run.steps_per_epoch, 2),
      "warm-up steps": optim.warmup_steps(o.warmup_epochs, run.info.num_train_examples,
                                          config.batch_size, run.total_steps),
      "peak learning rate": optim.scaled_learning_rate(o.base_lr, config.batch_size,
                                                       o.lr_scaling),
      "optimizer": f"{o.name}, {o.schedule} schedule",
      "global batch": config.batch_size,
      "devices": jax.device_count(),
      "per-device batch": config.batch_size // jax.device_count(),
      "parameters": parameter_count(run.model, config.data.image_size),
      "checkpoints": f"every {config.checkpoint_every_steps} steps in {run.workdir}",
      "evaluations": ", ".join(
          f"{name} every {e.every_steps} steps" if e.every_steps else f"{name} at the end"
          for name, e in evaluators.enabled(config.evals)) or "none",
  }


def format_plan(plan: dict, title: str) -> str:
  return metric_log.format_table(
      {k: f"{v:,}" if isinstance(v, int) else f"{v:.4g}" if isinstance(v, float) else v
       for k, v in plan.items()}, title=title)
