"""What every evaluation mode sets up: the data, the mesh, the encoder.

Each mode loads the pretraining checkpoint named by `config.init_from` and rebuilds the
network from the config saved in that checkpoint, so only the protocol (config groups
`linear_eval`, `finetune`, `knn`) and the data fields are read from `config`.
"""

import dataclasses
from typing import Any, Iterator

import jax
import ml_collections
from absl import logging

from simclr_jax import data
from simclr_jax import parallel
from simclr_jax.models.heads import ProjectionHead
from simclr_jax.pretrained import Pretrained, init_from, load_pretrained

ConfigDict = ml_collections.ConfigDict


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
  with config.unlocked():  # an evaluation config has no batch_size of its own
    config.batch_size = batch_size
  return config


def eval_batches(config: ConfigDict, data_dir: str | None) -> Iterator[dict]:
  return data.create_eval_dataset(config, data_dir=data_dir,
                                            split=config.eval_split).as_numpy_iterator()
