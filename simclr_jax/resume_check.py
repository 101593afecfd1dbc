"""Before a run writes to its workdir: does its config fit the checkpoint it resumes?

A pretraining workdir with checkpoints is resumed. Fields that shape the train state
(the network, the online probe's classes, the optimiser) must equal those the
checkpoint was written with; the others (learning rate, run length, ...) may change.
"""

import json
import os

from simclr_jax import checkpointing
from simclr_jax import config_lib

# Fields of the pretraining config that the checkpointed state depends on.
STATE_FIELDS = ("dataset", "model.depth", "model.width_multiplier", "model.cifar_stem",
                "model.head_mode", "model.head_num_layers", "model.proj_dim",
                "model.online_probe", "optim.name")


class IncompatibleCheckpointError(config_lib.ConfigError):
  """The workdir holds checkpoints of a run with another network or optimiser."""


def _get(tree, field: str):
  for part in field.split("."):
    if not isinstance(tree, dict) or part not in tree:
      return None
    tree = tree[part]
  return tree


def saved_config(step_dir: str) -> dict | None:
  """The config a checkpoint was written with; None if its meta does not read."""
  try:
    return json.loads(checkpointing.read_meta(step_dir)["config"])
  except Exception:  # a damaged meta: the restore's fallback reports that checkpoint
    return None


def check_pretrain_resume(config, workdir: str) -> None:
  """Raises IncompatibleCheckpointError naming every STATE_FIELDS difference between
  `config` and the newest checkpoint (with a readable config) under workdir."""
  for step_dir in checkpointing.complete_steps(os.path.join(workdir, "checkpoints")):
    saved = saved_config(step_dir)
    if saved is None:
      continue
    current = json.loads(config.to_json_best_effort())
    diffs = [f"{f} = {_get(saved, f)!r}, this run {_get(current, f)!r}"
             for f in STATE_FIELDS
             if _get(saved, f) is not None and _get(saved, f) != _get(current, f)]
    if diffs:
      raise IncompatibleCheckpointError(
          f"--workdir={workdir} holds the checkpoint of another run (step "
          f"{step_dir.name}): checkpoint has " + "; ".join(diffs)
          + ". Resume with the checkpoint's values or use another --workdir")
    return
