"""Shared pieces of the benchmarks: a SimCLR step on synthetic data, and timing."""

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from simclr_jax import platform  # noqa: E402
platform.configure_xla_flags()  # before the JAX backend starts
import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import base  # noqa: E402
from simclr_jax import models  # noqa: E402
from simclr_jax import parallel  # noqa: E402
from simclr_jax.models import fusion_barrier  # noqa: E402
from simclr_jax import train_step as ts  # noqa: E402

# Presets: the two models the issue asks about.
PRESETS = {
    "resnet18_cifar": dict(depth=18, cifar_stem=True, image_size=32, blur=False),
    "resnet50": dict(depth=50, cifar_stem=False, image_size=224, blur=True),
}


def make_config(preset: str, batch_size: int, dtype: str, width: float = 1.0,
                num_classes_probe: bool = True):
  p = PRESETS[preset]
  c = base.get_config()
  c.batch_size = batch_size
  c.data.image_size = p["image_size"]
  c.model.update(depth=p["depth"], cifar_stem=p["cifar_stem"], dtype=dtype,
                 width_multiplier=width, online_probe=num_classes_probe)
  c.augment.blur = p["blur"]  # ImageNet: blur on the device, inside the step
  c.augment.blur_on = "device"
  return c


def build_step(config, devices, num_classes: int = 1000, barrier: bool | None = None):
  """(jitted step, replicated state, sharded synthetic batch) on `devices`.

  config.loss.chunks > 1 uses the gradient cache, as the training program does.
  """
  mesh = parallel.make_mesh(devices)
  model = models.create_model(config.model, num_classes=num_classes if config.model.online_probe
                              else 0, axis_name=parallel.AXIS,
                              fusion_barrier=fusion_barrier.applies() if barrier is None
                              else barrier)
  tx, schedule = ts.create_optimizer(config, num_examples=1000 * config.batch_size,
                                     total_steps=100_000)
  state = ts.create_train_state(jax.random.PRNGKey(0), model, tx, config.data.image_size)
  state = parallel.replicate(state, mesh)
  step = ts.shard_train_step(ts.make_train_step(model, tx, schedule, config), mesh)
  rng = np.random.default_rng(0)
  s = config.data.image_size
  shape = (config.batch_size, s, s, 3)
  batch = {"image1": rng.uniform(size=shape).astype(np.float32),
           "image2": rng.uniform(size=shape).astype(np.float32),
           "label": rng.integers(0, num_classes, config.batch_size).astype(np.int32)}
  return step, state, parallel.shard_batch(batch, mesh)


def compile_step(step, state, batch):
  """(compiled executable, seconds to compile, FLOPs per step per device or None).

  FLOPs come from the lowered (pre-optimisation) HLO: after compilation GPU
  convolutions become library calls that XLA's cost analysis does not count.
  """
  lowered = step.lower(state, batch)
  try:
    analysis = lowered.cost_analysis()
    if isinstance(analysis, (list, tuple)):
      analysis = analysis[0]
    flops = float(analysis.get("flops", 0.0)) or None
  except Exception:  # cost analysis is optional on some backends
    flops = None
  t0 = time.perf_counter()
  compiled = lowered.compile()
  return compiled, time.perf_counter() - t0, flops


def flops_on_cpu(config) -> float | None:
  """FLOPs of one step per device, from the step lowered for one CPU device.

  The count depends only on the model and the per-device batch; accelerator backends
  may not report it for their lowered programs (jax 0.11 on GPU returned none).
  """
  step, state, batch = build_step(config, jax.devices("cpu")[:1])
  analysis = step.lower(state, batch).cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return float(analysis.get("flops", 0.0)) if analysis else None


def time_steps(compiled, state, batch, *, warmup: int, steps: int):
  """Median and all per-step wall times (s) after `warmup` steps; returns final state."""
  for _ in range(warmup):
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  return statistics.median(times), times, state
