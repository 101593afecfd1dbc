"""Durations in optimiser steps, counted as the official SimCLR code counts them.

Every stage (pretraining: the config itself; `config.linear_eval`; `config.finetune`)
states its length the same way: `num_train_steps` when > 0, else `num_epochs` (a float
is allowed, e.g. 0.5). The official code trains N x E // B + 1 steps (N examples, E
epochs, global batch B; the "+ 1" included) and warms the learning rate up for
round(W x N // B) steps, so a run here follows its learning-rate schedule step for step:
ImageNet (N = 1,281,167), 100 epochs at B = 4096 is 31,279 steps with 3,127 warm-up
steps.
"""

from simclr_jax import config_lib


def epochs_to_steps(epochs: float, num_examples: int, batch_size: int) -> int:
  """int(E x N // B): the whole steps in `epochs` epochs (the official warm-up length)."""
  return int(epochs * num_examples // batch_size)


def run_length(group, num_examples: int, *, prefix: str = "") -> tuple[int, int]:
  """(steps_per_epoch, total_steps) of the stage whose config `group` holds batch_size,
  num_epochs and num_train_steps (field names prefixed `prefix` in errors).

  steps_per_epoch = N // B (what logs count epochs by); total_steps = num_train_steps
  when > 0, else the official N x E // B + 1. Raises ConfigError when B > N.
  """
  config_lib.check_examples(f"{prefix}batch_size", group.batch_size, num_examples)
  steps_per_epoch = num_examples // group.batch_size
  if group.num_train_steps > 0:
    return steps_per_epoch, int(group.num_train_steps)
  return steps_per_epoch, epochs_to_steps(group.num_epochs, num_examples,
                                          group.batch_size) + 1
