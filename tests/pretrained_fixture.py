"""A tiny pretraining checkpoint with non-trivial weights, as `pretrain` would write it."""

import os

import jax
import numpy as np

from configs import base
from simclr_jax import checkpointing
from simclr_jax import models
from simclr_jax import train_step as ts


def tiny_config(head_num_layers: int = 2, image_size: int = 16):
  c = base.get_config()
  c.dataset = "digits"
  c.batch_size = 16
  c.data.image_size = image_size
  c.model.update(depth=18, width_multiplier=0.125, cifar_stem=True,
                 head_num_layers=head_num_layers, proj_dim=16, online_probe=True)
  return c


def perturbed_params(params, rng):
  """Every parameter moved off its initial value: kernels scaled by U(0.8, 1.2), BN
  scales (some start at 0) drawn from U(0.5, 1), biases from N(0, 0.1^2)."""
  def leaf(path, x):
    name = jax.tree_util.keystr(path)
    if "'scale'" in name:
      return rng.uniform(0.5, 1.0, size=x.shape).astype(np.float32)
    if "'bias'" in name:
      return (0.1 * rng.normal(size=x.shape)).astype(np.float32)
    return (np.asarray(x) * rng.uniform(0.8, 1.2, size=x.shape)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(leaf, jax.device_get(params))


def realistic_batch_stats(model, params, batch_stats, image_size, rng):
  """BN statistics of random images, perturbed a little: activations stay O(1) in
  inference mode while every statistic differs from the batch's own."""
  exact = model.clone(bn_momentum=0.0, axis_name=None)
  images = rng.uniform(size=(32, image_size, image_size, 3)).astype(np.float32)
  _, mutated = jax.jit(lambda v, x: exact.apply(v, x, train=True, mutable=["batch_stats"]))(
      {"params": params, "batch_stats": batch_stats}, images)

  def leaf(path, x):
    x = np.asarray(x)
    if "'var'" in jax.tree_util.keystr(path):
      return (x * rng.uniform(0.8, 1.25, size=x.shape)).astype(np.float32)
    return (x + 0.05 * rng.normal(size=x.shape)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(leaf, jax.device_get(mutated["batch_stats"]))


def make_checkpoint(workdir: str, config, steps=(3, 7), num_classes: int = 10, seed: int = 0):
  """Saves TrainStates at `steps` (the last one's weights differ) under workdir/checkpoints.

  Returns {"params", "batch_stats"} of the last step without the online probe, the
  variables an evaluation must start from.
  """
  model = models.create_model(config.model, num_classes=num_classes)
  tx, _ = ts.create_optimizer(config, num_examples=2 * config.batch_size, total_steps=10)
  state = ts.create_train_state(jax.random.PRNGKey(seed), model, tx, config.data.image_size)
  rng = np.random.default_rng(seed)
  ckpt = checkpointing.Checkpointer(workdir, keep=5, async_save=False)
  for step in steps:
    params = perturbed_params(state.params, rng)
    stats = realistic_batch_stats(model, params, state.batch_stats, config.data.image_size,
                                  rng)
    state = state.replace(step=np.int32(step), params=params, batch_stats=stats)
    ckpt.save(step, state, checkpointing.config_meta(config))
  ckpt.wait()
  ckpt.close()
  assert os.path.isdir(os.path.join(workdir, "checkpoints", str(steps[-1])))
  params = {k: v for k, v in jax.device_get(state.params).items() if k != "classifier"}
  return {"params": params, "batch_stats": jax.device_get(state.batch_stats)}
