"""What every evaluation mode sets up: config checks, the data, the mesh, the encoder.

Each mode loads the pretraining checkpoint named by `config.init_from` and rebuilds the
network from the config saved in that checkpoint, so only the protocol (config groups
`linear_eval`, `finetune`, `knn`) and the data fields are read from `config`.
"""

import dataclasses
from typing import Any, Iterator

import jax
import ml_collections
from absl import logging

from simclr_jax import config_lib
from simclr_jax import data
from simclr_jax import parallel
from simclr_jax import steps as steps_lib
from simclr_jax.models.heads import ProjectionHead
from simclr_jax.pretrained import Pretrained, init_from, load_pretrained

ConfigDict = ml_collections.ConfigDict


def fail(field: str, value, allowed: str):
  raise config_lib.ConfigError(f"config.{field} = {value!r} is not allowed: {allowed}")


def check_batch(field: str, value) -> None:
  devices, processes = jax.device_count(), jax.process_count()
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    fail(field, value, "expected an integer >= 1")
  if value % devices or value % processes:
    fail(field, value, f"a global batch must be divisible by the device count "
                       f"({devices}) and the process count ({processes})")


def check_run_length(group: ConfigDict, name: str) -> None:
  if group.num_train_steps <= 0 and not group.num_epochs > 0:
    fail(f"{name}.num_epochs", group.num_epochs,
         f"expected > 0 (or {name}.num_train_steps > 0)")


def check_projection_layer(field: str, layer: int, head_layers: int) -> None:
  """`layer` must name h (0) or one of the pretrained head's `head_layers` layers."""
  if not 0 <= layer <= head_layers:
    fail(field, layer, f"expected an integer in [0, {head_layers}] (the pretrained "
                       f"projection head has {head_layers} layers; 0 = h)")


def head_layer_count(model_config: ConfigDict) -> int:
  """Layers of the projection head (0 for "none", 1 for "linear")."""
  return ProjectionHead(mode=model_config.head_mode, num_layers=model_config.head_num_layers,
                        out_dim=model_config.proj_dim).total_layers


@dataclasses.dataclass
class Setup:
  """The data and devices an evaluation mode runs on."""
  config: ConfigDict
  workdir: str
  data_dir: str | None
  info: Any  # data.DatasetInfo
  mesh: jax.sharding.Mesh
  pretrained: Pretrained


def make_setup(config: ConfigDict, workdir: str) -> Setup:
  pretrained = load_pretrained(init_from(config, workdir))
  pre_size = pretrained.config.data.image_size
  if pre_size != config.data.image_size:
    logging.warning("Evaluating at %d px an encoder pretrained at %d px (config.data."
                    "image_size)", config.data.image_size, pre_size)
  data_dir = data.default_data_dir(config, workdir)
  info = data.dataset_info(config, data_dir=data_dir)
  return Setup(config, workdir, data_dir, info, parallel.make_mesh(), pretrained)


def with_batch_size(config: ConfigDict, batch_size: int) -> ConfigDict:
  """A copy of `config` whose input pipeline produces global batches of `batch_size`."""
  config = config.copy_and_resolve_references()
  config.batch_size = batch_size
  return config


def plan_steps(group: ConfigDict, num_examples: int, name: str) -> tuple[int, int]:
  """(steps_per_epoch, total_steps) of a supervised stage over `num_examples` examples,
  as steps.plan counts them."""
  if num_examples < group.batch_size:
    fail(f"{name}.batch_size", group.batch_size,
         f"expected at most the {num_examples} training examples available")
  return steps_lib.plan(num_examples, group.batch_size, group.num_epochs,
                        group.num_train_steps)


def eval_batches(config: ConfigDict, data_dir: str | None) -> Iterator[dict]:
  return data.create_eval_dataset(config, data_dir=data_dir,
                                            split=config.eval_split).as_numpy_iterator()
