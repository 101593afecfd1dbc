"""Checkpoints from the command line: exact resume after SIGKILL, partial and unreadable
checkpoints, SIGTERM and Ctrl-C, non-finite losses, and a workdir resumed with another
model. End-to-end on the offline digits dataset."""

import glob
import os
import shutil
import signal

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from simclr_jax import checkpointing
from tests import cli
from tests.test_run_safety import damage

pytestmark = pytest.mark.slow

STEPS = 8
RUN = (*cli.TINY, f"--config.num_train_steps={STEPS}", "--config.log_every_steps=1",
       "--config.checkpoint_every_steps=2", "--config.evals.online_probe.every_steps=1000",
       "--config.keep_checkpoints=10")


def final_params(workdir: str, step: int | None = None) -> tuple[int, dict]:
  """(step, params) of a run's checkpoint at `step` (default the latest), as host
  arrays (any device layout)."""
  directory = os.path.join(workdir, "checkpoints")
  if step is None:
    with ocp.CheckpointManager(directory, item_names=("state", "meta")) as manager:
      step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f"no complete checkpoint in {directory}")
  path = os.path.join(directory, str(step), "state")
  checkpointer = ocp.PyTreeCheckpointer()
  item = checkpointer.metadata(path).item_metadata.tree
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  state = checkpointer.restore(path, args=ocp.args.PyTreeRestore(item=item,
                                                                 restore_args=restore_args))
  return step, state["params"]


def assert_same_params(a: dict, b: dict, rtol: float = 1e-5, atol: float = 1e-6):
  leaves_a, leaves_b = ocp.tree.to_flat_dict(a), ocp.tree.to_flat_dict(b)
  assert leaves_a.keys() == leaves_b.keys() and len(leaves_a) > 50
  for k in leaves_a:
    np.testing.assert_allclose(leaves_a[k], leaves_b[k], rtol=rtol, atol=atol, err_msg=str(k))


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  """The reference: STEPS steps without interruption."""
  workdir = str(tmp_path_factory.mktemp("straight"))
  cli.run_main("configs/digits.py", workdir, *RUN)
  return workdir


def test_sigkill_then_resume_equals_uninterrupted_run(straight_run, tmp_path):
  workdir = str(tmp_path / "killed")
  # Share the built dataset so the killed run starts training quickly.
  shutil.copytree(os.path.join(straight_run, "tfds"), os.path.join(workdir, "tfds"))
  proc = cli.start_main("configs/digits.py", workdir, *RUN)
  cli.wait_for_step(workdir, STEPS // 2 + 1, proc)
  cli.kill(proc, signal.SIGKILL)
  steps_before = max(cli.losses_by_step(workdir))
  assert steps_before < STEPS, "the run finished before it could be killed"
  cli.run_main("configs/digits.py", workdir, *RUN)

  expected, got = cli.losses_by_step(straight_run), cli.losses_by_step(workdir)
  assert sorted(got) == list(range(1, STEPS + 1)) == sorted(expected)
  np.testing.assert_allclose([got[s] for s in sorted(got)],
                             [expected[s] for s in sorted(expected)], rtol=1e-5)
  step_a, params_a = final_params(straight_run)
  step_b, params_b = final_params(workdir)
  assert step_a == step_b == STEPS
  assert_same_params(params_a, params_b)


def test_partial_checkpoint_is_ignored(straight_run, tmp_path):
  """A save killed before Orbax finalised it (a tmp directory, or a step directory left
  without its metadata) is skipped; the run resumes from the previous complete one."""
  workdir = str(tmp_path / "partial")
  shutil.copytree(straight_run, workdir)
  ckpts = os.path.join(workdir, "checkpoints")
  for step in (STEPS, STEPS - 2):  # keep complete checkpoints up to STEPS - 4
    shutil.rmtree(os.path.join(ckpts, str(step)))
  # What a kill during the save of step STEPS - 2 leaves behind: a temporary directory.
  partial = os.path.join(ckpts, f"{STEPS - 2}.orbax-checkpoint-tmp-1234567890")
  shutil.copytree(os.path.join(ckpts, str(STEPS - 4)), partial)
  for f in glob.glob(os.path.join(partial, "state", "*"))[:2]:
    shutil.rmtree(f) if os.path.isdir(f) else os.remove(f)
  proc = cli.run_main("configs/digits.py", workdir, *RUN)
  assert f"Resumed from step {STEPS - 4}" in proc.stderr
  step, params = final_params(workdir)
  _, expected = final_params(straight_run)
  assert step == STEPS
  assert_same_params(params, expected)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT],
                         ids=["SIGTERM", "SIGINT"])
def test_sigterm_or_ctrl_c_saves_and_exits_cleanly(straight_run, tmp_path, sig):
  workdir = str(tmp_path / "preempted")
  shutil.copytree(os.path.join(straight_run, "tfds"), os.path.join(workdir, "tfds"))
  many = (*RUN[:-4], "--config.num_train_steps=400", "--config.log_every_steps=1",
          "--config.checkpoint_every_steps=1000",
          "--config.evals.online_probe.every_steps=1000")
  proc = cli.start_main("configs/digits.py", workdir, *many)
  cli.wait_for_step(workdir, 3, proc)
  assert cli.kill(proc, sig) == 0
  step, _ = final_params(workdir)
  assert 3 <= step < 400  # saved where it stopped, not at a checkpoint interval
  assert f"saved step {step}, exiting" in proc.stdout.read()


def test_unreadable_checkpoint_is_skipped_and_non_finite_loss_keeps_the_good_one(
    straight_run, tmp_path):
  """Resumes a good run whose latest checkpoint is damaged, with an exploding learning
  rate: the damaged one is skipped (and kept aside), the first non-finite step stops the
  run with an error naming it and the checkpoint on disk, which stays the good one."""
  workdir = str(tmp_path / "nan")
  shutil.copytree(straight_run, workdir)
  ckpts = os.path.join(workdir, "checkpoints")
  shutil.rmtree(os.path.join(ckpts, str(STEPS)))
  damaged, good_step = STEPS - 2, STEPS - 4
  damage(os.path.join(ckpts, str(damaged)))
  _, good_params = final_params(workdir, good_step)
  proc = cli.run_main("configs/digits.py", workdir, *RUN, "--config.optim.base_lr=1e30",
                      "--config.checkpoint_every_steps=1", check=False)
  assert proc.returncode != 0
  assert (f"Checkpoint step {damaged} in {ckpts} does not restore" in proc.stderr
          and f"Resumed from step {good_step}" in proc.stderr), proc.stderr[-3000:]
  assert (f"at step {good_step + 1}: the latest checkpoint is step {good_step} in {ckpts}"
          in proc.stderr), proc.stderr[-3000:]
  assert sorted(os.listdir(ckpts)) == [str(s) for s in range(2, good_step + 1, 2)] + [
      f"{damaged}.unreadable"]
  step, params = final_params(workdir)
  assert step == good_step
  assert_same_params(params, good_params)


def test_resume_with_another_model_is_refused_before_writing(straight_run, tmp_path):
  workdir = str(tmp_path / "other_model")
  shutil.copytree(straight_run, workdir)
  before = {f: open(os.path.join(workdir, f), "rb").read()
            for f in ("config_pretrain.json", "metrics.jsonl")}
  proc = cli.run_main("configs/digits.py", workdir, *RUN,
                      "--config.model.width_multiplier=0.25", "--config.model.depth=34",
                      check=False, timeout=300)
  assert proc.returncode != 0
  assert ("checkpoint has model.depth = 18, this run 34; model.width_multiplier = 0.125, "
          "this run 0.25" in proc.stderr), proc.stderr[-3000:]
  assert "Event loop is closed" not in proc.stderr
  for f, data in before.items():
    assert open(os.path.join(workdir, f), "rb").read() == data, f
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == sorted(
      os.listdir(os.path.join(straight_run, "checkpoints")))


def test_save_if_due_saves_on_cadence_last_step_and_preemption(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path), keep=10, async_save=False)
  flag = checkpointing.PreemptionFlag()
  state, checks = {"w": np.zeros(2, np.float32)}, []
  stops = {}
  for step in range(1, 8):
    flag.requested = step == 5
    stops[step] = ckpt.save_if_due(step, state, {}, every=3, last=step == 7, preempted=flag,
                                   before_save=lambda s=step: checks.append(s))
  ckpt.wait()
  assert sorted(ckpt.manager.all_steps()) == [3, 5, 6, 7]
  assert checks == [3, 5, 6, 7]
  assert [s for s, stop in stops.items() if stop] == [5]
  ckpt.close()
