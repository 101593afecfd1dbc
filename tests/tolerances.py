"""Comparisons of training trajectories that hold on any x86 CPU.

Two runs that differ only in reduction order (device count, process layout, CPU kernels)
drift apart by rounding noise, which training amplifies. Each test that compares such
runs states the drift it measured, on which CPUs, and the margin its bound leaves.
"""

import numpy as np
import orbax.checkpoint as ocp


def update_ratios(a: dict, b: dict, earlier: dict) -> dict[str, float]:
  """||a - b|| / ||a - earlier|| for every leaf of the parameter trees `a` and `b`."""
  flat_a, flat_b, flat_e = (ocp.tree.to_flat_dict(t) for t in (a, b, earlier))
  assert flat_a.keys() == flat_b.keys() == flat_e.keys() and len(flat_a) > 5
  return {k: float(np.linalg.norm(flat_a[k] - flat_b[k]) / np.linalg.norm(flat_a[k] - flat_e[k]))
          for k in flat_a}


def assert_same_updates(a: dict, b: dict, earlier: dict, rtol: float):
  """`a` and `b` agree to a fraction `rtol` of how far `a` moved since `earlier`, leaf by
  leaf.

  Measured against the update and not the parameter: LARS moves a kernel by ~1e-4 of its
  norm per step and BN scales start at 0, so an elementwise tolerance is either too
  tight for rounding noise or too loose to see a wrong update. A wrong batch, a broken
  resume or a gradient scaled by the device count is off by whole updates (ratio ~1).
  """
  for k, ratio in update_ratios(a, b, earlier).items():
    assert ratio <= rtol, f"{k}: ||a - b|| / ||a - earlier|| = {ratio:.2e} > {rtol}"
