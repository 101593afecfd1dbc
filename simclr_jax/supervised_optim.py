"""The optimiser of linear evaluation and fine-tuning (config.<mode>.optim).

As the official code: LARS excludes BatchNorm parameters, biases and the supervised
head (here the module 'classifier') from both weight decay and layer adaptation, and
the head's kernel gets an L2 term instead (its gradient wd x w, added here before
LARS, so the head's update is not scaled by a trust ratio). Momentum SGD and AdamW
decay every kernel, the classifier's included. Parameters frozen by
`finetune.fine_tune_after_block` get no update at all (no decay, no momentum).
"""

from typing import Any

import jax
import ml_collections
import optax

from simclr_jax import optim
from simclr_jax.models import resnet

Params = Any
CLASSIFIER = optim.CLASSIFIER_MODULE


def _names(path) -> list[str]:
  return [getattr(k, "key", getattr(k, "name", str(k))) for k in path]


def _in_classifier(names: list[str], whole_tree_is_classifier: bool) -> bool:
  return whole_tree_is_classifier or CLASSIFIER in names[:-1]


def adaptation_mask(params: Params, whole_tree_is_classifier: bool = False) -> Params:
  """True where LARS applies weight decay and the trust ratio: kernels outside the
  classifier."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: (_names(path)[-1] == "kernel"
                       and not _in_classifier(_names(path), whole_tree_is_classifier)),
      params)


def classifier_l2_mask(params: Params, whole_tree_is_classifier: bool = False) -> Params:
  """True on the classifier's kernel: the L2 term LARS leaves to the loss."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: (_names(path)[-1] == "kernel"
                       and _in_classifier(_names(path), whole_tree_is_classifier)),
      params)


def kernels_only(params: Params) -> Params:
  """SGD / AdamW weight-decay mask: every dense/conv kernel (the classifier's too)."""
  return jax.tree_util.tree_map_with_path(lambda path, _: _names(path)[-1] == "kernel",
                                          params)


def frozen_labels(params: Params, fine_tune_after_block: int) -> Params:
  """"frozen" for the encoder parameters `fine_tune_after_block` freezes (see
  resnet.ResNet.freeze_through), "train" for the rest."""
  def label(path, _):
    names = _names(path)
    frozen = (len(names) > 1 and names[0] == "encoder"
              and resnet.is_frozen(names[1], fine_tune_after_block))
    return "frozen" if frozen else "train"
  return jax.tree_util.tree_map_with_path(label, params)


def create_optimizer(optim_config: ml_collections.ConfigDict, *, batch_size: int,
                     num_examples: int, total_steps: int,
                     whole_tree_is_classifier: bool = False,
                     fine_tune_after_block: int = -1
                     ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(optimiser, schedule) of a supervised stage.

  Args:
    optim_config, batch_size, num_examples, total_steps: as optim.create_optimizer.
    whole_tree_is_classifier: the parameters are the classifier's alone (linear
      evaluation); otherwise it is the submodule named 'classifier'.
    fine_tune_after_block: -1 trains every parameter; k in 0..4 leaves the encoder's
      stem and block groups 1..k untouched.
  """
  kwargs = dict(batch_size=batch_size, num_examples=num_examples, total_steps=total_steps)
  if optim_config.name == "lars":
    lars, schedule = optim.create_optimizer(
        optim_config, weight_decay_mask=lambda p: adaptation_mask(
            p, whole_tree_is_classifier), **kwargs)
    tx = optax.chain(
        optax.add_decayed_weights(optim_config.weight_decay, mask=lambda p: (
            classifier_l2_mask(p, whole_tree_is_classifier))),
        lars)
  else:
    tx, schedule = optim.create_optimizer(optim_config, weight_decay_mask=kernels_only,
                                          **kwargs)
  if fine_tune_after_block >= 0:
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                               lambda p: frozen_labels(p, fine_tune_after_block))
  return tx, schedule
