"""Running a sweep's runs one after the other, and reading back what each one wrote.

Every run is a `main.py` subprocess in its own workdir, so an interrupted sweep resumes
by running the same command again: finished runs (their metrics.jsonl holds the final
probe record) are skipped, unfinished ones continue from their latest checkpoint
(main.py resumes by itself). A workdir remembers the command it was started with and
refuses another.
"""

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Iterable

from absl import logging

from tools.grid import RunSpec

# In the record of the last step's evaluations (evals.linear_probes), once the run is complete.
FINAL_KEY = "linear_probe_top1"
RUN_FILE = "sweep_run.json"  # per-run: its command and each invocation's wall time
LOG_FILE = "sweep_log.txt"  # per-run: main.py's stdout and stderr, appended

# A runner executes one command (argv list) with stdout/stderr appended to a log file
# and returns its exit status; tests replace it with a fake.
Runner = Callable[[list[str], str], int]


def read_metrics(workdir: str) -> list[dict]:
  """The records of <workdir>/metrics.jsonl (none if absent); a torn last line (a run
  killed mid-write) is ignored."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return records


def is_finished(workdir: str) -> bool:
  """A run is finished once its final linear-probe record is in metrics.jsonl."""
  return any(FINAL_KEY in record for record in read_metrics(workdir))


def read_run_file(workdir: str) -> dict:
  path = os.path.join(workdir, RUN_FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def _write_run_file(workdir: str, record: dict) -> None:
  path = os.path.join(workdir, RUN_FILE)
  with open(path + ".tmp", "w") as f:
    json.dump(record, f, indent=2)
  os.replace(path + ".tmp", path)


def subprocess_runner(argv: list[str], log_path: str) -> int:
  """Runs argv in this process's directory (so that relative --config and --workdir
  paths mean what they meant to the sweep), appending its output to log_path."""
  with open(log_path, "a") as log:
    return subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT,
                          check=False).returncode


def check_not_changed(specs: Iterable[RunSpec]) -> None:
  """Raises if a run's workdir was started with other arguments (another config or
  overrides) rather than silently mixing two settings."""
  for spec in specs:
    record = read_run_file(spec.workdir)
    if record and record["args"] != list(spec.args):
      raise ValueError(
          f"{spec.workdir} was started with different arguments:\n  {record['args']}\n"
          f"now:\n  {list(spec.args)}\nuse another --sweep_dir or delete that directory")


def execute(specs: Iterable[RunSpec], runner: Runner = subprocess_runner, *,
            python: str = sys.executable, stop_on_error: bool = False) -> dict[str, str]:
  """Runs every unfinished spec; returns {workdir: "skipped" | "finished" | "failed"}."""
  specs = list(specs)
  check_not_changed(specs)
  outcome = {}
  for spec in specs:
    if is_finished(spec.workdir):
      logging.info("%s: finished before, skipped", spec.name)
      outcome[spec.workdir] = "skipped"
      continue
    os.makedirs(spec.workdir, exist_ok=True)
    record = read_run_file(spec.workdir)
    record.setdefault("args", list(spec.args))
    record.setdefault("invocations", [])
    resumed = os.path.isdir(os.path.join(spec.workdir, "checkpoints"))
    logging.info("%s: %s (peak LR %.4g): %s", spec.name,
                 "resuming" if resumed else "starting", spec.peak_lr, " ".join(spec.args))
    start = time.time()
    returncode = runner([python, *spec.args], os.path.join(spec.workdir, LOG_FILE))
    wall_s = time.time() - start
    record["invocations"].append({"started": time.strftime("%Y-%m-%d %H:%M:%S",
                                                           time.localtime(start)),
                                  "wall_s": round(wall_s, 2), "returncode": returncode})
    _write_run_file(spec.workdir, record)
    ok = returncode == 0 and is_finished(spec.workdir)
    outcome[spec.workdir] = "finished" if ok else "failed"
    if not ok:
      logging.error("%s failed (exit status %d) after %.0f s; see %s", spec.name,
                    returncode, wall_s, os.path.join(spec.workdir, LOG_FILE))
      if stop_on_error:
        break
    else:
      logging.info("%s finished in %.1f min", spec.name, wall_s / 60)
  return outcome


def summarize(spec: RunSpec) -> dict:
  """One CSV row: the run's columns and final metrics (absent metrics left out)."""
  records = read_metrics(spec.workdir)
  row = {**spec.columns, "peak_lr": spec.peak_lr, "run": spec.name}
  final = next((r for r in reversed(records) if FINAL_KEY in r), None)
  invocations = read_run_file(spec.workdir).get("invocations", [])
  if final:
    row["status"] = "finished"
  elif invocations and invocations[-1]["returncode"] != 0:
    row["status"] = f"failed (exit {invocations[-1]['returncode']})"
  else:
    row["status"] = "unfinished" if records else "missing"
  if records:
    row["steps"] = max(r["step"] for r in records)
  train = [r for r in records if "loss" in r]
  if train:
    row["final_loss"] = train[-1]["loss"]
    row["final_contrast_acc"] = train[-1].get("contrast_acc")
  # The first logging window of every invocation includes compilation; the median over
  # the windows is robust to it (and to the odd evaluation or checkpoint pause).
  rates = [r["images_per_s"] for r in records if "images_per_s" in r]
  if len(rates) > 1:
    rates = rates[1:]
  if rates:
    row["images_per_s"] = statistics.median(rates)
  evals = [r for r in records if "eval_probe_top1" in r]
  if evals:
    row["eval_probe_top1"] = evals[-1]["eval_probe_top1"]
  if final:
    row.update({k: v for k, v in final.items() if k != "step"})
  if invocations:
    row["sweep_wall_minutes"] = sum(i["wall_s"] for i in invocations) / 60
  return row
