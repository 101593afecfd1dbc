"""An identity that XLA's CPU compiler cannot fuse through: a CPU speed workaround.

For the kernel gradient of each convolution, XLA CPU stores the layer's input
activation transposed to [C, H, W, N]. It fuses the BatchNorm + ReLU that produce the
activation into that transpose, so the transpose recomputes them in a loop that reads
its input with a large stride: 3-7x slower than a plain transpose of the stored
activation. `lax.optimization_barrier` does not keep them apart (XLA CPU removes it
before fusion), but XLA never fuses a collective: a collective permute that sends
every device's block to itself returns its input unchanged and makes XLA store the
activation, then transpose it plainly. For the ResNet-18 (CIFAR stem) step on 64
images on a 2-core CPU that was 3.2-3.6 s instead of 3.7-4.0 s in interleaved runs
(BENCHMARKS.md). The barrier applies to the forward pass only (its gradient is the
plain identity).
"""

import functools

import jax
from jax import lax


def applies() -> bool:
  """True where the barrier pays: XLA's CPU backend (GPU/TPU fuse differently).

  The training program builds its model with `fusion_barrier=applies()`.
  """
  return jax.default_backend() == "cpu"


def _self_permute(x: jax.Array, axis_name: str) -> jax.Array:
  size = lax.axis_size(axis_name)
  return lax.ppermute(x, axis_name, perm=[(i, i) for i in range(size)])


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def fusion_barrier(x: jax.Array, axis_name: str) -> jax.Array:
  """x unchanged, as a value XLA stores instead of fusing into its consumers.

  Call where `axis_name` is a bound mapped axis (inside shard_map or pmap).
  """
  return _self_permute(x, axis_name)


def _forward(x, axis_name):
  return _self_permute(x, axis_name), None


def _backward(axis_name, residual, g):
  del axis_name, residual
  return (g,)


fusion_barrier.defvjp(_forward, _backward)
