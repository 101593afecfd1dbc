r"""Batch-size scaling sweep: `python -m simclr_jax.sweep`, after the paper's Figure 9.

Runs `main.py` (pretraining + final linear probes) once per (global batch size, epoch
budget) of a grid, from one base config and the same `--config.*` overrides, each run
in its own workdir `<sweep_dir>/b{B}_e{E}`, then writes `<sweep_dir>/results.csv` and
`<sweep_dir>/scaling.png` (linear-probe accuracy and throughput vs batch size).

  python -m simclr_jax.sweep --config=configs/digits_sweep.py --sweep_dir=workdirs/sweep \
      --batch_sizes=32,64,128,256 --epochs=5,15 [--config.model.width_multiplier=0.125]

The learning rate follows config.optim.lr_scaling from the config's base LR (linear:
base x B/256), inside each run. Every run is a subprocess, so an interrupted sweep is
resumed by running the same command again: finished runs (their metrics.jsonl holds the
final probe record) are skipped, unfinished ones continue from their latest checkpoint
(main.py resumes by itself). A run directory remembers the command it was started with
and refuses a different one.
"""

import csv
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Iterable, Sequence

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from simclr_jax import config_lib
from simclr_jax import optim

MAIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "main.py")
# The record pretrain_and_probe writes last, once the run is complete.
FINAL_KEY = "linear_probe_top1"
RUN_FILE = "sweep_run.json"  # per-run: its command and each invocation's wall time
LOG_FILE = "sweep_log.txt"  # per-run: main.py's stdout and stderr, appended
FIXED_COLUMNS = ("batch_size", "epochs", "status", "steps", "peak_lr", "linear_probe_top1",
                 "eval_probe_top1", "final_loss", "final_contrast_acc", "images_per_s",
                 "wall_minutes", "sweep_wall_minutes", "run")

# A runner executes one command (argv list) with stdout/stderr appended to a log file
# and returns its exit status; tests replace it with a fake.
Runner = Callable[[list[str], str], int]


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One point of the grid."""
  batch_size: int
  epochs: float
  workdir: str
  peak_lr: float
  args: tuple[str, ...]  # main.py's arguments (no interpreter)


def run_name(batch_size: int, epochs: float) -> str:
  """Workdir name of a grid point, e.g. b256_e15 or b64_e0.5."""
  return f"b{batch_size}_e{epochs:g}"


def parse_batch_sizes(text: str) -> list[int]:
  """'32,64,128' -> [32, 64, 128]; each an int >= 1, no duplicates."""
  values = []
  for item in text.split(","):
    item = item.strip()
    if not item.isdigit() or int(item) < 1:
      raise ValueError(f"--batch_sizes: {item!r} is not an integer >= 1 (got {text!r})")
    values.append(int(item))
  if len(set(values)) != len(values):
    raise ValueError(f"--batch_sizes: duplicate values in {text!r}")
  return values


def parse_epochs(text: str) -> list[float]:
  """'5,15' -> [5.0, 15.0]; each a finite number > 0 (fractions allowed), no duplicates."""
  values = []
  for item in text.split(","):
    try:
      value = float(item)
    except ValueError:
      value = math.nan
    if not (math.isfinite(value) and value > 0):
      raise ValueError(f"--epochs: {item.strip()!r} is not a number > 0 (got {text!r})")
    values.append(value)
  if len({run_name(1, e) for e in values}) != len(values):
    raise ValueError(f"--epochs: duplicate values in {text!r}")
  return values


def format_override(field: str, value) -> str:
  """A `--config.<field>=<value>` argument that config_flags parses back to `value`."""
  return f"--config.{field}={value}"


def plan(config: ml_collections.ConfigDict, config_file: str, overrides: dict,
         batch_sizes: Sequence[int], epochs: Sequence[float], sweep_dir: str) -> list[RunSpec]:
  """The grid's runs, epochs-major, each checked with config_lib.validate.

  Args:
    config: the base config with `overrides` applied (what every run starts from).
    config_file: path of the base config file, passed to main.py.
    overrides: {"model.width_multiplier": 0.125, ...}, passed to every run.
    batch_sizes, epochs: the grid.
    sweep_dir: parent of the runs' workdirs.
  """
  for field in ("batch_size", "num_epochs"):
    if field in overrides:
      raise ValueError(f"--config.{field} is set by the sweep's grid; drop it and use "
                       f"--{'batch_sizes' if field == 'batch_size' else 'epochs'}")
  if config.num_train_steps > 0:
    raise ValueError(f"config.num_train_steps = {config.num_train_steps} would override the "
                     "grid's epoch budgets; set it to -1")
  if config.mode != "pretrain" or not config.probe.final:
    raise ValueError("the sweep needs config.mode = 'pretrain' and config.probe.final = True "
                     f"(got {config.mode!r}, {config.probe.final}): the final linear probes "
                     "are the accuracy it reports")
  specs = []
  for e in epochs:
    for b in batch_sizes:
      run_config = config.copy_and_resolve_references()
      run_config.batch_size = b
      try:
        run_config.num_epochs = int(e) if float(e).is_integer() else e
      except TypeError as err:
        raise ValueError(f"epoch budget {e:g} is fractional but config.num_epochs is an "
                         "int field; write it as a float (e.g. 15.0) in the config file "
                         "to allow fractional budgets") from err
      config_lib.validate(run_config)
      workdir = os.path.join(sweep_dir, run_name(b, e))
      args = (MAIN, f"--config={config_file}", f"--workdir={workdir}",
              f"--config.batch_size={b}", f"--config.num_epochs={e:g}",
              *(format_override(k, v) for k, v in sorted(overrides.items())))
      peak_lr = optim.scaled_learning_rate(config.optim.base_lr, b, config.optim.lr_scaling)
      specs.append(RunSpec(b, e, workdir, peak_lr, args))
  return specs


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


def _read_run_file(workdir: str) -> dict:
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


def execute(specs: Iterable[RunSpec], runner: Runner = subprocess_runner, *,
            python: str = sys.executable, stop_on_error: bool = False) -> dict[str, str]:
  """Runs every unfinished spec; returns {workdir: "skipped" | "finished" | "failed"}.

  A workdir started by a different command (another config or overrides) is an error
  rather than a silent mix of two settings.
  """
  outcome = {}
  for spec in specs:
    name = os.path.basename(spec.workdir)
    if is_finished(spec.workdir):
      logging.info("%s: finished before, skipped", name)
      outcome[spec.workdir] = "skipped"
      continue
    os.makedirs(spec.workdir, exist_ok=True)
    record = _read_run_file(spec.workdir)
    if record and record["args"] != list(spec.args):
      raise ValueError(
          f"{spec.workdir} was started with different arguments:\n  {record['args']}\n"
          f"now:\n  {list(spec.args)}\nuse another --sweep_dir or delete that directory")
    record.setdefault("args", list(spec.args))
    record.setdefault("invocations", [])
    resumed = os.path.isdir(os.path.join(spec.workdir, "checkpoints"))
    logging.info("%s: %s (peak LR %.4g): %s", name, "resuming" if resumed else "starting",
                 spec.peak_lr, " ".join(spec.args))
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
      logging.error("%s failed (exit status %d) after %.0f s; see %s", name, returncode,
                    wall_s, os.path.join(spec.workdir, LOG_FILE))
      if stop_on_error:
        break
    else:
      logging.info("%s finished in %.1f min", name, wall_s / 60)
  return outcome


def summarize(spec: RunSpec) -> dict:
  """One CSV row: the run's final metrics (empty cells where absent)."""
  records = read_metrics(spec.workdir)
  row = {"batch_size": spec.batch_size, "epochs": spec.epochs, "peak_lr": spec.peak_lr,
         "run": os.path.basename(spec.workdir)}
  final = next((r for r in reversed(records) if FINAL_KEY in r), None)
  row["status"] = "finished" if final else ("unfinished" if records else "missing")
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
  invocations = _read_run_file(spec.workdir).get("invocations", [])
  if invocations:
    row["sweep_wall_minutes"] = sum(i["wall_s"] for i in invocations) / 60
  return row


def write_csv(rows: list[dict], path: str) -> None:
  """FIXED_COLUMNS first, then any other metric (e.g. the few-shot probe), sorted."""
  extra = sorted({k for row in rows for k in row} - set(FIXED_COLUMNS))
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=[*FIXED_COLUMNS, *extra], restval="")
    writer.writeheader()
    for row in rows:
      writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v)
                       for k, v in row.items()})


def read_csv(path: str) -> list[dict]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def plot(rows: list[dict], path: str, title: str = "") -> None:
  """Accuracy and throughput vs global batch size (log2 axis), a line per epoch budget."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, (ax_acc, ax_rate) = plt.subplots(1, 2, figsize=(10, 4))
  for e in sorted({row["epochs"] for row in rows}):
    runs = sorted((row for row in rows if row["epochs"] == e),
                  key=lambda row: row["batch_size"])
    label = f"{e:g} epochs"
    done = [row for row in runs if row.get(FINAL_KEY) is not None]
    line, = ax_acc.plot([row["batch_size"] for row in done],
                        [100 * row[FINAL_KEY] for row in done], "o-", label=label)
    online = [row for row in runs if row.get("eval_probe_top1") is not None]
    if online:
      ax_acc.plot([row["batch_size"] for row in online],
                  [100 * row["eval_probe_top1"] for row in online], "x:",
                  color=line.get_color(), label=f"{label} (online probe)")
    timed = [row for row in runs if row.get("images_per_s") is not None]
    ax_rate.plot([row["batch_size"] for row in timed],
                 [row["images_per_s"] for row in timed], "o-", label=label)
  baseline = [row["random_init_linear_probe_top1"] for row in rows
              if row.get("random_init_linear_probe_top1") is not None]
  if baseline:
    ax_acc.axhline(100 * statistics.mean(baseline), color="gray", ls="--",
                   label="random-init encoder")
  batch_sizes = sorted({row["batch_size"] for row in rows})
  for ax in (ax_acc, ax_rate):
    ax.set_xscale("log", base=2)
    ax.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
    ax.set_xlabel("global batch size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  ax_acc.set_ylabel("top-1 on the test split (%)")
  ax_acc.set_title("accuracy vs batch size")
  ax_rate.set_ylabel("examples / s (B / step time, median)")
  ax_rate.set_title("throughput vs batch size")
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def collect(specs: Sequence[RunSpec], sweep_dir: str, title: str = "") -> list[dict]:
  """Writes <sweep_dir>/results.csv and scaling.png from every run's metrics.jsonl."""
  rows = [summarize(spec) for spec in specs]
  write_csv(rows, os.path.join(sweep_dir, "results.csv"))
  plot(rows, os.path.join(sweep_dir, "scaling.png"), title=title)
  return rows


# --- command line -------------------------------------------------------------------------

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Base config file; --config.<field>=<value> overrides go to every run.",
    lock_config=True)
_SWEEP_DIR = flags.DEFINE_string("sweep_dir", None, "Parent directory of the runs.")
_BATCH_SIZES = flags.DEFINE_string("batch_sizes", "32,64,128,256",
                                   "Comma-separated global batch sizes.")
_EPOCHS = flags.DEFINE_string("epochs", "5,15", "Comma-separated epoch budgets.")
_PYTHON = flags.DEFINE_string("python", sys.executable, "Interpreter that runs main.py.")
_STOP_ON_ERROR = flags.DEFINE_bool("stop_on_error", False,
                                   "Stop at the first failed run (default: go on).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the runs' commands and exit.")
_COLLECT_ONLY = flags.DEFINE_bool("collect_only", False,
                                  "Only rebuild results.csv and scaling.png.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not _SWEEP_DIR.value:
    raise app.UsageError("--sweep_dir is required")
  config_file = config_flags.get_config_filename(flags.FLAGS["config"])
  overrides = config_flags.get_override_values(flags.FLAGS["config"])
  try:
    specs = plan(_CONFIG.value, config_file, overrides, parse_batch_sizes(_BATCH_SIZES.value),
                 parse_epochs(_EPOCHS.value), _SWEEP_DIR.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  if _DRY_RUN.value:
    for spec in specs:
      print(" ".join([_PYTHON.value, *spec.args]))
    return
  os.makedirs(_SWEEP_DIR.value, exist_ok=True)
  outcome = {}
  if not _COLLECT_ONLY.value:
    outcome = execute(specs, python=_PYTHON.value, stop_on_error=_STOP_ON_ERROR.value)
  title = f"{config_file} " + " ".join(format_override(k, v) for k, v in sorted(
      overrides.items()))
  rows = collect(specs, _SWEEP_DIR.value, title=title.strip())
  print(f"{'run':<14}{'status':<12}{FINAL_KEY:>20}{'images/s':>12}")
  for r in rows:
    acc, rate = r.get(FINAL_KEY), r.get("images_per_s")
    print(f"{run_name(r['batch_size'], r['epochs']):<14}{r['status']:<12}"
          f"{'' if acc is None else f'{acc:.4f}':>20}"
          f"{'' if rate is None else f'{rate:.1f}':>12}")
  print(f"wrote {os.path.join(_SWEEP_DIR.value, 'results.csv')} and scaling.png")
  failed = [w for w, status in outcome.items() if status == "failed"]
  if failed:
    raise SystemExit(f"{len(failed)} run(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
