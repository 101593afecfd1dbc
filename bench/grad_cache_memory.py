r"""Memory and time of one SimCLR train step vs config.loss.chunks (the gradient cache).

  python benchmarks/grad_cache_memory.py --config=configs/cifar10.py --chunks=1,4,16 \
      --config.batch_size=2048

Compiles the real data-parallel step (train_step.make_train_step, with
grad_cache.make_chunked_grad_fn when chunks > 1) on all local devices for random
images, and prints per chunk count: XLA's temporary buffer size of the compiled step
(activations and other scratch, per device; parameters and the batch excluded), its
compile time, the median step time and the loss. docs/scaling.md reports its output.
"""

import time

import simclr_jax  # noqa: F401  (XLA CPU flags before JAX starts)

from absl import app
from absl import flags
import jax
import numpy as np
from ml_collections import config_flags

from simclr_jax import grad_cache
from simclr_jax import models
from simclr_jax import train_step as ts

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_CHUNKS = flags.DEFINE_string("chunks", "1,4", "Comma-separated chunk counts.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per chunk count (after one warm-up).")


def measure(config, chunks: int, steps: int) -> dict:
  config = config.copy_and_resolve_references()
  config.loss.chunks = chunks
  mesh = ts.make_mesh()
  local = config.batch_size // jax.process_count()
  grad_cache.check_chunks(config.batch_size // jax.device_count(), chunks)
  model = models.create_model(config.model, num_classes=10, axis_name=ts.AXIS)
  tx, schedule = ts.create_optimizer(config, steps_per_epoch=100, total_steps=1000)
  size = config.data.image_size
  state = ts.replicate(ts.create_train_state(jax.random.PRNGKey(0), model, tx, size), mesh)
  grad_fn = grad_cache.make_chunked_grad_fn(model, config) if chunks > 1 else None
  step = ts.shard_train_step(ts.make_train_step(model, tx, schedule, config,
                                                grad_fn=grad_fn), mesh)
  rng = np.random.default_rng(0)
  batch = ts.shard_batch({
      "image1": rng.uniform(size=(local, size, size, 3)).astype(np.float32),
      "image2": rng.uniform(size=(local, size, size, 3)).astype(np.float32),
      "label": rng.integers(0, 10, local).astype(np.int32)}, mesh)
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return {"chunks": chunks, "temp_mib": memory.temp_size_in_bytes / 2**20,
          "compile_s": compile_s, "step_s": float(np.median(times)),
          "loss": float(metrics["loss"])}


def main(argv):
  del argv
  config = _CONFIG.value
  print(f"{jax.devices()[0].device_kind} x {jax.device_count()}, batch {config.batch_size}, "
        f"depth {config.model.depth} x{config.model.width_multiplier}, "
        f"{config.data.image_size} px, {config.model.dtype}", flush=True)
  print(f"{'chunks':>6} {'temp MiB':>10} {'compile s':>10} {'step s':>8} {'loss':>8}")
  for chunks in (int(c) for c in _CHUNKS.value.split(",")):
    r = measure(config, chunks, _STEPS.value)
    print(f"{r['chunks']:>6} {r['temp_mib']:>10.1f} {r['compile_s']:>10.1f} "
          f"{r['step_s']:>8.3f} {r['loss']:>8.4f}", flush=True)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
