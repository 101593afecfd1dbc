"""Gradient-cache steps on 1, 4 and 8 devices for one global batch; saves the results.

Runs 2 SimCLR train steps (train_step.make_train_step, which goes through
grad_cache.chunked_grad when loss.chunks > 1, mapped with shard_train_step) with
loss.chunks = 2 on k = 1, 4, 8 devices, plus the unchunked step on 1 device (which must
differ: its BN statistics are per batch). The network is `ToySimCLR` (global BN over
the devices, NT-Xent, online probe), also used by tests/test_grad_cache.py: a ResNet
takes minutes to compile 4 times on 2 shared cores; the ResNet's per-chunk BN is
checked in-process there.
"""

import sys
import time

from simclr_jax import platform
platform.configure_xla_flags()
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from configs import base
from simclr_jax import parallel
from simclr_jax import train_step as ts

STEPS = 2
GLOBAL_PAIRS = 16
IMAGE_SIZE = 8
NUM_CLASSES = 10


class ToySimCLR(nn.Module):
  """A small network with SimCLRModel's interface: {"h", "z", "logits"} and BN stats.

  norm="batch": BatchNorm (over `axis_name` too, like global BN), so the output of an
  example depends on the rest of its batch. norm="layer": LayerNorm, per example, so
  splitting the batch into chunks changes nothing. Either way the "batch_stats"
  collection counts the images seen in train mode, over all devices (equal for any
  chunking and device count).
  """
  norm: str = "batch"
  axis_name: str | None = None
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x, train: bool):
    x = x.reshape(x.shape[0], -1)
    h = nn.Dense(24)(x)
    if self.norm == "batch":
      h = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                       axis_name=self.axis_name)(h)
    else:
      h = nn.LayerNorm()(h)
    h = nn.relu(h)
    seen = self.variable("batch_stats", "images_seen", jnp.zeros, (), jnp.float32)
    if train and not self.is_initializing():
      count = x.shape[0] if self.axis_name is None else jax.lax.psum(x.shape[0],
                                                                     self.axis_name)
      seen.value = seen.value + count
    z = nn.Dense(8)(nn.relu(nn.Dense(16)(h)))
    logits = nn.Dense(self.num_classes, name="classifier")(jax.lax.stop_gradient(h))
    return {"h": h, "z": z, "logits": logits}


def tiny_config(chunks: int):
  c = base.get_config()
  c.batch_size = GLOBAL_PAIRS
  c.data.image_size = IMAGE_SIZE
  c.loss.update(temperature=0.2, chunks=chunks)
  c.optim.update(base_lr=0.5, warmup_epochs=1, weight_decay=1e-3)
  return c


def batches():
  rng = np.random.default_rng(0)
  shape = (GLOBAL_PAIRS, IMAGE_SIZE, IMAGE_SIZE, 3)
  return [{"image1": rng.uniform(size=shape).astype(np.float32),
           "image2": rng.uniform(size=shape).astype(np.float32),
           "label": rng.integers(0, NUM_CLASSES, GLOBAL_PAIRS).astype(np.int32)}
          for _ in range(STEPS)]


def run(model, c, num_devices, data):
  """STEPS train steps on `num_devices` devices: (losses, params, batch_stats)."""
  mesh = parallel.make_mesh(jax.devices()[:num_devices])
  tx, schedule = ts.create_optimizer(c, num_examples=2 * c.batch_size, total_steps=10)
  state = parallel.replicate(ts.create_train_state(jax.random.PRNGKey(0), model, tx, IMAGE_SIZE),
                       mesh)
  step = ts.shard_train_step(ts.make_train_step(model, tx, schedule, c), mesh)
  seen = []
  for batch in data:
    state, metrics = step(state, parallel.shard_batch(batch, mesh))
    seen.append([float(metrics[k]) for k in ("loss", "contrast_acc", "probe_loss")])
  return np.asarray(seen), jax.device_get(state.params), jax.device_get(state.batch_stats)


def main(out_path):
  data = batches()
  chunked, unchunked = tiny_config(chunks=2), tiny_config(chunks=1)
  toy = ToySimCLR(norm="batch", axis_name=parallel.AXIS)
  runs = [(f"toy_chunked_{k}", toy, chunked, k) for k in (1, 4, 8)]
  runs += [("toy_unchunked_1", toy, unchunked, 1)]
  results = {}
  for key, model, c, k in runs:
    start = time.time()
    results[key] = run(model, c, k, data)
    print(f"{key}: {time.time() - start:.1f} s", flush=True)
  flat = {}
  for key, (metrics, params, stats) in results.items():
    flat[f"{key}/metrics"] = metrics
    for path, leaf in jax.tree_util.tree_leaves_with_path({"params": params, "stats": stats}):
      flat[f"{key}/{jax.tree_util.keystr(path)}"] = np.asarray(leaf)
  np.savez(out_path, **flat)


if __name__ == "__main__":
  main(sys.argv[1])
