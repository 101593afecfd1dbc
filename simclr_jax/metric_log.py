"""Metrics out of a run: TensorBoard event files (clu), `metrics.jsonl`, and the console.

Only process 0 writes; other processes get a writer that does nothing.
"""

import json
import math
import os
from typing import Mapping

import jax
import numpy as np
from absl import logging
from clu import metric_writers


def _plain(value):
  value = np.asarray(value)
  return value.item() if value.ndim == 0 else value.tolist()


class MetricLog:
  """Writes `{name: scalar}` records, each tagged with its `step`."""

  def __init__(self, workdir: str, filename: str = "metrics.jsonl"):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, filename)
    if self.enabled:
      _end_partial_line(self.path)
    self.console = metric_writers.LoggingWriter()
    self.writer = (metric_writers.SummaryWriter(os.path.join(workdir, "tensorboard"))
                   if self.enabled else None)

  def write(self, step: int, metrics: Mapping[str, float], *, console: bool = True) -> None:
    """`console=False`: the caller prints its own line (pretraining progress)."""
    metrics = {k: _plain(v) for k, v in metrics.items()}
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    if not self.enabled:
      return
    if console:
      self.console.write_scalars(step, scalars)
    self.writer.write_scalars(step, scalars)
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": int(step), **metrics}) + "\n")

  def close(self) -> None:
    if self.writer is not None:
      self.writer.flush()
      self.writer.close()


def _end_partial_line(path: str) -> None:
  """A run killed mid-write can leave a torn last line: close it so the next starts clean."""
  if os.path.exists(path) and os.path.getsize(path):
    with open(path, "rb+") as f:
      f.seek(-1, os.SEEK_END)
      if f.read(1) != b"\n":
        f.write(b"\n")


def read_jsonl(path: str) -> list[dict]:
  """All complete records of a metrics.jsonl file (torn lines of killed runs skipped)."""
  records = []
  with open(path) as f:
    for line in f:
      if not line.strip():
        continue
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        logging.warning("Skipping a torn line of %s: %r", path, line[:80])
  return records


def format_table(rows: Mapping[str, float], title: str = "") -> str:
  """A small two-column console table."""
  width = max([len(k) for k in rows] + [len(title)])
  lines = [title, "-" * (width + 12)] if title else []
  for k, v in rows.items():
    shown = _number(v) if isinstance(v, float) and math.isfinite(v) else str(v)
    lines.append(f"{k:<{width}}  {shown:>10}")
  return "\n".join(lines)


def _number(v: float) -> str:
  """4 decimals, or 3 significant digits where those would read 0.0000 (1e-7 errors)."""
  return f"{v:.4f}" if v == 0 or 1e-3 <= abs(v) < 1e7 else f"{v:.3e}"


def mean_metrics(window: list[dict]) -> dict[str, float]:
  """The mean of each metric over a window of per-step (device) metric dicts."""
  host = jax.device_get(window)
  return {k: float(np.mean([m[k] for m in host])) for k in host[0]}
