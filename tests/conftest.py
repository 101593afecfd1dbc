"""Process settings of the tests (those main.py makes, before any test starts JAX), and
the fixtures several test files share."""

import contextlib
import fcntl
import os
import pickle

import pytest

from simclr_jax import platform

platform.configure_xla_flags()
platform.hide_accelerators_from_tensorflow()


@contextlib.contextmanager
def _built_once(tmp_path_factory, name: str):
  """Yields (directory, done): one directory per test session, shared by the xdist
  workers; the first to take the lock builds it (done False), the others wait and
  find it built (done True). The builder writes `<directory>/done` when finished."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # the session's directory, above the workers' own
  directory = root / name
  with open(root / f"{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    directory.mkdir(exist_ok=True)
    yield directory, (directory / "done").exists()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
  """(workdir, variables, config): pretrained_fixture.make_checkpoint of the tiny 16 px
  ResNet-18 with a 3-layer head, built once per test session. The workdir holds
  checkpoints at steps 3 and 7; variables are step 7's without the online probe. Tests
  must not write into the workdir, and should copy config before changing it."""
  from tests import pretrained_fixture  # pylint: disable=import-outside-toplevel
  config = pretrained_fixture.tiny_config(head_num_layers=3, image_size=16)
  with _built_once(tmp_path_factory, "tiny_checkpoint") as (root, done):
    workdir = root / "pretrain"
    if not done:
      variables = pretrained_fixture.make_checkpoint(str(workdir), config)
      with open(root / "variables.pkl", "wb") as f:
        pickle.dump(variables, f)
      (root / "done").touch()
    with open(root / "variables.pkl", "rb") as f:
      variables = pickle.load(f)
  return str(workdir), variables, config
