"""The data-parallel train step: device-count invariance (the heart of the suite)."""

import numpy as np
import pytest

from tests.subproc import run_worker


@pytest.fixture(scope="module")
def invariance_results(tmp_path_factory):
  out = tmp_path_factory.mktemp("invariance") / "results.npz"
  run_worker("train_step_invariance.py", str(out), devices=8)
  return dict(np.load(out))


def _group(results, key):
  return {k.split("/", 1)[1]: v for k, v in results.items() if k.split("/", 1)[0] == key}


@pytest.mark.parametrize("devices", ["1", "2", "4", "8"])
def test_sharded_step_equals_plain_single_device_update(invariance_results, devices):
  """k devices x local batch 16/k and the unsharded reference on the same global batch
  give the same losses, BN statistics and parameters after 3 steps."""
  ref = _group(invariance_results, "ref")
  got = _group(invariance_results, devices)
  assert set(ref) == set(got)
  assert len(ref) > 50  # params and BN statistics of a real ResNet
  np.testing.assert_allclose(got["loss"], ref["loss"], rtol=1e-5, atol=1e-6)
  for name in ref:
    np.testing.assert_allclose(got[name], ref[name], rtol=2e-4, atol=2e-6, err_msg=name)


def test_parameters_and_statistics_actually_moved(invariance_results):
  """Guards the comparison above against a step that updates nothing."""
  ref, init = _group(invariance_results, "ref"), _group(invariance_results, "init")
  kernels = [k for k in ref if k.startswith("['params']") and "kernel" in k]
  stats = [k for k in ref if k.startswith("['stats']")]
  assert kernels and stats
  assert all(np.abs(ref[k] - init[k]).max() > 1e-6 for k in kernels)
  assert all(np.abs(ref[k] - init[k]).max() > 1e-6 for k in stats)
