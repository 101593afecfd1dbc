"""Optimisers and learning-rate schedules of SimCLR (config.optim in configs/base.py).

Pretraining: LARS (momentum 0.9, trust coefficient 0.001, weight decay inside the
update), LR = base x B/256 or base x sqrt(B), linear warm-up then cosine decay to 0.
BatchNorm parameters and biases get neither weight decay nor trust-ratio scaling.
"""

import logging
import math
from typing import Any, Callable

import jax
import ml_collections
import optax

from simclr_jax import steps as steps_lib
from simclr_jax.choices import LR_SCALINGS, OPTIMIZERS, SCHEDULES

# The online linear probe: its weight decay is an explicit L2 term in the loss (as the
# official code's `head_supervised`), since LARS' own decay is masked per leaf.
CLASSIFIER_MODULE = "classifier"

Params = Any


def _check_choice(what: str, value: str, allowed: tuple[str, ...]) -> None:
  if value not in allowed:
    raise ValueError(f"{what} must be one of {allowed}, got {value!r}")


def _check_non_negative(what: str, value: float) -> None:
  if not value >= 0:  # also rejects NaN
    raise ValueError(f"{what} must be >= 0, got {value!r}")


def _check_positive_int(what: str, value: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{what} must be an int >= 1, got {value!r}")


def scaled_learning_rate(base_lr: float, batch_size: int, scaling: str) -> float:
  """Peak learning rate for a global batch of `batch_size` examples.

  Args:
    base_lr: config.optim.base_lr, >= 0.
    batch_size: global batch size (all devices), >= 1.
    scaling: "linear" (base x B/256), "sqrt" (base x sqrt(B)) or "none" (base).
  """
  _check_non_negative("base learning rate", base_lr)
  _check_positive_int("batch_size", batch_size)
  _check_choice("lr_scaling", scaling, LR_SCALINGS)
  if scaling == "linear":
    return base_lr * batch_size / 256.0
  if scaling == "sqrt":
    return base_lr * math.sqrt(batch_size)
  return float(base_lr)


def warmup_steps(warmup_epochs: float, num_examples: int, batch_size: int,
                 total_steps: int) -> int:
  """Warm-up length in steps: the official round(W x N // B), at most total_steps."""
  _check_non_negative("warmup_epochs", warmup_epochs)
  steps = steps_lib.epochs_to_steps(warmup_epochs, num_examples, batch_size)
  if steps > total_steps:
    # Short (debug) runs: the whole run is warm-up rather than an error.
    logging.warning("Warm-up of %d steps is longer than the run (%d steps); truncated.",
                    steps, total_steps)
    steps = total_steps
  return steps


def learning_rate_schedule(optim_config: ml_collections.ConfigDict, *, batch_size: int,
                           num_examples: int, total_steps: int) -> optax.Schedule:
  """Step -> learning rate, as the official code's schedule.

  Linear warm-up from 0 (lr(s) = peak x s / W for s < W, W = warmup steps), then
  cosine decay from the peak to 0 at `total_steps` (lr = peak x (1 + cos(pi (s - W) /
  (T - W))) / 2, 0 afterwards) for schedule "cosine", or the peak for "constant".

  Args:
    optim_config: config.optim (base_lr, lr_scaling, warmup_epochs, schedule).
    batch_size: global batch size.
    num_examples: examples in an epoch (N), >= 1; warm-up lasts round(W x N // B) steps.
    total_steps: length of the run in steps, >= 1.
  """
  _check_positive_int("num_examples", num_examples)
  _check_positive_int("total_steps", total_steps)
  _check_choice("schedule", optim_config.schedule, SCHEDULES)
  peak = scaled_learning_rate(optim_config.base_lr, batch_size, optim_config.lr_scaling)
  warmup = warmup_steps(optim_config.warmup_epochs, num_examples, batch_size, total_steps)
  if optim_config.schedule == "constant":
    after = optax.constant_schedule(peak)
  elif total_steps > warmup:
    after = optax.cosine_decay_schedule(peak, decay_steps=total_steps - warmup)
  else:  # warm-up fills the run: the cosine part is never entered
    after = optax.constant_schedule(0.0)
  if warmup == 0:
    return after
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak, transition_steps=warmup), after], [warmup])


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def decay_mask(params: Params) -> Params:
  """Which leaves get weight decay and LARS' trust ratio.

  Args:
    params: a parameter pytree (nested dicts as Flax builds them).

  Returns:
    The same structure with bool leaves: True for every 'kernel' (conv and dense
    weights) outside the module named 'classifier'; False for BatchNorm scale/bias,
    every bias and the classifier (which gets an explicit L2 term instead).
  """
  def is_decayed(path, _) -> bool:
    names = [_key_name(k) for k in path]
    return bool(names) and names[-1] == "kernel" and CLASSIFIER_MODULE not in names[:-1]

  return jax.tree_util.tree_map_with_path(is_decayed, params)


def create_optimizer(
    optim_config: ml_collections.ConfigDict,
    *,
    batch_size: int,
    num_examples: int,
    total_steps: int,
    weight_decay_mask: Callable[[Params], Params] | None = None,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimiser named by config.optim.name and its learning-rate schedule.

  "lars": optax.lars; weight decay added to the gradient before the trust ratio
    trust_coefficient x ||w|| / ||g + wd w||, both on masked-in leaves only; the
    learning rate is applied inside the momentum buffer, as the official LARS.
  "sgd": L2 weight decay added to the gradient (masked), then momentum SGD
    (optionally Nesterov) with the learning rate applied outside the buffer, as
    TF's MomentumOptimizer in the official linear evaluation / fine-tuning.
  "adamw": optax.adamw (decoupled decay, scaled by the learning rate), masked;
    momentum, nesterov and trust_coefficient are not used.

  Args:
    optim_config: config.optim (name, base_lr, lr_scaling, warmup_epochs, schedule,
      weight_decay, momentum, nesterov, trust_coefficient).
    batch_size, num_examples, total_steps: see learning_rate_schedule.
    weight_decay_mask: replaces `decay_mask`, e.g. to decay a classifier that is the
      only trained module (linear evaluation).

  Returns:
    (optimiser, schedule); schedule(step) is the learning rate of update `step`.
  """
  name = optim_config.name
  _check_choice("optimizer name", name, OPTIMIZERS)
  _check_non_negative("weight_decay", optim_config.weight_decay)
  momentum = optim_config.momentum
  if not 0 <= momentum < 1:
    raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
  schedule = learning_rate_schedule(optim_config, batch_size=batch_size,
                                    num_examples=num_examples,
                                    total_steps=total_steps)
  mask = decay_mask if weight_decay_mask is None else weight_decay_mask
  weight_decay = optim_config.weight_decay

  if name == "lars":
    if not optim_config.trust_coefficient > 0:
      raise ValueError(
          f"trust_coefficient must be > 0, got {optim_config.trust_coefficient!r}")
    tx = optax.lars(schedule, weight_decay=weight_decay, weight_decay_mask=mask,
                    trust_coefficient=optim_config.trust_coefficient,
                    trust_ratio_mask=mask, momentum=momentum,
                    nesterov=optim_config.nesterov)
  elif name == "sgd":
    tx = optax.chain(
        optax.add_decayed_weights(weight_decay, mask=mask),
        optax.sgd(schedule, momentum=momentum or None, nesterov=optim_config.nesterov))
  else:
    tx = optax.adamw(schedule, weight_decay=weight_decay, mask=mask)
  return tx, schedule
