"""The training loop in process, with a trivial step: an evaluator registered at test
time runs at its config entry's cadence, after the step's checkpoint is complete on
disk; a failing one is logged and the run goes on; a step's evaluations form one
record, the last one marked done; a run resumed at its end evaluates only that step."""

import logging
import os
import types

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from simclr_jax import checkpointing
from simclr_jax import evaluators
from simclr_jax import loop
from simclr_jax import metric_log
from simclr_jax import parallel
from simclr_jax import train

CALLS = []  # (entry name, step evaluated, latest checkpoint, its directory complete)


class Recorder:
  """A test evaluator: records what it saw; raises at `entry.fail_at`."""

  def __init__(self, entry, ctx):
    self.entry, self.ckpt = entry, ctx.ckpt

  def run(self, state):
    step = int(state.step)
    latest = self.ckpt.latest_step()
    complete = checkpointing.is_step_dir(os.path.join(self.ckpt.directory, str(step)))
    CALLS.append((self.entry.name, step, latest, complete))
    if step == self.entry.fail_at:
      raise RuntimeError("broken evaluator")
    return {f"{self.entry.name}_step": float(step)}


class State(flax.struct.PyTreeNode):
  step: jax.Array
  params: dict
  batch_stats: dict


def entry(name, every_steps, fail_at=-1):
  return ml_collections.ConfigDict(dict(type="recorder", every_steps=every_steps, name=name,
                                        fail_at=fail_at))


def step_fn(state, batch):
  return (state.replace(step=state.step + 1, params={"w": state.params["w"] + 1.0}),
          {"loss": jnp.mean(batch["x"]) + 1.0})


def batches():
  while True:
    yield {"x": np.ones((8, 1), np.float32)}


def run_loop(workdir, state, evals, ckpt, total=7):
  mesh = parallel.make_mesh()
  log = metric_log.MetricLog(workdir)
  try:
    return loop.train(step_fn, state, batches(), loop.Cadence(total, 2, 8, log_every=2,
                                                               checkpoint_every=3),
                      mesh=mesh, log=log, ckpt=ckpt, meta={}, evaluations=evals)
  finally:
    log.close()


def test_registered_evaluator_runs_at_its_cadence_after_the_checkpoint(
    tmp_path, monkeypatch, caplog):
  monkeypatch.setitem(evaluators.REGISTRY, "recorder", f"{__name__}:Recorder")
  CALLS.clear()
  workdir = str(tmp_path)
  config = ml_collections.ConfigDict()
  config.evals = ml_collections.ConfigDict(dict(
      every3=entry("every3", 3, fail_at=6), at_end=entry("at_end", 0), off=entry("off", -1)))
  ckpt = checkpointing.Checkpointer(workdir, keep=10)  # asynchronous saves
  # What Recorder reads of the run (a Run has the contract's attributes).
  evals = train.evaluations(types.SimpleNamespace(config=config, ckpt=ckpt))
  assert [e.name for e in evals] == ["evals.at_end", "evals.every3"]
  state = parallel.replicate(State(step=jnp.zeros((), jnp.int32),
                                   params={"w": jnp.zeros(3)}, batch_stats={}),
                             parallel.make_mesh())
  with caplog.at_level(logging.ERROR):
    state, done, final = run_loop(workdir, state, evals, ckpt)
  assert done and int(state.step) == 7
  # every3 at 3, 6 and the last step; at_end at the last step only; each after the
  # step's checkpoint (every 3 steps and the last) is complete on disk.
  assert CALLS == [("every3", 3, 3, True), ("every3", 6, 6, True),
                   ("at_end", 7, 7, True), ("every3", 7, 7, True)]
  assert "evals.every3 at step 6 failed (RuntimeError: broken evaluator)" in caplog.text
  records = metric_log.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  evaluated = [r for r in records if any(k.endswith("_step") for k in r)]
  assert [r["step"] for r in evaluated] == [3, 7]  # step 6's only evaluation failed
  assert evaluated[-1] == {"step": 7, "at_end_step": 7.0, "every3_step": 7.0,
                           loop.DONE_KEY: final[loop.DONE_KEY]}
  assert final == {k: v for k, v in evaluated[-1].items() if k != "step"}
  assert loop.last_step_done(records, 7) and not loop.last_step_done(records[:-1], 7)
  assert [r["step"] for r in records if "loss" in r] == [2, 4, 6, 7]
  assert all(r["loss"] == 2.0 for r in records if "loss" in r)
  # Resumed at its last step (its evaluations not recorded): evaluates only that step.
  CALLS.clear()
  state, done, final = run_loop(workdir, state, evals, ckpt)
  assert done and [c[:2] for c in CALLS] == [("at_end", 7), ("every3", 7)]
  assert final["every3_step"] == 7.0 and loop.DONE_KEY in final
  ckpt.close()


def test_a_failing_last_evaluation_leaves_the_run_unfinished(tmp_path, monkeypatch):
  monkeypatch.setitem(evaluators.REGISTRY, "recorder", f"{__name__}:Recorder")
  workdir = str(tmp_path)
  ckpt = checkpointing.Checkpointer(workdir, keep=10, async_save=False)
  recorder = Recorder(entry("last", 0, fail_at=4), types.SimpleNamespace(ckpt=ckpt))
  state = parallel.replicate(State(step=jnp.zeros((), jnp.int32),
                                   params={"w": jnp.zeros(3)}, batch_stats={}),
                             parallel.make_mesh())
  _, done, final = run_loop(workdir, state, [loop.Evaluation("last", 0, recorder.run)],
                            ckpt, total=4)
  assert done and final == {}
  records = metric_log.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert not loop.last_step_done(records, 4)  # a re-run evaluates again
  ckpt.close()


def test_supervised_non_finite_message_names_the_prefixed_metric():
  with pytest.raises(loop.NonFiniteError, match="non-finite finetune_train_loss = nan at "
                     "step 3: this run writes no checkpoints"):
    loop.check_finite(3, {"train_loss": float("nan")}, None, ("train_loss",), "finetune_")
