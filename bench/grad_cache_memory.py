r"""Memory and time of one SimCLR train step vs config.loss.chunks (the gradient cache).

  python bench/grad_cache_memory.py --config=configs/cifar10.py --chunks=1,4,16 \
      --config.batch_size=2048

Compiles the real data-parallel step (train_step.make_train_step, through
grad_cache.chunked_grad when chunks > 1) on all local devices for random
images, and prints per chunk count: XLA's temporary buffer size of the compiled step
(activations and other scratch, per device; parameters and the batch excluded), its
compile time, the median step time and the loss. BENCHMARKS.md reports its output.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

import harness  # first: sets up paths and XLA flags
import jax

from simclr_jax import grad_cache

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_CHUNKS = flags.DEFINE_string("chunks", "1,4", "Comma-separated chunk counts.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per chunk count (after one warm-up).")


def measure(config, chunks: int, steps: int) -> dict:
  config = config.copy_and_resolve_references()
  config.loss.chunks = chunks
  grad_cache.check_chunks(config.batch_size // jax.device_count(), chunks)
  step, state, batch = harness.build_step(config, jax.devices(), num_classes=10)
  compiled, compile_s, _ = harness.compile_step(step, state, batch)
  memory = compiled.memory_analysis()
  median_s, _, state = harness.time_steps(compiled, state, batch, warmup=1, steps=steps)
  _, metrics = compiled(state, batch)
  return {"chunks": chunks, "temp_mib": memory.temp_size_in_bytes / 2**20,
          "compile_s": compile_s, "step_s": median_s, "loss": float(metrics["loss"])}


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
