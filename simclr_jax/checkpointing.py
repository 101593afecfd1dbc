"""Orbax checkpoints of a run: train state + step + data position + config, in the workdir.

A checkpoint is written to a temporary directory and renamed when complete (Orbax's
atomic finalisation), so a run killed mid-save leaves the previous checkpoint as the
latest complete one and the partial one is never read. A complete checkpoint that
does not restore (a damaged file) is skipped: the run resumes from the newest one that
restores, and the damaged one is renamed `<step>.unreadable` (kept, never read again).
"""

import os
import signal
from typing import Any, Callable

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

UNREADABLE_SUFFIX = ".unreadable"


class CheckpointError(RuntimeError):
  """No checkpoint of a directory restores."""


def describe(error: BaseException) -> str:
  """`Type: first line of the message`, short enough for a one-line log."""
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0][:300] if text else ''}"


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

  def restore_newest_readable(self, abstract_state: Any) -> tuple[Any, dict] | None:
    """(state, meta) of the newest checkpoint that restores; None when there is none.

    Each newer one that fails is logged with the reason and renamed
    `<step>.unreadable`, so that the run can save that step again.

    Raises:
      CheckpointError: there are checkpoints, but none restores (nothing is renamed).
    """
    failed = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        restored = self.restore(abstract_state, step)
      except Exception as e:  # Orbax/TensorStore raise many types for damaged data
        failed.append((step, describe(e)))
        logging.warning("Checkpoint step %d in %s does not restore (%s); trying the one "
                        "before it", step, self.directory, failed[-1][1])
        continue
      if failed:
        self._set_aside([s for s, _ in failed])
        logging.warning("Resuming from step %d: skipped unreadable checkpoint step(s) %s, "
                        "kept as %s", step, [s for s, _ in failed],
                        [f"{s}{UNREADABLE_SUFFIX}" for s, _ in failed])
      return restored
    if failed:
      raise CheckpointError(
          f"no checkpoint in {self.directory} restores ("
          + "; ".join(f"step {s}: {why}" for s, why in failed)
          + "): move the directory away to start afresh")
    return None

  def _set_aside(self, steps: list[int]) -> None:
    if jax.process_index() == 0:
      for step in steps:
        path = os.path.join(self.directory, str(step))
        os.rename(path, path + UNREADABLE_SUFFIX)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("checkpoints set aside")
    self.manager.reload()

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


def is_step_dir(path) -> bool:
  """A complete step directory (Orbax renames it to its number once fully written)."""
  path = epath.Path(path)
  return path.name.isdigit() and (path / "state").is_dir() and (path / "meta").is_dir()


def complete_steps(directory) -> list[epath.Path]:
  """The complete step directories of a checkpoints directory, newest first."""
  directory = epath.Path(directory)
  if not directory.is_dir():
    return []
  return sorted((p for p in directory.iterdir() if is_step_dir(p)),
                key=lambda p: int(p.name), reverse=True)


def find_checkpoints(path: str) -> list[epath.Path]:
  """`config.init_from` (a workdir, its checkpoints dir or a step dir) as complete step
  dirs, newest first (a step dir: just that one).

  Raises:
    FileNotFoundError: nothing there, or no complete checkpoint (Orbax renames a step
      directory to its number only once it is fully written).
  """
  if not path:
    raise FileNotFoundError("config.init_from = '' is not allowed: expected a pretraining "
                            "workdir, its checkpoints/ directory or a checkpoints/<step> "
                            "directory")
  if not epath.Path(path).exists():
    raise FileNotFoundError(f"config.init_from = {path!r} does not exist")
  if is_step_dir(path):
    return [epath.Path(path)]
  steps = complete_steps(checkpoint_dir(path))
  if not steps:
    raise FileNotFoundError(
        f"config.init_from = {path!r} holds no complete checkpoint: expected a "
        "pretraining workdir, its checkpoints/ directory or a checkpoints/<step> "
        "directory with state/ and meta/")
  return steps


def read_meta(step_dir: str) -> dict:
  """The JSON meta item of a step directory."""
  return ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(
      epath.Path(step_dir) / "meta")


def config_meta(config: ml_collections.ConfigDict) -> dict:
  return {"config": config.to_json_best_effort()}


class PreemptionFlag:
  """Set by SIGTERM or a first Ctrl-C (SIGINT) on single-process runs.

  The loop then saves its current step and returns; a second Ctrl-C interrupts at once
  (KeyboardInterrupt, nothing saved). On multi-process runs the signals are left to
  JAX's preemption service, which agrees on one step at which every process stops
  (`Checkpointer.reached_preemption`): a flag set in one process only would make it
  save alone while the others wait for it in their next collective.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested = False
    self._previous = {}

  def __enter__(self):
    def handler(signum, frame):
      del frame
      self.requested = True
      if signum == signal.SIGINT:
        logging.warning("Interrupted: saving the current step, then exiting (Ctrl-C again "
                        "to stop without saving)")
        self._restore(signal.SIGINT)
    if jax.process_count() == 1:
      self._previous = {s: signal.signal(s, handler) for s in self.SIGNALS}
    return self

  def _restore(self, signum: int) -> None:
    previous = self._previous[signum]  # None: a handler not set from Python
    signal.signal(signum, signal.SIG_DFL if previous is None else previous)

  def __exit__(self, *exc):
    for signum in self._previous:
      self._restore(signum)
