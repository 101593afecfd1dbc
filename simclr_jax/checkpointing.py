"""Orbax checkpoints of a run: train state + step + data position + config, in the workdir.

A checkpoint is written to a temporary directory and renamed when complete (Orbax's
atomic finalisation), so a run killed mid-save leaves the previous checkpoint as the
latest complete one and the partial one is never read.
"""

import os
import signal
from typing import Any, Callable

import jax
import ml_collections
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves and restores `{"state": pytree, "meta": json}` under `<workdir>/<name>`.

  Pretraining uses "checkpoints"; linear evaluation and fine-tuning their own names, so
  that they never mix with pretraining checkpoints in a shared workdir.
  """

  def __init__(self, workdir: str, *, keep: int, async_save: bool = True,
               name: str = "checkpoints"):
    self.directory = os.path.join(os.path.abspath(workdir), name)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, meta: dict, *, force: bool = True) -> None:
    """Starts an (asynchronous) save of `state` at `step`; `meta` is JSON-serialisable."""
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    meta=ocp.args.JsonSave(meta)),
                      force=force)

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
    """Restores (state, meta) at `step` (default: latest) with the shardings of `abstract_state`."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]

  def reached_preemption(self, step: int) -> bool:
    """True on every process once JAX's preemption notice arrived (multi-process runs)."""
    return jax.process_count() > 1 and self.manager.reached_preemption(step)

  def save_if_due(self, step: int, state: Any, meta: dict, *, every: int, last: bool,
                  preempted: "PreemptionFlag",
                  before_save: Callable[[], None] | None = None) -> bool:
    """Saves on the `every`-step cadence, at the `last` step, or when preempted.

    Returns whether the loop must stop now (preempted: this step is saved).
    `before_save()` runs just before a save (e.g. a check that the state is finite).
    """
    stop = preempted.requested or self.reached_preemption(step)
    if (every > 0 and step % every == 0) or last or stop:
      if before_save is not None:
        before_save()
      self.save(step, state, meta)
    return stop

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) describing `tree`, the restore target."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def checkpoint_dir(path: str) -> str:
  """Resolves a workdir or a checkpoints directory to the checkpoints directory."""
  candidate = os.path.join(path, "checkpoints")
  return candidate if os.path.isdir(candidate) else path


def config_meta(config: ml_collections.ConfigDict) -> dict:
  return {"config": config.to_json_best_effort()}


class PreemptionFlag:
  """Set by SIGTERM on single-process runs.

  On multi-process runs SIGTERM is left to JAX's preemption service, which agrees on
  one step at which every process stops (`Checkpointer.reached_preemption`): a flag
  set in one process only would make it save alone while the others wait for it in
  their next collective.
  """

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    def handler(signum, frame):
      del signum, frame
      self.requested = True
    if jax.process_count() == 1:
      self._previous = signal.signal(signal.SIGTERM, handler)
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
