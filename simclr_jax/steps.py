"""Run lengths in optimiser steps, counted as the official SimCLR code counts them.

The official code trains N x E // B + 1 steps (N examples, E epochs, global batch B;
the "+ 1" included) and warms the learning rate up for round(W x N // B) steps, so a
run here follows its learning-rate schedule step for step: ImageNet (N = 1,281,167),
100 epochs at B = 4096 is 31,279 steps with 3,127 warm-up steps.
"""


def total_steps(num_examples: int, batch_size: int, num_epochs: float) -> int:
  """N x E // B + 1, the official run length of `num_epochs` epochs."""
  return int(num_examples * num_epochs // batch_size) + 1


def warmup_steps(warmup_epochs: float, num_examples: int, batch_size: int) -> int:
  """round(W x N // B), the official warm-up length of `warmup_epochs` epochs."""
  return int(round(warmup_epochs * num_examples // batch_size))


def plan(num_examples: int, batch_size: int, num_epochs: float,
         num_train_steps: int) -> tuple[int, int]:
  """(steps_per_epoch, total_steps): N // B (what logs count epochs by) and the run
  length, `num_train_steps` when > 0, else `total_steps(...)`. Needs N >= B."""
  steps_per_epoch = num_examples // batch_size
  if num_train_steps > 0:
    return steps_per_epoch, int(num_train_steps)
  return steps_per_epoch, total_steps(num_examples, batch_size, num_epochs)
