"""What the console says while training: `step 120/330 (36%)  ETA 1m48s  245 img/s ...`.

The first step of a process compiles the step; its time is reported on its own
("compiling") and kept out of the images/s and the ETA.
"""

import time

# Metrics shown on the console line (all of them go to metrics.jsonl and TensorBoard).
# Pretraining's, then the supervised modes' (linear evaluation, fine-tuning).
KEY_METRICS = (("loss", "loss"), ("contrast_acc", "contrast_acc"), ("probe_acc", "probe_acc"),
               ("train_loss", "loss"), ("train_top1", "top1"), ("learning_rate", "lr"))


def format_duration(seconds: float) -> str:
  """1m48s, 45s, 2h05m, 3d04h."""
  seconds = int(round(max(seconds, 0)))
  days, rest = divmod(seconds, 86400)
  hours, rest = divmod(rest, 3600)
  minutes, secs = divmod(rest, 60)
  if days:
    return f"{days}d{hours:02d}h"
  if hours:
    return f"{hours}h{minutes:02d}m"
  if minutes:
    return f"{minutes}m{secs:02d}s"
  return f"{secs}s"


class Progress:
  """Images/s and ETA over each logging window, the compiling first step excluded."""

  def __init__(self, batch_size: int, start_step: int, total_steps: int):
    self.batch_size, self.start_step, self.total_steps = batch_size, start_step, total_steps
    self.t0, self.step0 = time.time(), start_step
    self.compile_seconds, self.compile_reported = None, False

  def first_step_done(self, step: int) -> None:
    """Call once the first step's outputs are ready (compilation included)."""
    now = time.time()
    self.compile_seconds = now - self.t0
    self.t0, self.step0 = now, step

  def rates(self, step: int) -> dict[str, float]:
    """images_per_s and eta_minutes since the last call; {} when only the first step ran."""
    if step <= self.step0:
      return {}
    now = time.time()
    seconds_per_step = (now - self.t0) / (step - self.step0)
    self.t0, self.step0 = now, step
    return {"images_per_s": self.batch_size / seconds_per_step,
            "eta_minutes": (self.total_steps - step) * seconds_per_step / 60}

  def line(self, step: int, metrics: dict) -> str:
    """The console line of a logged step (`metrics` as written, rates included)."""
    parts = [f"step {step}/{self.total_steps} ({100 * step // self.total_steps}%)"]
    if "eta_minutes" in metrics:
      parts += [f"ETA {format_duration(60 * metrics['eta_minutes'])}",
                f"{metrics['images_per_s']:.0f} img/s"]
    parts += [f"{short} {metrics[key]:.4g}" for key, short in KEY_METRICS if key in metrics]
    if self.compile_seconds is not None and not self.compile_reported:
      parts.append(f"(first step, compiling: {format_duration(self.compile_seconds)})")
      self.compile_reported = True
    return "  ".join(parts)


def summary_line(step: int, total_steps: int, wall_seconds: float, last_loss: float | None,
                 checkpoint: str) -> str:
  """The line at the end of pretraining (done, or stopped early on a preemption signal)."""
  what = (f"done: {step} steps" if step == total_steps
          else f"stopped at step {step}/{total_steps}")
  loss = f", last loss {last_loss:.4g}" if last_loss is not None else ""
  return (f"Pretraining {what} in {format_duration(wall_seconds)}{loss}; "
          f"checkpoint {checkpoint}")
