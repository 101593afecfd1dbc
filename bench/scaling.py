r"""Step time vs global batch size on 8 devices, and the NT-Xent share of the step.

  python bench/scaling.py --batch_sizes=64,128,256,512 --json=scaling.json

Runs on 8 virtual CPU devices (it sets XLA_FLAGS itself before JAX starts). The
NT-Xent part is timed on its own: forward and backward of `losses.nt_xent` over
random [n, 128] embeddings per device, gathered across devices, which is the O(n x 2N)
work the loss adds to each step.
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import harness  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from simclr_jax import losses  # noqa: E402
from simclr_jax import parallel  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("batch_sizes", ["64", "128", "256", "512"], "Global batch sizes.")
flags.DEFINE_enum("preset", "resnet18_cifar", list(harness.PRESETS), "Model preset.")
flags.DEFINE_float("width", 0.125, "ResNet width multiplier (small: 8 devices share 2 cores).")
flags.DEFINE_integer("image_size", 16, "Image side, px.")
flags.DEFINE_integer("steps", 5, "Timed steps per batch size.")
flags.DEFINE_string("json", None, "Write the table here as JSON.")


def time_nt_xent(mesh, global_batch: int, dim: int, steps: int) -> float:
  """Median seconds of NT-Xent forward + backward w.r.t. z on `mesh`."""
  def per_device(z_a, z_b):
    grad = jax.grad(lambda a, b: losses.nt_xent(a, b, temperature=0.1,
                                                axis_name=parallel.AXIS)[0], argnums=(0, 1))
    g_a, g_b = grad(z_a, z_b)
    return (jnp.sum(g_a) + jnp.sum(g_b))[None]  # one value per device
  fn = parallel.data_parallel(per_device, mesh, in_specs=(parallel.SPLIT, parallel.SPLIT),
                              out_specs=parallel.SPLIT)
  key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
  z_a = jax.random.normal(key_a, (global_batch, dim))
  z_b = jax.random.normal(key_b, (global_batch, dim))
  compiled = fn.lower(z_a, z_b).compile()
  median, _, _ = harness.time_steps(lambda s, b: (s, compiled(*b)), None, (z_a, z_b),
                                    warmup=2, steps=steps)
  return median


def main(argv):
  del argv
  devices = jax.devices()
  rows = []
  for batch_size in map(int, FLAGS.batch_sizes):
    config = harness.make_config(FLAGS.preset, batch_size, "float32", FLAGS.width)
    config.data.image_size = FLAGS.image_size
    step, state, batch = harness.build_step(config, devices, num_classes=10)
    compiled, compile_s, _ = harness.compile_step(step, state, batch)
    step_s, _, _ = harness.time_steps(compiled, state, batch, warmup=2, steps=FLAGS.steps)
    loss_s = time_nt_xent(parallel.make_mesh(devices), batch_size,
                          config.model.proj_dim, FLAGS.steps)
    rows.append({"devices": len(devices), "global_batch": batch_size,
                 "per_device_batch": batch_size // len(devices), "step_s": step_s,
                 "images_per_s": batch_size / step_s, "nt_xent_s": loss_s,
                 "nt_xent_share": loss_s / step_s, "compile_s": compile_s})
  header = list(rows[0])
  print(" | ".join(f"{h:>16}" for h in header))
  for row in rows:
    print(" | ".join(f"{row[h]:>16.4g}" if isinstance(row[h], float) else f"{row[h]:>16}"
                     for h in header))
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump({"model": f"{FLAGS.preset} width {FLAGS.width} at {FLAGS.image_size}px",
                 "rows": rows}, f, indent=2)


if __name__ == "__main__":
  app.run(main)
