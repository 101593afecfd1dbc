"""A pretrained encoder for the downstream modes: a pretraining checkpoint or an export.

`load_pretrained` restores the encoder + projection-head variables and the pretraining
run's config, so a downstream mode rebuilds the network without its own model config.
"""

import dataclasses
import json
import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from simclr_jax import checkpointing

ConfigDict = ml_collections.ConfigDict


@dataclasses.dataclass
class Pretrained:
  """What downstream modes take from a pretraining checkpoint."""
  path: str  # the checkpoint's step directory
  step: int  # pretraining steps the weights saw
  config: ConfigDict  # the pretraining run's config (from the checkpoint's meta)
  variables: dict  # {"params", "batch_stats"} of encoder + head (host numpy arrays)

  @property
  def model_config(self) -> ConfigDict:
    return self.config.model


def load_pretrained(path: str) -> Pretrained:
  """Restores encoder + projection-head variables and the run's config from `path`.

  `path` is a pretraining checkpoint (see find_checkpoint) or an export directory
  (mode=export, or an official checkpoint imported by `python -m simclr_jax.convert`).
  Only params and batch_stats are read (not the optimiser state), as host arrays;
  the online probe or imported supervised head ('classifier') is dropped. Given a
  workdir or checkpoints dir, a checkpoint that does not restore is reported and the one
  before it is used.
  """
  path = os.path.abspath(path) if path else path  # Orbax needs absolute paths
  if path and os.path.isfile(os.path.join(path, "model.json")):
    return _load_export(path)
  candidates = checkpointing.find_checkpoints(path)
  skipped = []
  for step_dir in candidates:
    try:
      pretrained = _load_step(step_dir)
    except Exception as e:  # Orbax/TensorStore raise many types for damaged data
      if len(candidates) == 1:
        raise
      skipped.append(f"step {step_dir.name}: {checkpointing.describe(e)}")
      logging.warning("Pretraining checkpoint %s does not restore (%s); trying the one "
                      "before it", step_dir, skipped[-1])
      continue
    if skipped:
      logging.warning("Using pretraining checkpoint step %s; skipped %s", step_dir.name,
                      "; ".join(skipped))
    return pretrained
  raise checkpointing.CheckpointError(f"no checkpoint of config.init_from = {path!r} "
                                      f"restores ({'; '.join(skipped)})")


def _load_step(step_dir: epath.Path) -> Pretrained:
  meta = checkpointing.read_meta(step_dir)
  if not isinstance(meta, dict) or "config" not in meta:
    raise ValueError(f"checkpoint {step_dir} has no saved config in meta/: "
                     "not written by simclr_jax pretraining")
  config = ConfigDict(json.loads(meta["config"]))
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(step_dir / "state").item_metadata.tree
  item = {"params": tree["params"], "batch_stats": tree["batch_stats"]}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  variables = checkpointer.restore(step_dir / "state", args=ocp.args.PyTreeRestore(
      item=item, restore_args=restore_args, partial_restore=True))
  variables = {kind: {k: v for k, v in tree.items() if k != "classifier"}
               for kind, tree in variables.items()}
  logging.info("Loaded pretrained encoder from %s (step %s)", step_dir, step_dir.name)
  return Pretrained(path=str(step_dir), step=int(step_dir.name), config=config,
                    variables=variables)


def _load_export(path: str) -> Pretrained:
  from simclr_jax import export_format as export_lib  # pylint: disable=g-import-not-at-top
  _, variables, spec = export_lib.load_variables(path)
  model = {k: v for k, v in export_lib.model_spec_of(spec["model"]).items()
           if k not in ("num_classes", "probe_from_projection_layer")}
  config = ConfigDict({"model": model, "data": {"image_size": spec["input"]["shape"][1]}})
  variables = {kind: {k: v for k, v in tree.items() if k != "classifier"}
               for kind, tree in variables.items()}
  logging.info("Loaded pretrained encoder from export %s", spec["path"])
  return Pretrained(path=spec["path"], step=int(spec.get("pretrain_step") or 0),
                    config=config, variables=variables)


def init_from(config: ConfigDict, workdir: str) -> str:
  """config.init_from, or the workdir itself when empty."""
  return config.init_from or workdir
