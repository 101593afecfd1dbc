"""What keeps a run's work safe, in process: the non-finite message names what is on
disk, a failing evaluation is reported without stopping the run, unreadable
checkpoints are skipped (pretraining resume and `init_from`), small datasets skip the
evaluations they cannot run."""

import logging
import os
import signal

import numpy as np
import pytest

from configs import base
from simclr_jax import checkpointing
from simclr_jax import loop
from simclr_jax import pretrained as pretrained_lib
from simclr_jax import probe
from simclr_jax import small_data
from tests import pretrained_fixture

FINITE = {"loss": 1.0, "grad_norm": 1.0, "param_norm": 1.0}


def damage(step_dir: str) -> None:
  """Truncates the largest file of a checkpoint's state (a partly overwritten disk)."""
  files = [os.path.join(d, f) for d, _, names in os.walk(os.path.join(step_dir, "state"))
           for f in names]
  victim = max(files, key=os.path.getsize)
  with open(victim, "r+b") as f:
    f.truncate(os.path.getsize(victim) // 2)


def test_non_finite_message_says_what_is_on_disk(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path), keep=3, async_save=False)
  loop.check_finite(1, FINITE, ckpt)
  with pytest.raises(loop.NonFiniteError,
                     match=r"loss = nan at step 5: no checkpoint was written to .*rerunning "
                           "starts from step 0"):
    loop.check_finite(5, {**FINITE, "loss": float("nan")}, ckpt)
  ckpt.save(4, {"w": np.zeros(3, np.float32)}, {})
  ckpt.wait()
  with pytest.raises(loop.NonFiniteError,
                     match="param_norm = inf at step 6: the latest checkpoint is step 4 in "):
    loop.check_finite(6, {**FINITE, "param_norm": float("inf")}, ckpt)
  ckpt.close()


def test_failing_evaluation_is_reported_and_the_run_goes_on(caplog):
  def broken():
    raise ValueError("k must be at most the class count")
  with caplog.at_level(logging.ERROR):
    assert loop.evaluate_safely("Online-probe evaluation", 10, broken) is None
  assert "Online-probe evaluation at step 10 failed (ValueError: k must be" in caplog.text
  assert loop.evaluate_safely("kNN monitor", 12, lambda: {"knn_top1": 0.5}) == {
      "knn_top1": 0.5}


def save_pretraining_checkpoints(workdir: str, steps) -> None:
  """Checkpoints as pretraining writes them (state with params/batch_stats, meta with
  the config), with tiny stand-in weights: step s holds the value s."""
  ckpt = checkpointing.Checkpointer(workdir, keep=5, async_save=False)
  meta = checkpointing.config_meta(pretrained_fixture.tiny_config())
  for step in steps:
    w = np.full(1000, step, np.float32)
    ckpt.save(step, {"params": {"dense": {"kernel": w}}, "batch_stats": {"bn": {"mean": w}},
                     "step": np.int32(step)}, meta)
  ckpt.wait()
  ckpt.close()


def test_init_from_skips_an_unreadable_latest_checkpoint(tmp_path, caplog):
  workdir = str(tmp_path)
  save_pretraining_checkpoints(workdir, (3, 7))
  assert pretrained_lib.load_pretrained(workdir).step == 7
  damage(os.path.join(workdir, "checkpoints", "7"))
  with caplog.at_level(logging.WARNING):
    pretrained = pretrained_lib.load_pretrained(workdir)
  assert pretrained.step == 3 and pretrained.config.model.width_multiplier == 0.125
  assert np.all(pretrained.variables["params"]["dense"]["kernel"] == 3)
  assert "checkpoints/7 does not restore" in caplog.text and "skipped step 7" in caplog.text
  # The step named explicitly is not replaced by another one.
  with pytest.raises(Exception):
    pretrained_lib.load_pretrained(os.path.join(workdir, "checkpoints", "7"))


def test_resume_skips_unreadable_checkpoints_or_says_none_restores(tmp_path, caplog):
  ckpt = checkpointing.Checkpointer(str(tmp_path), keep=5, async_save=False)
  for step in (2, 4, 6):
    ckpt.save(step, {"w": np.full(1000, step, np.float32)}, {"step": step})
  ckpt.wait()
  ckpt.close()
  directory = os.path.join(tmp_path, "checkpoints")
  for step in (4, 6):
    damage(os.path.join(directory, str(step)))
  target = {"w": np.zeros(1000, np.float32)}
  ckpt = checkpointing.Checkpointer(str(tmp_path), keep=5, async_save=False)
  with caplog.at_level(logging.WARNING):
    state, meta = ckpt.restore_newest_readable(checkpointing.abstract_like(target))
  assert meta == {"step": 2} and np.all(np.asarray(state["w"]) == 2)
  assert "Checkpoint step 6 in" in caplog.text and "skipped unreadable" in caplog.text
  assert sorted(os.listdir(directory)) == ["2", "4.unreadable", "6.unreadable"]
  assert ckpt.latest_step() == 2
  ckpt.save(4, target, {})  # the run can write those steps again
  ckpt.wait()
  ckpt.close()
  # Nothing restores: an error naming each step; nothing is renamed.
  for step in (2, 4):
    damage(os.path.join(directory, str(step)))
  ckpt = checkpointing.Checkpointer(str(tmp_path), keep=5, async_save=False)
  with pytest.raises(checkpointing.CheckpointError, match="no checkpoint in .* restores "
                     r"\(step 4: .*; step 2: .*\): move the directory away"):
    ckpt.restore_newest_readable(checkpointing.abstract_like(target))
  assert sorted(os.listdir(directory)) == ["2", "4", "4.unreadable", "6.unreadable"]
  ckpt.close()


class FakeSource:
  name = "folder:/imgs"
  classes = ["cat", "dog", "eel"]
  num_classes = 3

  def __init__(self, train_counts, num_eval):
    self.counts, self.num_eval = np.asarray(train_counts), num_eval

  def num_examples(self, split):
    return int(self.counts.sum()) if split == "train" else self.num_eval

  def class_counts(self, split):
    return self.counts if split == "train" else None


def _config(shots=5, final=True):
  c = base.get_config()
  c.evals.linear_probes.shots = shots
  c.evals.linear_probes.every_steps = 0 if final else -1
  return c


@pytest.mark.parametrize("counts,num_eval,expected,notes", [
    ([9, 9, 9], 3, dict(top5=False), ["3 classes: top-5 accuracy is not reported"]),
    ([9, 4, 2], 3, dict(top5=False, few_shot=False),
     ["2 class(es) of split 'train' have fewer than evals.linear_probes.shots = 5 images "
      "(dog: 4, eel: 2): the final 5-shot probe is skipped"]),
    ([9, 0, 0], 3, dict(top5=False, probes=False, few_shot=False),
     ["images of 1 class(es): the final linear probes (at least 2) are skipped"]),
    ([9, 9, 9], 0, dict(top5=False, eval_split=False, probes=False, few_shot=False),
     ["split 'test' of 'folder:/imgs' has no images: the online probe, kNN monitor and "
      "final probes are skipped"]),
])
def test_small_data_plan(counts, num_eval, expected, notes):
  plan = small_data.plan(_config(), FakeSource(counts, num_eval))
  want = dict(eval_split=True, top5=True, probes=True, few_shot=True)
  want.update(expected)
  assert {k: getattr(plan, k) for k in want} == want
  for note in notes:
    assert any(note in n for n in plan.notes), (note, plan.notes)


def test_probe_without_few_shot():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(40, 4)).astype(np.float32)
  y = (x[:, 0] > 0).astype(int)
  acc = probe.probe_accuracies((x, y), (x, y), shots=0, draws=3)
  assert list(acc) == ["top1"] and acc["top1"] > 0.9


def test_first_ctrl_c_asks_for_a_save_the_second_interrupts():
  # Python's own Ctrl-C handler, as in main.py (a test worker's may have been replaced).
  outer = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    with checkpointing.PreemptionFlag() as flag:
      os.kill(os.getpid(), signal.SIGINT)
      assert flag.requested
      with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
  finally:
    signal.signal(signal.SIGINT, outer)
