"""The training loop of every mode: steps, cadences, checkpoints, preemption, checks.

`train` runs a step function from the state's step to the last step of a `Cadence`.
Every `log_every` steps (and at the last) it writes the mean metrics with images/s and
the ETA (progress.py), after checking they are finite; it checkpoints every
`checkpoint_every` steps, at the last step and on SIGTERM / a first Ctrl-C (then stops);
after a step's checkpoint is written it runs the `Evaluation`s due at that step. A
failing evaluation is logged and the run goes on. The evaluations of a step are written
as one record; at the last step, once each of them succeeded, that record carries
`wall_minutes`, which marks the run as finished (see `last_step_done`).
"""

import dataclasses
import time
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np
from absl import logging

from simclr_jax import checkpointing
from simclr_jax import metric_log
from simclr_jax import parallel
from simclr_jax import progress as progress_lib

DONE_KEY = "wall_minutes"  # in the last step's evaluation record


class NonFiniteError(FloatingPointError):
  """A checked metric (loss, gradient or parameter norm) became NaN/inf."""


@dataclasses.dataclass(frozen=True)
class Cadence:
  """How long a run is and how often it logs and checkpoints."""
  total_steps: int
  steps_per_epoch: int  # what `epoch` is counted by
  batch_size: int  # global batch: images/s
  log_every: int
  checkpoint_every: int = 0  # <= 0: only at the last step and on a signal


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """`run(state) -> {metric: value}` at its cadence: every `every_steps` steps and at
  the last step (`every_steps` 0: the last step only; -1: never). With `at_last`
  False the caller evaluates the last step itself."""
  name: str  # names it in the log, e.g. "evals.online_probe"
  every_steps: int
  run: Callable[[Any], dict]
  at_last: bool = True

  def due(self, step: int, last: bool) -> bool:
    if last and self.at_last:
      return self.every_steps >= 0
    return self.every_steps > 0 and step % self.every_steps == 0


def check_finite(step: int, metrics: dict, ckpt: checkpointing.Checkpointer | None,
                 names: Sequence[str] = ("loss", "grad_norm", "param_norm"),
                 prefix: str = "") -> None:
  """Raises NonFiniteError naming the step and the checkpoint a rerun resumes from."""
  for name in names:
    if not np.isfinite(metrics[name]):
      if ckpt is None:
        on_disk = "this run writes no checkpoints"
      else:
        latest = ckpt.latest_step()
        on_disk = (f"no checkpoint was written to {ckpt.directory}; rerunning starts from "
                   "step 0" if latest is None else
                   f"the latest checkpoint is step {latest} in {ckpt.directory}; "
                   "rerunning resumes from it")
      raise NonFiniteError(f"non-finite {prefix}{name} = {metrics[name]} at step {step}: "
                           f"{on_disk}")


def evaluate_safely(what: str, step: int, evaluate: Callable[[], dict]) -> dict | None:
  """`evaluate()`, or None once its failure is logged (the run goes on)."""
  try:
    return evaluate()
  except Exception as e:  # an evaluation never stops a run
    logging.error("%s at step %d failed (%s); the run goes on and its checkpoints are "
                  "kept (--verbosity=1 shows the traceback)", what, step,
                  checkpointing.describe(e))
    logging.debug("%s failed", what, exc_info=True)
    return None


def last_step_done(records: list[dict], total_steps: int) -> bool:
  """Whether `records` (of metrics.jsonl) hold the last step's evaluation record."""
  return any(r.get("step") == total_steps and DONE_KEY in r for r in records)


def _evaluate(state, step: int, last: bool, evaluations: Sequence[Evaluation],
              ckpt: checkpointing.Checkpointer | None, log: metric_log.MetricLog,
              started: float) -> dict:
  """Runs the evaluations due at `step` once its checkpoint is written; their record."""
  due = [e for e in evaluations if e.due(step, last)]
  if not due:
    return {}
  if ckpt is not None:  # none builds its tf.data pipeline while Orbax still writes
    ckpt.wait()
  results, succeeded = {}, True
  for evaluation in due:
    metrics = evaluate_safely(evaluation.name, step, lambda e=evaluation: e.run(state))
    succeeded = succeeded and metrics is not None
    results.update(metrics or {})
  if last and succeeded:
    results[DONE_KEY] = (time.time() - started) / 60
  if results:
    log.write(step, results)
  return results


def train(step_fn: Callable, state: Any, batches: Iterator[dict], cadence: Cadence, *,
          mesh: jax.sharding.Mesh, log: metric_log.MetricLog,
          ckpt: checkpointing.Checkpointer | None = None, meta: dict | None = None,
          evaluations: Sequence[Evaluation] = (), checked: Sequence[str] = ("loss",),
          prefix: str = "", what: str = "train") -> tuple[Any, bool, dict]:
  """Steps `state` from state.step to cadence.total_steps.

  Args:
    step_fn: `(state, global batch) -> (state, metrics)`, metrics averaged over devices.
    state: the (restored) replicated state; its `step` is the number of steps done.
    batches: this process's share of each batch, from the state's step on.
    cadence: run length, logging and checkpoint cadences.
    mesh: the data-parallel mesh the batches are split over.
    log: where metrics go (names prefixed with `prefix`).
    ckpt: checkpoints `{state, meta}`; None: nothing is saved (a signal stops the run).
    evaluations: run after the checkpoint of each step they are due at.
    checked: metrics that must be finite (the run stops with NonFiniteError).
    what: names the step in the "compiling" line.

  Returns:
    (state, whether the last step was reached, the last step's evaluation record).
  """
  total, start, started = cadence.total_steps, int(state.step), time.time()
  progress = progress_lib.Progress(cadence.batch_size, start, total)
  window, final = [], {}
  if start == total:  # resumed at the end: its evaluations are not recorded yet
    return state, True, _evaluate(state, total, True, evaluations, ckpt, log, started)
  logging.info("step %d/%d: compiling the %s step", start + 1, total, what)
  with checkpointing.PreemptionFlag() as preempted:
    for step in range(start + 1, total + 1):
      state, metrics = step_fn(state, parallel.shard_batch(next(batches), mesh))
      if step == start + 1:
        jax.block_until_ready(metrics)
        progress.first_step_done(step)
      window.append(metrics)
      last = step == total
      if step % cadence.log_every == 0 or last:
        summary, window = metric_log.mean_metrics(window), []
        check_finite(step, summary, ckpt, checked, prefix)
        summary.update(progress.rates(step), epoch=step / cadence.steps_per_epoch)
        log.write(step, {prefix + k: v for k, v in summary.items()}, console=False)
        if log.enabled:
          logging.info("%s", progress.line(step, summary))
      if ckpt is None:
        stop = preempted.requested
      else:
        stop = ckpt.save_if_due(  # never checkpoint a broken state
            step, state, meta, every=cadence.checkpoint_every, last=last,
            preempted=preempted, before_save=lambda: check_finite(
                step, metric_log.mean_metrics([metrics]), ckpt, checked, prefix))
      if stop:
        logging.warning("Stopped by a signal: %s, exiting; the same command %s.",
                        f"saved step {step}" if ckpt else f"at step {step}",
                        "resumes" if ckpt else "starts again")
        break
      final = _evaluate(state, step, last, evaluations, ckpt, log, started)
  return state, int(state.step) == total, final
