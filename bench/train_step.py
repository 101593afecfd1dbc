r"""Steady-state speed of the SimCLR train step on synthetic data.

  python bench/train_step.py --preset=resnet18_cifar --batch_size=64 --dtype=float32
  python bench/train_step.py --preset=resnet50 --batch_size=256 --dtype=bfloat16 --json=out.json

Images are source images (two views each). Compile time is reported separately; the
step time is the median over --steps timed steps after --warmup steps. --profile=DIR
writes a JAX profiler trace of a few steps.
"""

import json
import platform

from absl import app
from absl import flags

import harness  # noqa: F401 (sets up paths and XLA flags first)
import jax

from simclr_jax.models import fusion_barrier

FLAGS = flags.FLAGS
flags.DEFINE_enum("preset", "resnet18_cifar", list(harness.PRESETS), "Model and image size.")
flags.DEFINE_integer("batch_size", 64, "Global batch of source images (2 views each).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
flags.DEFINE_float("width", 1.0, "ResNet width multiplier.")
flags.DEFINE_integer("devices", 0, "Devices to use (0 = all).")
flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
flags.DEFINE_integer("steps", 10, "Timed steps.")
flags.DEFINE_float("peak_tflops", 0.0,
                   "Device peak (TFLOP/s) for the utilisation figure; 0 = known GPUs' "
                   "dense bf16 peak, else none.")
flags.DEFINE_string("json", None, "Write the results here as JSON.")
flags.DEFINE_string("profile", None, "Write a JAX profiler trace of 3 steps to this dir.")
flags.DEFINE_bool("fusion_barrier", True,
                  "CPU backend: keep models/fusion_barrier.py on (false: for an A/B).")

# Dense bf16 tensor-core peaks (vendor data sheets, SXM parts).
KNOWN_PEAKS_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def peak_tflops(device) -> float | None:
  if FLAGS.peak_tflops > 0:
    return FLAGS.peak_tflops
  kind = getattr(device, "device_kind", "")
  return next((v for k, v in KNOWN_PEAKS_TFLOPS.items() if k in kind), None)


def main(argv):
  del argv
  devices = jax.devices()[:FLAGS.devices or None]
  config = harness.make_config(FLAGS.preset, FLAGS.batch_size, FLAGS.dtype, FLAGS.width)
  step, state, batch = harness.build_step(config, devices, barrier=FLAGS.fusion_barrier and
                                          fusion_barrier.applies())
  compiled, compile_s, flops = harness.compile_step(step, state, batch)
  median_s, times, state = harness.time_steps(compiled, state, batch, warmup=FLAGS.warmup,
                                              steps=FLAGS.steps)
  if FLAGS.profile:
    with jax.profiler.trace(FLAGS.profile):
      harness.time_steps(compiled, state, batch, warmup=0, steps=3)
  result = {
      "preset": FLAGS.preset, "batch_size": FLAGS.batch_size, "dtype": FLAGS.dtype,
      "width": FLAGS.width, "devices": len(devices),
      "fusion_barrier": FLAGS.fusion_barrier and fusion_barrier.applies(),
      "device_kind": devices[0].device_kind, "platform": devices[0].platform,
      "host": platform.node(), "jax": jax.__version__,
      "compile_s": compile_s, "step_s_median": median_s,
      "step_s_min": min(times), "step_s_max": max(times),
      "images_per_s": FLAGS.batch_size / median_s,
      "views_per_s": 2 * FLAGS.batch_size / median_s,
  }
  if not flops and devices[0].platform != "cpu":
    per_device = harness.make_config(FLAGS.preset, FLAGS.batch_size // len(devices),
                                     FLAGS.dtype, FLAGS.width)
    flops = harness.flops_on_cpu(per_device)
  if flops:
    # cost_analysis counts one device's program; the step runs on every device.
    achieved = flops * len(devices) / median_s / 1e12
    result.update(tflops_per_step=flops * len(devices) / 1e12, achieved_tflops=achieved)
    peak = peak_tflops(devices[0])
    if peak:
      result.update(peak_tflops=peak * len(devices), fraction_of_peak=achieved /
                    (peak * len(devices)))
  width = max(len(k) for k in result)
  for k, v in result.items():
    print(f"{k:<{width}}  {v:.4g}" if isinstance(v, float) else f"{k:<{width}}  {v}")
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  app.run(main)
