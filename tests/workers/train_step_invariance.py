"""Runs 3 SimCLR steps on one global batch with 1, 2, 4 and 8 devices, and once without
shard_map (a plain jax.grad reference), all from one initial state; saves losses, BN
statistics and parameters."""

import sys

from simclr_jax import platform
platform.configure_xla_flags()
import jax
import jax.numpy as jnp
import numpy as np
import optax

from configs import base
from simclr_jax import losses
from simclr_jax import models
from simclr_jax import parallel
from simclr_jax import train_step as ts

STEPS = 3


def tiny_config():
  c = base.get_config()
  c.batch_size = 16
  c.data.image_size = 8
  c.model.update(depth=18, width_multiplier=0.125, cifar_stem=True, head_num_layers=2,
                 proj_dim=16)
  c.loss.temperature = 0.2
  c.optim.update(base_lr=0.5, warmup_epochs=1, weight_decay=1e-3)
  return c


def batches(c, num_classes):
  rng = np.random.default_rng(0)
  shape = (c.batch_size, c.data.image_size, c.data.image_size, 3)
  return [{"image1": rng.uniform(size=shape).astype(np.float32),
           "image2": rng.uniform(size=shape).astype(np.float32),
           "label": rng.integers(0, num_classes, c.batch_size).astype(np.int32)}
          for _ in range(STEPS)]


def run_sharded(c, num_devices, data, num_classes, init):
  mesh = parallel.make_mesh(jax.devices()[:num_devices])
  model = models.create_model(c.model, num_classes=num_classes, axis_name=parallel.AXIS)
  tx, schedule = ts.create_optimizer(c, num_examples=2 * c.batch_size, total_steps=10)
  state = parallel.replicate(init, mesh)
  step = ts.shard_train_step(ts.make_train_step(model, tx, schedule, c), mesh)
  losses_seen = []
  for batch in data:
    state, metrics = step(state, parallel.shard_batch(batch, mesh))
    losses_seen.append(float(metrics["loss"]))
  return losses_seen, jax.device_get(state.params), jax.device_get(state.batch_stats)


def run_reference(c, data, num_classes, init):
  """The same update without shard_map or collectives: one device, whole batch."""
  model = models.create_model(c.model, num_classes=num_classes, axis_name=None)
  tx, _ = ts.create_optimizer(c, num_examples=2 * c.batch_size, total_steps=10)

  def loss_fn(params, stats, images, labels):
    out, mutated = model.apply({"params": params, "batch_stats": stats}, images, train=True,
                               mutable=["batch_stats"])
    z_a, z_b = jnp.split(out["z"], 2)
    loss, _ = losses.nt_xent(z_a, z_b, temperature=c.loss.temperature,
                             official_scaling=c.loss.official_scaling)
    ce = optax.softmax_cross_entropy_with_integer_labels(out["logits"], labels).mean()
    l2 = 0.5 * c.optim.weight_decay * jnp.sum(params["classifier"]["kernel"] ** 2)
    return loss + ce + l2, (loss, mutated["batch_stats"])

  @jax.jit
  def update(params, stats, opt_state, images, labels):
    grads, (loss, stats) = jax.grad(loss_fn, has_aux=True)(params, stats, images, labels)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state, loss

  params, stats, opt_state = init.params, init.batch_stats, init.opt_state
  losses_seen = []
  for batch in data:
    images = jnp.concatenate([batch["image1"], batch["image2"]])
    labels = jnp.concatenate([batch["label"], batch["label"]])
    params, stats, opt_state, loss = update(params, stats, opt_state, images, labels)
    losses_seen.append(float(loss))
  return losses_seen, jax.device_get(params), jax.device_get(stats)


def main(out_path):
  c = tiny_config()
  data = batches(c, num_classes=10)
  model = models.create_model(c.model, num_classes=10)
  tx, _ = ts.create_optimizer(c, num_examples=2 * c.batch_size, total_steps=10)
  # One initial state for every run (host copy: the sharded steps donate their buffers).
  init = jax.device_get(ts.create_train_state(jax.random.PRNGKey(0), model, tx, 8))
  results = {"init": ([np.nan] * STEPS, init.params, init.batch_stats),
             "ref": run_reference(c, data, 10, init)}
  for k in (1, 2, 4, 8):
    results[k] = run_sharded(c, k, data, 10, init)
  flat = {}
  for key, (loss, params, stats) in results.items():
    flat[f"{key}/loss"] = np.asarray(loss)
    for path, leaf in jax.tree_util.tree_leaves_with_path({"params": params, "stats": stats}):
      flat[f"{key}/{jax.tree_util.keystr(path)}"] = np.asarray(leaf)
  np.savez(out_path, **flat)


if __name__ == "__main__":
  main(sys.argv[1])
