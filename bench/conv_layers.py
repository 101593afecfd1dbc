r"""Every convolution of a train step, timed alone: a floor for the step time.

  python bench/conv_layers.py --preset=resnet18_cifar --batch_size=64

Reads the convolutions (shapes, strides, padding) from the model's own forward pass,
then times each one in isolation as its own jitted program: the forward convolution,
the gradient with respect to its input (not for the first one, whose input is the
image) and the gradient with respect to its kernel, each the fastest of --repeats
runs. Their sum is what the step spends in convolutions if nothing else ran and no
layout change were needed; compare it with bench/train_step.py's step time on the
same devices.
"""

import collections
import json
import time

from absl import app
from absl import flags

import harness  # noqa: F401 (sets up paths and XLA flags first)
import jax
import jax.numpy as jnp
import numpy as np

from simclr_jax import models

FLAGS = flags.FLAGS
flags.DEFINE_enum("preset", "resnet18_cifar", list(harness.PRESETS), "Model and image size.")
flags.DEFINE_integer("batch_size", 64, "Source images (2 views each): 2x this many per conv.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
flags.DEFINE_integer("repeats", 7, "Timed runs per convolution (the fastest counts).")
flags.DEFINE_float("warmup_s", 3.0, "Seconds of untimed convolutions first (thread pools, "
                   "allocator and clock settle; the first timings of a process run slow).")
flags.DEFINE_string("json", None, "Write the results here as JSON.")

Conv = collections.namedtuple("Conv", "lhs rhs params")


def _subjaxprs(eqn):
  for value in eqn.params.values():
    for v in value if isinstance(value, (list, tuple)) else (value,):
      if isinstance(v, jax.extend.core.ClosedJaxpr):
        yield v.jaxpr
      elif isinstance(v, jax.extend.core.Jaxpr):
        yield v


def find_convs(jaxpr) -> list[Conv]:
  """conv_general_dilated equations of `jaxpr` and its sub-jaxprs, in order."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "conv_general_dilated":
      found.append(Conv(eqn.invars[0].aval, eqn.invars[1].aval, dict(eqn.params)))
    for sub in _subjaxprs(eqn):
      found.extend(find_convs(sub))
  return found


def model_convs(config) -> list[Conv]:
  """The convolutions of one train-mode forward pass over 2 x batch_size views."""
  model = models.create_model(config.model)
  s = config.data.image_size
  x = jnp.zeros((2 * config.batch_size, s, s, 3), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x[:1], train=False))
  closed = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=True,
                                                   mutable=["batch_stats"]))(variables, x)
  return find_convs(closed.jaxpr)


def apply_fn(conv: Conv):
  """(x, w) -> the convolution, exactly as the model's forward pass runs it."""
  return lambda x, w: jax.lax.conv_general_dilated_p.bind(x, w, **conv.params)


def warm_up(conv: Conv, seconds: float) -> None:
  x = jnp.ones(conv.lhs.shape, conv.lhs.dtype)
  w = jnp.ones(conv.rhs.shape, conv.rhs.dtype)
  f = jax.jit(apply_fn(conv))
  end = time.perf_counter() + seconds
  while time.perf_counter() < end:
    jax.block_until_ready(f(x, w))


def _fastest_seconds(fn, *args) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(FLAGS.repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return min(times)


def time_conv(conv: Conv, with_input_grad: bool) -> dict[str, float]:
  """Fastest seconds for forward, input-gradient and kernel-gradient of one convolution.

  The fastest run, not the median: the sum is a floor, and this VM's noise only adds.
  """
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(conv.lhs.shape), conv.lhs.dtype)
  w = jnp.asarray(0.05 * rng.standard_normal(conv.rhs.shape), conv.rhs.dtype)
  f = apply_fn(conv)
  g = jnp.ones(jax.eval_shape(f, x, w).shape, conv.lhs.dtype)
  out = {"fwd": _fastest_seconds(jax.jit(f), x, w),
         "d_kernel": _fastest_seconds(jax.jit(lambda x, w, g: jax.vjp(
             lambda w: f(x, w), w)[1](g)[0]), x, w, g)}
  out["d_input"] = (_fastest_seconds(jax.jit(lambda x, w, g: jax.vjp(
      lambda x: f(x, w), x)[1](g)[0]), x, w, g) if with_input_grad else 0.0)
  return out


def conv_flops(conv: Conv, out_shape) -> float:
  """Multiply-adds x 2 of the forward convolution."""
  kh, kw, cin, _ = conv.rhs.shape
  return 2.0 * np.prod(out_shape) * kh * kw * cin / conv.params["feature_group_count"]


def main(argv):
  del argv
  config = harness.make_config(FLAGS.preset, FLAGS.batch_size, FLAGS.dtype)
  convs = model_convs(config)
  warm_up(max(convs, key=lambda c: np.prod(c.lhs.shape)), FLAGS.warmup_s)
  # Identical convolutions are timed once and counted as often as they occur.
  keys = [(c.lhs.shape, c.rhs.shape, str(sorted(c.params.items()))) for c in convs]
  counts = collections.Counter(keys)
  rows = []
  for i, conv in enumerate(convs):
    if keys[i] in keys[:i]:
      continue
    times = time_conv(conv, with_input_grad=i > 0)  # the image needs no gradient
    out_shape = jax.eval_shape(apply_fn(conv), conv.lhs, conv.rhs).shape
    rows.append({"input": list(conv.lhs.shape), "kernel": list(conv.rhs.shape),
                 "stride": list(conv.params["window_strides"]), "count": counts[keys[i]],
                 "gflop_fwd": conv_flops(conv, out_shape) / 1e9,
                 **{k + "_s": v for k, v in times.items()}})
  totals = {k: sum(r["count"] * r[k + "_s"] for r in rows)
            for k in ("fwd", "d_input", "d_kernel")}
  print(f"{'input':>18} {'kernel':>16} {'stride':>6} {'n':>2} {'GFLOP':>6} "
        f"{'fwd ms':>7} {'d_in ms':>7} {'d_kern ms':>9}")
  for r in rows:
    print(f"{str(tuple(r['input'])):>18} {str(tuple(r['kernel'])):>16} "
          f"{r['stride'][0]:>6} {r['count']:>2} {r['gflop_fwd']:6.2f} "
          f"{1e3 * r['fwd_s']:7.1f} {1e3 * r['d_input_s']:7.1f} {1e3 * r['d_kernel_s']:9.1f}")
  total = sum(totals.values())
  print(f"sum over the step's {len(convs)} convolutions: forward {totals['fwd']:.3f} s, "
        f"input gradients {totals['d_input']:.3f} s, kernel gradients "
        f"{totals['d_kernel']:.3f} s, total {total:.3f} s")
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump({"preset": FLAGS.preset, "batch_size": FLAGS.batch_size,
                 "dtype": FLAGS.dtype, "device_kind": jax.devices()[0].device_kind,
                 "jax": jax.__version__, "convolutions": rows,
                 "total_s": total, **{k + "_s": v for k, v in totals.items()}}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
