"""Data parallelism: the batch mesh axis, placing arrays on it, and mapping steps over it.

Steps are written per device, in the pmap programming model: each sees its local share
of the global batch and talks to the other devices through collectives over `AXIS`.
`data_parallel` maps such a function over a 1-D device mesh with `jax.shard_map` under
`jax.jit`.
"""

from typing import Any, Callable

import jax
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "batch"  # name of the data-parallel mesh axis
REPLICATED = P()  # every device holds the whole value
SPLIT = P(AXIS)  # split along the leading (batch) dimension


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D data-parallel mesh over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else devices
  return jax.sharding.Mesh(devices, (AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def replicate(tree, mesh: jax.sharding.Mesh):
  """Places a host pytree on every device of `mesh` (a replicated global array)."""
  return jax.device_put(tree, NamedSharding(mesh, REPLICATED))


def shard_batch(local_batch: dict, mesh: jax.sharding.Mesh) -> dict:
  """Assembles global arrays split along AXIS from this process's share of the batch."""
  sharding = NamedSharding(mesh, SPLIT)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x),
                      local_batch)


def data_parallel(fn: Callable, mesh: jax.sharding.Mesh, *, in_specs, out_specs,
                  donate_argnums=()) -> Callable:
  """jit(shard_map(fn)) over `mesh`: each argument/output REPLICATED or SPLIT.

  check_vma=False gives the pmap semantics the per-device functions are written for;
  every REPLICATED output must be made identical across devices (pmean/psum) by `fn`.
  """
  mapped = jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                         check_vma=False)
  return jax.jit(mapped, donate_argnums=donate_argnums)


def mean_update(tx: optax.GradientTransformation, grads, params,
                opt_state) -> tuple[Any, Any, Any]:
  """One optimiser update from this device's gradients: `(mean grads, params, opt_state)`.

  Under data_parallel each device holds d(sum of all devices' losses)/d(its params copy)
  (or of its own loss); the mean over devices is the gradient of the global mean loss.
  """
  grads = jax.lax.pmean(grads, AXIS)
  updates, opt_state = tx.update(grads, opt_state, params)
  return grads, optax.apply_updates(params, updates), opt_state
